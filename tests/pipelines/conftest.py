"""Fixtures for pipeline tests."""

from __future__ import annotations

import functools

# --- audit (issue 7): shard sets written straight from the contracts --------------------------
# Independent of the pack job, so the audit's recount is checked against a writer that knows
# exactly what it put in: sources with a modality, an example count and a length range.
import numpy as np
import pytest

from lwmkit.schemas import (
    Manifest,
    PackedMeta,
    SegmentInfo,
    TokenCounts,
    VocabLayout,
)

AUDIT_VOCAB = VocabLayout(text_vocab_size=100, bos_id=1, eos_id=2, vision_start_ids=(5,), vision_end_ids=(6,), codes_per_frame=4)


def _segment(rng: np.random.Generator, modality: str, length: int, frames: int):
    """ids, vision mask and loss positions of one example of about ``length`` tokens."""
    v = AUDIT_VOCAB
    if modality == "text":
        ids = np.concatenate([[v.bos_id], rng.integers(10, 100, max(length - 2, 1)), [v.eos_id]])
        return ids, np.zeros(len(ids), bool), np.arange(1, len(ids))
    head = [v.bos_id, 11, 12, *v.vision_start_ids]
    vision = []
    for f in range(frames):
        vision += list(rng.integers(0, v.n_codes, v.codes_per_frame))
        vision.append(v.end_of_vision_id if f == frames - 1 else v.end_of_frame_id)
    answer = list(rng.integers(10, 100, max(length - len(head) - len(vision) - 2, 1))) + [v.eos_id]
    ids = np.array(head + vision + list(v.vision_end_ids) + answer)
    vm = np.zeros(len(ids), bool)
    vm[len(head) : len(head) + len(vision)] = True
    return ids, vm, np.arange(len(ids) - len(answer), len(ids))


def _examples(spec: dict, seed: int):
    rng = np.random.default_rng(seed)
    for name, (modality, count, lo, hi) in spec.items():
        for i in range(count):
            frames = 1 if modality == "image" else int(rng.integers(2, 5)) if modality == "video" else 0
            ids, vm, loss_at = _segment(rng, modality, int(rng.integers(lo, hi + 1)), frames)
            yield name, modality, f"{name}-{i:05d}", ids, vm, loss_at, frames
    return


def _sample(key: str, seq_len: int, segs: list):
    arrays = {k: np.zeros(seq_len, np.int32) for k in ("input_ids", "target_ids", "segment_ids", "positions")}
    arrays["loss_weights"] = np.zeros(seq_len, np.float32)
    arrays["vision_mask"] = np.zeros(seq_len, bool)
    arrays["target_vision_mask"] = np.zeros(seq_len, bool)
    infos, at = [], 0
    for sid, (name, modality, ex_id, ids, vm, loss_at, frames) in enumerate(segs, start=1):
        n = len(ids)
        sl = slice(at, at + n)
        arrays["input_ids"][sl], arrays["vision_mask"][sl] = ids, vm
        arrays["target_ids"][at : at + n - 1] = ids[1:]
        arrays["target_vision_mask"][at : at + n - 1] = vm[1:]
        arrays["segment_ids"][sl], arrays["positions"][sl] = sid, np.arange(n)
        w = np.zeros(n, np.float32)
        w[loss_at - 1] = 1.0 / len(loss_at)  # position p predicts token p+1: the loss sits one to the left
        arrays["loss_weights"][sl] = w
        infos.append(SegmentInfo(sid, ex_id, name, modality, n_tokens=n, n_loss_tokens=len(loss_at),
                                 n_vision_tokens=int(vm.sum()), n_frames=frames))  # fmt: skip
        at += n
    return arrays, PackedMeta(key=key, seq_len=seq_len, segments=tuple(infos))


