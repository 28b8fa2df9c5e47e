"""``lwmkit demo``: raw media to a longer-context model, every step the real job's real CLI.

sample data -> vision job -> book-QA job (embedded SmolLM2 server) -> needle data -> pack
each stage -> audit each stage (a failed audit stops the demo) -> train stage by stage ->
needle eval of the first and the last stage -> loss curves and a summary.

Each step runs ``lwmkit <job> ...`` in a subprocess with the output folder as its working
directory (so the configs in ``configs/demo/`` use relative paths), its output shown live and
kept in ``logs/<step>.log``. A finished step leaves a marker in ``.demo/``; a re-run skips
finished steps and resumes the rest (the jobs themselves resume too: the trainer from its
latest checkpoint). Nothing is special-cased for the demo: sizes only choose flags.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lwmkit.runtime.config import load_config
from lwmkit.runtime.progress import step as say
from lwmkit.runtime.progress import warn
from lwmkit.schemas import StageConfig, TrainConfig

# The demo's configs: lwmkit/configs/demo in a wheel, configs/demo in a source checkout.
CONFIG_DIR = next((d for d in (Path(__file__).resolve().parent / "configs" / "demo",
                                 Path(__file__).resolve().parent.parent / "configs" / "demo") if d.is_dir()),
                  Path(__file__).resolve().parent.parent / "configs" / "demo")
# Captions for the sample clips (the vision job takes captions from an input manifest).
CAPTIONS = {
    "bigbuckbunny": "An animated big white rabbit stands in a green meadow under a tree.",
    "bikes": "Cyclists ride along a street past parked cars and trees.",
    "carphone_distorted": "A man talks on a phone in the back seat of a moving car, with heavy compression artefacts.",
    "carphone_pristine": "A man talks on a phone in the back seat of a moving car.",
}


@dataclass(frozen=True)
class StageSpec:
    """What the demo adds to a stage of its training config (which alone holds seq_len)."""

    name: str  # a stage of the training config
    needle_examples: int  # haystacks of this stage's length
    pack_overrides: tuple[str, ...] = ()  # extra --set for the mixture at this stage


@dataclass(frozen=True)
class DemoSize:
    name: str
    fps: float
    max_frames: int
    book_chars: int  # the slice of the book the QA model reads
    chunk_tokens: int
    qa_pairs: int
    stages: tuple[StageSpec, ...]
    eval_lengths: tuple[int, ...]
    eval_depths: tuple[int, ...]
    eval_trials: int
    devices: int  # emulated CPU devices for the trainer (the last stage shards the sequence)

    @property
    def train_config(self) -> Path:
        return CONFIG_DIR / f"train-{self.name}.yaml"

    def stage_configs(self) -> list[tuple[StageSpec, StageConfig]]:
        """Each demo stage with its stage of the training config: the one source of seq_len."""
        stages = {s.name: s for s in load_config(TrainConfig, str(self.train_config)).stages}
        missing = [s.name for s in self.stages if s.name not in stages]
        if missing:
            raise DemoFailed(f"{self.train_config} has no stage(s) {missing}")
        return [(s, stages[s.name]) for s in self.stages]


SIZES = {
    "smallest": DemoSize(
        "smallest", fps=1.0, max_frames=2, book_chars=3000, chunk_tokens=400, qa_pairs=1,
        stages=(StageSpec("s512", 96), StageSpec("s1k", 48)),
        eval_lengths=(256, 512, 1024), eval_depths=(0, 50, 100), eval_trials=2, devices=2),
}


@dataclass
class DemoResult:
    out: str
    size: str
    steps: dict[str, float] = field(default_factory=dict)  # step -> seconds in this run (0 = skipped)
    # step -> seconds it took when it last ran (this run or an earlier one: a re-run keeps the times)
    ran_in: dict[str, float] = field(default_factory=dict)
    artefacts: dict[str, str] = field(default_factory=dict)
    needle: dict[str, float] = field(default_factory=dict)  # stage -> overall accuracy


class DemoFailed(RuntimeError):
    pass


def _lwmkit(*args: str) -> list[str]:
    return [sys.executable, "-m", "lwmkit.cli", *args]


class Runner:
    """Runs steps in ``out``: skips finished ones, logs every subprocess, times everything."""

    def __init__(self, out: Path, size: DemoSize | None = None):
        self.out, self.size = out, size
        self.marks = out / ".demo"
        self.logs = out / "logs"
        self.result = DemoResult(str(out), size.name if size else "")

    def env(self, devices: int = 1) -> dict[str, str]:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if devices > 1 and "xla_force_host_platform_device_count" not in env.get("XLA_FLAGS", ""):
            env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}".strip()
        return env

    def step(self, name: str, action: Callable[[], None] | list[str], *, devices: int = 1, key: str = "",
             again: bool = False) -> bool:
        """Run a step unless its mark says it is done; returns whether it ran. A mark is stale
        when the step's command changed (other arguments) or its ``key`` did (``key``
        fingerprints what the step depends on beyond its command, e.g. a config's hash);
        ``again`` runs it regardless (its input was just remade)."""
        mark = self.marks / f"{name}.done"
        if mark.exists() and not again:
            done = json.loads(mark.read_text())
            same_command = not isinstance(action, list) or not isinstance(done.get("command"), list) \
                or _shown(done["command"]) == _shown(action)
            if same_command and done.get("key", "") == key:
                say(f"demo: {name}: done earlier, skipped")
                self.result.steps[name] = 0.0
                self.result.ran_in[name] = float(done.get("seconds", 0.0))
                return False
            say(f"demo: {name}: its inputs changed since it ran; running it again")
        say(f"demo: {name} ...")
        t0 = time.perf_counter()
        if callable(action):
            action()
        else:
            self._run(name, action, devices)
        seconds = time.perf_counter() - t0
        self.marks.mkdir(parents=True, exist_ok=True)
        mark.write_text(json.dumps({"seconds": round(seconds, 1), "command": action if isinstance(action, list) else name,
                                    "key": key}))
        self.result.steps[name] = self.result.ran_in[name] = seconds
        say(f"demo: {name}: done in {seconds:.0f}s")
        return True

    def _run(self, name: str, argv: list[str], devices: int) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        shown = " ".join(_shown(argv))
        say(f"  $ {shown}")
        with open(self.logs / f"{name}.log", "w", encoding="utf-8") as log:
            log.write(f"$ {shown}\n")
            proc = subprocess.Popen(argv, cwd=self.out, env=self.env(devices), stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, bufsize=1)
            assert proc.stdout is not None
            for line in proc.stdout:  # live progress, and a log to read afterwards
                sys.stderr.write(f"  | {line}")
                log.write(line)
            code = proc.wait()
        if code != 0:
            raise DemoFailed(f"step '{name}' failed (exit {code}); its log: {self.logs / f'{name}.log'}")


def _shown(argv: list[str]) -> list[str]:
    """A command as logged and compared: the interpreter's path is not part of what a step does."""
    return ["python" if i == 0 and Path(a).name.startswith("python") else a for i, a in enumerate(argv)]


