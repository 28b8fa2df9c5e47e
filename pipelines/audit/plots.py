"""The audit's plots (matplotlib, headless): each drawn into an Axes, so the same drawing
makes a stand-alone PNG for the HTML report and a panel of the one-page dashboard."""

from __future__ import annotations

import io
from collections.abc import Callable

import matplotlib

matplotlib.use("Agg")  # never open a window: audits run in CI and on servers

import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402

from lwmkit.pipelines.audit.compare import AuditResult  # noqa: E402
from lwmkit.pipelines.audit.stats import Histogram, share  # noqa: E402

TARGET, MANIFEST, ACTUAL, BAD, MUTED = "#9aa5b1", "#c3a6e0", "#2f6fb3", "#d1453b", "#e9edf1"
PLOT_SIZE = (7.2, 3.6)  # inches; at DPI this is 720 x 360 pixels
DPI = 100
_PALETTE = ["#2f6fb3", "#e08a2e", "#3b9e5a", "#a45bb4", "#c9503f", "#4aa8b5", "#8c7a3f", "#d36fa0"]


def _style(ax: Axes, title: str) -> None:
    ax.set_title(title, loc="left", fontsize=11, fontweight="bold", color="#222")
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.tick_params(labelsize=8.5, colors="#333")
    ax.grid(axis="x", color=MUTED, linewidth=0.8)
    ax.set_axisbelow(True)


def shares(ax: Axes, result: AuditResult) -> None:
    """Per source: target share (grey) and recounted share (blue, red when it drifts), the
    tolerance band around the target, and the manifest's claim as a diamond."""
    rows = result.sources[::-1]  # first source on top
    h = 0.36
    for i, r in enumerate(rows):
        if r.target is not None:
            lo, hi = max(r.target - result.tolerance, 0), r.target + result.tolerance
            ax.fill_betweenx(
                [i - 0.48, i + 0.48],
                lo,
                hi,
                color=MUTED,
                zorder=0,
                label="target ± tolerance" if i == 0 else None,
            )
            ax.barh(i + h / 2, r.target, h, color=TARGET, label="target" if i == 0 else None)
        bad = r.status in ("drift", "undeclared")
        ax.barh(i - h / 2, r.share, h, color=BAD if bad else ACTUAL, label="recount" if i == 0 else None)
        if r.manifest_share is not None:
            ax.plot([r.manifest_share], [i - h / 2], marker="D", color=MANIFEST, markeredgecolor="#5b3d80", markersize=6,
                    linestyle="none", label="manifest says" if i == 0 else None)  # fmt: skip
        note = f"{r.share:.1%}" + (f"  ({r.drift:+.1%})" if r.drift is not None else "")
        ax.text(max(r.share, r.target or 0, r.manifest_share or 0) + 0.008, i - h / 2, note, va="center", fontsize=8.5,
                color=BAD if bad else "#222", fontweight="bold" if bad else "normal")  # fmt: skip
    ax.set_yticks(range(len(rows)), [r.name for r in rows])
    _percent_axis(ax)
    ax.set_xlim(0, min(1.0, max([r.share for r in rows] + [r.target or 0 for r in rows] + [0.05]) * 1.3))
    ax.legend(fontsize=8, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=4)
    _style(ax, f"Token share by source (tolerance ± {result.tolerance:.1%})")


def loss_shares(ax: Axes, result: AuditResult) -> None:
    """Per source: share of tokens, of loss-bearing tokens, and of loss weight (the gradient)."""
    rows = result.sources[::-1]
    h = 0.26
    series = [("tokens", "share", TARGET), ("loss-bearing tokens", "loss_token_share", ACTUAL),
              ("loss weight (gradient)", "loss_weight_share", "#e08a2e")]  # fmt: skip
    for j, (label, attr, color) in enumerate(series):
        ax.barh(
            [i + h * (1 - j) for i in range(len(rows))],
            [getattr(r, attr) for r in rows],
            h,
            color=color,
            label=label,
        )
    labels = [f"{r.name}\n{share(r.tally.loss_tokens, r.tally.tokens):.0%} with loss" for r in rows]
    ax.set_yticks(range(len(rows)), labels)
    _percent_axis(ax)
    ax.legend(fontsize=8, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=3)
    _style(ax, "Loss-bearing share by source")


def _percent_axis(ax: Axes) -> None:
    ax.xaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0, decimals=0))


def _count_label(v: float, _pos: int = 0) -> str:
    for div, unit in ((1e6, "M"), (1e3, "k")):
        if v >= div:
            return f"{v / div:g}{unit}"
    return f"{v:g}"


