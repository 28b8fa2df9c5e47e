"""QA generation the Beam way: a ``ModelHandler`` for ``RunInference`` whose "model" is a
:class:`QAClient` talking to an OpenAI-compatible server, and the step that turns answers
into ``BOOK_CHUNK`` records or dead letters.

``load_model`` builds the clients of one worker: the first asks every chunk; each further one
(another seed, temperature >= 0.7: ``GradeConfig.regrades`` of them) asks again only the
chunks whose pairs all failed the QA gate (:mod:`qa_grade`). They run one after the other, so
a worker still has at most ``max_in_flight`` requests out. ``run_inference`` never raises:
every chunk comes back answered and graded, or with its error, so none is lost.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from lwmkit.pipelines.books.book_io import NAMESPACE, dead_letter
from lwmkit.pipelines.books.qa_client import QAClient, QAClientConfig, QAResult, ResponseCache
from lwmkit.pipelines.books.qa_grade import REASONS, GradeConfig, Graded
from lwmkit.pipelines.books.qa_prompt import QAPrompt
from lwmkit.runtime.progress import step


class QAClients(list):
    """A worker's clients: the first asks every chunk, the rest regrade (a list Beam can weak-reference)."""


class OpenAIChatQAHandler(ModelHandler[dict, PredictionResult, QAClients]):
    """chunk dict (``text``, ``text_sha256``, ...) → PredictionResult(chunk, (QAResult, Graded))."""

    def __init__(
        self,
        config: QAClientConfig,
        prompt: QAPrompt,
        cache_root: str | None,
        batch_size: int | None = None,
        grade: GradeConfig | None = None,
    ):
        super().__init__()
        self.grade = grade or GradeConfig()
        self.config = config
        self.prompt = prompt
        self.cache_root = cache_root
        # A batch of 2x the in-flight bound keeps every slot busy while stragglers finish. No
        # max_batch_duration: its stateful batching flushes in timers, whose counters the
        # DirectRunner drops from the job's metrics.
        self.batch_size = batch_size or 2 * config.max_in_flight
        self._done = 0
        self._t0 = 0.0

    def load_model(self) -> QAClients:
        # BatchElements (same worker) fits batch timings with np.polyfit; cached replies all take
        # ~0 s, so on a re-run every fit is degenerate and numpy warns once per batch.
        warnings.filterwarnings(
            "ignore", "Polyfit may be poorly conditioned", module=r"apache_beam\.transforms\.util"
        )
        cache = ResponseCache(self.cache_root) if self.cache_root else None
        self._t0 = time.monotonic()
        # Regrade clients sample (a greedy decode would repeat the reply) with seeds far from the
        # first client's retry seeds; each has its own cache keys, so a re-run replays them all.
        hot = max(self.config.temperature, 0.7)
        configs = [self.config] + [dataclasses.replace(self.config, seed=self.config.seed + 1000 * k, temperature=hot)
                                   for k in range(1, self.grade.regrades + 1)]  # fmt: skip
        return QAClients(QAClient(c, self.prompt, cache) for c in configs)

    def batch_elements_kwargs(self) -> dict[str, Any]:
        return {"min_batch_size": 1, "max_batch_size": self.batch_size}

    def run_inference(
        self, batch: Sequence[dict], model: QAClients, inference_args: dict[str, Any] | None = None
    ) -> Iterator[PredictionResult]:
        results = model[0].generate_many([(c["text"], c["text_sha256"]) for c in batch])
        graded = [Graded() for _ in batch]
        for g, r, c in zip(graded, results, batch, strict=True):
            if r.ok:
                g.add(r.pairs, c["text"], self.grade)
        for client in model[1:]:
            redo = [i for i, (r, g) in enumerate(zip(results, graded, strict=True)) if r.ok and not g.kept]
            if not redo:
                break
            again = client.generate_many([(batch[i]["text"], batch[i]["text_sha256"]) for i in redo])
            for i, r in zip(redo, again, strict=True):
                results[i] = _combined(results[i], r)
                if r.ok:
                    graded[i].add(r.pairs, batch[i]["text"], self.grade)
        self._report(batch, results)
        for chunk, result, g in zip(batch, results, graded, strict=True):
            yield PredictionResult(chunk, (result, g), model_id=self.config.model)

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
    """PredictionResult → a ``BOOK_CHUNK`` row of the kept pairs (each with its grounding), or a
    dead letter holding the raw reply (an error, or no pair through the gate: ``Ungrounded``)."""

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
        self.graded = Metrics.counter(NAMESPACE, "qa_graded")
        self.grounded = Metrics.counter(NAMESPACE, "qa_grounded")
        self.regrades = Metrics.counter(NAMESPACE, "qa_regrades")
        self.ungrounded = Metrics.counter(NAMESPACE, "chunks_ungrounded")

    def process(self, prediction: PredictionResult) -> Iterator[Any]:
        chunk, (result, graded) = prediction.example, prediction.inference
        self.requests.inc(result.requests)
        self.retries.inc(result.retries)
        self._count_grades(graded)
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
                error_class=result.error_class or "InternalError",
            )
            return
        if not graded.kept:  # answered, but nothing survived the gate on any attempt
            self.failed.inc()
            self.ungrounded.inc()
            message = f"{graded.reason()} (after {result.requests} request(s))"
            yield dead_letter(chunk["chunk_id"], "qa", message, detail=result.raw, error_class="Ungrounded")
            return
        self.done.inc()
        self.cached.inc(int(result.cached))
        self.pairs.inc(len(graded.kept))
        yield {**chunk, "qa": graded.kept, "model": self.model, "prompt_version": self.prompt_version}

    def _count_grades(self, graded: Graded) -> None:
        self.graded.inc(graded.graded)
        self.grounded.inc(graded.grounded)
        self.regrades.inc(max(graded.attempts - 1, 0))
        for reason in REASONS:
            if graded.dropped[reason]:
                Metrics.counter(NAMESPACE, f"qa_dropped_{reason}").inc(graded.dropped[reason])


def _combined(first: QAResult, again: QAResult) -> QAResult:
    """A chunk's result after a regrade: the new reply when there is one, requests summed."""
    base = again if again.ok else first  # a failed regrade leaves the answered (ungraded-out) reply
    return dataclasses.replace(
        base,
        requests=first.requests + again.requests,
        retries=first.retries + again.retries,
        cached=first.cached and again.cached,
    )
