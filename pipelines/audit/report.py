"""The audit's three outputs: a terminal table (rich) for people at a shell, JSON for machines,
and a single self-contained HTML page (plots embedded as PNG) for people reviewing a run."""

from __future__ import annotations

import base64
import html
import json

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from lwmkit.pipelines.audit.compare import AuditResult, SourceRow
from lwmkit.pipelines.audit.stats import Tally
from lwmkit.runtime.files import write_atomic

_VERDICT_STYLE = {"pass": "bold green", "drift": "bold yellow", "corrupt": "bold red"}
_MAX_OK_SHARDS = 200  # the HTML lists every bad shard, and verified ones up to this many
_STATUS_STYLE = {"ok": "green", "drift": "bold red", "undeclared": "bold red", "unchecked": "dim"}


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{x:.1%}"


def _drift(r: SourceRow) -> str:
    return "—" if r.drift is None else f"{r.drift:+.1%}"


def sources_table(result: AuditResult) -> Table:
    t = Table(
        title="Sources: declared mixture vs manifest vs recount", title_justify="left", header_style="bold"
    )
    for col in ("source", "target", "manifest", "recount", "drift", "status", "tokens", "loss tok", "loss tok %",
                "loss weight %", "examples", "sequences", "frames"):  # fmt: skip
        t.add_column(col, justify="left" if col in ("source", "status") else "right")
    for r in result.sources:
        style = _STATUS_STYLE.get(r.status, "")
        t.add_row(escape(r.name), _pct(r.target), _pct(r.manifest_share), _pct(r.share), _drift(r), f"[{style}]{r.status}[/]",
                  f"{r.tally.tokens:,}", f"{r.tally.loss_tokens:,}", _pct(r.loss_token_share), _pct(r.loss_weight_share),
                  f"{r.tally.examples:,}", f"{r.tally.sequences:,}", f"{r.tally.frames:,}")  # fmt: skip
    return t


def modalities_table(result: AuditResult) -> Table:
    rc, m = result.recount, result.manifest
    t = Table(title="Modalities", title_justify="left", header_style="bold")
    for col in (
        "modality",
        "examples",
        "tokens",
        "share",
        "manifest tokens",
        "loss tokens",
        "vision tokens",
        "frames",
    ):
        t.add_column(col, justify="left" if col == "modality" else "right")
    for mod, tally in rc.by_modality().items():
        declared = m.per_modality.get(mod) if m else None
        t.add_row(mod, f"{tally.examples:,}", f"{tally.tokens:,}", _pct(tally.tokens / rc.tokens if rc.tokens else 0),
                  f"{declared.tokens:,}" if declared else "—", f"{tally.loss_tokens:,}", f"{tally.vision_tokens:,}",
                  f"{tally.frames:,}")  # fmt: skip
    return t


def report_console(*, stderr: bool = False) -> Console:
    """A console for the report: the terminal's width, or 150 columns when piped (CI logs)."""
    probe = Console(stderr=stderr)
    return Console(stderr=stderr, highlight=False, width=None if probe.is_terminal else 150)


