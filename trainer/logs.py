"""Training logs: one console line per log step, TensorBoard event files and a JSONL file.

MFU convention (stated on the first line of every run): model FLOPs per step (forward +
backward = 3x forward, attention included, no rematerialisation counted; from
:mod:`lwmkit.trainer.flops`) divided by (step time x devices x peak FLOP/s per device).
The peak is configured (``peak_flops``) or measured at start with a large fp32 matmul; on
CPU, emulated devices share the host's cores, so the measured host figure is divided among
them.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

from lwmkit.progress import step as console_step


def measure_peak_flops(n: int = 2048, repeats: int = 3) -> tuple[float, str]:
    """FLOP/s per device of a jitted fp32 matmul on this process's first device."""
    import jax
    import jax.numpy as jnp

    device = jax.local_devices()[0]
    a = jax.device_put(jnp.ones((n, n), jnp.float32), device)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    flops = 2 * n**3 / best
    if device.platform == "cpu":  # emulated devices share the host: split its measured peak
        return flops / jax.local_device_count(), f"measured, host fp32 matmul / {jax.local_device_count()} CPU devices"
    return flops, f"measured, fp32 matmul on {device.device_kind}"


def _si(x: float) -> str:
    for unit, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.2f}{unit}"
    return f"{x:.1f}"


class TrainLogger:
    """Writes each logged step to the console, TensorBoard and ``train.jsonl``.

    Only the main process (``is_main``) writes files; every process may print.
    """

    def __init__(self, log_dir: str, *, peak_flops: float, peak_source: str, n_devices: int, is_main: bool = True):
        self.log_dir = log_dir
        self.peak_flops = peak_flops
        self.n_devices = n_devices
        self.is_main = is_main
        self._tb = None
        self._jsonl = None
        if is_main:
            os.makedirs(log_dir, exist_ok=True)
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(log_dir=os.path.join(log_dir, "tensorboard"))
            self._jsonl = open(os.path.join(log_dir, "train.jsonl"), "a", encoding="utf-8")
        console_step(
            f"MFU = model FLOPs (fwd+bwd, attention included) / (step time x {n_devices} devices x "
            f"{_si(peak_flops)}FLOP/s per device, {peak_source})"
        )

    def record(
        self,
        *,
        stage: str,
        step: int,
        steps: int,
        global_step: int,
        metrics: dict[str, float],
        tokens: int,
        seconds: float,
        data_seconds: float,
        flops: float,
        lr: float,
    ) -> dict[str, Any]:
        """Log one step (or the mean over the steps since the last log); returns the record."""
        tok_s = tokens / seconds if seconds > 0 else 0.0
        achieved = flops / seconds if seconds > 0 else 0.0
        mfu = achieved / (self.n_devices * self.peak_flops)
        rec = {
            "time": time.time(), "stage": stage, "step": step, "global_step": global_step, "lr": lr,
            **{k: float(v) for k, v in metrics.items()},
            "tokens_per_s": tok_s, "flops_per_s": achieved, "mfu": mfu,
            "data_wait": data_seconds / seconds if seconds > 0 else 0.0,
        }
        parts = [f"loss {rec.get('loss', float('nan')):.4f}"]
        per_mod = [f"{m} {rec[f'{m}_loss']:.4f}" for m in ("text", "vision") if f"{m}_loss" in rec]
        if per_mod:
            parts[0] += f" ({', '.join(per_mod)})"
        if "grad_norm" in rec:
            parts.append(f"gnorm {rec['grad_norm']:.3f}")
        parts += [f"lr {lr:.2e}", f"{_si(tok_s)} tok/s", f"{_si(achieved)}FLOP/s", f"MFU {100 * mfu:.1f}%",
                  f"data {100 * rec['data_wait']:.0f}%"]
        console_step(f"{stage} step {step}/{steps} | " + " | ".join(parts))
        if self.is_main:
            for k, v in rec.items():
                if isinstance(v, float) and k != "time":
                    self._tb.add_scalar(f"{stage}/{k}" if k != "loss" else "loss", v, global_step)
            self._append(rec)
        return rec

    def event(self, message: str, **fields: Any) -> None:
        """A milestone (stage start, checkpoint, resume) on the console and in the JSONL."""
        console_step(message)
        if self.is_main:
            self._append({"time": time.time(), "event": message, **fields})

    def rewind(self, stage: str, step: int) -> None:
        """Forget ``stage``'s step records after ``step`` (a resume runs those steps again), so
        ``train.jsonl`` never holds a step twice. The file is rewritten whole, then renamed."""
        if not self.is_main:
            return
        path = os.path.join(self.log_dir, "train.jsonl")
        self._jsonl.close()
        kept = []
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue  # a line torn by a kill
                if not (rec.get("stage") == stage and "event" not in rec and rec.get("step", 0) > step):
                    kept.append(json.dumps(rec, sort_keys=True) + "\n")
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(kept)
        os.replace(tmp, path)
        self._jsonl = open(path, "a", encoding="utf-8")

    def _append(self, rec: dict[str, Any]) -> None:
        try:
            self._jsonl.write(json.dumps(rec, sort_keys=True) + "\n")
            self._jsonl.flush()
        except OSError as err:  # a full disk: the job's one error line names the file
            err.add_note(f"writing {os.path.join(self.log_dir, 'train.jsonl')}")
            raise

    def close(self) -> None:
        """Close the files; a failure to flush them (a full disk) must not hide the error that
        ended the run, so it is swallowed here."""
        for handle in (self._tb, self._jsonl):
            try:
                if handle is not None:
                    handle.close()
            except OSError:
                pass
