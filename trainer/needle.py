"""Needle-in-a-haystack eval (shared/LWM_FACTS.md §7): haystacks from a book at a grid of
context lengths x needle depths, greedy decoding with the trainer's model, exact retrieval.

A *case* is one question about one needle in one haystack. Its context length L counts the
whole chat, as the pack job's ``book_qa_chat`` examples do: BOS, ``You are a helpful
assistant. USER: {haystack} {question} ASSISTANT:`` and room for the answer and its EOS. The
haystack holds ``needles`` needles; the first sits at the cell's depth, the others at random
depths; the first ``retrieve`` of them are asked, each as its own case. A case is correct
when the needle's 7 digits appear in the greedy reply (LWM's criterion). A cell's accuracy
is the mean over its trials and asked needles.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from lwmkit.tokenizers.needle_text import Haystack, Needle, draw_needles
from lwmkit.tokenizers.text import ASSISTANT, SYSTEM_PROMPT, USER, TextTokenizer


@dataclass(frozen=True)
class NeedleGrid:
    """The grid: lengths (tokens) x depths (percent), trials per cell, needles per haystack."""

    lengths: tuple[int, ...]
    depths: tuple[float, ...] = (0.0, 25.0, 50.0, 75.0, 100.0)
    trials: int = 4
    needles: int = 1  # needles inserted per haystack
    retrieve: int = 1  # needles asked per haystack (each its own case)
    seed: int = 0
    batch_size: int = 8

    def __post_init__(self) -> None:
        if not self.lengths or any(n < 64 for n in self.lengths):
            raise ValueError(f"lengths must be >= 64 tokens, got {self.lengths}")
        if not self.depths or any(not 0.0 <= d <= 100.0 for d in self.depths):
            raise ValueError(f"depths are percentages in [0, 100], got {self.depths}")
        if self.trials < 1:
            raise ValueError(f"trials must be >= 1, got {self.trials}")
        if not 1 <= self.retrieve <= self.needles:
            raise ValueError(f"need 1 <= retrieve <= needles, got retrieve={self.retrieve}, needles={self.needles}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


@dataclass
class NeedleCase:
    """One question. ``asked`` are the numbers the reply must hold, in order (text: the one
    needle asked, ``needle_index`` of the haystack's asked needles; video: every needle, in the
    order they appear); ``found[k]`` says whether ``asked[k]`` is in the reply."""

    length: int
    depth: float
    trial: int
    needle: Needle  # the needle at the cell's depth (text: the one asked)
    prompt: list[int] = field(repr=False)
    reply: str = ""
    correct: bool = False
    digits: float = 0.0  # digit_score of the reply
    asked: tuple[str, ...] = ()
    needle_index: int = 0
    vision: list[bool] | None = field(default=None, repr=False)  # the prompt's vision mask (video)
    frames: tuple[int, ...] = ()  # video: the needle frames' indices among the prompt's frames
    n_frames: int = 0  # video: frames in the prompt
    answer_tokens: int = 0  # tokens reserved for the reply (its EOS included)
    found: list[bool] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.asked = self.asked or (self.needle.number,)

    def score(self, reply: str) -> None:
        """Score ``reply``: ``correct`` iff every asked number appears, in the asked order (one
        number: LWM's criterion); ``found`` per number; ``digits`` the mean partial credit of the
        reply's digit runs against the asked numbers, position by position."""
        self.reply = reply
        self.found = [n in reply for n in self.asked]
        at = [reply.find(n) for n in self.asked]
        self.correct = all(self.found) and at == sorted(at)
        runs = re.findall(r"\d+", reply)
        self.digits = float(np.mean([_digits(runs[k] if k < len(runs) else "", n) for k, n in enumerate(self.asked)]))


def answer_budget(tok: TextTokenizer, needle: Needle) -> int:
    """Tokens reserved for the reply: the needle sentence restated, plus EOS."""
    return len(tok.encode(needle.sentence)) + 1


def chat_prompt(tok: TextTokenizer, document: str, question: str) -> list[int]:
    """The eval prompt in the pack job's ``book_qa_chat`` layout (tokenized piece by piece, as it does)."""
    return [tok.bos_id, *tok.encode(f"{SYSTEM_PROMPT} {USER}"), *tok.encode(document),
            *tok.encode(f"{question} {ASSISTANT}")]


def _case_prompts(hay: Haystack, length: int, depth: float, needles: list[Needle], rng: np.random.Generator,
                  asked: list[Needle]) -> list[list[int]]:
    tok = hay.tok
    depths = [depth / 100.0] + list(rng.uniform(0.0, 1.0, size=len(needles) - 1))
    start = int(rng.integers(0, len(hay.sentences)))
    fixed = max(len(chat_prompt(tok, "", n.question)) + answer_budget(tok, n) for n in asked)
    budget = length - fixed
    for _ in range(8):  # the tokenizer's joins move the count a little: shrink until it fits
        if budget < 16:
            raise ValueError(f"context length {length} leaves no room for a haystack")
        doc = hay.document(budget, needles, depths, start)
        prompts = [chat_prompt(tok, doc, n.question) for n in asked]
        over = max(len(p) + answer_budget(tok, n) for p, n in zip(prompts, asked, strict=True)) - length
        if over <= 0:
            return prompts
        budget -= over
    raise ValueError(f"could not fit a haystack into {length} tokens")


def build_cases(hay: Haystack, grid: NeedleGrid) -> list[NeedleCase]:
    """Every case of the grid, deterministic in ``grid.seed``."""
    cases = []
    for length in grid.lengths:
        for depth in grid.depths:
            for trial in range(grid.trials):
                rng = np.random.default_rng([grid.seed, length, int(depth * 100), trial])
                needles = draw_needles(rng, grid.needles)
                asked = needles[: grid.retrieve]
                prompts = _case_prompts(hay, length, depth, needles, rng, asked)
                for k, (needle, prompt) in enumerate(zip(asked, prompts, strict=True)):
                    cases.append(NeedleCase(length, depth, trial, needle, prompt, needle_index=k,
                                            answer_tokens=answer_budget(hay.tok, needle)))
    return cases


def is_correct(reply: str, needle: Needle) -> bool:
    """LWM's criterion: the needle's digits appear in the reply."""
    return needle.number in reply


def digit_score(reply: str, needle: Needle) -> float:
    """Partial credit: the share of the needle's digits that the reply's first digit run gets
    right, position by position (1.0 iff the run is exactly the number). Shows retrieval that
    is under way before exact retrieval is (e.g. the right digits, in the wrong order)."""
    runs = re.findall(r"\d+", reply)
    return _digits(runs[0] if runs else "", needle.number)


def _digits(got: str, number: str) -> float:
    return sum(a == b for a, b in zip(got, number, strict=False)) / len(number)


@dataclass
class NeedleReport:
    lengths: list[int]
    depths: list[float]
    accuracy: list[list[float]]  # [len(lengths)][len(depths)]
    cases: list[NeedleCase]
    checkpoint: str = ""
    stage: str = ""
    trained_seq_len: int = 0
    needles: int = 1
    retrieve: int = 1
    seconds: float = 0.0
    digit_accuracy: list[list[float]] = field(default_factory=list)  # partial credit per cell
    modality: str = "text"
    frames: list[int] = field(default_factory=list)  # video: frames per length (needles included)

    @property
    def overall(self) -> float:
        return float(np.mean([c.correct for c in self.cases])) if self.cases else 0.0

    def summary(self) -> dict:
        return {"checkpoint": self.checkpoint, "stage": self.stage, "trained_seq_len": self.trained_seq_len,
                "lengths": self.lengths, "depths": self.depths, "accuracy": self.accuracy,
                "overall": self.overall, "digit_accuracy": self.digit_accuracy,
                "digits_overall": float(np.mean([c.digits for c in self.cases])) if self.cases else 0.0,
                "needles": self.needles, "retrieve": self.retrieve,
                "cases": len(self.cases), "seconds": round(self.seconds, 1), "modality": self.modality,
                **({"frames": self.frames} if self.frames else {}),
                "recall_by_needle": recall_by_needle(self.cases, self.retrieve),
                "recall": self._recall_grid(), "cell_counts": _trials(self).T.tolist()}

    def _recall_grid(self) -> list[list[float]]:
        """Per cell, the mean share of asked numbers found (text: equals the accuracy)."""
        out = []
        for length in self.lengths:
            row = []
            for depth in self.depths:
                got = [f for c in self.cases if c.length == length and c.depth == depth for f in c.found]
                row.append(float(np.mean(got)) if got else float("nan"))
            out.append(row)
        return out


def recall_by_needle(cases: list[NeedleCase], retrieve: int) -> list[float]:
    """Recall of the k-th asked needle, k = 0..retrieve-1 (LWM's multi-needle report): text asks
    each needle in its own case (``needle_index``), video asks them all in one (``found[k]``)."""
    hits: list[list[bool]] = [[] for _ in range(retrieve)]
    for c in cases:
        for j, f in enumerate(c.found):
            if c.needle_index + j < retrieve:
                hits[c.needle_index + j].append(f)
    return [float(np.mean(h)) if h else float("nan") for h in hits]


def score(cases: list[NeedleCase], grid: NeedleGrid, what: str = "correct") -> list[list[float]]:
    """Mean of ``what`` (``correct`` or ``digits``) per (length, depth) cell."""
    acc = []
    for length in grid.lengths:
        row = []
        for depth in grid.depths:
            got = [float(getattr(c, what)) for c in cases if c.length == length and c.depth == depth]
            row.append(float(np.mean(got)) if got else float("nan"))
        acc.append(row)
    return acc


def evaluate(model, tok: TextTokenizer, hay: Haystack, grid: NeedleGrid, *, mesh=None, on_batch=None,
             kv_cache: bool = True) -> NeedleReport:
    """Run every case through greedy decoding (KV-cached unless ``kv_cache=False``: see
    ``greedy_generate``); ``on_batch(n_done)`` reports progress."""
    import time

    t0 = time.perf_counter()
    cases = run_cases(model, tok, build_cases(hay, grid), grid, mesh=mesh, on_batch=on_batch, kv_cache=kv_cache)
    return NeedleReport(list(grid.lengths), list(grid.depths), score(cases, grid), cases,
                        checkpoint=model.path, stage=model.stage, trained_seq_len=model.seq_len,
                        needles=grid.needles, retrieve=grid.retrieve, seconds=time.perf_counter() - t0,
                        digit_accuracy=score(cases, grid, "digits"))


def run_cases(model, tok: TextTokenizer, cases: list[NeedleCase], grid: NeedleGrid, *, mesh=None, on_batch=None,
              kv_cache: bool = True) -> list[NeedleCase]:
    """Decode every case greedily (batches of ``grid.batch_size``, one buffer shape per length)
    and score its reply; returns ``cases``."""
    from lwmkit.trainer.generate import greedy_generate

    max_new = max(c.answer_tokens for c in cases) + 4
    for length in grid.lengths:  # one buffer shape per length: one compile each
        group = [c for c in cases if c.length == length]
        for i in range(0, len(group), grid.batch_size):
            batch = group[i: i + grid.batch_size]
            pad = [batch[-1]] * (grid.batch_size - len(batch))  # a fixed batch shape
            vision = None if batch[0].vision is None else [c.vision for c in batch + pad]
            replies = greedy_generate(model, [c.prompt for c in batch + pad], max_new=max_new, eos_id=tok.eos_id,
                                      pad_id=tok.pad_id, mesh=mesh, kv_cache=kv_cache, vision=vision)
            for c, r in zip(batch, replies, strict=False):
                c.score(tok.decode(r))
            if on_batch:
                on_batch(len(batch))
    return cases


def plot_heatmap(report: NeedleReport, path: str, title: str | None = None, *, digits: bool = False) -> None:
    """Accuracy heatmap, depth (rows, %) x context length (columns), as LWM/Gemini draw it;
    ``digits`` draws the partial-credit digit accuracy instead of exact retrieval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LinearSegmentedColormap

    acc = np.asarray(report.digit_accuracy if digits else report.accuracy, dtype=float).T  # [depths, lengths]
    cmap = LinearSegmentedColormap.from_list("needle", ["#d7191c", "#fdae61", "#a6d96a", "#1a9641"])
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 + 0.9 * len(report.lengths)), 1.0 + 0.45 * len(report.depths)))
    im = ax.imshow(acc, cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
    ticks = [_k(n) for n in report.lengths]
    if report.frames:  # video: the frames each length holds
        ticks = [f"{t}\n({f} fr)" for t, f in zip(ticks, report.frames, strict=True)]  # two lines: no overlap
    ax.set_xticks(range(len(report.lengths)), ticks)
    ax.set_yticks(range(len(report.depths)), [f"{d:g}%" for d in report.depths])
    ax.set_xlabel("context length, tokens (frames)" if report.frames else "context length (tokens)")
    ax.set_ylabel("needle depth")
    trials = _trials(report)  # [depths, lengths]
    for (i, j), v in np.ndenumerate(acc):
        ax.text(j, i, "" if np.isnan(v) else f"{v:.2f} (n={trials[i, j]})", ha="center", va="center", fontsize=7)
    if report.trained_seq_len:
        edge = _trained_edge(report)
        beyond = "" if edge < len(report.lengths) - 1 else ", every column within it"
        ax.axvline(edge, color="black", linestyle="--", linewidth=1.5,
                   label=f"trained context {_k(report.trained_seq_len)}{beyond}")
        # at the figure's foot, below the axis label, however few depths the grid has
        ax.legend(loc="lower center", bbox_to_anchor=(0.5, 0.0), bbox_transform=fig.transFigure, fontsize=8,
                  frameon=False)
    per_cell = sorted({int(n) for n in trials.flat if n})
    n_label = f"{per_cell[0]} trials per cell" if len(per_cell) == 1 else "n trials per cell as marked"
    ax.set_title(title or f"needle retrieval, stage {report.stage} (trained at {_k(report.trained_seq_len)}), {n_label}",
                 fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="digit accuracy" if digits else "exact retrieval")
    fig.tight_layout(rect=(0, 0.08 if report.trained_seq_len else 0, 1, 1))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")  # the legend sits below the axes
    plt.close(fig)


def _k(n: int) -> str:
    return f"{n // 1024}K" if n >= 1024 and n % 1024 == 0 else str(n)


def _trials(report: NeedleReport) -> np.ndarray:
    """How many cases each (depth, length) cell holds."""
    counts = np.zeros((len(report.depths), len(report.lengths)), dtype=int)
    for c in report.cases:
        if c.length in report.lengths and c.depth in report.depths:
            counts[report.depths.index(c.depth), report.lengths.index(c.length)] += 1
    return counts


def _trained_edge(report: NeedleReport) -> float:
    """x position of the boundary between lengths within and beyond the trained context."""
    inside = [i for i, n in enumerate(report.lengths) if n <= report.trained_seq_len]
    return (inside[-1] + 0.5) if inside else -0.5


def write_report(report: NeedleReport, out_dir: str, title: str | None = None) -> dict[str, str]:
    """``needle.json`` (grid + summary), ``cases.jsonl`` (every reply) and ``needle_heatmap.png``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": str(out / "needle.json"), "cases": str(out / "cases.jsonl"), "heatmap": str(out / "needle_heatmap.png"),
             "digits_heatmap": str(out / "needle_digits_heatmap.png")}
    Path(paths["json"]).write_text(json.dumps(report.summary(), indent=2) + "\n")
    with open(paths["cases"], "w") as f:
        for c in report.cases:
            row = {"length": c.length, "depth": c.depth, "trial": c.trial, "needle": asdict(c.needle),
                   "prompt_tokens": len(c.prompt), "reply": c.reply, "correct": c.correct, "digits": c.digits,
                   "asked": list(c.asked), "found": c.found, "needle_index": c.needle_index}
            if c.vision is not None:
                row.update(n_frames=c.n_frames, needle_frames=list(c.frames))
            f.write(json.dumps(row) + "\n")
    plot_heatmap(report, paths["heatmap"], title)
    plot_heatmap(report, paths["digits_heatmap"], (title + " (digits)") if title else None, digits=True)
    return paths
