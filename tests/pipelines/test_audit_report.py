"""``lwmkit audit``: exit codes that gate CI, the terminal table, JSON, and the HTML report's plots."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import pytest
from PIL import Image

from lwmkit.cli import main
from lwmkit.pipelines.audit.job import audit
from lwmkit.pipelines.audit.plots import PLOTS, render_dashboard
from lwmkit.pipelines.audit.report import render_html


def _run(argv: list[str]) -> int:
    """``lwmkit ARGV``'s exit status (main returns normally on success)."""
    try:
        main(argv)
    except SystemExit as exc:
        return exc.code
    return 0


def _mixture(path: Path, weights: dict[str, tuple[str, float]]) -> str:
    lines = ["sources:"] + [
        f"  - {{name: {n}, kind: {k}, path: 'x/*', weight: {w}}}" for n, (k, w) in weights.items()
    ]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_a_faithful_set_exits_0_with_a_table_and_json(audit_set, tmp_path, capsys):
    root, m = audit_set
    out = tmp_path / "audit.json"
    assert _run(["audit", root, "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "PASS" in table and all(name in table for name in ("web", "pics", "clips"))
    report = json.loads(out.read_text())
    assert report["verdict"] == "pass" and report["exit_code"] == 0 and report["findings"] == []
    rows = {r["name"]: r for r in report["sources"]}
    assert rows["web"]["tokens"] == m.per_source["web"].tokens
    assert report["totals"]["sequences"] == m.n_sequences
    assert report["modalities"]["video"]["frames"] >= 2 * report["modalities"]["video"]["examples"]
    assert report["distributions"]["example_tokens"]["web"]["max"] <= 40


def test_drift_exits_1_naming_the_source(audit_set, tmp_path, capsys):
    root, m = audit_set
    tokens = {n: c.tokens for n, c in m.per_source.items()}
    skew = {
        "web": ("text", tokens["web"]),
        "pics": ("image_text", tokens["pics"] * 2),
        "clips": ("video_text", tokens["clips"]),
    }
    assert _run(["audit", root, "--mixture", _mixture(tmp_path / "m.yaml", skew), "--json", "-", "-q"]) == 1
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert {f["subject"] for f in report["findings"] if f["kind"] == "drift"} >= {"pics"}
    assert "[drift] pics" in captured.err and "DRIFT" in captured.err
    # a wide enough tolerance lets the same set pass
    assert _run(["audit", root, "--mixture", str(tmp_path / "m.yaml"), "--tolerance", "0.5", "-q"]) == 0


def test_a_corrupt_shard_exits_3_naming_it_and_a_missing_manifest_exits_2(audit_set, tmp_path, capsys):
    root, m = audit_set
    shard = Path(root) / m.shards[2].name
    data = bytearray(shard.read_bytes())
    data[700] ^= 0x40
    shard.write_bytes(bytes(data))
    assert _run(["audit", root]) == 3
    out = capsys.readouterr().out
    assert f"[corrupt_shard] {m.shards[2].name}" in out and "CORRUPT" in out
    assert _run(["audit", str(tmp_path / "nowhere")]) == 2
    assert "manifest not found" in capsys.readouterr().err


def test_a_bad_mixture_file_exits_2(audit_set, tmp_path, capsys):
    root, _ = audit_set
    bad = tmp_path / "bad.yaml"
    bad.write_text("sources:\n  - {name: web, kind: text, path: x, wieght: 1}\n")
    assert _run(["audit", root, "--mixture", str(bad)]) == 2
    assert "wieght" in capsys.readouterr().err


def _pngs(html: str) -> list[Image.Image]:
    return [
        Image.open(io.BytesIO(base64.b64decode(b)))
        for b in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html)
    ]


@pytest.mark.slow
def test_html_report_embeds_every_plot_and_escapes_names(tmp_path, audit_set_writer):
    root = str(tmp_path / "set")
    audit_set_writer(root, {"web<script>": ("text", 20, 8, 30), "clips": ("video", 6, 20, 40)},
                     weights={"web<script>": 0.5, "clips": 0.5})  # fmt: skip
    out = tmp_path / "report.html"
    assert _run(["audit", root, "--report", str(out), "--dashboard", str(tmp_path / "d.png"), "-q"]) == 1
    html = out.read_text()
    assert "<script>" not in html and "web&lt;script&gt;" in html
    assert "DRIFT" in html and "[drift]" in html
    images = _pngs(html)
    assert len(images) == len(PLOTS)
    for img in images:
        assert img.size == (720, 360)
        colors = img.convert("RGB").getcolors(maxcolors=1 << 16)
        assert colors is None or len(colors) > 20  # drawn, not blank
    dash = Image.open(tmp_path / "d.png")
    assert dash.size == (1200, 800)


def test_html_of_a_corrupt_set_opens_the_shard_table(audit_set):
    root, m = audit_set
    (Path(root) / m.shards[0].name).unlink()
    result = audit(root)
    html = render_html(result, plots={})
    assert "<details open>" in html and "missing" in html and m.shards[0].name in html
    assert "3 of 4 shards verified" in html
    png = render_dashboard(result)
    assert Image.open(io.BytesIO(png)).size == (1200, 800)
