"""Bounded memory: ``pack`` with ``overlong: truncate`` (or ``drop``) tokenizes a huge one-line
document only as far as the sequence needs, so its peak memory no longer grows ~55 bytes per
input byte; the tokens kept are exactly the head of the whole document's tokenization."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lwmkit.pipelines.pack.formatting import encode_head, format_text
from lwmkit.tokenizers.text import TextTokenizer


@pytest.mark.parametrize("limit", [16, 512, 4096, 20_000])
def test_the_head_equals_the_whole_documents_tokenization(botchan, limit):
    tok = TextTokenizer.load()
    whole = np.asarray(tok.encode(botchan), np.int32)
    head, cut = encode_head(botchan, tok, limit)
    assert cut == (len(whole) > len(head)) and len(head) > limit
    np.testing.assert_array_equal(head, whole[: len(head)])
    ids, loss, _ = format_text(botchan, tok, limit)
    assert ids[0] == tok.bos_id and tok.eos_id not in ids[1:].tolist()  # cut: no EOS, still over-long
    assert len(ids) > limit and loss[1:].all()


def test_a_short_document_is_formatted_as_before(botchan):
    tok = TextTokenizer.load()
    text = botchan[:2000]
    for got, want in zip(format_text(text, tok, 4096), format_text(text, tok), strict=True):
        np.testing.assert_array_equal(got, want)


def test_a_document_without_whitespace_is_cut_anyway():
    tok = TextTokenizer.load()
    head, cut = encode_head("x7Qz" * 2_000_000, tok, 1000)
    assert cut and 1000 < len(head) < 1100


def _peak_rss_mb(cmd: list[str]) -> tuple[subprocess.CompletedProcess, float]:
    wrapper = (
        "import resource, subprocess, sys\n"
        "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "sys.stderr.write(p.stderr)\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)\n"
        "sys.exit(p.returncode)\n"
    )
    proc = subprocess.run([sys.executable, "-c", wrapper, *cmd], capture_output=True, text=True)
    return proc, float(proc.stdout.strip().splitlines()[-1]) if proc.stdout.strip() else -1.0


@pytest.mark.slow
def test_pack_of_a_20mb_one_line_document_stays_small_and_exact(botchan, tmp_path):
    words = botchan.split()
    rng = random.Random(0)
    doc = " ".join(rng.choices(words, k=3_600_000))[:20_000_000]
    src = tmp_path / "web.jsonl"
    src.write_text(json.dumps({"text": doc}) + "\n" + json.dumps({"text": " ".join(words[:400])}) + "\n")
    mixture = tmp_path / "mix.yaml"
    mixture.write_text(
        f"seed: 0\noverlong: truncate\nsources:\n  - {{name: web, kind: text, path: '{src}', weight: 1}}\n"
    )
    out = tmp_path / "out"
    cmd = [sys.executable, "-c", "from lwmkit.cli import main; main()", "pack", "--mixture", str(mixture),
           "--seq-len", "2048", "--stage", "m", "--out", str(out)]  # fmt: skip
    proc, peak_mb = _peak_rss_mb(cmd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 0 < peak_mb < 600, (
        f"pack peaked at {peak_mb:.0f} MB for a 20 MB document (tokenized whole: ~1.2 GB)"
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["policy_counts"].get("truncated.web") == 1
    tok = TextTokenizer.load()
    want = np.asarray([tok.bos_id] + tok.encode(doc[:200_000])[:2047], np.int32)
    found = _rows_starting_with_bos(out)
    assert any(np.array_equal(row[: len(want)], want) for row in found), "the kept head is not the document's"


def _rows_starting_with_bos(out: Path) -> list[np.ndarray]:
    from lwmkit.schemas import ShardSet

    return [arrays["input_ids"] for arrays, _ in ShardSet.open(str(out))]
