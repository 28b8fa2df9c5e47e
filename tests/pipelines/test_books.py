"""The book job end to end with the real embedded model: a real llama.cpp server serving
SmolLM2-135M-Instruct on loopback, on a slice of the real sample book (botchan.txt)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import requests

from lwmkit.cli import main
from lwmkit.pipelines.books.chunking import clean_book
from lwmkit.pipelines.books.job import run
from lwmkit.pipelines.books.llm_server import LocalLLMServer, ServerConfig, ServerError
from lwmkit.schemas.dead_letters import read_dead_letters
from lwmkit.schemas.records import BOOK_CHUNK, read_table
from lwmkit.tokenizers.text import TextTokenizer

pytest.importorskip("llama_cpp", reason="the qa extra (llama-cpp-python) is not installed")
BUDGET = 110
SLICE = 1400  # characters of the cleaned book: 3-4 chunks, a few seconds each on 1 thread


@pytest.fixture(scope="module")
def book_slice(tmp_path_factory: pytest.TempPathFactory, sample_dir: Path) -> Path:
    """The head of botchan.txt, Gutenberg header included (the job must strip it)."""
    raw = (sample_dir / "books" / "botchan.txt").read_bytes()
    start = raw.index(b"*** START OF")
    path = tmp_path_factory.mktemp("books") / "botchan.txt"
    path.write_bytes(raw[: start + 600 + SLICE])
    return path


def _records(out: Path) -> list[dict]:
    rows = []
    for shard in sorted(out.glob("chunks-*.parquet")):
        rows += read_table(str(shard), BOOK_CHUNK).to_pylist()  # validates the contract too
    return sorted(rows, key=lambda r: r["chunk_id"])


def test_local_server_starts_answers_and_stops():
    with LocalLLMServer(ServerConfig(n_ctx=512)) as srv:
        assert srv.startup_s is not None and srv.endpoint.startswith("http://127.0.0.1:")
        models = requests.get(f"{srv.endpoint}/models", timeout=5).json()
        assert [m["id"] for m in models["data"]] == ["SmolLM2-135M-Instruct"]
        proc = srv.process
    assert proc.poll() is not None, "the server process must be gone after the context exits"


def test_local_server_reports_a_failed_start(tmp_path):
    bad = tmp_path / "not-a-model.gguf"
    bad.write_bytes(b"GGUF but not really")
    with pytest.raises(ServerError, match="exited with status"):
        LocalLLMServer(ServerConfig(model_path=str(bad), startup_timeout_s=60)).start()


@pytest.mark.slow
def test_job_on_botchan_with_the_real_model_then_rerun_from_cache(book_slice, tmp_path):
    out = tmp_path / "out"
    args = [
        f"--input={book_slice}",
        f"--output={out}",
        f"--chunk-tokens={BUDGET}",
        "--qa-max-tokens=96",
        "--qa-pairs=2",
    ]
    first = run(args)

    tok = TextTokenizer.load()
    rows = _records(out)
    text = clean_book(book_slice.read_bytes())
    assert not text.startswith("Project Gutenberg") and "*** START" not in text
    # every chunk is a record or (when no pair passed the QA gate) a dead letter, none lost
    dead = read_dead_letters(str(out / "dead_letters.jsonl"))
    assert all(d.stage == "qa" and d.error_class in ("Ungrounded", "ParseError") for d in dead)
    ids = sorted([r["chunk_id"] for r in rows] + [d.uri for d in dead])
    assert ids == [f"botchan/{i:06d}" for i in range(len(ids))] and len(ids) >= 3 and len(rows) >= 1
    for r in rows:
        assert 0 < r["n_tokens"] <= BUDGET and r["n_tokens"] == tok.count(r["text"])
        assert r["text"] in text and r["text_sha256"] == hashlib.sha256(r["text"].encode()).hexdigest()
        assert (
            r["tokenizer_id"] == tok.id
            and r["model"] == "SmolLM2-135M-Instruct"
            and r["prompt_version"] == "qa-v1"
        )
        assert 1 <= len(r["qa"]) <= 2 and all(p["question"].endswith("?") and p["answer"] for p in r["qa"])
        assert all(0.6 <= p["grounding"] <= 1.0 for p in r["qa"])  # the gate's score travels with the pair
    n = first["counters"]
    assert n["chunks_done"] == len(rows) and n["chunks_failed"] == len(dead) and n["qa_requests"] >= len(ids)
    assert first["qa_grade"]["pairs_kept"] == sum(len(r["qa"]) for r in rows)

    # Re-run against an endpoint where nothing listens: everything must come from the cache.
    again = run([*args, "--qa-endpoint=http://127.0.0.1:9/v1", "--qa-model=SmolLM2-135M-Instruct"])
    # (a reply with no pair at all is not an answer and is never cached: only such chunks are asked again)
    unanswered = sum(d.error_class == "ParseError" for d in dead)
    assert (again["counters"]["qa_requests"] == 0) == (unanswered == 0)
    assert again["counters"]["chunks_cached"] == len(rows) and _records(out) == rows
    assert again["qa_grade"]["pairs_kept"] == first["qa_grade"]["pairs_kept"]


@pytest.mark.slow
def test_cli_runs_the_job_multi_process_from_cache(book_slice, tmp_path, capfd):
    """``lwmkit books`` with the multi-process DirectRunner, served by a cache it fills first."""
    out = tmp_path / "out"
    common = [
        f"--input={book_slice}",
        f"--output={out}",
        "--chunk-tokens=400",
        "--qa-max-tokens=64",
        "--qa-pairs=1",
        "--qa-regrades=0",  # one reply per chunk: each is cached unless it held no pair at all
    ]
    main(["books", *common])
    (out / "chunks-00007-of-00009.parquet").write_bytes(b"a shard of a run with other --num-shards")
    capfd.readouterr()
    main(["books", *common, "--qa-endpoint=http://127.0.0.1:9/v1", "--qa-model=SmolLM2-135M-Instruct",
          "--direct_num_workers=2", "--direct_running_mode=multi_processing", "--num-shards=3"])  # fmt: skip
    # every shard written, empty or not; the other run's shard removed
    assert sorted(p.name for p in out.glob("chunks-*")) == [f"chunks-{i:05d}-of-00003.parquet" for i in range(3)]
    again = tmp_path / "again"  # in-process, from the same cache: the same shards, byte for byte
    main(["books", *common, f"--output={again}", f"--qa-cache={out / 'qa_cache'}", "--num-shards=3",
          "--qa-endpoint=http://127.0.0.1:9/v1", "--qa-model=SmolLM2-135M-Instruct"])  # fmt: skip
    assert [p.read_bytes() for p in sorted(again.glob("chunks-*"))] == [p.read_bytes() for p in sorted(out.glob("chunks-*"))]
    summary = json.loads((out / "summary.json").read_text())
    n = summary["counters"]
    unanswered = sum(
        d.error_class == "ParseError" for d in read_dead_letters(str(out / "dead_letters.jsonl"))
    )
    assert (n["qa_requests"] == 0) == (unanswered == 0)  # only replies without any pair are asked again
    assert n["chunks_done"] == len(_records(out)) and n["chunks_done"] + n["chunks_failed"] == n["chunks"] > 0
    assert "cached" in capfd.readouterr().err


def test_cli_rejects_bad_flags_with_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["books", f"--output={tmp_path}", "--input=x.txt", "--qa-endpoint=http://127.0.0.1:9/v1"])
    assert exc.value.code == 2 and "--qa-model" in capsys.readouterr().err
    assert not os.listdir(tmp_path)
