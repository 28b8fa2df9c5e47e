"""The VQGAN network in Flax: LWM's architecture, module for module, sized by :class:`VQGANConfig`.

Follows LWM's ``lwm/vqgan.py`` (a port of the open-muse "taming" VQGAN) so a converted LWM
parameter tree loads under the same Flax auto-names: 5 levels, 4 downsamples, no attention,
nearest-neighbour quantiser with a straight-through estimator. :func:`lwm_config` is LWM's
released model (146M params); :func:`small_config` the cheap variant lwmkit ships.
The public encode/decode API is in ``vqgan.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

MAX_CODES = 8192  # LWM's vision vocabulary: codes 0..8191, then 8192/8193 are frame markers


@dataclass(frozen=True)
class VQGANConfig:
    """Architecture of a VQGAN; field names follow LWM's ``VQGANConfig``."""

    resolution: int = 256  # square input side, pixels
    num_channels: int = 3  # RGB
    hidden_channels: int = 128  # width of the first level
    channel_mult: tuple[int, ...] = (1, 2, 2, 4, 6)  # level widths = hidden_channels * mult
    num_res_blocks: int = 2  # ResNet blocks per encoder level (the decoder has one more)
    z_channels: int = 64  # encoder output / decoder input width
    num_embeddings: int = 8192  # codebook entries; codes are 0..num_embeddings-1
    embed_dim: int = 64  # codebook vector size (LWM: quantized_embed_dim)
    norm_groups: int = 32  # GroupNorm groups (Flax's default, which LWM uses)
    commitment_cost: float = 0.25  # training only

    def __post_init__(self) -> None:
        positive = ("resolution", "num_channels", "hidden_channels", "num_res_blocks", "z_channels",
                    "num_embeddings", "embed_dim", "norm_groups")  # fmt: skip
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"VQGANConfig.{name} must be a positive int, got {value!r}")
        object.__setattr__(self, "channel_mult", tuple(self.channel_mult))
        if not self.channel_mult or any(not isinstance(m, int) or m <= 0 for m in self.channel_mult):
            raise ValueError(f"VQGANConfig.channel_mult must be positive ints, got {self.channel_mult!r}")
        if self.num_embeddings > MAX_CODES:
            raise ValueError(f"VQGANConfig.num_embeddings must be <= {MAX_CODES} (LWM's vision vocabulary), "
                             f"got {self.num_embeddings}")  # fmt: skip
        if self.resolution % (2 ** (len(self.channel_mult) - 1)):
            raise ValueError(f"VQGANConfig.resolution {self.resolution} is not divisible by "
                             f"2**{len(self.channel_mult) - 1} (one halving per level but the last)")  # fmt: skip
        for width in (*self.widths, self.z_channels):
            if width % self.norm_groups:
                raise ValueError(f"VQGANConfig.norm_groups {self.norm_groups} does not divide width {width}")
        if not 0 <= self.commitment_cost:
            raise ValueError(f"VQGANConfig.commitment_cost must be >= 0, got {self.commitment_cost}")

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(self.hidden_channels * m for m in self.channel_mult)

    @property
    def grid(self) -> int:
        """Side of the code grid (16 for 256-pixel frames and 5 levels)."""
        return self.resolution // 2 ** (len(self.channel_mult) - 1)

    @property
    def tokens_per_frame(self) -> int:
        return self.grid * self.grid


def lwm_config() -> VQGANConfig:
    """LWM's released VQGAN: widths 128/256/256/512/768, 8192 x 64 codebook, 146.2M params."""
    return VQGANConfig()


def small_config() -> VQGANConfig:
    """The shipped default's shape: widths 16/32/64/96/96, one ResNet block per level.

    ~2.4 GFLOP per encoded frame (LWM's is ~50x more) so 2 CPU cores tokenise tens of
    frames a second; a 1024-entry codebook of 32-d vectors, sized for small training data.
    """
    return VQGANConfig(hidden_channels=16, channel_mult=(1, 2, 4, 6, 6), num_res_blocks=1, z_channels=32,
                       num_embeddings=1024, embed_dim=32, norm_groups=4)  # fmt: skip


