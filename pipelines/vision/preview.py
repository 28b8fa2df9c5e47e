"""Look at what a vision job made: a PNG grid of original frames beside their VQGAN reconstructions.

One row per record (the first N by id): up to ``frames`` frames spread over the record, each
shown as the frame decoded again from its source (with the record's own decode settings) and
the VQGAN's reconstruction from the record's codes. The PNG carries a key of what it shows
(record ids, VQGAN, frames), so :func:`update_preview` rebuilds it only when that changed.
"""

from __future__ import annotations

import hashlib
import io
import json
import os

import numpy as np
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from PIL import Image, ImageDraw, ImageFont, PngImagePlugin

from lwmkit.pipelines.vision.decode import DecodeConfig
from lwmkit.pipelines.vision.decode_worker import decode_local
from lwmkit.pipelines.vision.output import record_files
from lwmkit.pipelines.vision.steps import localise
from lwmkit.runtime.files import BEAM, write_atomic
from lwmkit.tokenizers.vision_layout import sample_frames

_FONT = 16  # caption size in pixels (PIL's bundled FreeType font: readable at any DPI)
_KEY = "lwmkit.preview"  # PNG text chunk: what the grid shows


def first_records(output: str, n: int) -> list[dict]:
    """The first ``n`` records of an output, by id."""
    rows: list[dict] = []
    for path in record_files(output):
        with FileSystems.open(path) as f:
            rows += pq.read_table(io.BytesIO(f.read())).to_pylist()
    return sorted(rows, key=lambda r: r["id"])[:n]


def original_frames(record: dict, picks: np.ndarray) -> list[np.ndarray | None]:
    """The record's frames ``picks`` decoded again from its uri (None where that fails)."""
    cfg = DecodeConfig(**json.loads(record["decode_settings"]))
    cfg = DecodeConfig(**{**cfg.__dict__, "clip_seconds": None, "max_frames": None})
    start = None if record["kind"] == "image" else record["start_s"]
    end = None if record["kind"] == "image" else record["end_s"]
    frames: list[np.ndarray] = []
    try:
        path, _ = localise(record["uri"])
        events = decode_local(path, cfg, "decord", True, start, end)
        next(events)
        frames = [f for _, _, f in events]
    except Exception:
        frames = []
    n = record["n_frames"]
    if len(frames) > n:  # the record was capped by max_frames: same linspace choice
        frames = [frames[i] for i in sample_frames(len(frames), n)]
    return [frames[i] if i < len(frames) else None for i in picks]


def write_preview(
    output: str, n: int, checkpoint: str | None = None, dest: str | None = None, frames: int = 4
) -> str:
    """Write the grid PNG (default ``OUTPUT/preview.png``); returns its path."""
    records = first_records(output, n)
    if not records:
        raise FileNotFoundError(f"no vision records under {output}")
    dest = dest or FileSystems.join(output, "preview.png")
    write_atomic(dest, _render(records, checkpoint, frames), BEAM)
    return dest


def update_preview(
    output: str, n: int, checkpoint: str | None = None, frames: int = 4
) -> tuple[str, int, bool]:
    """``OUTPUT/preview.png`` of the first ``n`` records, rebuilt only when what it would show
    changed; returns ``(path, records shown, rebuilt)``."""
    records = first_records(output, n)
    if not records:
        raise FileNotFoundError(f"no vision records under {output}")
    dest = FileSystems.join(output, "preview.png")
    if FileSystems.exists(dest):
        with FileSystems.open(dest) as f:
            shown = Image.open(io.BytesIO(f.read())).text.get(_KEY)
        if shown == _preview_key(records, checkpoint, frames):
            return dest, len(records), False
    write_atomic(dest, _render(records, checkpoint, frames), BEAM)
    return dest, len(records), True


def _preview_key(records: list[dict], checkpoint: str | None, frames: int) -> str:
    what = [[r["id"], r["tokenizer_id"], r["n_frames"]] for r in records] + [str(checkpoint), frames]
    return hashlib.sha256(json.dumps(what).encode()).hexdigest()


def _render(records: list[dict], checkpoint: str | None, frames: int) -> bytes:
    from lwmkit.tokenizers import vqgan

    model = vqgan.load(checkpoint)
    side = model.config.resolution
    # columns for the longest record shown, not for the budget: short clips would leave half the grid blank
    frames = max(1, min(frames, max(r["n_frames"] for r in records)))
    font = ImageFont.load_default(size=_FONT)
    label_h = _FONT + 8
    rows = []
    for record in records:
        codes = np.asarray(record["tokens"], dtype=np.int32).reshape(record["n_frames"], -1)
        picks = sample_frames(record["n_frames"], frames)
        recon = model.decode(codes[picks])
        originals = original_frames(record, picks)
        row = Image.new("RGB", (2 * frames * side, side + label_h), "white")
        for j, (orig, rec) in enumerate(zip(originals, recon, strict=True)):
            if orig is not None:
                row.paste(Image.fromarray(orig), (2 * j * side, 0))
            row.paste(Image.fromarray(rec), ((2 * j + 1) * side, 0))
        label = f"{os.path.basename(record['uri'])} [{record['start_s']:.1f}-{record['end_s']:.1f}s] frames {list(map(int, picks))}"
        ImageDraw.Draw(row).text((4, side + 3), label + "   (original | VQGAN reconstruction)", fill="black", font=font)
        rows.append(row)
    grid = Image.new("RGB", (rows[0].width, sum(r.height for r in rows)), "white")
    for i, row in enumerate(rows):
        grid.paste(row, (0, i * row.height))
    buf = io.BytesIO()
    info = PngImagePlugin.PngInfo()
    info.add_text(_KEY, _preview_key(records, checkpoint, frames))
    grid.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()