def write_audit_set(writer, root: str, spec: dict, *, seq_len: int = 96, per_shard: int = 4, seed: int = 0,
                    weights: dict | None = None) -> Manifest:  # fmt: skip
    """Pack ``spec`` ({source: (modality, n_examples, min_len, max_len)}) next-fit into shards
    under ``root`` and write a truthful manifest whose mixture declares ``weights`` (``writer``:
    the ``shard_set_writer`` fixture)."""
    sequences, current = [], []
    for ex in _examples(spec, seed):
        if sum(len(s[3]) for s in current) + len(ex[3]) > seq_len:
            sequences.append(current)
            current = []
        current.append(ex)
    sequences += [current] if current else []
    per_source: dict[str, TokenCounts] = {}
    per_modality: dict[str, TokenCounts] = {}
    for seq in sequences:
        for name, modality, _, ids, vm, loss_at, _ in seq:
            for table, key in ((per_source, name), (per_modality, modality)):
                c = table.get(key, TokenCounts())
                table[key] = TokenCounts(c.examples + 1, c.tokens + len(ids), c.loss_tokens + len(loss_at), c.vision_tokens + int(vm.sum()))
    samples = [_sample(f"s-{i:06d}", seq_len, seq) for i, seq in enumerate(sequences)]
    used = sum(c.tokens for c in per_source.values())
    kinds = {"text": "text", "image": "image_text", "video": "video_text"}
    weights = weights or {name: float(c.tokens) for name, c in per_source.items()}
    mixture = {"seed": seed, "sources": [{"name": n, "kind": kinds[spec[n][0]], "path": f"in/{n}/*", "weight": w} for n, w in weights.items()]}
    return writer(
        root, samples, per_shard=per_shard,
        stage="audit-test", seq_len=seq_len, seed=seed, tokenizer_id="t" * 64, vocab=AUDIT_VOCAB, mixture=mixture,
        n_sequences=len(sequences), padding_tokens=len(sequences) * seq_len - used,
        packing_efficiency=used / (len(sequences) * seq_len), per_source=per_source, per_modality=per_modality,
    )  # fmt: skip


AUDIT_SPEC = {"web": ("text", 30, 8, 40), "pics": ("image", 12, 12, 24), "clips": ("video", 8, 20, 40)}


@pytest.fixture
def audit_set(tmp_path, shard_set_writer):
    """A truthful 3-source shard set (text, image, video) whose mixture matches what it holds."""
    root = str(tmp_path / "set")
    return root, write_audit_set(shard_set_writer, root, AUDIT_SPEC)


@pytest.fixture
def audit_set_writer(shard_set_writer):
    """``(root, spec, **options) -> Manifest``: :func:`write_audit_set`."""
    return functools.partial(write_audit_set, shard_set_writer)

def _write_pack_inputs(root, botchan: str) -> dict[str, str]:
    """Real inputs for the pack job: two text corpora (Botchan, in 6-line documents) and
    image/video vision records (random VQ codes: the audit counts tokens, not pixels)."""
    import json as _json

    from lwmkit.schemas import VISION_RECORD, vision_record_id, write_table

    lines = [line for line in botchan.splitlines() if line.strip()]
    docs = [" ".join(lines[i : i + 6]) for i in range(0, 1200, 6)]
    paths = {}
    for name, part in (("prose", docs[:100]), ("talk", docs[100:200])):
        (root / name).mkdir(parents=True, exist_ok=True)
        (root / name / f"{name}.jsonl").write_text("".join(_json.dumps({"text": d}) + "\n" for d in part))
        paths[name] = str(root / name / "*.jsonl")
    rng = np.random.default_rng(7)
    for kind, count, frames in (("image", 24, 1), ("video", 10, 3)):
        rows = []
        for i in range(count):
            uri = f"file:///clips/{kind}-{i:03d}.mp4"
            rows.append({"id": vision_record_id(uri, 0.0, 1.0), "source": f"{kind}s", "uri": uri, "kind": kind,
                         "caption": f"a {kind} of thing number {i}", "fps": 0.0 if kind == "image" else 1.0,
                         "start_s": 0.0, "end_s": 1.0, "n_frames": frames,
                         "tokens": rng.integers(0, 8192, frames * 256).astype(np.int16).tolist(),
                         "tokenizer_id": "v" * 64, "width": 320, "height": 240, "decode_settings": "{}"})  # fmt: skip
        (root / f"{kind}s").mkdir(parents=True, exist_ok=True)
        write_table(rows, VISION_RECORD, str(root / f"{kind}s" / "part-0.parquet"))
        paths[f"{kind}s"] = str(root / f"{kind}s" / "*.parquet")
    return paths


