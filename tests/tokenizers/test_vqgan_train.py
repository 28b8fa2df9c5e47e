"""Training (tokenizers/vqgan_train.py) and frame reading (tokenizers/vqgan_frames.py)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from lwmkit.schemas.errors import ContractError
from lwmkit.tokenizers import vqgan
from lwmkit.tokenizers.vqgan_frames import (
    center_crop,
    frame_pool,
    installed_images,
    read_image,
    read_video_frames,
)
from lwmkit.tokenizers.vqgan_quality import psnr
from lwmkit.tokenizers.vqgan_synthetic import synthetic_frames
from lwmkit.tokenizers.vqgan_train import VQGANTrainConfig, random_crops, restart_dead_codes, train

# A tiny model with LWM's layout (5 levels) so training compiles and runs in seconds.
TINY = vqgan.VQGANConfig(resolution=64, hidden_channels=8, channel_mult=(1, 1, 2, 2, 2), num_res_blocks=1,
                         z_channels=8, num_embeddings=64, embed_dim=8, norm_groups=4)  # fmt: skip


def test_read_video_frames_scales_the_short_side_and_samples_linspace(sample_dir):
    clip = sample_dir / "videos" / "carphone_pristine.mp4"  # 176x144, 120 frames
    frames = read_video_frames(clip, max_frames=5)
    assert frames.shape == (5, 256, 313, 3) and frames.dtype == np.uint8
    crop = center_crop(frames)
    assert crop.shape == (5, 256, 256, 3)
    np.testing.assert_array_equal(crop[0], frames[0, :, 28:284])
    with pytest.raises(ValueError, match="smaller than"):
        center_crop(frames[:, :100])


def test_installed_images_are_read_as_rgb(tmp_path):
    from PIL import Image

    Image.fromarray(np.full((100, 300), 7, np.uint8)).save(tmp_path / "grey.png")  # greyscale -> RGB
    img = read_image(tmp_path / "grey.png", short_side=50)
    assert img.shape == (50, 150, 3) and int(img.max()) == 7
    for path in installed_images():
        assert min(read_image(path).shape[:2]) == 256


def test_restart_moves_exactly_the_dead_codes_onto_latents():
    params = {"quantize": {"embeddings": np.zeros((6, 2), np.float32)}, "other": 1}
    usage = np.array([3, 0, 1, 0, 0, 9])
    latents = np.array([[[10.0, 10.0], [20.0, 20.0]]], np.float32)
    new, moved = restart_dead_codes(params, usage, latents, np.random.default_rng(0), noise=0.0)
    table = np.asarray(new["quantize"]["embeddings"])
    assert moved == 3
    np.testing.assert_array_equal(table[[0, 2, 5]], 0.0)
    assert all(tuple(row) in {(10.0, 10.0), (20.0, 20.0)} for row in table[[1, 3, 4]])
    assert restart_dead_codes(new, np.ones(6), latents, np.random.default_rng(0))[1] == 0


def test_random_crops_are_deterministic_per_seed():
    pool = [np.arange(40 * 50 * 3, dtype=np.uint8).reshape(40, 50, 3)]
    a = random_crops(pool, 4, 16, np.random.default_rng(1))
    np.testing.assert_array_equal(a, random_crops(pool, 4, 16, np.random.default_rng(1)))
    assert a.shape == (4, 16, 16, 3)


def test_train_config_is_validated():
    with pytest.raises(ValueError, match="crop 100"):
        VQGANTrainConfig(crop=100)
    with pytest.raises(ValueError, match="steps must be positive"):
        VQGANTrainConfig(steps=0)
    with pytest.raises(ValueError, match="synthetic_grey_share must be in"):
        VQGANTrainConfig(synthetic_grey_share=-0.1)
    with pytest.raises(ValueError, match="synthetic_share must be in"):
        VQGANTrainConfig(synthetic_frames=10)  # frames but no share of the batch: a silent no-op
    with pytest.raises(ValueError, match="synthetic_share must be in"):
        VQGANTrainConfig(synthetic_frames=10, synthetic_share=1.0)
    with pytest.raises(ValueError, match="must be >= 0"):
        VQGANTrainConfig(large_crop_every=-1)
    with pytest.raises(ValueError, match="must be >= 0"):
        VQGANTrainConfig(stop_after=-1)


def test_random_crops_draw_the_extra_pool_by_share():
    pool, extra = [np.zeros((20, 20, 3), np.uint8)], [np.full((20, 20, 3), 9, np.uint8)]
    crops = random_crops(pool, 400, 8, np.random.default_rng(0), extra, 0.25)
    share = (crops[:, 0, 0, 0] == 9).mean()
    assert 0.18 < share < 0.32
    assert (random_crops(pool, 50, 8, np.random.default_rng(0), extra, 0.0) == 0).all()


def test_fine_tuning_starts_from_a_checkpoint_with_rendered_frames_and_snapshots(tmp_path):
    """init_from + synthetic frames + full-resolution steps + checkpoint_every, on a tiny model in seconds."""
    pool = synthetic_frames(8, seed=9, size=64)
    base = VQGANTrainConfig(model=TINY, steps=2, batch_size=4, crop=32, warmup_steps=1, restart_every=0,
                            log_every=1, store_dtype="float32")  # fmt: skip
    first = train(pool, base, tmp_path / "a.msgpack")
    cfg = dataclasses.replace(base, init_from=str(tmp_path / "a.msgpack"), steps=4, synthetic_frames=6,
                              synthetic_share=0.5, large_crop_every=2, checkpoint_every=3)  # fmt: skip
    second = train(pool, cfg, tmp_path / "b.msgpack")
    assert second.meta["init_from_id"] == first.id and second.meta["steps_done"] == 4
    still = train(
        pool, dataclasses.replace(cfg, learning_rate=1e-12, checkpoint_every=0), tmp_path / "d.msgpack"
    )
    for key, value in _flat(first.params).items():  # a ~zero learning rate leaves exactly where it started
        np.testing.assert_allclose(_flat(still.params)[key], value, atol=1e-6, err_msg=key)
    assert vqgan.load(tmp_path / "b.msgpack").id == second.id
    cut = train(pool, dataclasses.replace(cfg, stop_after=2, checkpoint_every=0), tmp_path / "e.msgpack")
    assert cut.meta["steps_done"] == 2  # the schedule still spans 4 steps
    with pytest.raises(ContractError, match="shape"):
        train(
            pool,
            dataclasses.replace(cfg, model=dataclasses.replace(TINY, embed_dim=4)),
            tmp_path / "c.msgpack",
        )


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        out.update(_flat(v, f"{prefix}{k}/") if isinstance(v, dict) else {prefix + k: np.asarray(v)})
    return out


def test_fit_steps_to_budget_sizes_the_schedule_and_rendered_frames_can_come_from_outside(tmp_path):
    pool = synthetic_frames(8, seed=9, size=64)
    rendered = synthetic_frames(6, seed=2, size=64, grey_share=0.5)  # made elsewhere (the GPU bench packs them)
    cfg = VQGANTrainConfig(model=TINY, steps=100_000, batch_size=4, crop=32, warmup_steps=2, restart_every=0,
                           log_every=10, store_dtype="float32", synthetic_frames=6, synthetic_share=0.5,
                           large_crop_every=2, time_budget_s=25.0, fit_steps_to_budget=True)  # fmt: skip
    ckpt = train(pool, cfg, tmp_path / "fit.msgpack", rendered=rendered)
    fitted = ckpt.meta["train_config"]["steps"]
    assert 2 + 16 < fitted < 100_000  # timed after both batch shapes compiled, then sized to the budget
    assert ckpt.meta["steps_done"] <= fitted and ckpt.meta["seconds"] < 25.0 + 5.0
    with pytest.raises(ValueError, match="given 5 rendered frames, its config asks for synthetic_frames: 6"):
        train(pool, cfg, None, rendered=rendered[:5])
    with pytest.raises(ValueError, match="fit_steps_to_budget needs a time_budget_s"):
        VQGANTrainConfig(fit_steps_to_budget=True)


@pytest.mark.slow
def test_tiny_training_run_learns_tracks_usage_and_writes_a_loadable_checkpoint(tmp_path, sample_dir):
    pool = frame_pool([sample_dir / "videos" / "carphone_pristine.mp4"], max_frames=8, short_side=64)
    cfg = VQGANTrainConfig(model=TINY, steps=200, batch_size=8, crop=32, learning_rate=3e-3, warmup_steps=5,
                           restart_every=10, log_every=40, store_dtype="float32")  # fmt: skip
    ckpt = train(pool, cfg, tmp_path / "tiny.msgpack", {"note": "test"})
    history = ckpt.meta["history"]
    assert [h["step"] for h in history] == [40, 80, 120, 160, 200]
    # it learns: VQ training is chaotic (a rounding change moves which code wins, and the trajectory
    # with it), and each mse is one batch's, so compare the last two logs' mean with the first
    assert (history[-1]["mse"] + history[-2]["mse"]) / 2 < 0.8 * history[0]["mse"], history
    assert history[-1]["restarted"] > 0 and all(0 < h["usage"] <= 1 for h in history)
    tok = vqgan.load(tmp_path / "tiny.msgpack")
    assert tok.id == ckpt.id and ckpt.meta["note"] == "test"
    frames = center_crop(np.stack(pool[:4]), 64)
    codes = tok.encode(frames)
    assert codes.shape == (4, 16) and codes.max() < 64
    assert psnr(frames, tok.decode(codes)).mean() > 12  # untrained: ~8 dB; this run measured ~14


@pytest.mark.parametrize("name", ["vqgan-small", "vqgan-small-v2", "vqgan-small-v2-anneal", "vqgan-small-v3",
                                  "vqgan-base-gpu"])  # fmt: skip
def test_shipped_recipes_load_and_chain(name):
    """Every VQGAN recipe in configs/ is a valid VQGANTrainConfig; the small default's stages chain, same shapes."""
    from pathlib import Path

    from lwmkit.runtime.config import load_config
    from lwmkit.tokenizers.vqgan import small_config

    cfg = load_config(VQGANTrainConfig, str(Path(__file__).resolve().parents[2] / "configs" / f"{name}.yaml"))
    if name.startswith("vqgan-small"):
        # same parameter shapes (stage 1 normalised in 8 groups, later stages in 4: GroupNorm has no own params)
        assert dataclasses.replace(cfg.model, norm_groups=4) == small_config()
        assert cfg.init_from == {"vqgan-small": "", "vqgan-small-v2": "runs/vqgan-stage1.msgpack",
                                 "vqgan-small-v2-anneal": "runs/vqgan-stage2.msgpack",
                                 "vqgan-small-v3": "runs/vqgan-stage3.msgpack"}[name]  # fmt: skip
    else:
        assert cfg.model.num_embeddings == 8192 and cfg.synthetic_grey_share > 0
