"""The VQGAN vision tokenizer: LWM's architecture in Flax, and the public encode/decode API.

The network follows LWM's ``lwm/vqgan.py`` (a port of the open-muse "taming" VQGAN) module
for module, so a converted LWM parameter tree loads under the same Flax auto-names: 5 levels,
4 downsamples, no attention, nearest-neighbour quantiser with a straight-through estimator.
:class:`VQGANConfig` sizes it: :func:`lwm_config` is LWM's released model (146M params);
:func:`small_config` is the cheap variant lwmkit trains and ships as the default.

Public API (pipelines and outside checks rely on it)::

    tok = load()                 # or load("model.vqgan") / load("s3://bucket/model.vqgan")
    codes = tok.encode(frames)   # uint8 [N, 256, 256, 3] -> int32 [N, 256], row-major 16x16
    frames = tok.decode(codes)   # int32 [N, 256] -> uint8 [N, 256, 256, 3]
    tok.id                       # content hash, written into vision records as tokenizer_id
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lwmkit.tokenizers.vqgan_checkpoint import read_checkpoint
from lwmkit.tokenizers.vqgan_model import (  # noqa: F401 - re-exported: the model is part of this API
    MAX_CODES,
    VQGANConfig,
    VQGANModel,
    init_params,
    lwm_config,
    nearest_codes,
    param_shapes,
    small_config,
)

# ---------------------------------------------------------------- the public tokenizer


def to_pixels(frames: np.ndarray) -> jax.Array:
    """uint8 [..., 3] -> float32 in [-1, 1] (LWM: pixel / 127.5 - 1)."""
    return jnp.asarray(frames, jnp.float32) / 127.5 - 1.0


def to_uint8(pixels: jax.Array) -> jax.Array:
    return jnp.clip(jnp.round((pixels + 1.0) * 127.5), 0, 255).astype(jnp.uint8)


@dataclass(frozen=True, eq=False)
class VQGANTokenizer:
    """A loaded VQGAN: ``encode`` frames to codes and ``decode`` codes to frames.

    Frames are run through the network in fixed chunks of ``chunk`` (the last one padded),
    so the network is compiled once per tokenizer and a frame's codes never depend on how
    many frames were passed with it. Another ``chunk`` is another compiled shape: XLA may then
    round a conv differently and flip a near-tie code (~1 in 1,500 measured); keep one chunk for
    bit-identical codes across runs.
    """

    config: VQGANConfig
    params: dict
    id: str  # content hash of config + params (see vqgan_checkpoint.content_hash)
    path: str | None = None
    dtype: str = "float32"  # compute dtype: float32 or bfloat16 (params stay float32)
    chunk: int = 8

    @cached_property
    def model(self) -> VQGANModel:
        return VQGANModel(self.config, jnp.dtype(self.dtype))

    @cached_property
    def _encode_fn(self):
        def fn(params: dict, frames: jax.Array) -> jax.Array:
            _, codes = self.model.apply({"params": params}, to_pixels(frames), method=VQGANModel.encode)
            return codes.reshape(codes.shape[0], -1)

        return jax.jit(fn)

    @cached_property
    def _decode_fn(self):
        def fn(params: dict, codes: jax.Array) -> jax.Array:
            g = self.config.grid
            pixels = self.model.apply({"params": params}, codes.reshape(-1, g, g), method=VQGANModel.decode)
            return to_uint8(pixels)

        return jax.jit(fn)

    @cached_property
    def _unquantised_fn(self):
        def fn(params: dict, frames: jax.Array) -> jax.Array:
            z = self.model.apply({"params": params}, to_pixels(frames), method=VQGANModel.encode_latents)
            return to_uint8(self.model.apply({"params": params}, z, method=VQGANModel.decode_latents))

        return jax.jit(fn)

    def _chunked(self, fn, array: np.ndarray, out_tail: tuple[int, ...], out_dtype: Any) -> np.ndarray:
        n = array.shape[0]
        out = np.empty((n, *out_tail), out_dtype)
        for start in range(0, n, self.chunk):
            part = array[start : start + self.chunk]
            if part.shape[0] < self.chunk:  # pad so every call has the one compiled shape
                pad = np.zeros((self.chunk - part.shape[0], *part.shape[1:]), part.dtype)
                part = np.concatenate([part, pad])
            out[start : start + self.chunk] = np.asarray(fn(self.params, part))[: n - start]
        return out

    def _frames(self, frames: np.ndarray) -> np.ndarray:
        r, c = self.config.resolution, self.config.num_channels
        frames = np.asarray(frames)
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[1:] != (r, r, c):
            raise ValueError(
                f"encode expects uint8 frames [N, {r}, {r}, {c}], got {frames.dtype} {list(frames.shape)}"
            )
        return frames

    def encode(self, frames: np.ndarray) -> np.ndarray:
        """uint8 RGB frames [N, R, R, 3] (R = config.resolution, 256) -> int32 codes [N, g*g], row-major."""
        return self._chunked(self._encode_fn, self._frames(frames), (self.config.tokens_per_frame,), np.int32)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """int codes [N, g*g] in [0, num_embeddings) -> uint8 RGB frames [N, R, R, 3]."""
        codes = np.asarray(codes)
        t = self.config.tokens_per_frame
        if codes.ndim != 2 or codes.shape[1] != t or not np.issubdtype(codes.dtype, np.integer):
            raise ValueError(f"decode expects integer codes [N, {t}], got {codes.dtype} {list(codes.shape)}")
        if codes.size and (codes.min() < 0 or codes.max() >= self.config.num_embeddings):
            raise ValueError(
                f"codes must lie in [0, {self.config.num_embeddings}), got [{codes.min()}, {codes.max()}]"
            )
        r = self.config.resolution
        return self._chunked(
            self._decode_fn, codes.astype(np.int32), (r, r, self.config.num_channels), np.uint8
        )

    def reconstruct(self, frames: np.ndarray, *, quantise: bool = True) -> np.ndarray:
        """``decode(encode(frames))``; ``quantise=False`` decodes the encoder's latents before the
        codebook: what the network alone keeps (its PSNR above the coded one is what quantising costs)."""
        if quantise:
            return self.decode(self.encode(frames))
        frames = self._frames(frames)
        return self._chunked(self._unquantised_fn, frames, frames.shape[1:], np.uint8)

    def with_options(self, *, dtype: str | None = None, chunk: int | None = None) -> VQGANTokenizer:
        """The same weights with another compute dtype or chunk size (recompiles)."""
        return dataclasses.replace(self, dtype=dtype or self.dtype, chunk=chunk or self.chunk)


DEFAULT_CHECKPOINT_NAME = "vqgan-lwmkit-small.msgpack"


def default_checkpoint_path() -> str:
    """The shipped default: a small VQGAN trained by ``lwmkit vqgan train`` on the sample clips."""
    from importlib import resources

    return str(resources.files("lwmkit.tokenizers") / "data" / DEFAULT_CHECKPOINT_NAME)


def load(path: str | os.PathLike | None = None, *, dtype: str = "float32", chunk: int = 8) -> VQGANTokenizer:
    """Load an lwmkit VQGAN checkpoint (local path or fsspec URL); None = the shipped default.

    ``dtype`` is the compute dtype (float32 or bfloat16); ``chunk`` the frames per compiled call.
    Raises ContractError for a file that is not a valid lwmkit VQGAN checkpoint.
    """
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"dtype must be float32 or bfloat16, got {dtype!r}")
    if chunk <= 0:
        raise ValueError(f"chunk must be positive, got {chunk}")
    path = str(path or default_checkpoint_path())
    ckpt = read_checkpoint(path)
    params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), ckpt.params)
    return VQGANTokenizer(ckpt.config, params, ckpt.id, path, dtype, chunk)
