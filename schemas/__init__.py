"""Data contracts: the single source of truth for every file lwmkit writes or reads.

* Parquet records: :data:`VISION_RECORD`, :data:`BOOK_CHUNK`, :data:`DEAD_LETTER`
  (``records.py``), dead letters as JSONL (``dead_letters.py``);
* packed sequences, one webdataset sample each (``packed.py``);
* the shard ``manifest.json`` (``manifest.py``);
* configs: the mixture (``mixture.py``) and the training run (``training.py``).

This package imports nothing else from lwmkit.
"""

from lwmkit.schemas.dead_letters import DeadLetter, read_dead_letters
from lwmkit.schemas.errors import ContractError
from lwmkit.schemas.manifest import MANIFEST_NAME, Manifest, ShardEntry, TokenCounts, load_manifest
from lwmkit.schemas.mixture import MixtureConfig, SourceConfig
from lwmkit.schemas.packed import (
    PACKED_ARRAYS,
    PackedMeta,
    SegmentInfo,
    decode_sample,
    encode_sample,
    validate_packed,
)
from lwmkit.schemas.records import (
    BOOK_CHUNK,
    DEAD_LETTER,
    VISION_RECORD,
    ParquetContract,
    chunk_id,
    read_table,
    stable_id,
    validate_rows,
    vision_record_id,
    write_table,
)
from lwmkit.schemas.records import (
    CONTRACTS as CONTRACT_NAMES,
)
from lwmkit.schemas.shards import (
    ShardSet,
    build_shard,
    iter_tar_samples,
    shard_entry,
    shard_name,
)
from lwmkit.schemas.strict import from_dict, to_dict
from lwmkit.schemas.training import (
    CheckpointConfig,
    MeshConfig,
    ModelConfig,
    OptimizerConfig,
    StageConfig,
    TrainConfig,
)
from lwmkit.schemas.vocab import VocabLayout

__all__ = [
    "BOOK_CHUNK", "CONTRACT_NAMES", "DEAD_LETTER", "MANIFEST_NAME", "PACKED_ARRAYS", "VISION_RECORD",
    "CheckpointConfig", "ContractError", "DeadLetter", "Manifest", "MeshConfig", "MixtureConfig",
    "ModelConfig", "OptimizerConfig", "PackedMeta", "ParquetContract", "SegmentInfo", "ShardEntry",
    "ShardSet", "SourceConfig", "StageConfig", "TokenCounts", "TrainConfig", "VocabLayout",
    "chunk_id", "decode_sample", "encode_sample", "from_dict", "load_manifest", "read_dead_letters",
    "read_table", "stable_id", "build_shard", "iter_tar_samples", "shard_entry", "shard_name", "to_dict", "validate_packed", "validate_rows", "vision_record_id", "write_table",
]