PACK_KINDS = {"prose": "text", "talk": "text", "images": "image_text", "videos": "video_text"}


@pytest.fixture(scope="session")
def pack_inputs(tmp_path_factory, botchan):
    """``mixture(weights, out_yaml) -> path``: a mixture YAML over real pack-job inputs."""
    paths = _write_pack_inputs(tmp_path_factory.mktemp("pack-inputs"), botchan)

    def mixture(weights: dict, out_yaml, *, shard_tokens: int = 8192) -> str:
        lines = ["seed: 0", f"shard_tokens: {shard_tokens}", "sources:"]
        lines += [f"  - {{name: {n}, kind: {PACK_KINDS[n]}, path: '{paths[n]}', weight: {w}}}" for n, w in weights.items()]
        out_yaml.write_text("\n".join(lines) + "\n")
        return str(out_yaml)

    return mixture
# --- end audit ------------------------------------------------------------------------------


# --- vision (issue 4): edge-case media made with the ffmpeg binary, and a VQGAN checkpoint --------
# Small on purpose: the CPU VQGAN is the bottleneck, so every file is a few frames at the
# fps the tests use.
import shutil as _shutil  # noqa: E402
import subprocess as _subprocess  # noqa: E402
from pathlib import Path as _Path  # noqa: E402


def _ffmpeg(*args: str) -> None:
    _subprocess.run(["ffmpeg", "-v", "error", "-y", *args], check=True)


def make_vision_media(root) -> dict:
    """Good and bad media under ``root``; returns {name: path}."""
    root = _Path(root)
    root.mkdir(parents=True, exist_ok=True)
    p = {name: str(root / name) for name in (
        "image.png", "tall.jpg", "one_frame.mp4", "wide.mp4", "vfr.mp4", "image_named.mp4", "video_named.jpg",
        "truncated.mp4", "random.mp4", "empty.mp4", "audio.m4a", "notes.txt")}  # fmt: skip
    src = "testsrc=size=320x240:rate=25"
    _ffmpeg("-f", "lavfi", "-i", "testsrc=size=300x200", "-frames:v", "1", p["image.png"])
    _ffmpeg("-f", "lavfi", "-i", "testsrc=size=90x400", "-frames:v", "1", p["tall.jpg"])
    _ffmpeg("-f", "lavfi", "-i", src, "-frames:v", "1", "-pix_fmt", "yuv420p", "-c:v", "libx264", p["one_frame.mp4"])
    _ffmpeg("-f", "lavfi", "-i", "testsrc=size=400x120:rate=10", "-t", "2", "-pix_fmt", "yuv420p", "-c:v", "libx264", p["wide.mp4"])
    # 30 fps for 1 s, then 5 fps for 2 s: variable frame rate.
    _ffmpeg("-f", "lavfi", "-i", "testsrc=size=320x240:rate=30", "-t", "3", "-vf", "setpts='if(lt(N,30),N/30,1+(N-30)/5)/TB'",
            "-fps_mode", "vfr", "-pix_fmt", "yuv420p", "-c:v", "libx264", p["vfr.mp4"])  # fmt: skip
    _shutil.copyfile(p["image.png"], p["image_named.mp4"])  # wrong extensions, good content
    _shutil.copyfile(p["wide.mp4"], p["video_named.jpg"])
    full = str(root / ".full.mp4")
    _ffmpeg("-f", "lavfi", "-i", src, "-t", "4", "-pix_fmt", "yuv420p", "-c:v", "libx264", "-movflags", "+faststart", full)
    data = _Path(full).read_bytes()
    _Path(p["truncated.mp4"]).write_bytes(data[: len(data) // 2])
    _Path(full).unlink()
    _Path(p["random.mp4"]).write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    _Path(p["empty.mp4"]).write_bytes(b"")
    _ffmpeg("-f", "lavfi", "-i", "sine=d=1", p["audio.m4a"])
    _Path(p["notes.txt"]).write_text("not a video\n")
    return p


VISION_GOOD = ("image.png", "tall.jpg", "one_frame.mp4", "wide.mp4", "vfr.mp4", "image_named.mp4", "video_named.jpg")
VISION_BAD = ("truncated.mp4", "random.mp4", "empty.mp4", "audio.m4a", "notes.txt")


@pytest.fixture(scope="session")
def vision_media(tmp_path_factory) -> dict:
    """{name: path} of generated media: VISION_GOOD decode, VISION_BAD must be dead-lettered."""
    return make_vision_media(tmp_path_factory.mktemp("vision_media"))


@pytest.fixture(scope="session")
def vision_names() -> tuple[tuple[str, ...], tuple[str, ...]]:
    return VISION_GOOD, VISION_BAD


def break_packets(src, dst, fractions) -> None:
    """Copy ``src`` to ``dst`` with the 4-byte NAL length of the video packets at ``fractions`` of
    the stream overwritten: the codec refuses those packets (a damaged file, mid-stream)."""
    out = _subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "packet=pos",
                           "-of", "csv=p=0", str(src)], capture_output=True, text=True, check=True).stdout  # fmt: skip
    pos = [int(p) for p in out.split() if p.strip().isdigit()]
    data = bytearray(_Path(src).read_bytes())
    for f in fractions:
        at = pos[int(len(pos) * f)]
        data[at : at + 4] = b"\xff\xff\xff\xff"
    _Path(dst).write_bytes(bytes(data))