def config_key(*paths: Path) -> str:
    """A fingerprint of config files, for :meth:`Runner.step`'s ``key``."""
    return hashlib.sha256(b"".join(Path(p).read_bytes() for p in paths)).hexdigest()[:16]


def write_inputs(out: Path, size: DemoSize) -> None:
    """The vision manifest (sample clips + captions) and the book slice the QA model reads."""
    videos = sorted((out / "samples" / "videos").glob("*.mp4"))
    if not videos:
        raise DemoFailed(f"no sample videos under {out / 'samples' / 'videos'}")
    inputs = out / "inputs"
    (inputs / "book").mkdir(parents=True, exist_ok=True)
    lines = ["uri,caption"]
    for v in videos:
        caption = CAPTIONS.get(v.stem, f"A short video clip ({v.stem}).")
        lines.append(f"{v.resolve().as_posix()},\"{caption}\"")
    (inputs / "videos.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    book = (out / "samples" / "books" / "botchan.txt").read_text(encoding="utf-8", errors="replace")
    start = book.find("CHAPTER I")  # skip the front matter
    text = book[max(start, 0):][: size.book_chars]
    (inputs / "book" / "botchan-slice.txt").write_text(text[: text.rfind(".") + 1] + "\n", encoding="utf-8")


def plot_loss_curves(jsonl: Path, dest: Path) -> None:
    """Loss against global step, one colour per stage, from the trainer's ``train.jsonl``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "loss" in r and "global_step" in r]
    if not rows:
        raise DemoFailed(f"no loss records in {jsonl}")
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for stage in dict.fromkeys(r["stage"] for r in rows):
        pts = sorted({r["global_step"]: r for r in rows if r["stage"] == stage}.values(), key=lambda r: r["global_step"])
        ax.plot([r["global_step"] for r in pts], [r["loss"] for r in pts], marker=".", label=stage)
    ax.set_xlabel("global step")
    ax.set_ylabel("loss (per-example weighted)")
    ax.set_title("training loss by stage", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(dest, dpi=120)
    plt.close(fig)


def stage_commands(size: DemoSize) -> list[dict[str, list[str]]]:
    """Per stage, the ``lwmkit`` arguments of its needle data, pack and audit steps. seq_len and
    the shard folder come from the training config's stage (pack reads them with --train)."""
    mixture = str(CONFIG_DIR / "mixture.yaml")
    steps = []
    for s, stage in size.stage_configs():
        sets = ["--set", f"sources.2.path=needles/{s.name}/*.parquet"]
        for o in s.pack_overrides:
            sets += ["--set", o]
        steps.append({
            "needle-data": ["needle-data", "--seq-len", str(stage.seq_len), "--examples", str(s.needle_examples),
                            "--book", "samples/books/botchan.txt", "--out", f"needles/{s.name}/needles.parquet"],
            "pack": ["pack", "--mixture", mixture, "--train", str(size.train_config), "--stage", s.name, *sets],
            # The gate: a drifted mixture or a corrupt shard stops the demo before training.
            "audit": ["audit", stage.data, "--report", f"audit/{s.name}.html", "--json", f"audit/{s.name}.json",
                      "--dashboard", f"audit/{s.name}.png", "--runner", "local", "--quiet"],
        })  # fmt: skip
    return steps


def _stage_steps(r: Runner, size: DemoSize) -> None:
    """Needle data, pack and the audit gate, per stage."""
    for s, cmds in zip(size.stages, stage_commands(size), strict=True):
        made = r.step(f"needle-data-{s.name}", _lwmkit(*cmds["needle-data"]))
        packed = r.step(f"pack-{s.name}", _lwmkit(*cmds["pack"]), again=made)
        r.step(f"audit-{s.name}", _lwmkit(*cmds["audit"]), again=packed)


def run_demo(out: Path, size: DemoSize) -> DemoResult:
    """Run (or resume) the whole demo in ``out``; returns what it made."""
    if not size.train_config.exists():
        raise DemoFailed(f"{size.train_config} is missing: lwmkit is installed without its configs (reinstall it, or run from a checkout)")
    out.mkdir(parents=True, exist_ok=True)
    stamp = out / "demo.json"
    if stamp.exists() and json.loads(stamp.read_text()).get("size") != size.name:
        raise DemoFailed(f"{out} holds a demo of another size; use another --out")
    stamp.write_text(json.dumps({"size": size.name, "config": asdict(size)}, indent=2, default=str))
    r = Runner(out, size)
    r.step("sample-data", _lwmkit("sample-data", "samples"))
    r.step("inputs", lambda: write_inputs(out, size))
    r.step("vision", _lwmkit(
        "vision", "--inputs", "inputs/videos.csv", "--output", "vision", "--source", "clips",
        "--fps", str(size.fps), "--max-frames", str(size.max_frames), "--vqgan-batch", "2",
        "--num-shards", "1", "--preview", "2"))
    # SmolLM2-135M rarely quotes its answers from the passage, and the demo's book source must
    # not come out empty: only debris, length and trivial pairs are dropped here (the grounding
    # scores are still recorded). Real data keeps the QA gate's defaults.
    r.step("books", _lwmkit(
        "books", "--input", "inputs/book/*.txt", "--output", "books", "--source", "botchan",
        "--chunk-tokens", str(size.chunk_tokens), "--qa-pairs", str(size.qa_pairs), "--num-shards", "1",
        "--qa-min-grounding", "0", "--qa-min-span", "0"))
    _stage_steps(r, size)
    # Orbax wants an absolute checkpoint path; the config's is relative to the output folder.
    # A changed training config makes training and everything after it run again.
    key = config_key(size.train_config)
    r.step("train", _lwmkit("train", str(size.train_config), "--set", f"checkpoint.dir={out / 'checkpoints'}"),
           devices=size.devices, key=key)
    r.step("loss-curves", lambda: plot_loss_curves(out / "checkpoints" / "logs" / "train.jsonl",
                                                   out / "loss_curves.png"), key=key)
    lengths = ",".join(str(n) for n in size.eval_lengths)
    depths = ",".join(str(d) for d in size.eval_depths)
    stages = size.stage_configs()
    for _, s in (stages[0], stages[-1]):
        r.step(f"needle-eval-{s.name}", _lwmkit(
            "eval", "needle", "--checkpoint", f"checkpoints/{s.name}", "--lengths", lengths, "--depths", depths,
            "--trials", str(size.eval_trials), "--out", f"needle/{s.name}",
            "--title", f"after stage {s.name} (trained at {s.seq_len} tokens)"), key=key)
    return summarise(r)


def summarise(r: Runner) -> DemoResult:
    out, size, res = r.out, r.size, r.result
    res.artefacts = {
        "vision records": "vision/", "vision preview": "vision/preview.png", "book QA records": "books/",
        "loss curves": "loss_curves.png", "checkpoints": "checkpoints/", "logs": "logs/",
    }
    for s in size.stages:
        res.artefacts[f"shards {s.name}"] = f"shards/{s.name}/manifest.json"
        res.artefacts[f"audit report {s.name}"] = f"audit/{s.name}.html"
    for s in (size.stages[0], size.stages[-1]):
        res.artefacts[f"needle heatmap after {s.name}"] = f"needle/{s.name}/needle_heatmap.png"
        summary = json.loads((out / "needle" / s.name / "needle.json").read_text())
        res.needle[s.name] = summary["overall"]
    lines = [f"# lwmkit demo ({size.name})", "", "| artefact | path |", "|---|---|"]
    lines += [f"| {k} | `{out / v}` |" for k, v in res.artefacts.items()]
    lines += ["", "| step | seconds when it ran | in this run |", "|---|---|---|"]
    lines += [f"| {k} | {res.ran_in.get(k, v):.0f} | {'ran' if v else 'done earlier'} |" for k, v in res.steps.items()]
    lines += ["", "Needle accuracy (all lengths and depths of the eval grid):"]
    lines += [f"- after stage {k}: {v:.2f}" for k, v in res.needle.items()]
    (out / "SUMMARY.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out / "summary.json").write_text(json.dumps(asdict(res), indent=2) + "\n", encoding="utf-8")
    return res


def check_tools() -> None:
    if shutil.which("ffmpeg") is None:
        warn("ffmpeg is not on PATH: the vision job falls back to decord only")
