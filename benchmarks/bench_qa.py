"""QA throughput: the book job's chunks/s against the embedded llama.cpp server, versus the
same server saturated directly (the same chunks sent by a bare client, 2 in flight), in the
same run. Also the server's start-up time (median of 3 cold starts).

    nice -n 10 python benchmarks/bench_qa.py [--chunks 16] [--chunk-tokens 150] [--max-tokens 64]

Prints both figures and the ratio job/direct (goal >= 0.9). The job's time is its whole wall
time: Beam start-up, reading, chunking and writing included.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import tempfile
import time
from pathlib import Path

from lwmkit.pipelines.books.chunking import chunk_text, clean_book
from lwmkit.pipelines.books.job import run
from lwmkit.pipelines.books.llm_server import LocalLLMServer, ServerConfig
from lwmkit.pipelines.books.qa_client import QAClient, QAClientConfig
from lwmkit.pipelines.books.qa_prompt import load_prompt
from lwmkit.runtime.sample_data import book_source
from lwmkit.tokenizers.text import TextTokenizer


def _book(tmp: Path, n_chunks: int, budget: int) -> tuple[Path, list[str]]:
    text = clean_book(book_source().read_bytes())
    chunks = chunk_text(text, TextTokenizer.load(), budget)[:n_chunks]
    end = text.index(chunks[-1].text) + len(chunks[-1].text)
    path = tmp / "botchan-head.txt"
    path.write_text(text[:end], encoding="utf-8")
    return path, [c.text for c in chunk_text(text[:end], TextTokenizer.load(), budget)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chunks", type=int, default=16)
    ap.add_argument("--chunk-tokens", type=int, default=150)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="server CPU threads")
    args = ap.parse_args()

    starts = []
    for _ in range(3):
        with LocalLLMServer(ServerConfig(n_threads=args.threads)) as srv:
            starts.append(srv.startup_s)
    print(
        f"server start-up: median {statistics.median(starts):.2f} s (runs: {', '.join(f'{s:.2f}' for s in starts)})"
    )

    with tempfile.TemporaryDirectory() as tmp, LocalLLMServer(ServerConfig(n_threads=args.threads)) as srv:
        book, texts = _book(Path(tmp), args.chunks, args.chunk_tokens)
        cfg = QAClientConfig(
            srv.endpoint,
            srv.model,
            max_in_flight=2,
            max_tokens=args.max_tokens,
            response_format="json_object",
        )
        client = QAClient(cfg, load_prompt())
        client.generate("Warm-up. The cat sat.", "warm")  # page the model in before either timing
        t0 = time.perf_counter()
        results = client.generate_many([(t, hashlib.sha256(t.encode()).hexdigest()) for t in texts])
        direct_s = time.perf_counter() - t0
        client.close()
        ok = sum(r.ok for r in results)

        t0 = time.perf_counter()
        summary = run([f"--input={book}", f"--output={tmp}/out", f"--chunk-tokens={args.chunk_tokens}", "--qa-cache=none",
                       f"--qa-endpoint={srv.endpoint}", f"--qa-model={srv.model}", f"--qa-max-tokens={args.max_tokens}",
                       "--qa-response-format=json_object", "--qa-max-in-flight=2"])  # fmt: skip
        job_s = time.perf_counter() - t0

    n = summary["counters"]
    direct, job = len(texts) / direct_s, n["chunks"] / job_s
    print(
        f"direct (bare client, 2 in flight): {len(texts)} chunks in {direct_s:.1f} s = {direct:.3f} chunks/s ({ok} parsed)"
    )
    print(
        f"job (Beam DirectRunner, whole run): {n['chunks']} chunks in {job_s:.1f} s = {job:.3f} chunks/s ({n['chunks_done']} done)"
    )
    print(f"ratio job/direct: {job / direct:.2f} (goal >= 0.9)")


if __name__ == "__main__":
    main()
