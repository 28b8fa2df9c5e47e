"""Detect an lwmkit file's contract and validate it (``lwmkit validate``)."""

from __future__ import annotations

from lwmkit.schemas import (
    CONTRACT_NAMES,
    ContractError,
    MixtureConfig,
    TrainConfig,
    load_manifest,
    read_dead_letters,
    read_table,
)


def validate_path(path: str, kind: str = "auto") -> str:
    """A one-line description of a valid file; raises ContractError naming file and field."""
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        meta = pq.read_schema(path).metadata or {}
        name = meta.get(b"lwmkit.contract", b"").decode()
        if name not in CONTRACT_NAMES:
            raise ContractError(f"carries no known lwmkit contract (found {name!r})", source=path)
        table = read_table(path, CONTRACT_NAMES[name])
        return f"{path}: valid {name} file, {table.num_rows} rows"
    if path.endswith(".json"):
        m = load_manifest(path)
        return f"{path}: valid manifest, stage {m.stage}, seq_len {m.seq_len}, {m.n_sequences} sequences in {len(m.shards)} shards"
    if path.endswith(".jsonl"):
        return f"{path}: valid dead letters, {len(read_dead_letters(path))} entries"
    if path.endswith((".yaml", ".yml")):
        from lwmkit.runtime.config import load_config, read_yaml

        if kind == "auto":
            kind = "train" if "stages" in read_yaml(path) else "mixture"
        cls = {"mixture": MixtureConfig, "train": TrainConfig}.get(kind)
        if cls is None:
            raise ContractError(f"unknown config kind {kind!r} (mixture or train)", source=path)
        load_config(cls, path)
        return f"{path}: valid {kind} config"
    raise ContractError("unknown file type (.parquet, .json, .jsonl, .yaml)", source=path)
