"""Video needle data: real vision records as haystacks, needle frames tokenized with the same
VQGAN at their depths, every chat within seq_len as the pack job counts it, and the real pack
job turning the records into understanding chats with loss on the answer only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lwmkit.cli import main
from lwmkit.needle_video_data import VideoNeedleConfig, build_rows, plan, read_pool
from lwmkit.pipelines.pack.formatting import format_vision
from lwmkit.schemas.records import VISION_RECORD, read_table
from lwmkit.tokenizers import vqgan as vq
from lwmkit.tokenizers.needle_video import (
    QUESTION,
    answer_text,
    chat_tokens,
    digit_separation,
    frames_for_length,
    insert_needles,
    render_needle,
    video_prompt,
)
from lwmkit.tokenizers.text import TextTokenizer


@pytest.fixture(scope="module")
def tok() -> TextTokenizer:
    return TextTokenizer.load()


@pytest.fixture(scope="module")
def vqgan():
    return vq.load()


def test_needle_frame_is_fixed_and_reads_after_the_vqgan(vqgan):
    a, b = render_needle("4821"), render_needle("4821")
    assert a.shape == (256, 256, 3) and a.dtype == np.uint8 and np.array_equal(a, b)
    assert not np.array_equal(a, render_needle("4822"))
    # the number survives tokenization: decoded frames of two numbers differ where the digits are
    codes = vqgan.encode(np.stack([a, render_needle("1357")]))
    back = vqgan.decode(codes).astype(np.int16)
    assert np.abs(back[0, 140:200] - back[1, 140:200]).mean() > 10


def test_the_shipped_vqgan_keeps_every_digit_of_a_needle_apart(vqgan):
    # numbers one digit apart never share their codes: reading the number is learnable from the codes alone
    # (40 numbers x every one-digit change measured 6..~60 codes apart; benchmarks/RESULTS.md)
    report = digit_separation(vqgan, n_numbers=3, seed=1)
    assert report["pairs"] >= 3 * 34 and report["identical"] == [] and report["min_codes_differing"] >= 3, report


def test_insert_needles_by_depth():
    hay = np.arange(10)[:, None].repeat(4, axis=1)
    needles = [np.full(4, 100), np.full(4, 200), np.full(4, 300)]
    frames, pos = insert_needles(hay, needles, [1.0, 0.0, 0.5])
    assert pos == [12, 0, 6] and len(frames) == 13
    assert frames[pos[0], 0] == 100 and frames[pos[1], 0] == 200 and frames[pos[2], 0] == 300
    assert [f[0] for f in frames if f[0] < 100] == list(range(10))  # the haystack's order is kept
    with pytest.raises(ValueError, match="depths"):
        insert_needles(hay, needles[:1], [1.5])


def test_prompt_layout_matches_the_pack_formatter(tok: TextTokenizer):
    layout = tok.vocab_layout()
    codes = np.random.default_rng(0).integers(0, 8192, size=(3, 256))
    answer = answer_text(["4821", "1357"])
    ids, loss, vision = format_vision(
        codes, answer, kind="video", direction="understanding", tok=tok, layout=layout, prompt=QUESTION
    )
    prompt, mask = video_prompt(tok, layout, codes)
    assert ids[: len(prompt)].tolist() == prompt and vision[: len(prompt)].tolist() == mask
    assert not loss[: len(prompt)].any() and loss[len(prompt) :].all()  # loss on the answer and EOS only
    assert ids.size == chat_tokens(tok, layout, 3, answer)
    n = frames_for_length(tok, layout, 4096, answer)
    assert chat_tokens(tok, layout, n, answer) <= 4096 < chat_tokens(tok, layout, n + 1, answer)


@pytest.mark.parametrize("seq_len", [1200, 4096])
def test_rows_fit_and_hold_their_needles(vision_records: list[str], tok: TextTokenizer, vqgan, seq_len: int):
    layout = tok.vocab_layout()
    pool = read_pool(vision_records, layout)
    assert len(pool.codes) >= 8 and pool.tokenizer_id == vqgan.id
    cfg = VideoNeedleConfig(seq_len, examples=6, needles_min=1, needles_max=3, min_fill=0.5, far_share=0.5)
    rows = build_rows(cfg, pool, tok, vqgan)
    assert len(rows) == 6 and rows == build_rows(cfg, pool, tok, vqgan)  # deterministic
    most = max(r["n_frames"] for r in rows)
    for r in rows:
        numbers = r["caption"].removeprefix("The secret number is ").removeprefix("The secret numbers are ")
        numbers = numbers.rstrip(".").split(", ")
        assert r["caption"] == answer_text(numbers)
        codes = np.asarray(r["tokens"], np.int32).reshape(r["n_frames"], 256)
        needle_codes = vqgan.encode(np.stack([render_needle(n) for n in numbers]))
        at = [int(np.flatnonzero((codes == c).all(axis=1))[0]) for c in needle_codes]
        assert at == sorted(at)  # the answer lists them in the order they appear
        hay = np.delete(codes, at, axis=0)
        assert (
            np.isin(hay.view([("", hay.dtype)] * 256), pool.codes.view([("", pool.codes.dtype)] * 256))
        ).all()
        ids, _, _ = format_vision(
            codes,
            r["caption"],
            kind="video",
            direction="understanding",
            tok=tok,
            layout=layout,
            prompt=QUESTION,
        )
        assert ids.size <= seq_len
    assert chat_tokens(tok, layout, most, rows[0]["caption"]) > 0.9 * seq_len - 300  # some fill the context


def test_far_needles_sends_only_that_many_to_the_start(tok: TextTokenizer):
    layout = tok.vocab_layout()
    spec = dict(needles_min=3, needles_max=3, far_share=1.0, far_depth=0.05)
    every = [plan(VideoNeedleConfig(8192, 10, **spec), tok, layout, 100, i).depths for i in range(10)]
    one = [plan(VideoNeedleConfig(8192, 10, **spec, far_needles=1), tok, layout, 100, i).depths for i in range(10)]
    assert all(max(d) <= 0.05 for d in every)
    assert all(min(d) <= 0.05 for d in one) and sum(x > 0.05 for d in one for x in d) >= 15  # the rest spread
    assert all(list(d) == sorted(d) for d in one)  # numbers still in order of appearance


def test_cli_writes_records_pack_consumes(tmp_path: Path, vision_records: list[str], tok: TextTokenizer):
    out = tmp_path / "needles" / "v.parquet"
    main(
        [
            "needle-data",
            "--modality",
            "video",
            "--records",
            str(Path(vision_records[0]).parent / "*.parquet"),
            "--seq-len",
            "2048",
            "--examples",
            "4",
            "--needles-max",
            "2",
            "--out",
            str(out),
        ]
    )
    rows = read_table(str(out), VISION_RECORD).to_pylist()
    assert len(rows) == 4 and all(
        r["kind"] == "video" and r["caption"].startswith("The secret") for r in rows
    )
    mixture = tmp_path / "mixture.yaml"
    mixture.write_text(
        "format_version: 1\nseed: 0\non_exhausted: repeat\nloss_weighting: per_example\nsources:\n"
        f"  - {{name: needles, kind: video_text, path: '{out}', weight: 1.0, understanding_share: 1.0,\n"
        f'     prompt: "{QUESTION}"}}\n'
    )
    main(
        [
            "pack",
            "--mixture",
            str(mixture),
            "--seq-len",
            "2048",
            "--stage",
            "v2k",
            "--out",
            str(tmp_path / "shards"),
        ]
    )
    import json

    manifest = json.loads((tmp_path / "shards" / "manifest.json").read_text())
    assert manifest["per_source"]["needles"]["examples"] == 4, manifest["per_source"]
    assert manifest["vqgan_id"] == rows[0]["tokenizer_id"]
    policy = manifest["policy_counts"]  # nothing truncated, split or dropped
    assert policy["dead_letters"] == 0 and not any(
        v for k, v in policy.items() if k.startswith(("trunc", "split", "drop"))
    ), policy


def test_bad_inputs_are_refused(tmp_path: Path, vision_records: list[str]):
    with pytest.raises(ValueError, match="seq_len"):
        VideoNeedleConfig(300, 1)
    with pytest.raises(ValueError, match="needles_min"):
        VideoNeedleConfig(2048, 1, needles_min=3, needles_max=2)
    with pytest.raises(SystemExit) as err:
        main(
            [
                "needle-data",
                "--modality",
                "video",
                "--seq-len",
                "2048",
                "--examples",
                "1",
                "--out",
                str(tmp_path / "x"),
            ]
        )
    assert err.value.code == 2  # --records missing
    with pytest.raises(SystemExit) as err:
        main(
            [
                "needle-data",
                "--modality",
                "video",
                "--records",
                str(tmp_path / "none-*.parquet"),
                "--seq-len",
                "2048",
                "--examples",
                "1",
                "--out",
                str(tmp_path / "x"),
            ]
        )
    assert err.value.code == 2


def test_proof_configs_match_the_format(tok: TextTokenizer):
    """configs/video-needle-proof/: the mixture asks the eval's question; each stage's seq_len
    holds its frames (3 / 16 x 3, long on to 32 / 64; tiny 4 / 8); every stage has its needle data
    and the long recipe starts with the proof's stages (it goes on from their checkpoints)."""
    import yaml

    from lwmkit.runtime.config import load_config
    from lwmkit.schemas import MixtureConfig, TrainConfig
    from lwmkit.trainer.needle_video import frames_per_length

    root = Path(__file__).resolve().parents[1] / "configs" / "video-needle-proof"
    mixture = load_config(MixtureConfig, str(root / "mixture.yaml"))
    assert mixture.sources[0].prompt == QUESTION and mixture.sources[0].understanding_share == 1.0
    stages = {}
    for train, needles, frames in (("train.yaml", "needles.yaml", [3, 16, 16, 16]),
                                   ("train-long.yaml", "needles.yaml", [3, 16, 16, 16, 32, 64, 64]),
                                   ("train-tiny.yaml", "needles-tiny.yaml", [4, 8])):  # fmt: skip
        cfg = load_config(TrainConfig, str(root / train))
        assert frames_per_length(tok, tuple(s.seq_len for s in cfg.stages), 1) == frames
        assert cfg.model.vision_vocab_size == tok.vocab_layout().vision_vocab_size
        spec = yaml.safe_load((root / needles).read_text())
        assert {s.name for s in cfg.stages} <= set(spec["stages"])
        stages[train] = cfg.stages
    long_data = yaml.safe_load((root / "needles.yaml").read_text())["stages"]
    assert set(long_data) == {s.name for s in stages["train-long.yaml"]}
    assert stages["train-long.yaml"][: len(stages["train.yaml"])] == stages["train.yaml"]


def test_needles_need_the_records_vqgan(vision_records: list[str], tok: TextTokenizer, vqgan):
    import dataclasses

    from lwmkit.schemas.errors import ContractError

    pool = read_pool(vision_records, tok.vocab_layout())
    other = dataclasses.replace(vqgan, id="0" * 64)  # the same weights under another id: another VQGAN
    with pytest.raises(ContractError, match="same --vqgan") as err:
        build_rows(VideoNeedleConfig(2048, 1), pool, tok, other)
    assert "git show" not in str(err.value)  # the records' VQGAN is no earlier default
    # records made with an earlier shipped default: the error says where to get that VQGAN back
    from lwmkit.tokenizers.vqgan_history import EARLIER_DEFAULTS, earlier_default_hint

    old_id, (rev, _) = next(iter(EARLIER_DEFAULTS.items()))
    with pytest.raises(ContractError, match=f"git show {rev}:tokenizers/data/vqgan-lwmkit-small.msgpack"):
        build_rows(VideoNeedleConfig(2048, 1), dataclasses.replace(pool, tokenizer_id=old_id), tok, vqgan)
    assert earlier_default_hint(old_id[:8]) and not earlier_default_hint(old_id[:7]) and not earlier_default_hint(None)