# ---------------------------------------------------------------- the network (math only)
# Module and submodule creation order matters: Flax names children ClassName_<k> in that
# order, and those names must match LWM's parameter tree.


class ResnetBlock(nn.Module):
    out_channels: int
    groups: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = nn.silu(nn.GroupNorm(self.groups, epsilon=1e-6, dtype=self.dtype)(x))
        h = nn.Conv(self.out_channels, (3, 3), dtype=self.dtype)(h)
        h = nn.silu(nn.GroupNorm(self.groups, epsilon=1e-6, dtype=self.dtype)(h))
        h = nn.Conv(self.out_channels, (3, 3), dtype=self.dtype)(h)
        if x.shape[-1] != self.out_channels:
            x = nn.Conv(self.out_channels, (1, 1), dtype=self.dtype)(x)  # LWM's Conv_2 shortcut
        return x + h


class Downsample(nn.Module):
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        # Pad bottom/right only, then a VALID stride-2 conv: LWM's (and taming's) asymmetric halving.
        x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
        return nn.Conv(x.shape[-1], (3, 3), strides=(2, 2), padding="VALID", dtype=self.dtype)(x)


class Upsample(nn.Module):
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)  # nearest-neighbour x2
        return nn.Conv(x.shape[-1], (3, 3), dtype=self.dtype)(x)


class MidBlock(nn.Module):
    groups: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for _ in range(2):
            x = ResnetBlock(x.shape[-1], self.groups, self.dtype)(x)
        return x


class DownsamplingBlock(nn.Module):
    config: VQGANConfig
    level: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for _ in range(self.config.num_res_blocks):
            x = ResnetBlock(self.config.widths[self.level], self.config.norm_groups, self.dtype)(x)
        if self.level != len(self.config.channel_mult) - 1:
            x = Downsample(self.dtype)(x)
        return x


class UpsamplingBlock(nn.Module):
    config: VQGANConfig
    level: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for _ in range(self.config.num_res_blocks + 1):
            x = ResnetBlock(self.config.widths[self.level], self.config.norm_groups, self.dtype)(x)
        if self.level != 0:
            x = Upsample(self.dtype)(x)
        return x


class Encoder(nn.Module):
    config: VQGANConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.config
        x = nn.Conv(c.hidden_channels, (3, 3), dtype=self.dtype)(x)
        for level in range(len(c.channel_mult)):
            x = DownsamplingBlock(c, level, self.dtype)(x)
        x = MidBlock(c.norm_groups, self.dtype)(x)
        x = nn.silu(nn.GroupNorm(c.norm_groups, epsilon=1e-6, dtype=self.dtype)(x))
        return nn.Conv(c.z_channels, (3, 3), dtype=self.dtype)(x)


class Decoder(nn.Module):
    config: VQGANConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        c = self.config
        x = nn.Conv(c.widths[-1], (3, 3), dtype=self.dtype)(z)
        x = MidBlock(c.norm_groups, self.dtype)(x)
        for level in reversed(range(len(c.channel_mult))):  # UpsamplingBlock_0 is the widest level
            x = UpsamplingBlock(c, level, self.dtype)(x)
        x = nn.silu(nn.GroupNorm(c.norm_groups, epsilon=1e-6, dtype=self.dtype)(x))
        return nn.Conv(c.num_channels, (3, 3), dtype=self.dtype)(x)