def print_report(result: AuditResult, console: Console | None = None) -> None:
    """The terminal report: headline, sources, modalities, distributions, findings."""
    console = console or report_console()
    rc, m = result.recount, result.manifest
    bad = sum(s.status != "ok" for s in rc.shards)
    stage = f"stage [bold]{m.stage}[/], seq_len {m.seq_len:,} · " if m else ""
    console.print(f"[{_VERDICT_STYLE[result.verdict]}]{result.verdict.upper()}[/] {escape(result.path)}  ·  {stage}"
                  f"{rc.n_sequences:,} sequences · {rc.tokens:,} tokens · padding {rc.padding_tokens:,} · "
                  f"packing efficiency {rc.packing_efficiency:.1%} · shards {len(rc.shards) - bad}/{len(rc.shards)} ok")  # fmt: skip
    console.print(sources_table(result))
    console.print(modalities_table(result))
    seq, ex = rc.sequence_tokens, rc.by_source()
    console.print(f"sequence fill: median {seq.quantile(0.5):,.0f} / p10 {seq.quantile(0.1):,.0f} tokens · "
                  f"segments per sequence: mean {rc.segments_per_sequence.mean:.1f}, max {rc.segments_per_sequence.max or 0}")  # fmt: skip
    for src, h in sorted(rc.example_tokens.items()):
        frames = rc.frames_per_example.get(src)
        extra = f" · frames/example median {frames.quantile(0.5):.0f}, max {frames.max}" if frames else ""
        trunc = f" · {ex[src].truncated} truncated" if ex.get(src, Tally()).truncated else ""
        console.print(
            f"  {escape(src)}: example tokens median {h.quantile(0.5):,.0f}, p90 {h.quantile(0.9):,.0f}, max {h.max:,}{extra}{trunc}"
        )
    if not result.findings:
        console.print(
            f"[green]no findings[/] (target {result.targets_from}, tolerance {result.tolerance:.1%})"
        )
    for f in result.findings:
        style = "bold red" if f.severity == "error" else "yellow"
        console.print(
            f"[{style}]{f.severity}[/] {escape(f'[{f.kind}]')} [bold]{escape(f.subject)}[/]: {escape(f.message)}",
            soft_wrap=True,
        )
    n_err = len(result.errors())
    console.print(f"[{_VERDICT_STYLE[result.verdict]}]{result.verdict.upper()}[/]: {n_err} error(s), "
                  f"{len(result.findings) - n_err} warning(s) · exit {result.exit_code}")  # fmt: skip


