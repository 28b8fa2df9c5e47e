"""Small, real-text inputs of all four source kinds for trying ``lwmkit pack`` (and its tests).

Text comes from a real book (the sample ``botchan.txt``); book chunks and their QA pairs are
cut from it; vision records carry deterministic pseudo-random VQ codes written through the
``VISION_RECORD`` contract (real codes need the VQGAN job). Everything is written with the
contracts in ``schemas/``, so the pack job reads it exactly as it reads the real jobs' output.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import yaml

from lwmkit.schemas.records import BOOK_CHUNK, VISION_RECORD, chunk_id, vision_record_id, write_table
from lwmkit.schemas.vocab import CODES_PER_FRAME


def _documents(text: str, n_docs: int) -> list[str]:
    """Runs of consecutive lines of varied length (3..60 lines): a realistic mix of short and long."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    docs, at = [], 0
    for i in range(n_docs):
        n = 3 + (i * 37) % 58
        docs.append(" ".join(lines[at : at + n]))
        at = (at + n) % max(1, len(lines) - 60)
    return docs


def write_text_sources(dest: Path, text: str, n_docs: int = 60) -> dict[str, Path]:
    """The same documents as JSONL, Parquet and .txt files (one document per .txt)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs = _documents(text, n_docs)
    dest.mkdir(parents=True, exist_ok=True)
    half = len(docs) // 2
    jsonl = dest / "web.jsonl"
    jsonl.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs[:half]), encoding="utf-8")
    pq.write_table(pa.table({"text": docs[half:]}), dest / "web.parquet")
    txt_dir = dest / "txt"
    txt_dir.mkdir(exist_ok=True)
    for i, d in enumerate(docs[:8]):
        (txt_dir / f"doc{i:03d}.txt").write_text(d, encoding="utf-8")
    return {"jsonl": jsonl, "parquet": dest / "web.parquet", "txt": txt_dir}


def write_vision_records(
    path: Path, text: str, *, kind: str, n: int, frames: tuple[int, ...] = (1,), seed: int = 0
) -> Path:
    """``n`` vision records with captions (sentences of ``text``) and pseudo-random codes."""
    rng = np.random.default_rng(seed)
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if 20 < len(s.strip()) < 200]
    rows = []
    for i in range(n):
        n_frames = 1 if kind == "image" else int(frames[i % len(frames)])
        uri, start, end = f"file:///demo/{kind}{i:04d}.mp4", float(i), float(i) + max(n_frames, 1) / 4
        rows.append(
            {
                "id": vision_record_id(uri, start, end),
                "source": "demo",
                "uri": uri,
                "kind": kind,
                "caption": sentences[(i * 7) % len(sentences)],
                "fps": 4.0 if kind == "video" else 0.0,
                "start_s": start,
                "end_s": end,
                "n_frames": n_frames,
                "tokens": rng.integers(0, 8192, n_frames * CODES_PER_FRAME).astype(np.int16).tolist(),
                "tokenizer_id": "demo-vqgan",
                "width": 320,
                "height": 240,
                "decode_settings": "{}",
            }
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    write_table(rows, VISION_RECORD, str(path))
    return path


def write_book_chunks(
    path: Path, text: str, *, chunk_words: int = 120, n_chunks: int = 40, book_id: str = "botchan"
) -> Path:
    """Consecutive chunks of ``text`` with two extractive QA pairs each (BOOK_CHUNK rows)."""
    words = text.split()
    rows = []
    for i in range(n_chunks):
        chunk = " ".join(words[i * chunk_words : (i + 1) * chunk_words])
        first = chunk.split(".")[0][:120].strip() or chunk[:60]
        qa = [
            {"question": f"What does passage {i} begin with?", "answer": first},
            {"question": f"How many words are in passage {i}?", "answer": str(len(chunk.split()))},
        ]
        rows.append(
            {
                "book_id": book_id,
                "chunk_index": i,
                "chunk_id": chunk_id(book_id, i),
                "source": "demo",
                "text": chunk,
                "n_tokens": len(chunk.split()),
                "text_sha256": hashlib.sha256(chunk.encode()).hexdigest(),
                "qa": qa,
                "model": "extractive-demo",
                "prompt_version": "demo-1",
                "tokenizer_id": "demo",
            }
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    write_table(rows, BOOK_CHUNK, str(path))
    return path


def write_demo_mixture(dest: Path, text: str, *, seed: int = 0, **mixture: object) -> Path:
    """All four kinds under ``dest`` plus ``dest/mixture.yaml`` naming them; returns its path."""
    t = write_text_sources(dest / "text", text)
    write_vision_records(dest / "images" / "part-0.parquet", text, kind="image", n=40, seed=seed)
    write_vision_records(
        dest / "videos" / "part-0.parquet", text, kind="video", n=16, frames=(2, 3, 5), seed=seed + 1
    )
    write_book_chunks(dest / "books" / "botchan.parquet", text)
    config = {
        "seed": seed,
        "sources": [
            {"name": "web", "kind": "text", "path": f"{t['jsonl']},{t['parquet']}", "weight": 0.3},
            {
                "name": "images",
                "kind": "image_text",
                "path": str(dest / "images" / "*.parquet"),
                "weight": 0.25,
            },
            {
                "name": "videos",
                "kind": "video_text",
                "path": str(dest / "videos" / "*.parquet"),
                "weight": 0.25,
                "max_frames": 4,
                "understanding_share": 0.5,
            },
            {
                "name": "books",
                "kind": "book_qa_chat",
                "path": str(dest / "books" / "*.parquet"),
                "weight": 0.2,
            },
        ],
        **mixture,
    }
    path = dest / "mixture.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path