def make_damaged_media(root, sample_videos) -> dict:
    """Real sample clips damaged the ways downloads and disks damage them; returns {name: path}.

    ``broken_packet.mp4``: one packet in the middle refused by the codec; ``concealed.mp4``: garbage
    inside one packet's payload (the codec conceals it: a usable file); ``holed.mp4``: 5 s of
    frames missing from the middle; ``cut.webm``: a WebM cut at 60 % (its header still declares
    the full duration)."""
    root, videos = _Path(root), _Path(sample_videos)
    root.mkdir(parents=True, exist_ok=True)
    p = {name: str(root / name) for name in ("broken_packet.mp4", "concealed.mp4", "holed.mp4", "cut.webm")}
    break_packets(videos / "carphone_pristine.mp4", p["broken_packet.mp4"], (0.5,))
    data = bytearray((videos / "carphone_pristine.mp4").read_bytes())
    mid = len(data) // 2
    data[mid : mid + 1024] = np.random.default_rng(0).integers(0, 256, 1024, dtype=np.uint8).tobytes()
    _Path(p["concealed.mp4"]).write_bytes(bytes(data))
    _ffmpeg("-i", str(videos / "bikes.mp4"), "-vf", "select='not(between(t,2,7))'", "-fps_mode", "passthrough",
            "-an", "-c:v", "libx264", "-pix_fmt", "yuv420p", p["holed.mp4"])  # fmt: skip
    full = str(root / ".full.webm")
    _ffmpeg("-i", str(videos / "carphone_pristine.mp4"), "-c:v", "libvpx", "-b:v", "200k", "-threads", "1", full)  # fmt: skip
    webm = _Path(full).read_bytes()
    _Path(p["cut.webm"]).write_bytes(webm[: len(webm) * 6 // 10])
    _Path(full).unlink()
    return p


@pytest.fixture(scope="session")
def break_video_packets():
    """:func:`break_packets`, for tests that damage a clip their own way."""
    return break_packets


@pytest.fixture(scope="session")
def damaged_media(tmp_path_factory, sample_dir) -> dict:
    """{name: path} of damaged real clips (see :func:`make_damaged_media`)."""
    return make_damaged_media(tmp_path_factory.mktemp("damaged_media"), sample_dir / "videos")


@pytest.fixture(scope="session")
def vqgan_checkpoint(tmp_path_factory) -> str:
    """The shipped VQGAN when present, else a seeded freshly initialised one of the same shape."""
    from lwmkit.tokenizers import vqgan

    path = vqgan.default_checkpoint_path()
    if _Path(path).is_file():
        return path
    from lwmkit.tokenizers.vqgan_checkpoint import write_checkpoint

    cfg = vqgan.small_config()
    out = str(tmp_path_factory.mktemp("vqgan") / "vqgan.msgpack")
    write_checkpoint(out, cfg, vqgan.init_params(cfg, seed=0))
    return out
# --- end vision ------------------------------------------------------------------------------
