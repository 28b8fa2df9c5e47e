"""Model FLOP accounting for MFU lines and benchmarks.

Convention (PaLM appendix B, as torchtitan/MaxText use it): a matmul of ``[m, k] x [k, n]``
costs ``2 m k n``; a training step costs 3x the forward (backward = 2x forward); norms,
RoPE, softmax and the embedding gather are not counted; activation recomputation (remat) is
NOT counted (it is hardware work, not model work).

Per token, forward:
* dense: ``2 * (matmul params)`` — wq, wk, wv, wo, w1, w2, w3 per layer, plus BOTH output
  heads (``lm_head`` and ``vision_head``): lwmkit evaluates both on every position (the mask
  picks one), so both are work done; ``heads="used"`` counts only the text head instead.
* attention: ``QK^T`` and ``PV`` are ``2 * 2 * L * n_heads * head_dim`` per layer.
  With ``causal_halved=True`` this is halved (each query sees ~L/2 keys: the work a
  block-skipping causal kernel really does); ``False`` counts the full ``L x L`` square (the
  convention of papers that report "full" attention FLOPs). Report both; say which.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from lwmkit.schemas.training import ModelConfig


@dataclass(frozen=True)
class StepFlops:
    """FLOPs of one step, both conventions, for a log line or a benchmark."""

    tokens: int
    dense: float  # matmul FLOPs outside attention scores (fwd+bwd)
    attention_full: float  # QK^T and PV over the full L x L square (fwd+bwd)
    attention_halved: float  # the causal half (fwd+bwd)

    @property
    def total_halved(self) -> float:
        return self.dense + self.attention_halved

    @property
    def total_full(self) -> float:
        return self.dense + self.attention_full


def matmul_params(config: ModelConfig, heads: Literal["both", "used"] = "both") -> int:
    """Weights that take part in a matmul per token (embeddings are gathers, not matmuls)."""
    d, hd = config.d_model, config.head_dim
    attn = d * config.n_heads * hd * 2 + d * config.kv_heads * hd * 2  # wq, wo; wk, wv
    mlp = 3 * d * config.mlp_dim
    head = d * config.text_vocab_size
    if heads == "both":
        head += d * config.vision_vocab_size
    return config.n_layers * (attn + mlp) + head


def attention_flops_per_token(config: ModelConfig, seq_len: int, causal_halved: bool) -> float:
    """Forward FLOPs of the score and value matmuls for one token at context ``seq_len``."""
    full = 2 * 2 * seq_len * config.n_heads * config.head_dim * config.n_layers
    return full / 2 if causal_halved else float(full)


def model_flops_per_token(
    config: ModelConfig,
    seq_len: int,
    causal_halved: bool = True,
    *,
    training: bool = True,
    heads: Literal["both", "used"] = "both",
) -> float:
    """FLOPs per token: ``training`` = forward + backward (3x), else forward only."""
    fwd = 2.0 * matmul_params(config, heads) + attention_flops_per_token(config, seq_len, causal_halved)
    return 3.0 * fwd if training else fwd


def step_flops(config: ModelConfig, seq_len: int, batch_size: int, *, training: bool = True,
               heads: Literal["both", "used"] = "both") -> StepFlops:
    """FLOPs of one step over ``batch_size`` sequences of ``seq_len`` tokens, both conventions."""
    tokens = seq_len * batch_size
    mult = 3.0 if training else 1.0
    return StepFlops(
        tokens=tokens,
        dense=mult * 2.0 * matmul_params(config, heads) * tokens,
        attention_full=mult * attention_flops_per_token(config, seq_len, False) * tokens,
        attention_halved=mult * attention_flops_per_token(config, seq_len, True) * tokens,
    )


# Vendor dense peaks (no structured sparsity), FLOP/s per device, by compute dtype; matched in
# order on jax's ``device_kind`` (so "H100 PCIe" before "H100", "L40S" before "L4"). fp32 on
# NVIDIA is the non-tensor-core figure: XLA's default fp32 matmul there measured as such on an
# H200 (68 TFLOP/s, issue 21). TPUs publish bf16 only (fp32 is then measured).
VENDOR_PEAKS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H100 NVL", {"bfloat16": 835e12, "float32": 60e12}),
    ("H100 PCIe", {"bfloat16": 756e12, "float32": 51e12}),
    ("H100", {"bfloat16": 989e12, "float32": 67e12}),  # SXM
    ("H200", {"bfloat16": 989e12, "float32": 67e12}),  # also GH200
    ("A100", {"bfloat16": 312e12, "float32": 19.5e12}),
    ("L40S", {"bfloat16": 362e12, "float32": 91.6e12}),
    ("L4", {"bfloat16": 121e12, "float32": 30.3e12}),
    ("TPU v4", {"bfloat16": 275e12}),
    ("TPU v5 lite", {"bfloat16": 197e12}),
    ("TPU v5e", {"bfloat16": 197e12}),
    ("TPU v5", {"bfloat16": 459e12}),  # v5p reports "TPU v5"
    ("TPU v6 lite", {"bfloat16": 918e12}),
    ("TPU v6e", {"bfloat16": 918e12}),
)


def vendor_peak(device_kind: str, dtype: str) -> float | None:
    """The table's dense peak for ``dtype`` ("bfloat16"/"float32") on ``device_kind``, or None."""
    for name, peaks in VENDOR_PEAKS:
        if name.lower() in device_kind.lower():
            return peaks.get(dtype)
    return None


def choose_peak(device_kind: str, dtype: str, measured: float | None) -> tuple[float, str]:
    """Peak FLOP/s per device for MFU, and a phrase saying where it came from.

    The larger of the vendor figure and a matmul measured in this run in the same dtype: the
    table is the honest denominator, but a run that beats it proves the table wrong for this
    part (another SKU, clocks), so the measured figure wins and MFU can never pass 100% on it.
    """
    table = vendor_peak(device_kind, dtype)
    if table is None and measured is None:
        raise ValueError(f"no vendor peak for {device_kind!r} ({dtype}) and nothing measured")
    if measured is None or (table is not None and table >= measured):
        seen = f"; measured {measured / 1e12:.1f}T" if measured is not None else ""
        return float(table), f"vendor dense {dtype} peak of {device_kind}{seen}"
    why = "above the vendor table" if table is not None else "no vendor figure"
    return float(measured), f"measured {dtype} matmul on {device_kind} ({why})"


def mfu(flops: float, seconds: float, n_devices: int, peak_flops_per_device: float) -> float:
    """Model FLOPs utilisation: achieved FLOP/s over ``n_devices * peak``."""
    if seconds <= 0 or peak_flops_per_device <= 0:
        raise ValueError("seconds and peak_flops_per_device must be positive")
    return flops / seconds / (n_devices * peak_flops_per_device)


def measure_matmul_peak(n: int = 2048, dtype: str = "float32", repeats: int = 5) -> float:
    """Measured FLOP/s of one jitted ``n x n`` matmul on the default device (median of runs).

    On emulated CPU devices all "devices" share the host cores, so this is the peak of the
    whole host, not of one emulated device.
    """
    import time

    import jax
    import jax.numpy as jnp
    import numpy as np

    a = jnp.ones((n, n), dtype)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        f(a).block_until_ready()
        times.append(time.perf_counter() - t)
    return 2.0 * n**3 / float(np.median(times))
