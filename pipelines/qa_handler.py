"""QA generation the Beam way: a ``ModelHandler`` for ``RunInference`` whose "model" is a
:class:`QAClient` talking to an OpenAI-compatible server, and the step that turns answers
into ``BOOK_CHUNK`` records or dead letters.

``load_model`` builds one client per worker (so at most ``max_in_flight`` requests per
worker); ``run_inference`` sends a batch through it concurrently and never raises: every
chunk comes back answered or with its error, so none is lost.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from lwmkit.pipelines.book_io import NAMESPACE, dead_letter
from lwmkit.pipelines.qa_client import QAClient, QAClientConfig, QAResult, ResponseCache
from lwmkit.pipelines.qa_prompt import QAPrompt
from lwmkit.progress import step


class OpenAIChatQAHandler(ModelHandler[dict, PredictionResult, QAClient]):
    """chunk dict (``text``, ``text_sha256``, ...) → PredictionResult(chunk, QAResult)."""

    def __init__(
        self, config: QAClientConfig, prompt: QAPrompt, cache_root: str | None, batch_size: int | None = None
    ):
        super().__init__()
        self.config = config
        self.prompt = prompt
        self.cache_root = cache_root
        # A batch of 2x the in-flight bound keeps every slot busy while stragglers finish. No
        # max_batch_duration: its stateful batching flushes in timers, whose counters the
        # DirectRunner drops from the job's metrics.
        self.batch_size = batch_size or 2 * config.max_in_flight
        self._done = 0
        self._t0 = 0.0

    def load_model(self) -> QAClient:
        cache = ResponseCache(self.cache_root) if self.cache_root else None
        self._t0 = time.monotonic()
        return QAClient(self.config, self.prompt, cache)

    def batch_elements_kwargs(self) -> dict[str, Any]:
        return {"min_batch_size": 1, "max_batch_size": self.batch_size}

    def run_inference(
        self, batch: Sequence[dict], model: QAClient, inference_args: dict[str, Any] | None = None
    ) -> Iterator[PredictionResult]:
        results = model.generate_many([(c["text"], c["text_sha256"]) for c in batch])
        self._report(batch, results)
        for chunk, result in zip(batch, results, strict=True):
            yield PredictionResult(chunk, result, model_id=self.config.model)

    def _report(self, batch: Sequence[dict], results: Sequence[QAResult]) -> None:
        # One progress line per batch, from whichever worker ran it.
        self._done += len(batch)
        cached = sum(r.cached for r in results)
        failed = sum(not r.ok for r in results)
        rate = self._done / max(time.monotonic() - self._t0, 1e-9)
        step(
            f"qa: {len(batch)} chunks ({cached} cached, {failed} failed) up to {batch[-1]['chunk_id']}; "
            f"this worker {self._done} chunks, {rate:.2f} chunks/s"
        )

    def get_metrics_namespace(self) -> str:
        return NAMESPACE

    def get_num_bytes(self, batch: Sequence[dict]) -> int:
        return sum(len(c["text"].encode("utf-8")) for c in batch)


class ToRecords(beam.DoFn):
    """PredictionResult → a ``BOOK_CHUNK`` row, or a dead letter holding the raw reply."""

    def __init__(self, model: str, prompt_version: str):
        self.model = model
        self.prompt_version = prompt_version
        self.done = Metrics.counter(NAMESPACE, "chunks_done")
        self.cached = Metrics.counter(NAMESPACE, "chunks_cached")
        self.failed = Metrics.counter(NAMESPACE, "chunks_failed")
        self.unreachable = Metrics.counter(NAMESPACE, "chunks_unreachable")
        self.pairs = Metrics.counter(NAMESPACE, "qa_pairs")
        self.requests = Metrics.counter(NAMESPACE, "qa_requests")
        self.retries = Metrics.counter(NAMESPACE, "qa_retries")

    def process(self, prediction: PredictionResult) -> Iterator[Any]:
        chunk, result = prediction.example, prediction.inference
        self.requests.inc(result.requests)
        self.retries.inc(result.retries)
        if not result.ok:
            self.failed.inc()
            if result.error_class == "ConnectionError":
                self.unreachable.inc()
            message = f"{result.error} (after {result.requests} request(s))"
            yield dead_letter(
                chunk["chunk_id"],
                "qa",
                message,
                detail=result.raw,
                error_class=result.error_class or "QAError",
            )
            return
        self.done.inc()
        self.cached.inc(int(result.cached))
        self.pairs.inc(len(result.pairs))
        yield {**chunk, "qa": result.pairs, "model": self.model, "prompt_version": self.prompt_version}
