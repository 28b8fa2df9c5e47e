"""The training config (YAML): model, mesh, optimizer, checkpoints and the list of stages.

Each stage grows the context (LWM: 32K -> 128K -> 256K -> 512K -> 1M), with its own RoPE
theta, shard set (a manifest), batch and steps; it starts from the previous stage's final
checkpoint unless ``init_from`` names one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

from lwmkit.schemas.strict import check_format_version, require

TRAIN_VERSION = 1
# How a sequence is laid out over the ring's devices (trainer/ring_attention.py's layout_permutation).
Layout = Literal["contiguous", "zigzag", "striped"]
LAYOUTS: tuple[str, ...] = get_args(Layout)


@dataclass(frozen=True)
class ModelConfig:
    """LLaMA-style decoder with LWM's vision embedding and head (defaults: LLaMA-2-7B)."""

    text_vocab_size: int = 32000
    vision_vocab_size: int = 8448  # 0 = text-only model (no vision embedding/head)
    d_model: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int | None = None  # None = n_heads (no GQA, as LLaMA-2-7B)
    mlp_dim: int = 11008
    norm_eps: float = 1e-6
    init_std: float = 0.02
    dtype: Literal["float32", "bfloat16"] = "float32"  # compute dtype; params stay fp32
    remat: Literal["none", "full", "dots"] = "none"  # activation checkpointing per layer
    scan_layers: bool = False  # nn.scan over layers (faster compiles; params stacked)
    attention_impl: Literal["ring", "allgather"] = "ring"  # allgather: K/V gathered (small rings)
    attention_block: int = 512  # query/key tile of the XLA blockwise path (fitted to divide L/sp)
    # Per-hop attention kernel: "xla" = the blockwise XLA path (the reference); "pallas" = the fused
    # flash kernel (Triton on GPU, interpret mode on CPU: slow, for tests); "auto" = pallas on GPU, else xla.
    attention_kernel: Literal["auto", "xla", "pallas"] = "auto"
    loss_chunk: int = 1024  # positions per chunk of the output heads (never full [L, V] logits)

    def __post_init__(self) -> None:
        for name in ("text_vocab_size", "d_model", "n_layers", "n_heads", "mlp_dim"):
            require(getattr(self, name) > 0, name, "must be positive")
        require(self.vision_vocab_size >= 0, "vision_vocab_size", "must be >= 0")
        require(self.d_model % self.n_heads == 0, "n_heads", f"must divide d_model={self.d_model}")
        require((self.d_model // self.n_heads) % 2 == 0, "n_heads", "head dim must be even for RoPE")
        require(self.attention_block > 0, "attention_block", "must be positive")
        require(self.loss_chunk > 0, "loss_chunk", "must be positive")
        kv = self.kv_heads
        require(kv > 0 and self.n_heads % kv == 0, "n_kv_heads", f"must divide n_heads={self.n_heads}")

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


@dataclass(frozen=True)
class MeshConfig:
    """Device mesh sizes; at most one axis may be -1 (takes the remaining devices)."""

    data: int = 1
    fsdp: int = -1
    tensor: int = 1
    sequence: int = 1

    def __post_init__(self) -> None:
        sizes = {"data": self.data, "fsdp": self.fsdp, "tensor": self.tensor, "sequence": self.sequence}
        for name, n in sizes.items():
            require(n == -1 or n >= 1, name, "must be >= 1 or -1")
        require(sum(n == -1 for n in sizes.values()) <= 1, "fsdp", "only one mesh axis may be -1")


@dataclass(frozen=True)
class OptimizerConfig:
    """AdamW with warmup and a constant, cosine or linear schedule (LWM: b2 0.95, wd 0.1)."""

    lr: float = 4e-5
    end_lr: float | None = None  # the rate a cosine/linear schedule decays to (required there; unset for constant)
    schedule: Literal["constant", "cosine", "linear"] = "constant"
    warmup_steps: int = 0
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    clip_norm: float | None = 1.0
    grad_accum: int = 1

    def __post_init__(self) -> None:
        require(self.lr > 0, "lr", "must be > 0")
        require(self.end_lr is None or self.end_lr >= 0, "end_lr", "must be >= 0")
        # A decaying schedule without its target rate would silently stay constant.
        require(self.schedule == "constant" or self.end_lr is not None, "end_lr",
                f"is required with schedule {self.schedule!r}: the rate it decays to (e.g. 0.0)")
        require(self.schedule != "constant" or self.end_lr is None, "end_lr",
                "is only used by a cosine or linear schedule; remove it or set schedule")
        require(self.warmup_steps >= 0, "warmup_steps", "must be >= 0")
        require(0 <= self.b1 < 1, "b1", "must lie in [0, 1)")
        require(0 <= self.b2 < 1, "b2", "must lie in [0, 1)")
        require(self.clip_norm is None or self.clip_norm > 0, "clip_norm", "must be > 0")
        require(self.grad_accum >= 1, "grad_accum", "must be >= 1")


@dataclass(frozen=True)
class StageConfig:
    """One stage: a context length, its RoPE theta, its data and its length of training.

    The batch is given in sequences (``batch_size``) or tokens (``batch_tokens``, rounded to
    whole sequences); the length in ``steps`` or as a token budget (``tokens``, rounded up to
    whole steps). Exactly one of each pair.
    """

    name: str
    seq_len: int
    rope_theta: float
    data: str  # path or URL of the stage's manifest.json (or its folder)
    steps: int | None = None
    tokens: int | None = None  # token budget instead of steps
    batch_size: int | None = None  # sequences per global batch
    batch_tokens: int | None = None  # tokens per global batch instead of batch_size
    init_from: str | None = None  # None = previous stage's final checkpoint (or fresh init)
    optimizer: OptimizerConfig | None = None  # None = the run's optimizer
    mesh: MeshConfig | None = None  # None = the run's mesh
    carry_optimizer: bool = False  # carry optimizer state (moments) from the previous stage
    add_vision: bool = False  # text -> vision: add fresh vte/vision_head if the init has none
    layout: Layout = "contiguous"  # sequence layout on the ring

    def __post_init__(self) -> None:
        require(bool(self.name) and "/" not in self.name, "name", "must be non-empty without '/'")
        require(self.seq_len > 0, "seq_len", "must be positive")
        require(self.rope_theta > 0, "rope_theta", "must be positive")
        require(self.init_from is None or checkpoint_location_ok(self.init_from), "init_from", CHECKPOINT_LOCATIONS)
        require((self.steps is None) != (self.tokens is None), "steps", "give exactly one of steps or tokens")
        require(self.steps is None or self.steps > 0, "steps", "must be positive")
        require(self.tokens is None or self.tokens > 0, "tokens", "must be positive")
        require(
            (self.batch_size is None) != (self.batch_tokens is None),
            "batch_size",
            "give exactly one of batch_size or batch_tokens",
        )
        require(self.batch_size is None or self.batch_size > 0, "batch_size", "must be positive")
        if self.batch_tokens is not None:
            require(
                self.batch_tokens >= self.seq_len and self.batch_tokens % self.seq_len == 0,
                "batch_tokens",
                f"must be a positive multiple of seq_len={self.seq_len}",
            )

    @property
    def sequences_per_batch(self) -> int:
        return self.batch_size if self.batch_size is not None else self.batch_tokens // self.seq_len

    @property
    def tokens_per_batch(self) -> int:
        return self.sequences_per_batch * self.seq_len

    @property
    def total_steps(self) -> int:
        if self.steps is not None:
            return self.steps
        return -(-self.tokens // self.tokens_per_batch)


# Orbax writes arrays through TensorStore, whose paths it accepts local or gs:// only (s3://
# is mangled to "s3:/" and refused deep inside a save, after a whole stage of training).
CHECKPOINT_LOCATIONS = ("must be a local path (or a mounted bucket) or gs://...: checkpoints are written by "
                        "orbax/TensorStore, which takes no other URL scheme (shards may be on any fsspec URL)")


def checkpoint_location_ok(path: str) -> bool:
    return "://" not in path or path.startswith("gs://")


@dataclass(frozen=True)
class CheckpointConfig:
    """Where checkpoints go (local or bucket), how often, and how many recent ones to keep.

    Every stage also keeps a ``final`` checkpoint that is never pruned.
    """

    dir: str
    every_steps: int = 100
    keep: int = 3

    def __post_init__(self) -> None:
        require(bool(self.dir), "dir", "must not be empty")
        require(checkpoint_location_ok(self.dir), "dir", CHECKPOINT_LOCATIONS)
        require(self.every_steps > 0, "every_steps", "must be positive")
        require(self.keep >= 1, "keep", "must be >= 1")


@dataclass(frozen=True)
class TrainConfig:
    """A whole run: stages in order, each starting where the previous one ended."""

    model: ModelConfig
    stages: tuple[StageConfig, ...]
    checkpoint: CheckpointConfig
    mesh: MeshConfig = field(default_factory=MeshConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    seed: int = 0
    log_every: int = 1
    peak_flops: float | None = None  # per device, FLOP/s for MFU; None = measured at start
    tokenizer_id: str | None = None  # expected in every manifest; None = the first stage's
    vqgan_id: str | None = None  # expected in every vision manifest; None = the first one's
    log_dir: str | None = None  # TensorBoard + JSONL logs; None = <checkpoint.dir>/logs
    prefetch: int = 2  # batches the reader prepares ahead
    format_version: int = TRAIN_VERSION

    def __post_init__(self) -> None:
        check_format_version(self.format_version, TRAIN_VERSION, "training config")
        require(len(self.stages) > 0, "stages", "must list at least one stage")
        names = [s.name for s in self.stages]
        require(len(set(names)) == len(names), "stages", f"stage names repeat: {names}")
        require(self.log_every >= 1, "log_every", "must be >= 1")
        require(self.prefetch >= 0, "prefetch", "must be >= 0")
        require(self.peak_flops is None or self.peak_flops > 0, "peak_flops", "must be > 0")
        for i, stage in enumerate(self.stages):
            mesh = stage.mesh or self.mesh
            if mesh.sequence > 0:
                require(
                    stage.seq_len % mesh.sequence == 0,
                    f"stages[{i}].seq_len",
                    f"{stage.seq_len} is not divisible by the sequence axis ({mesh.sequence})",
                )
            accum = (stage.optimizer or self.optimizer).grad_accum
            require(
                stage.sequences_per_batch % accum == 0,
                f"stages[{i}].batch_size",
                f"{stage.sequences_per_batch} sequences do not split into grad_accum={accum} micro-batches",
            )