def write_json(result: AuditResult, path: str) -> None:
    write_atomic(path, (json.dumps(result.to_dict(), indent=2, sort_keys=True) + "\n").encode("utf-8"))


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;background:#f6f7f9;color:#1f2328}
main{max-width:1180px;margin:0 auto;padding:24px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:16px;margin:28px 0 10px}
.verdict{display:inline-block;padding:3px 12px;border-radius:14px;color:#fff;font-weight:700;margin-right:8px}
.pass{background:#1d7a3a}.drift{background:#b7791f}.corrupt{background:#c62f26}
.cards{display:flex;gap:12px;flex-wrap:wrap;margin:16px 0}
.card{background:#fff;border:1px solid #e3e6ea;border-radius:8px;padding:10px 16px;min-width:140px}
.card b{display:block;font-size:20px}.card span{color:#59636e;font-size:12px}
table{border-collapse:collapse;background:#fff;border:1px solid #e3e6ea;border-radius:8px;width:100%}
th,td{padding:6px 10px;border-bottom:1px solid #eef0f2;text-align:right;white-space:nowrap}
th{background:#fafbfc;font-weight:600} td:first-child,th:first-child{text-align:left}
.bad{color:#c62f26;font-weight:600}.ok{color:#1d7a3a}.warn{color:#b7791f}
ul.findings{background:#fff;border:1px solid #e3e6ea;border-radius:8px;padding:10px 10px 10px 30px}
ul.findings li{margin:4px 0} code{font-size:12.5px}
.plots{display:grid;grid-template-columns:repeat(auto-fit,minmax(520px,1fr));gap:14px}
.plots figure{margin:0;background:#fff;border:1px solid #e3e6ea;border-radius:8px;padding:6px}
.plots img{width:100%;height:auto} figcaption{color:#59636e;font-size:12px;padding:2px 6px}
"""


def _cells(values: list[str], cls: str = "") -> str:
    return "".join(f"<td{cls}>{v}</td>" for v in values)


def _sources_html(result: AuditResult) -> str:
    head = "".join(f"<th>{c}</th>" for c in ("source", "target", "manifest", "recount", "drift", "status", "tokens",
                                             "loss tokens", "loss tok %", "loss weight %", "examples", "sequences", "frames"))  # fmt: skip
    rows = []
    for r in result.sources:
        cls = "ok" if r.status == "ok" else "bad" if r.status in ("drift", "undeclared") else ""
        rows.append(f"<tr><td>{html.escape(r.name)}</td>" + _cells([_pct(r.target), _pct(r.manifest_share), _pct(r.share), _drift(r)])
                    + f"<td class='{cls}'>{r.status}</td>"
                    + _cells([f"{r.tally.tokens:,}", f"{r.tally.loss_tokens:,}", _pct(r.loss_token_share), _pct(r.loss_weight_share),
                              f"{r.tally.examples:,}", f"{r.tally.sequences:,}", f"{r.tally.frames:,}"]) + "</tr>")  # fmt: skip
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _shards_html(result: AuditResult) -> str:
    rows, shown_ok = [], 0
    for s in sorted(result.recount.shards, key=lambda s: (s.status == "ok", s.name)):  # bad shards first
        if s.status == "ok":
            shown_ok += 1
            if shown_ok > _MAX_OK_SHARDS:
                continue
        cls = "ok" if s.status == "ok" else "bad"
        what = html.escape("; ".join(s.problems)) or "size, sha256 and sample count match the manifest"
        rows.append(f"<tr><td><code>{html.escape(s.name)}</code></td><td class='{cls}'>{s.status}</td>"
                    f"<td>{s.n_samples:,}</td><td>{s.size_bytes:,}</td><td style='text-align:left;white-space:normal'>{what}</td></tr>")  # fmt: skip
    bad = sum(s.status != "ok" for s in result.recount.shards)
    if shown_ok > _MAX_OK_SHARDS:
        rows.append(
            f"<tr><td colspan=5 style='text-align:left'>… and {shown_ok - _MAX_OK_SHARDS:,} more verified shards (all in the JSON report)</td></tr>"
        )
    head = "<tr><th>shard</th><th>status</th><th>samples</th><th>bytes</th><th style='text-align:left'>check</th></tr>"
    return (f"<details{' open' if bad else ''}><summary>{len(result.recount.shards) - bad} of {len(result.recount.shards)} "
            f"shards verified</summary><table>{head}{''.join(rows)}</table></details>")  # fmt: skip


def render_html(result: AuditResult, plots: dict[str, bytes] | None = None) -> str:
    """The HTML report as one string, plots embedded (``plots`` defaults to rendering them)."""
    from lwmkit.pipelines.audit.plots import PLOTS, render_plots

    plots = render_plots(result) if plots is None else plots
    rc, m = result.recount, result.manifest
    bad = sum(s.status != "ok" for s in rc.shards)
    cards = [(f"{rc.n_sequences:,}", "sequences"), (f"{rc.tokens:,}", "tokens"), (f"{rc.packing_efficiency:.1%}", "packing efficiency"),
             (f"{rc.padding_tokens:,}", "padding tokens"), (f"{len(rc.shards) - bad}/{len(rc.shards)}", "shards verified"),
             (f"{result.tolerance:.1%}", f"tolerance (targets: {result.targets_from or 'none'})")]  # fmt: skip
    findings = (
        "".join(
            f"<li class='{'bad' if f.severity == 'error' else 'warn'}'>{f.severity} [{f.kind}] <code>{html.escape(f.subject)}</code>: "
            f"<span style='color:#1f2328;font-weight:400'>{html.escape(f.message)}</span></li>"
            for f in result.findings
        )
        or "<li class='ok'>no findings: the shards match the manifest and the mixture</li>"
    )
    figures = "".join(
        f"<figure><img alt='{html.escape(PLOTS[k][0])}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"
        f"<figcaption>{html.escape(PLOTS[k][0])}</figcaption></figure>"
        for k, png in plots.items()
    )
    title = f"stage {html.escape(m.stage)} · seq_len {m.seq_len:,}" if m else "manifest unreadable"
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>lwmkit audit — {html.escape(result.path)}</title>
<meta name="viewport" content="width=device-width,initial-scale=1"><style>{_CSS}</style></head><body><main>
<h1><span class="verdict {result.verdict}">{result.verdict.upper()}</span>{title}</h1>
<div style="color:#59636e"><code>{html.escape(result.path)}</code>{f" · manifest sha256 <code>{m.sha256[:16]}…</code>" if m else ""}</div>
<div class="cards">{"".join(f"<div class='card'><b>{v}</b><span>{html.escape(k)}</span></div>" for v, k in cards)}</div>
<h2>Findings</h2><ul class="findings">{findings}</ul>
<h2>Sources</h2>{_sources_html(result)}
<h2>Plots</h2><div class="plots">{figures}</div>
<h2>Shards</h2>{_shards_html(result)}
</main></body></html>
"""


def write_html(result: AuditResult, path: str) -> None:
    write_atomic(path, render_html(result).encode("utf-8"))