class VectorQuantizer(nn.Module):
    num_embeddings: int
    embed_dim: int

    def setup(self) -> None:
        init = nn.initializers.uniform(scale=2.0 / self.num_embeddings)
        self.embeddings = self.param(
            "embeddings",
            lambda k, s: init(k, s) - 1.0 / self.num_embeddings,
            (self.num_embeddings, self.embed_dim),
        )

    def __call__(self, z: jax.Array) -> tuple[jax.Array, jax.Array]:
        """z [..., D] -> (straight-through quantised z [..., D], codes int32 [...])."""
        codes = nearest_codes(z.astype(jnp.float32), self.embeddings)
        z_q = self.lookup(codes)
        return z + jax.lax.stop_gradient(z_q - z), codes

    def lookup(self, codes: jax.Array) -> jax.Array:
        return jnp.take(self.embeddings, codes, axis=0)


def nearest_codes(z: jax.Array, embeddings: jax.Array) -> jax.Array:
    """Index of the nearest codebook row by squared Euclidean distance; z [..., D] -> int32 [...]."""
    flat = z.reshape(-1, z.shape[-1])
    dist = (
        jnp.sum(flat**2, axis=1, keepdims=True)
        + jnp.sum(embeddings**2, axis=1)[None, :]
        - 2.0 * jnp.dot(flat, embeddings.T, precision=jax.lax.Precision.HIGHEST)
    )
    return jnp.argmin(dist, axis=1).astype(jnp.int32).reshape(z.shape[:-1])


class VQGANModel(nn.Module):
    """Top-level keys ``encoder``, ``decoder``, ``quantize``, ``quant_conv``, ``post_quant_conv`` (as LWM)."""

    config: VQGANConfig
    dtype: Any = jnp.float32

    def setup(self) -> None:
        c = self.config
        self.encoder = Encoder(c, self.dtype)
        self.decoder = Decoder(c, self.dtype)
        self.quantize = VectorQuantizer(c.num_embeddings, c.embed_dim)
        self.quant_conv = nn.Conv(c.embed_dim, (1, 1), dtype=self.dtype)
        self.post_quant_conv = nn.Conv(c.z_channels, (1, 1), dtype=self.dtype)

    def encode_latents(self, pixels: jax.Array) -> jax.Array:
        """pixels float [B, R, R, 3] in [-1, 1] -> pre-quantisation latents float32 [B, g, g, D]."""
        return self.quant_conv(self.encoder(pixels)).astype(jnp.float32)

    def encode(self, pixels: jax.Array) -> tuple[jax.Array, jax.Array]:
        """pixels [B, R, R, 3] -> (quantised latents [B, g, g, D], codes int32 [B, g, g])."""
        return self.quantize(self.encode_latents(pixels))

    def decode_latents(self, z_q: jax.Array) -> jax.Array:
        return jnp.clip(self.decoder(self.post_quant_conv(z_q)).astype(jnp.float32), -1.0, 1.0)

    def decode(self, codes: jax.Array) -> jax.Array:
        """codes int [B, g, g] -> pixels float32 [B, R, R, 3] in [-1, 1]."""
        return self.decode_latents(self.quantize.lookup(codes))

    def __call__(self, pixels: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Training forward: (reconstruction, pre-quantisation latents, codes)."""
        z = self.encode_latents(pixels)
        z_q, codes = self.quantize(z)
        return self.decode_latents(z_q), z, codes


def init_params(config: VQGANConfig, seed: int = 0) -> dict:
    """Fresh parameters (a plain nested dict, no top 'params' key, as LWM stores them)."""
    model = VQGANModel(config)
    side = 2 ** (len(config.channel_mult) - 1)  # params do not depend on the image size: init small, fast
    dummy = jnp.zeros((1, side, side, config.num_channels), jnp.float32)
    return jax.jit(model.init)(jax.random.PRNGKey(seed), dummy)["params"]


def param_shapes(config: VQGANConfig) -> dict:
    """The parameter tree's shapes and dtypes without allocating it (``jax.ShapeDtypeStruct`` leaves)."""
    model = VQGANModel(config)
    dummy = jax.ShapeDtypeStruct((1, config.resolution, config.resolution, config.num_channels), jnp.float32)
    return jax.eval_shape(model.init, jax.random.PRNGKey(0), dummy)["params"]
