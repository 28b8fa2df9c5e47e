"""Stage planning: each stage's manifest checked against the stage and the model, up front.

Everything that can be wrong with a run's data is found here, before anything compiles or
reads a shard: the manifest's seq_len against the stage, its tokenizer and VQGAN ids against
the run (and against each other stage), its vocabulary layout against the model's tables.
A mismatch is refused with a :class:`ContractError` naming the manifest, the field and both
values.
"""

from __future__ import annotations

from dataclasses import dataclass

from lwmkit.schemas import (
    ContractError,
    Manifest,
    MeshConfig,
    OptimizerConfig,
    StageConfig,
    TrainConfig,
    load_manifest,
)
from lwmkit.schemas.manifest import MANIFEST_NAME


@dataclass(frozen=True)
class StagePlan:
    """A stage with everything resolved: its manifest, mesh, optimizer and step count."""

    index: int
    config: StageConfig
    manifest: Manifest
    manifest_path: str
    mesh: MeshConfig
    optimizer: OptimizerConfig
    steps: int
    batch_size: int

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.config.seq_len


def manifest_path(data: str) -> str:
    """A stage's ``data`` is a manifest.json or the folder holding one."""
    return data if data.endswith(".json") else f"{data.rstrip('/')}/{MANIFEST_NAME}"


def check_manifest(
    manifest: Manifest,
    stage: StageConfig,
    cfg: TrainConfig,
    *,
    source: str,
    tokenizer_id: str | None = None,
    vqgan_id: str | None = None,
) -> None:
    """Refuse a manifest that does not fit the stage or the model (ContractError)."""

    def refuse(field: str, reason: str) -> None:
        raise ContractError(f"{reason} (stage '{stage.name}')", field=field, source=source)

    if manifest.seq_len != stage.seq_len:
        refuse("seq_len", f"shards are packed to {manifest.seq_len} tokens, the stage trains at {stage.seq_len}")
    want_tok = tokenizer_id or cfg.tokenizer_id
    if want_tok is not None and manifest.tokenizer_id != want_tok:
        refuse("tokenizer_id", f"tokenizer {manifest.tokenizer_id[:16]} differs from the run's {want_tok[:16]}")
    vision = sum(c.vision_tokens for c in manifest.per_modality.values()) > 0
    want_vq = vqgan_id or cfg.vqgan_id
    if vision and want_vq is not None and manifest.vqgan_id not in (None, want_vq):
        refuse("vqgan_id", f"VQGAN {str(manifest.vqgan_id)[:16]} differs from the run's {want_vq[:16]}")
    model, vocab = cfg.model, manifest.vocab
    if vocab.text_vocab_size > model.text_vocab_size:
        refuse("vocab.text_vocab_size", f"text ids reach {vocab.text_vocab_size}, the model has {model.text_vocab_size}")
    if vision and model.vision_vocab_size == 0:
        refuse("per_modality", "shards hold vision tokens but the model has no vision vocabulary (vision_vocab_size 0)")
    if vision and vocab.vision_vocab_size > model.vision_vocab_size:
        refuse(
            "vocab.vision_vocab_size",
            f"vision ids reach {vocab.vision_vocab_size}, the model has {model.vision_vocab_size}",
        )
    if manifest.n_sequences == 0:
        refuse("n_sequences", "the shard set holds no sequences")


def plan_stages(cfg: TrainConfig, *, load=load_manifest) -> list[StagePlan]:
    """Load and check every stage's manifest; tokenizer/VQGAN ids must agree across stages."""
    plans: list[StagePlan] = []
    tokenizer_id, vqgan_id = cfg.tokenizer_id, cfg.vqgan_id
    for i, stage in enumerate(cfg.stages):
        path = manifest_path(stage.data)
        manifest = load(path)
        check_manifest(manifest, stage, cfg, source=path, tokenizer_id=tokenizer_id, vqgan_id=vqgan_id)
        tokenizer_id = tokenizer_id or manifest.tokenizer_id
        vqgan_id = vqgan_id or manifest.vqgan_id
        optimizer = stage.optimizer or cfg.optimizer
        plans.append(
            StagePlan(
                index=i,
                config=stage,
                manifest=manifest,
                manifest_path=path,
                mesh=stage.mesh or cfg.mesh,
                optimizer=optimizer,
                steps=stage.total_steps,
                batch_size=stage.sequences_per_batch,
            )
        )
    return plans


def describe(plans: list[StagePlan]) -> list[str]:
    """One line per stage for the console."""
    lines = []
    for p in plans:
        m = p.mesh
        lines.append(
            f"stage {p.index + 1}/{len(plans)} '{p.name}': seq_len {p.config.seq_len}, rope theta "
            f"{p.config.rope_theta:g}, {p.steps} steps x {p.batch_size} seqs ({p.tokens_per_step} tokens/step), "
            f"mesh data={m.data} fsdp={m.fsdp} tensor={m.tensor} sequence={m.sequence}, "
            f"{p.manifest.n_sequences} sequences in {len(p.manifest.shards)} shards ({p.manifest_path})"
        )
    return lines
