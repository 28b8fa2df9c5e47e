"""The book QA job: books → token-budget chunks → QA pairs from a short-context model → Parquet.

    ReadBooks | Chunk | GenerateQA (RunInference) | ToRecords | WriteRecords
          \\________\\______________________\\_______ WriteDeadLetters

Run it as ``lwmkit books --input 'books/*.txt' --output out/`` or
``python -m lwmkit.pipelines.books ...`` with any Beam runner flags. With no
``--qa-endpoint`` the job starts a local llama.cpp server for SmolLM2-135M-Instruct on a
loopback port and stops it at the end; point ``--qa-endpoint``/``--qa-model`` at vLLM (or any
OpenAI-compatible API) instead. The API key is read from the environment variable named by
``--qa-api-key-env`` (default ``LWMKIT_QA_API_KEY``, then ``OPENAI_API_KEY``) — never a flag.

Output (``--output``): ``chunks-SSSSS-of-NNNNN.parquet`` (``BOOK_CHUNK`` records),
``dead_letters.jsonl`` (every book or chunk that failed, with the reason and any raw model
reply), ``summary.json`` (counters and settings), and ``qa_cache/`` (the response cache,
unless ``--qa-cache`` puts it elsewhere).
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.ml.inference.base import RunInference
from apache_beam.options.pipeline_options import PipelineOptions

from lwmkit.pipelines.books.book_io import (
    DEAD,
    JOB,
    NAMESPACE,
    RawBook,
    ReadBooks,
    dead_letter,
    dead_letter_counts,
)
from lwmkit.pipelines.books.chunking import BookError, ReadPolicy, chunk_text, read_book
from lwmkit.pipelines.books.llm_server import LocalLLMServer, ServerConfig, ServerError
from lwmkit.pipelines.books.output import WriteChunks, remove_stale_shards
from lwmkit.pipelines.books.qa_client import QAClientConfig
from lwmkit.pipelines.books.qa_grade import GradeConfig, grade_summary, summary_line
from lwmkit.pipelines.books.qa_handler import OpenAIChatQAHandler, ToRecords
from lwmkit.pipelines.books.qa_prompt import load_prompt
from lwmkit.pipelines.bucket_options import beam_s3_for_fsspec
from lwmkit.pipelines.entry import job_main
from lwmkit.pipelines.runner_compat import adapt
from lwmkit.runtime.dead_letters import WriteDeadLetters
from lwmkit.runtime.lease import lease_output
from lwmkit.runtime.progress import step, warn
from lwmkit.schemas.errors import ContractError
from lwmkit.schemas.flags import help_text as flag_help
from lwmkit.schemas.flags import parse_job
from lwmkit.schemas.jobs import BEAM_PASS_THROUGH, BooksJob
from lwmkit.schemas.records import chunk_id


class BooksJobFailed(RuntimeError):
    """The QA endpoint is unreachable, or more chunks failed than ``--max-failure-ratio`` allows."""


COUNTERS = (
    "books_read",
    "chunks",
    "chunks_done",
    "chunks_cached",
    "chunks_failed",
    "chunks_unreachable",
    "chunks_ungrounded",
    "qa_pairs",
    "qa_requests",
    "qa_retries",
    "replaced_bytes",
)
PER_BOOK = "replaced_bytes."  # counters named replaced_bytes.<book id>: reported per book


class ChunkBooks(beam.DoFn):
    """RawBook → chunk dicts (no QA yet); unusable books → dead letters. Tokenizer loaded once per worker."""

    def __init__(self, tokenizer_path: str | None, budget: int, policy: ReadPolicy, source: str):
        self.tokenizer_path = tokenizer_path
        self.budget = budget
        self.policy = policy
        self.source = source
        self.books = Metrics.counter(NAMESPACE, "books_read")
        self.chunks = Metrics.counter(NAMESPACE, "chunks")
        self.replaced = Metrics.counter(NAMESPACE, "replaced_bytes")

    def setup(self) -> None:
        from lwmkit.tokenizers.text import TextTokenizer

        self.tokenizer = TextTokenizer.load(self.tokenizer_path)

    def process(self, book: RawBook) -> Iterator[Any]:
        try:
            text, bad = read_book(book.content, self.policy)
            chunks = chunk_text(text, self.tokenizer, self.budget)
        except BookError as err:
            yield dead_letter(book.uri, "decode", err)
            return
        self.books.inc()
        self.chunks.inc(len(chunks))
        if bad:  # rare by policy, so one counter per damaged book stays cheap
            self.replaced.inc(bad)
            Metrics.counter(NAMESPACE, PER_BOOK + book.book_id).inc(bad)
        for c in chunks:
            yield {
                "book_id": book.book_id,
                "chunk_index": c.index,
                "chunk_id": chunk_id(book.book_id, c.index),
                "source": self.source,
                "text": c.text,
                "n_tokens": c.n_tokens,
                "text_sha256": hashlib.sha256(c.text.encode("utf-8")).hexdigest(),
                "tokenizer_id": self.tokenizer.id,
            }


def _client_config(o: BooksJob, endpoint: str, model: str, embedded: bool) -> QAClientConfig:
    try:
        return QAClientConfig(
            endpoint=endpoint, model=model, api_key_env=o.qa_api_key_env,
            max_in_flight=o.qa_max_in_flight or (2 if embedded else 4), timeout_s=o.qa_timeout,
            max_reply_bytes=o.qa_max_reply_bytes,
            max_attempts=o.qa_max_attempts, backoff_base_s=o.qa_backoff, n_pairs=o.qa_pairs,
            max_tokens=o.qa_max_tokens, temperature=o.qa_temperature,
            # llama-cpp-python's server takes json_object + schema; no need to probe it.
            response_format="json_object" if embedded and o.qa_response_format == "auto" else o.qa_response_format,
        )  # fmt: skip
    except ValueError as err:
        raise ContractError(str(err), source="books options") from None


def build(p: beam.Pipeline, o: BooksJob, qa: QAClientConfig, cache: str | None) -> None:
    """The job's graph: reads like the diagram in this module's docstring."""
    prompt = load_prompt(o.qa_prompt)
    policy = ReadPolicy(errors=o.encoding_errors, strip_gutenberg=not o.keep_gutenberg, encoding=o.encoding)
    handler = OpenAIChatQAHandler(qa, prompt, cache, o.qa_batch_size, _grade_config(o))
    books, read_dead = p | "ReadBooks" >> ReadBooks(o.input, o.id_field, o.text_field)
    chunks = books | "Chunk" >> beam.ParDo(
        ChunkBooks(o.tokenizer, o.chunk_tokens, policy, o.source)
    ).with_outputs(DEAD, main="chunks")
    answered = chunks.chunks | "GenerateQA" >> RunInference(handler)
    records = answered | "ToRecords" >> beam.ParDo(ToRecords(qa.model, prompt.version)).with_outputs(
        DEAD, main="records"
    )
    _ = records.records | "WriteRecords" >> WriteChunks(o.output, o.num_shards)
    _ = (
        (read_dead, chunks[DEAD], records[DEAD])
        | "AllDeadLetters" >> beam.Flatten()
        | "WriteDeadLetters" >> WriteDeadLetters(o.output, JOB, flat=True, keep_earlier=False)
    )


def _grade_config(o: BooksJob) -> GradeConfig:
    try:
        return GradeConfig(min_grounding=o.qa_min_grounding, min_span=o.qa_min_span, regrades=o.qa_regrades)
    except ValueError as err:
        raise ContractError(str(err), source="books options") from None


def _public_endpoint(url: str) -> str:
    """The URL without user info or query (either could carry a credential)."""
    parts = urlsplit(url)
    return urlunsplit(
        (parts.scheme, parts.hostname + (f":{parts.port}" if parts.port else ""), parts.path, "", "")
    )


def counters(result: beam.runners.runner.PipelineResult) -> dict[str, int]:
    """The job's Beam counters by name (committed values where the runner has them)."""
    out = dict.fromkeys(COUNTERS, 0)
    for c in result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]:
        value = c.committed if c.committed is not None else c.attempted
        out[c.key.metric.name] = out.get(c.key.metric.name, 0) + int(value or 0)
    return out


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the job; returns the summary also written to ``OUTPUT/summary.json``."""
    job, beam_args = parse_job(BooksJob, list(argv) if argv is not None else sys.argv[1:], "books")
    options = adapt(PipelineOptions(beam_args))
    _grade_config(job)
    cache = (
        None
        if (job.qa_cache or "").lower() == "none"
        else (job.qa_cache or FileSystems.join(job.output, "qa_cache"))
    )
    # One writer per output: two runs would interleave shards, dead letters and the summary.
    with beam_s3_for_fsspec(options), lease_output(job.output, "lwmkit books", note=warn):
        return _run(options, job, cache)


def _run(options: PipelineOptions, o: BooksJob, cache: str | None) -> dict[str, Any]:
    with ExitStack() as stack:
        endpoint, model, embedded = o.qa_endpoint, o.qa_model, not o.qa_endpoint
        if embedded:
            endpoint, model = _start_embedded(stack, o)
        qa = _client_config(o, endpoint, model, embedded)
        step(
            f"books: {o.input} → {o.output} ({o.chunk_tokens}-token chunks, model {model} at {_public_endpoint(endpoint)})"
        )
        with beam.Pipeline(options=options) as p:
            build(p, o, qa, cache)
        result = p.result
    for path in remove_stale_shards(o.output, o.num_shards):
        warn(f"books: removed {path} (a shard of an earlier run with another --num-shards)")
    counts = counters(result)
    per_book = {k[len(PER_BOOK) :]: counts.pop(k) for k in sorted(counts) if k.startswith(PER_BOOK)}
    summary = {"counters": counts, "replaced_bytes_per_book": per_book, "encoding": o.encoding, "model": model, "endpoint": "embedded" if embedded else _public_endpoint(endpoint),
               "prompt_version": load_prompt(o.qa_prompt).version, "chunk_tokens": o.chunk_tokens, "inputs": list(o.input),
               "qa_cache": cache, "qa_settings": qa.generation_settings(),
               "dead_letters": dead_letter_counts(o.output), "qa_grade": grade_summary(counts)}  # fmt: skip
    with FileSystems.create(FileSystems.join(o.output, "summary.json")) as f:
        f.write((json.dumps(summary, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
    n, dead = summary["counters"], summary["dead_letters"]
    by_stage = ", ".join(f"{k} {v}" for k, v in dead.items())
    step(
        f"books: {n['books_read']} books, {n['chunks']} chunks: {n['chunks_done']} done ({n['chunks_cached']} cached), "
        f"{n['chunks_failed']} failed; {n['qa_pairs']} QA pairs; {n['qa_requests']} requests, {n['qa_retries']} retries "
        f"→ {o.output}; {sum(dead.values())} dead letters{f' ({by_stage})' if dead else ''} in dead_letters.jsonl"
    )
    step(f"books: {summary_line(summary['qa_grade'])}")
    if per_book:
        step(f"books: {n['replaced_bytes']} undecodable bytes replaced with U+FFFD in {len(per_book)} book(s): "
             + ", ".join(f"{b} {k}" for b, k in list(per_book.items())[:10]) + " (all in summary.json)")  # fmt: skip
    _judge(n, o.max_failure_ratio, summary["endpoint"], FileSystems.join(o.output, "dead_letters.jsonl"))
    return summary


def _judge(n: dict[str, int], max_failure_ratio: float, endpoint: str, dead_letters: str) -> None:
    """Raise BooksJobFailed when no request reached the endpoint, or too many chunks failed."""
    answered = n["chunks_done"] - n["chunks_cached"]
    if n["chunks_failed"] and n["chunks_unreachable"] == n["chunks_failed"] and not answered:
        raise BooksJobFailed(
            f"QA endpoint {endpoint} is unreachable: {n['chunks_failed']} chunks dead-lettered with "
            f"connection failures; see {dead_letters}"
        )
    # A chunk the QA gate rejected was answered: that is the data's quality (the gate's summary line
    # reports it), not the job failing. The ratio counts errors: transport, timeouts, unparsable replies.
    errors = n["chunks_failed"] - n.get("chunks_ungrounded", 0)
    attempted = n["chunks_done"] + n["chunks_failed"]
    ratio = errors / attempted if attempted else 0.0
    if ratio > max_failure_ratio:
        gate = n.get("chunks_ungrounded", 0)
        also = f"; {gate} more rejected by the QA gate (not counted)" if gate else ""
        raise BooksJobFailed(
            f"{errors} of {attempted} chunks failed QA ({ratio:.0%} > max_failure_ratio "
            f"{max_failure_ratio:.0%}){also}; see {dead_letters}"
        )


def help_text(prog: str = "lwmkit books") -> str:
    """Usage of the job's own flags (Beam's runner flags are accepted too)."""
    return flag_help(BooksJob, prog, __doc__.split("\n\n")[0], BEAM_PASS_THROUGH)


def _start_embedded(stack: ExitStack, o: BooksJob) -> tuple[str, str]:
    config = ServerConfig(model_path=o.qa_server_model, n_ctx=o.qa_server_ctx, n_threads=o.qa_server_threads)
    server = stack.enter_context(LocalLLMServer(config))
    step(f"books: embedded model server {server.model} up at {server.endpoint} in {server.startup_s:.1f} s")
    return server.endpoint, server.model


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m lwmkit.pipelines.books``: exit 2 on a contract error, 1 when the job fails."""
    job_main(argv, run, help_text, "books", (BooksJobFailed, ServerError))


if __name__ == "__main__":
    main()
