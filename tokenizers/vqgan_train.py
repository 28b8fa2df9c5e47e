"""Training a VQGAN from frames: reconstruction + codebook + commitment losses, usage tracking
and dead-code restarts. Used to make the shipped default (``lwmkit vqgan train``).

Losses (VQ-VAE, van den Oord et al. 2017; no perceptual/GAN terms, which would need
downloaded weights): ``|x - x^|_1 + |x - x^|_2^2 + |sg(z) - e|^2 + beta |z - sg(e)|^2``.

Dead codes: every ``restart_every`` steps, codebook rows no latent chose in that window are
moved onto randomly picked encoder latents of the current batch (plus a little noise), the
standard remedy for codebook collapse (Dhariwal et al. 2020, Jukebox). The first batch also
seeds the whole codebook this way, so codes start where the latents are.

The model is fully convolutional, so it trains on random ``crop`` x ``crop`` patches (4x
cheaper at 128 than at 256) and encodes full 256 x 256 frames afterwards.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lwmkit.runtime.progress import step as log_step
from lwmkit.tokenizers.vqgan import VQGANConfig, VQGANModel, init_params, small_config, to_pixels
from lwmkit.tokenizers.vqgan_checkpoint import Checkpoint, check_params, read_checkpoint, write_checkpoint
from lwmkit.tokenizers.vqgan_quality import codebook_usage
from lwmkit.tokenizers.vqgan_synthetic import synthetic_frames


@dataclass(frozen=True)
class VQGANTrainConfig:
    """How to train; ``model`` is the architecture (default: :func:`small_config`)."""

    model: VQGANConfig = field(default_factory=small_config)
    steps: int = 2000
    batch_size: int = 16
    crop: int = 128  # training patch side; a multiple of 2**(levels-1)
    learning_rate: float = 1e-3  # peak; linear warmup then cosine to 10%
    warmup_steps: int = 50
    restart_every: int = 25  # dead-code restart interval, steps (0 = never)
    log_every: int = 25
    seed: int = 0
    time_budget_s: float = 0.0  # stop early after this much wall-clock time (0 = no limit)
    cpu_budget_s: float = 0.0  # ...or after this much CPU time of this process (fair on a shared machine)
    store_dtype: str = "float16"  # checkpoint storage: float16 halves the shipped file
    synthetic_frames: int = 0  # rendered frames (tokenizers/vqgan_synthetic.py) added to the pool, 0 = none
    synthetic_share: float = 0.0  # share of each batch's crops drawn from the rendered frames
    synthetic_grey_share: float = 0.0  # share of the rendered frames' random colours that are neutral greys
    large_crop_every: int = 0  # every k-th step: batch // 4 full-resolution crops (0 = never)
    init_from: str = ""  # start from this checkpoint's params (same shapes) instead of a fresh init
    checkpoint_every: int = 0  # also write ``out`` every k steps (a cut-off run keeps its gains)
    stop_after: int = 0  # stop after this many steps; the LR schedule still spans ``steps`` (0 = all)
    fit_steps_to_budget: bool = False  # time the first steps, then end the schedule inside time_budget_s

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "crop", "log_every"):
            if getattr(self, name) <= 0:
                raise ValueError(f"VQGANTrainConfig.{name} must be positive, got {getattr(self, name)}")
        if self.crop % 2 ** (len(self.model.channel_mult) - 1) or self.crop > self.model.resolution:
            raise ValueError(f"VQGANTrainConfig.crop {self.crop} must divide into the model's levels and be "
                             f"<= resolution {self.model.resolution}")  # fmt: skip
        if (
            self.learning_rate <= 0
            or self.warmup_steps < 0
            or self.restart_every < 0
            or min(self.time_budget_s, self.cpu_budget_s) < 0
        ):
            raise ValueError("VQGANTrainConfig: need learning_rate > 0 and warmup_steps, restart_every, "
                             "time_budget_s, cpu_budget_s >= 0")  # fmt: skip
        if min(self.synthetic_frames, self.large_crop_every, self.checkpoint_every, self.stop_after) < 0:
            raise ValueError("VQGANTrainConfig: synthetic_frames, large_crop_every, checkpoint_every, stop_after "
                             "must be >= 0")  # fmt: skip
        if not 0.0 <= self.synthetic_share < 1.0 or (self.synthetic_share > 0) != (self.synthetic_frames > 0):
            raise ValueError(f"VQGANTrainConfig.synthetic_share must be in [0, 1) and > 0 exactly when "
                             f"synthetic_frames > 0, got {self.synthetic_share} with {self.synthetic_frames}")  # fmt: skip
        if not 0.0 <= self.synthetic_grey_share <= 1.0:
            raise ValueError(
                f"VQGANTrainConfig.synthetic_grey_share must be in [0, 1], got {self.synthetic_grey_share}"
            )
        if self.fit_steps_to_budget and self.time_budget_s <= 0:
            raise ValueError("VQGANTrainConfig.fit_steps_to_budget needs a time_budget_s to fit into")
        if self.store_dtype not in ("float32", "float16"):
            raise ValueError(
                f"VQGANTrainConfig.store_dtype must be float32 or float16, got {self.store_dtype!r}"
            )


def _losses(model: VQGANModel, params: dict, batch: jax.Array, beta: float):
    x = to_pixels(batch)
    recon, z, codes = model.apply({"params": params}, x)
    e = jnp.take(params["quantize"]["embeddings"], codes, axis=0)
    l1 = jnp.mean(jnp.abs(recon - x))
    mse = jnp.mean((recon - x) ** 2)
    codebook = jnp.mean((jax.lax.stop_gradient(z) - e) ** 2)
    commit = jnp.mean((z - jax.lax.stop_gradient(e)) ** 2)
    total = l1 + mse + codebook + beta * commit
    return total, {
        "loss": total,
        "l1": l1,
        "mse": mse,
        "codebook": codebook,
        "commit": commit,
        "codes": codes,
        "z": z,
    }


def make_step(model: VQGANModel, optimizer: optax.GradientTransformation, beta: float):
    """One jitted update: (params, opt_state, uint8 batch, learning rate) -> (params, opt_state, metrics).

    The learning rate is an argument, not baked into ``optimizer``, so the schedule's length can be
    set after the first steps have been timed (``fit_steps_to_budget``).
    """

    def step(params, opt_state, batch, lr):
        grads, metrics = jax.grad(lambda p: _losses(model, p, batch, beta), has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        updates = jax.tree_util.tree_map(lambda u: -lr * u, updates)
        return optax.apply_updates(params, updates), opt_state, metrics

    return jax.jit(step, donate_argnums=(0, 1))


def restart_dead_codes(params: dict, usage: np.ndarray, latents: np.ndarray, rng: np.random.Generator,
                       noise: float = 0.01) -> tuple[dict, int]:  # fmt: skip
    """Move every codebook row with ``usage == 0`` onto a random latent (+ noise). Returns (params, n moved)."""
    dead = np.flatnonzero(usage == 0)
    if dead.size == 0:
        return params, 0
    flat = latents.reshape(-1, latents.shape[-1])
    picks = flat[rng.integers(0, flat.shape[0], dead.size)]
    scale = noise * (flat.std() + 1e-6)
    table = np.array(params["quantize"]["embeddings"])
    table[dead] = picks + scale * rng.standard_normal(picks.shape).astype(np.float32)
    params = {**params, "quantize": {**params["quantize"], "embeddings": jnp.asarray(table)}}
    return params, int(dead.size)


def random_crops(pool: Sequence[np.ndarray], n: int, crop: int, rng: np.random.Generator,
                 extra: Sequence[np.ndarray] = (), extra_share: float = 0.0) -> np.ndarray:  # fmt: skip
    """``n`` random ``crop``-square patches (random frame, position, horizontal flip) -> uint8 [n, crop, crop, 3].

    Each patch comes from ``extra`` (e.g. rendered frames) with probability ``extra_share``, else from ``pool``.
    """
    out = np.empty((n, crop, crop, 3), np.uint8)
    for i in range(n):
        source = extra if len(extra) and rng.random() < extra_share else pool
        frame = source[rng.integers(len(source))]
        y = rng.integers(frame.shape[0] - crop + 1)
        x = rng.integers(frame.shape[1] - crop + 1)
        patch = frame[y : y + crop, x : x + crop]
        out[i] = patch[:, ::-1] if rng.random() < 0.5 else patch
    return out


def train(pool: Sequence[np.ndarray], cfg: VQGANTrainConfig, out: str | Path | None = None,
          meta: dict | None = None, rendered: Sequence[np.ndarray] | None = None) -> Checkpoint:  # fmt: skip
    """Train on ``pool`` (uint8 frames [H, W, 3], each side >= crop) and write the checkpoint to ``out``.

    ``rendered``: the config's rendered frames made beforehand (e.g. on a machine without fonts);
    by default they are rendered here. Returns the checkpoint (params as stored). Logs one line
    every ``log_every`` steps.
    """
    side = cfg.model.resolution if cfg.large_crop_every else cfg.crop
    too_small = [f.shape for f in pool if min(f.shape[:2]) < side]
    if not pool or too_small:
        raise ValueError(
            f"training needs frames at least {side} px on each side (got {too_small[:3]} of {len(pool)})"
        )
    rng = np.random.default_rng(cfg.seed)
    model = VQGANModel(cfg.model)
    params = _initial_params(cfg)
    if rendered is None:
        rendered = synthetic_frames(
            cfg.synthetic_frames, cfg.seed, cfg.model.resolution, grey_share=cfg.synthetic_grey_share
        )
    elif len(rendered) != cfg.synthetic_frames:
        raise ValueError(f"training was given {len(rendered)} rendered frames, its config asks for "
                         f"synthetic_frames: {cfg.synthetic_frames}")  # fmt: skip

    def crops(n: int, side: int) -> np.ndarray:
        return random_crops(pool, n, side, rng, rendered, cfg.synthetic_share)

    steps = cfg.steps
    schedule = _schedule(cfg, steps)
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.scale_by_adam(b1=0.9, b2=0.99))
    opt_state = optimizer.init(params)
    update = make_step(model, optimizer, cfg.model.commitment_cost)
    encode_latents = jax.jit(
        lambda p, b: model.apply({"params": p}, to_pixels(b), method=VQGANModel.encode_latents)
    )
    if not cfg.init_from:  # seed a fresh codebook on real latents so no code starts out dead
        params, _ = restart_dead_codes(params, np.zeros(cfg.model.num_embeddings),
                                       np.asarray(encode_latents(params, crops(cfg.batch_size * 4, cfg.crop))), rng)  # fmt: skip
    window = np.zeros(cfg.model.num_embeddings, np.int64)
    history: list[dict] = []
    t0, cpu0, restarted = time.monotonic(), time.process_time(), 0
    # fit_steps_to_budget: time `timed` steps once both batch shapes have compiled, then size the schedule
    compiled, timed = max(cfg.large_crop_every, 1), 8 * max(cfg.large_crop_every, 1)
    t_compiled = 0.0
    i = 0
    while i < steps:
        i += 1
        large = cfg.large_crop_every and i % cfg.large_crop_every == 0
        batch = crops(max(cfg.batch_size // 4, 1), cfg.model.resolution) if large else crops(cfg.batch_size, cfg.crop)  # fmt: skip
        params, opt_state, m = update(params, opt_state, batch, schedule(i - 1))
        window += np.bincount(np.asarray(m["codes"]).ravel(), minlength=cfg.model.num_embeddings)
        if cfg.fit_steps_to_budget and i == compiled:
            t_compiled = time.monotonic()
        elif cfg.fit_steps_to_budget and i == compiled + timed:
            now = time.monotonic()
            per_step = (now - t_compiled) / timed
            steps = min(cfg.steps, i + max(int(0.95 * (cfg.time_budget_s - (now - t0)) / per_step), 1))
            cfg = dataclasses.replace(cfg, steps=steps)  # the checkpoint records the schedule that ran
            schedule = _schedule(cfg, steps)  # the warmup already run does not depend on the length
            log_step(f"{per_step * 1e3:.0f} ms/step: the schedule ends at step {steps} "
                     f"to fit {cfg.time_budget_s:.0f} s")  # fmt: skip
        last = (i == steps or i == cfg.stop_after or 0 < cfg.time_budget_s <= time.monotonic() - t0
                or 0 < cfg.cpu_budget_s <= time.process_time() - cpu0)  # fmt: skip
        if i % cfg.log_every == 0 or last:
            usage = codebook_usage(window, cfg.model.num_embeddings, counts=True)
            row = {"step": i, **{k: float(m[k]) for k in ("loss", "l1", "mse", "codebook", "commit")},
                   "usage": usage["fraction"], "perplexity": usage["perplexity"], "restarted": restarted,
                   "seconds": time.monotonic() - t0}  # fmt: skip
            history.append(row)
            psnr = 10 * np.log10(4.0 / max(row["mse"], 1e-12))  # pixels span [-1, 1]: peak-to-peak 2
            log_step(f"step {i}/{steps} loss {row['loss']:.4f} psnr {psnr:.2f} dB usage {usage['fraction']:.1%} "
                     f"ppl {usage['perplexity']:.0f} restarted {restarted} "
                     f"{i * cfg.batch_size / row['seconds']:.1f} crops/s")  # fmt: skip
        if last:
            break
        if cfg.restart_every and i % cfg.restart_every == 0:
            params, moved = restart_dead_codes(params, window, np.asarray(m["z"]), rng)
            restarted += moved
            window[:] = 0
        if out is not None and cfg.checkpoint_every and i % cfg.checkpoint_every == 0:
            _save(params, cfg, out, meta, i, history, t0, cpu0)
    return _save(params, cfg, out, meta, i, history, t0, cpu0)


def _schedule(cfg: VQGANTrainConfig, steps: int):
    """Linear warmup to the peak, cosine to 10 % of it at ``steps``."""
    warmup = min(max(cfg.warmup_steps, 1), steps - 1) if steps > 1 else 0
    return optax.warmup_cosine_decay_schedule(0.0, cfg.learning_rate, warmup, max(steps, warmup + 1),
                                              end_value=0.1 * cfg.learning_rate)  # fmt: skip


def _initial_params(cfg: VQGANTrainConfig) -> dict:
    if not cfg.init_from:
        return init_params(cfg.model, cfg.seed)
    start = read_checkpoint(cfg.init_from)
    check_params(cfg.model, start.params, source=cfg.init_from)  # same shapes; norm_groups etc. may differ
    return jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), start.params)


def _save(params: dict, cfg: VQGANTrainConfig, out: str | Path | None, meta: dict | None, steps: int,
          history: list[dict], t0: float, cpu0: float) -> Checkpoint:  # fmt: skip
    host = jax.tree_util.tree_map(np.asarray, params)
    meta = {**(meta or {}), "trained_by": "lwmkit vqgan train", "train_config": _plain(cfg),
            "steps_done": steps, "history": history[-20:], "seconds": round(time.monotonic() - t0, 1),
            "cpu_seconds": round(time.process_time() - cpu0, 1)}  # fmt: skip
    if cfg.init_from:
        meta["init_from_id"] = read_checkpoint(cfg.init_from).id
    if out is None:
        from lwmkit.tokenizers.vqgan_checkpoint import content_hash

        return Checkpoint(cfg.model, host, content_hash(cfg.model, host), meta)
    return write_checkpoint(str(out), cfg.model, host, store_dtype=cfg.store_dtype, meta=meta)


def _plain(cfg: VQGANTrainConfig) -> dict:
    from lwmkit.schemas.strict import to_dict

    return to_dict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)
