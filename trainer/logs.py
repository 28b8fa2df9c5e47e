"""Training logs: one console line per log step, TensorBoard event files and a JSONL file.

MFU convention (stated on the first line of every run): model FLOPs per step (forward +
backward = 3x forward, attention included, no rematerialisation counted; from
:mod:`lwmkit.trainer.flops`) divided by (step time x devices x peak FLOP/s per device).
The peak is the one of the model's compute dtype (bf16 on accelerators, not fp32: an fp32
peak under a bf16 model printed "MFU 272.6%" on an H200): configured (``peak_flops``), or the
larger of the vendor dense peak and a matmul measured at start; on CPU, measured, and divided
among the emulated devices that share the host's cores. An MFU above 100% means the peak is
wrong; it is never printed as a number (the line says "MFU n/a" and why, the JSONL has null).
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

from lwmkit.runtime.progress import step as console_step
from lwmkit.runtime.progress import warn


def measure_matmul(dtype: str = "float32", n: int | None = None, repeats: int = 3) -> float:
    """FLOP/s of a jitted ``n x n`` matmul in ``dtype`` on this process's first device (best of runs).

    On CPU the emulated devices share the host's cores: the host figure is divided among them.
    """
    import jax
    import jax.numpy as jnp

    device = jax.local_devices()[0]
    cpu = device.platform == "cpu"
    n = n or (2048 if cpu and dtype == "float32" else 1024 if cpu else 8192)
    a = jax.device_put(jnp.ones((n, n), dtype), device)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / (jax.local_device_count() if cpu else 1)


def measure_peak_flops(dtype: str = "float32") -> tuple[float, str]:
    """Peak FLOP/s per device in the model's compute ``dtype``, and where it came from.

    Accelerators: the larger of the vendor dense peak (:data:`~lwmkit.trainer.flops.VENDOR_PEAKS`)
    and a matmul measured now (see :func:`~lwmkit.trainer.flops.choose_peak`). CPU: measured.
    """
    import jax

    from lwmkit.trainer.flops import choose_peak

    device = jax.local_devices()[0]
    measured = measure_matmul(dtype)
    if device.platform == "cpu":
        return measured, f"measured, host {dtype} matmul / {jax.local_device_count()} CPU devices"
    return choose_peak(device.device_kind, dtype, measured)


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
        self.peak_source = peak_source
        self.is_main = is_main
        self._warned = False
        self._tb = None
        self._jsonl = None
        if is_main:
            os.makedirs(log_dir, exist_ok=True)
            try:
                from tensorboardX import SummaryWriter
            except ImportError:  # e.g. a bare accelerator image: the JSONL log is the record
                warn("tensorboardX is not installed: no TensorBoard events (train.jsonl is still written)")
            else:
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
        mfu: float | None = achieved / (self.n_devices * self.peak_flops)
        if mfu > 1.0:  # not a utilisation: the peak (or the FLOP count) is wrong
            if not self._warned:
                self.event(f"achieved {_si(achieved / self.n_devices)}FLOP/s per device exceeds the peak "
                           f"{_si(self.peak_flops)}FLOP/s ({self.peak_source}): MFU not reported; set peak_flops")
                self._warned = True
            mfu = None
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
        parts += [f"lr {lr:.2e}", f"{_si(tok_s)} tok/s", f"{_si(achieved)}FLOP/s",
                  f"MFU {100 * mfu:.1f}%" if mfu is not None else "MFU n/a (above peak)",
                  f"data {100 * rec['data_wait']:.0f}%"]
        console_step(f"{stage} step {step}/{steps} | " + " | ".join(parts))
        if self.is_main:
            for k, v in rec.items():
                if self._tb is not None and isinstance(v, float) and k != "time":
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
