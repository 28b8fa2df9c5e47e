"""The pack job's output side: pack one partition into sequences, write its shards, and
write ``manifest.json`` last from what every partition reported.

A partition is ``(group, bucket)``: examples of one packing group whose seeded key falls
in one bucket. Inside it, examples are sorted by that key, so its sequences -- and the
bytes of its shards -- depend only on the seed and the example ids, never on which worker
ran it or in what order elements arrived.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam

from lwmkit.pipelines.pack.formatting import Example
from lwmkit.pipelines.pack.packing import StreamingPacker
from lwmkit.pipelines.pack.sequences import assemble
from lwmkit.runtime.dead_letters import FLAT_NAME as DEAD_LETTERS_NAME
from lwmkit.runtime.dead_letters import dead_letter_path, write_dead_letters
from lwmkit.runtime.files import TEMP_MARKER, write_atomic
from lwmkit.schemas.errors import ContractError
from lwmkit.schemas.manifest import MANIFEST_NAME, Manifest, ShardEntry, TokenCounts
from lwmkit.schemas.mixture import MixtureConfig
from lwmkit.schemas.packed import encode_sample
from lwmkit.schemas.shards import build_shard, shard_entry
from lwmkit.schemas.strict import to_dict
from lwmkit.schemas.vocab import VocabLayout


@dataclass
class PartitionResult:
    """What one partition wrote: its shards and the counts the manifest adds up."""

    shards: list[ShardEntry] = field(default_factory=list)
    n_sequences: int = 0
    per_source: dict[str, Counter] = field(default_factory=dict)
    per_modality: dict[str, Counter] = field(default_factory=dict)
    vqgan_ids: set[str] = field(default_factory=set)

    def add(self, ex: Example, n_loss: int) -> None:
        for table, name in ((self.per_source, ex.source), (self.per_modality, ex.modality)):
            c = table.setdefault(name, Counter())
            c.update(examples=1, tokens=ex.n_tokens, loss_tokens=n_loss, vision_tokens=int(ex.vision.sum()))
        if ex.vqgan_id:
            self.vqgan_ids.add(ex.vqgan_id)


def _write_if_changed(path: str, data: bytes) -> None:
    """Atomic write, skipped when the file already holds exactly these bytes (a re-run)."""
    import fsspec

    fs, p = fsspec.core.url_to_fs(path)
    if fs.exists(p) and fs.size(p) == len(data):
        with fs.open(p, "rb") as f:
            if hashlib.sha256(f.read()).digest() == hashlib.sha256(data).digest():
                return
    write_atomic(path, data)


@dataclass(frozen=True)
class PackSettings:
    """What :class:`PackPartition` needs (picklable, sent to every worker)."""

    out: str
    seq_len: int
    mixture: MixtureConfig
    layout: VocabLayout
    vqgan_id: str | None = None  # expected by the training config (None: any one VQGAN)

    @property
    def sequences_per_shard(self) -> int:
        return max(1, self.mixture.shard_tokens // self.seq_len)


class PackPartition(beam.DoFn):
    """``((group, bucket), [(key, Example), ...])`` -> sequences -> shards -> PartitionResult."""

    def __init__(self, settings: PackSettings) -> None:
        self.s = settings
        self.sequences = beam.metrics.Metrics.counter("lwmkit.pack", "sequences")
        self.shards = beam.metrics.Metrics.counter("lwmkit.pack", "shards")

    def process(
        self, element: tuple[tuple[str, int], Iterable[tuple[int, Example]]]
    ) -> Iterator[PartitionResult]:
        (group, bucket), keyed = element
        examples = [ex for _, ex in sorted(keyed, key=lambda kv: (kv[0], kv[1].example_id))]
        m = self.s.mixture
        packer = StreamingPacker(
            self.s.seq_len,
            algorithm=m.packer,
            buffer_size=m.pack_buffer,
            max_segments=m.max_segments_per_sequence,
            max_open=m.max_open_sequences,
        )
        result, pending = PartitionResult(), []
        prefix = f"{group}-b{bucket:04d}"

        def emit(bins: list[list[int]]) -> None:
            for b in bins:
                key = f"{prefix}-{result.n_sequences:07d}"
                arrays, meta = assemble(
                    [examples[i] for i in b],
                    self.s.seq_len,
                    key,
                    pad_id=self.s.layout.pad_id,
                    weighting=m.loss_weighting,
                )
                for i, seg in zip(b, meta.segments, strict=True):
                    result.add(examples[i], seg.n_loss_tokens)
                pending.append(encode_sample(arrays, meta))
                result.n_sequences += 1
                if len(pending) >= self.s.sequences_per_shard:
                    self._write(prefix, result, pending)

        for i, ex in enumerate(examples):
            emit(packer.add(i, ex.n_tokens))
        emit(packer.flush())
        if pending:
            self._write(prefix, result, pending)
        self.sequences.inc(result.n_sequences)
        yield result

    def _write(self, prefix: str, result: PartitionResult, pending: list) -> None:
        name = f"{prefix}-{len(result.shards):05d}.tar"
        data = build_shard(pending)
        _write_if_changed(f"{self.s.out}/{name}", data)
        result.shards.append(shard_entry(name, data, len(pending)))
        pending.clear()
        self.shards.inc()


def _token_counts(tables: Iterable[Mapping[str, Counter]]) -> dict[str, TokenCounts]:
    total: dict[str, Counter] = {}
    for table in tables:
        for name, c in table.items():
            total.setdefault(name, Counter()).update(c)
    return {
        name: TokenCounts(**{k: int(c[k]) for k in ("examples", "tokens", "loss_tokens", "vision_tokens")})
        for name, c in sorted(total.items())
    }


def build_manifest(
    results: list[PartitionResult],
    *,
    stage: str,
    settings: PackSettings,
    tokenizer_id: str,
    policy_counts: Mapping[str, int],
    created_by: str,
) -> Manifest:
    """The manifest of a finished job: shards sorted by name, every count added up."""
    vqgan = sorted(set().union(*(r.vqgan_ids for r in results)))
    if len(vqgan) > 1:
        raise ContractError(
            f"vision records come from {len(vqgan)} different VQGANs {vqgan}: pack them apart",
            field="tokenizer_id",
        )
    if vqgan and settings.vqgan_id is not None and vqgan[0] != settings.vqgan_id:
        raise ContractError(f"vision records come from VQGAN {vqgan[0]}, the training config expects "
                            f"{settings.vqgan_id}", field="vqgan_id")  # fmt: skip
    per_source = _token_counts(r.per_source for r in results)
    n_sequences = sum(r.n_sequences for r in results)
    used = sum(c.tokens for c in per_source.values())
    total = n_sequences * settings.seq_len
    m = settings.mixture
    return Manifest(
        stage=stage,
        seq_len=settings.seq_len,
        seed=m.seed,
        tokenizer_id=tokenizer_id,
        vqgan_id=vqgan[0] if vqgan else None,
        vocab=settings.layout,
        mixture=to_dict(m),
        loss_weighting=m.loss_weighting,
        vision_loss_weight=m.vision_loss_weight,
        text_loss_weight=m.text_loss_weight,
        n_sequences=n_sequences,
        padding_tokens=total - used,
        packing_efficiency=used / total if total else 0.0,
        per_source=per_source,
        per_modality=_token_counts(r.per_modality for r in results),
        shards=tuple(sorted((e for r in results for e in r.shards), key=lambda e: e.name)),
        policy_counts=dict(sorted(policy_counts.items())),
        created_by=created_by,
    )


_OUR_SHARD = re.compile(r"^[A-Za-z0-9_-]+-b\d{4}-\d{5}\.tar$")


def write_outputs(out: str, manifest: Manifest, dead_letters: list[str]) -> None:
    """Dead letters (sorted lines), then ``manifest.json`` -- last, so readers trust only it --
    then shards an earlier run (other settings) left here that the manifest does not list."""
    import fsspec

    if dead_letters:
        write_dead_letters(dead_letter_path(out, "pack", flat=True), dead_letters)
    write_atomic(f"{out}/{MANIFEST_NAME}", manifest.to_json().encode("utf-8"))
    fs, p = fsspec.core.url_to_fs(out)
    listed = {e.name for e in manifest.shards}
    for path in fs.ls(p, detail=False):
        name = posixpath.basename(path)
        if _OUR_SHARD.match(name) and name not in listed:
            fs.rm(path)


def prepare_output(out: str) -> None:
    """Before a run: drop the old manifest (its shards are about to be rewritten), old dead
    letters and temporary files a killed run left behind. Finished shards stay (a re-run
    that writes the same bytes skips them)."""
    import fsspec

    fs, p = fsspec.core.url_to_fs(out)
    try:
        fs.makedirs(p, exist_ok=True)
        for name in (MANIFEST_NAME, DEAD_LETTERS_NAME):
            if fs.exists(f"{p}/{name}"):
                fs.rm(f"{p}/{name}")
        for path in fs.glob(f"{p}/*{TEMP_MARKER}*"):
            fs.rm(path)
    except OSError as err:
        err.add_note(f"preparing the output folder {out}")
        raise


def finalize(
    results: list[PartitionResult], counts: Mapping[str, int], dead: list[str], **kwargs: Any
) -> str:
    """The job's last step: manifest built and written; returns its sha256."""
    settings: PackSettings = kwargs["settings"]
    policy = dict(counts)
    policy["dead_letters"] = len(dead)
    manifest = build_manifest(results, policy_counts=policy, **kwargs)
    write_outputs(settings.out, manifest, dead)
    return manifest.sha256