def _log_count_axis(ax: Axes, label: str) -> None:
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(_count_label))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel(label, fontsize=9)
    ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0, decimals=0))


def _step_hist(ax: Axes, h: Histogram, label: str, color: str, shift: float = 0.0) -> None:
    edges, counts = h.edges_and_counts()
    if not counts:
        return
    total = sum(counts)
    xs = [e + shift for e in edges] if shift else [max(e, 0.8) for e in edges]  # log axes cannot show 0
    ax.stairs([c / total for c in counts], xs, label=f"{label} (n={h.count}, median {h.quantile(0.5):.0f})",
              color=color, linewidth=1.8)  # fmt: skip


def example_lengths(ax: Axes, result: AuditResult) -> None:
    """Example length (tokens) per source, log-spaced bins, each source normalised to 1."""
    for i, (src, h) in enumerate(sorted(result.recount.example_tokens.items())):
        _step_hist(ax, h, src, _PALETTE[i % len(_PALETTE)])
    _log_count_axis(ax, "tokens per example (share of the source's examples)")
    ax.legend(fontsize=8, frameon=False)
    _style(ax, "Example lengths")


def sequence_fill(ax: Axes, result: AuditResult) -> None:
    """Non-padding tokens per packed sequence against the stage length."""
    rc = result.recount
    _step_hist(ax, rc.sequence_tokens, "sequences", ACTUAL)
    seq_len = result.manifest.seq_len if result.manifest else rc.sequence_tokens.max
    if seq_len:
        ax.axvline(seq_len, color=BAD, linestyle="--", linewidth=1.2, label=f"seq_len {seq_len}")
    ax.set_xlim(0, (seq_len or 1) * 1.04)
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(_count_label))
    ax.set_xlabel("non-padding tokens per sequence (share of sequences)", fontsize=9)
    ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0, decimals=0))
    ax.legend(fontsize=8, frameon=False, loc="upper left")
    _style(ax, f"Sequence fill — packing efficiency {rc.packing_efficiency:.1%}")


def frames(ax: Axes, result: AuditResult) -> None:
    """Vision frames per example for each image/video source."""
    hists = sorted(result.recount.frames_per_example.items())
    most = max((h.max or 0 for _, h in hists), default=0)
    for i, (src, h) in enumerate(hists):
        # few frames: integer bins centred on their value on a linear axis; many: log bins
        _step_hist(ax, h, src, _PALETTE[i % len(_PALETTE)], shift=-0.5 if most <= 64 else 0.0)
    if most <= 64:
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_xlabel("frames per example (share of the source's vision examples)", fontsize=9)
        ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0, decimals=0))
    else:
        _log_count_axis(ax, "frames per example (share of the source's vision examples)")
    if hists:
        ax.legend(fontsize=8, frameon=False)
    else:
        ax.text(0.5, 0.5, "no image or video examples", ha="center", transform=ax.transAxes, color="#777")
    _style(ax, "Vision frames per example")


PLOTS: dict[str, tuple[str, Callable[[Axes, AuditResult], None]]] = {
    "shares": ("Token share by source: target, manifest, recount", shares),
    "loss": ("Loss-bearing share by source", loss_shares),
    "lengths": ("Example lengths by source", example_lengths),
    "fill": ("Sequence fill", sequence_fill),
    "frames": ("Vision frames per example", frames),
}


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    plt.close(fig)
    return buf.getvalue()


def render_plots(result: AuditResult) -> dict[str, bytes]:
    """Every plot as PNG bytes (720 x 360 px each), keyed as in :data:`PLOTS`."""
    out = {}
    for key, (_, draw) in PLOTS.items():
        fig, ax = plt.subplots(figsize=PLOT_SIZE, layout="constrained")
        draw(ax, result)
        out[key] = _png(fig)
    return out


def render_dashboard(result: AuditResult) -> bytes:
    """One page (1200 x 800 px): shares, loss shares, example lengths, sequence fill."""
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), layout="constrained")
    for ax, draw in zip(axes.flat, (shares, loss_shares, example_lengths, sequence_fill), strict=True):
        draw(ax, result)
    verdict = {"pass": "PASS", "drift": "DRIFT", "corrupt": "CORRUPT"}[result.verdict]
    stage = f"stage {result.manifest.stage}, " if result.manifest else ""
    fig.suptitle(f"lwmkit audit — {verdict} — {stage}{result.recount.n_sequences} sequences, {result.recount.tokens:,} tokens",
                 fontsize=13, fontweight="bold", color=BAD if result.exit_code else "#1d7a3a")  # fmt: skip
    return _png(fig)
