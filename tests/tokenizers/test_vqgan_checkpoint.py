"""lwmkit's VQGAN checkpoint format and the LWM pickle importer (tokenizers/vqgan_checkpoint.py)."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from lwmkit.schemas.errors import ContractError
from lwmkit.tokenizers import vqgan
from lwmkit.tokenizers.vqgan_checkpoint import (
    content_hash,
    import_lwm,
    infer_lwm_config,
    read_checkpoint,
    read_lwm_pickle,
    write_checkpoint,
)


def lwm_tree(hidden=128, mult=(1, 2, 2, 4, 6), blocks=2, z=64, n_codes=8192, dim=64, rng=None):
    """LWM's parameter tree, written out from LWM's module layout (shared/LWM_FACTS.md), not from lwmkit's model.

    Leaves are shape tuples, or random float32 arrays when ``rng`` is given.
    """

    def leaf(*shape):
        return shape if rng is None else (rng.standard_normal(shape) * 0.05).astype(np.float32)

    def conv(k, cin, cout):
        return {"kernel": leaf(k, k, cin, cout), "bias": leaf(cout)}

    def gn(c):
        return {"scale": leaf(c), "bias": leaf(c)}

    def resnet(cin, cout):
        block = {
            "GroupNorm_0": gn(cin),
            "Conv_0": conv(3, cin, cout),
            "GroupNorm_1": gn(cout),
            "Conv_1": conv(3, cout, cout),
        }
        if cin != cout:
            block["Conv_2"] = conv(1, cin, cout)
        return block

    widths = [hidden * m for m in mult]
    enc, c = {"Conv_0": conv(3, 3, hidden)}, hidden
    for i, w in enumerate(widths):
        level = {}
        for b in range(blocks):
            level[f"ResnetBlock_{b}"], c = resnet(c, w), w
        if i < len(widths) - 1:
            level["Downsample_0"] = {"Conv_0": conv(3, c, c)}
        enc[f"DownsamplingBlock_{i}"] = level
    enc.update(
        MidBlock_0={"ResnetBlock_0": resnet(c, c), "ResnetBlock_1": resnet(c, c)},
        GroupNorm_0=gn(c),
        Conv_1=conv(3, c, z),
    )
    c = widths[-1]
    dec = {
        "Conv_0": conv(3, z, c),
        "MidBlock_0": {"ResnetBlock_0": resnet(c, c), "ResnetBlock_1": resnet(c, c)},
    }
    for j, i in enumerate(reversed(range(len(widths)))):  # created widest first: UpsamplingBlock_0 is level 4
        level = {}
        for b in range(blocks + 1):
            level[f"ResnetBlock_{b}"], c = resnet(c, widths[i]), widths[i]
        if i != 0:
            level["Upsample_0"] = {"Conv_0": conv(3, c, c)}
        dec[f"UpsamplingBlock_{j}"] = level
    dec.update(GroupNorm_0=gn(c), Conv_1=conv(3, c, 3))
    return {"encoder": enc, "decoder": dec, "quantize": {"embeddings": leaf(n_codes, dim)},
            "quant_conv": conv(1, z, dim), "post_quant_conv": conv(1, dim, z)}  # fmt: skip


def _flat(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        path = f"{prefix}/{k}" if prefix else k
        out.update(_flat(v, path) if isinstance(v, dict) else {path: v})
    return out


def test_lwm_full_architecture_has_lwms_names_shapes_and_146m_params():
    ours = {k: tuple(v.shape) for k, v in _flat(vqgan.param_shapes(vqgan.lwm_config())).items()}
    theirs = _flat(lwm_tree())
    assert ours == theirs
    assert round(sum(int(np.prod(s)) for s in theirs.values()) / 1e6, 1) == 146.2
    assert theirs["decoder/UpsamplingBlock_0/ResnetBlock_0/Conv_0/kernel"] == (3, 3, 768, 768)
    assert "Upsample_0" not in lwm_tree()["decoder"]["UpsamplingBlock_4"]


def test_write_read_round_trip_keeps_params_and_id(tmp_path):
    cfg = vqgan.small_config()
    params = vqgan.init_params(cfg, seed=1)
    ck = write_checkpoint(str(tmp_path / "a.msgpack"), cfg, params, meta={"note": "x"})
    back = read_checkpoint(str(tmp_path / "a.msgpack"))
    assert back.id == ck.id == content_hash(cfg, back.params) and len(back.id) == 64
    assert back.config == cfg and back.meta == {"note": "x"}
    for k, v in _flat(back.params).items():
        np.testing.assert_array_equal(v, np.asarray(_flat(params)[k]))
    # Same content, same id; other content, other id.
    assert write_checkpoint(str(tmp_path / "b.msgpack"), cfg, params).id == ck.id
    half = write_checkpoint(str(tmp_path / "c.msgpack"), cfg, params, store_dtype="float16")
    assert (
        half.id != ck.id
        and (tmp_path / "c.msgpack").stat().st_size < 0.6 * (tmp_path / "a.msgpack").stat().st_size
    )


def test_corrupt_wrong_and_missing_files_are_refused_clearly(tmp_path):
    cfg = vqgan.small_config()
    path = tmp_path / "a.msgpack"
    write_checkpoint(str(path), cfg, vqgan.init_params(cfg))
    blob = bytearray(path.read_bytes())
    blob[-100] ^= 0xFF  # flip bits inside the last parameter's data
    bad = tmp_path / "bad.msgpack"
    bad.write_bytes(bytes(blob))
    with pytest.raises(ContractError, match="does not match the recorded id"):
        vqgan.load(bad)
    (tmp_path / "junk.msgpack").write_bytes(b"not a checkpoint")
    with pytest.raises(ContractError, match="junk.msgpack"):
        read_checkpoint(str(tmp_path / "junk.msgpack"))
    (tmp_path / "lwm.pkl").write_bytes(pickle.dumps({"encoder": {}}))
    with pytest.raises(ContractError, match="import-lwm"):
        vqgan.load(tmp_path / "lwm.pkl")
    with pytest.raises(ContractError, match="not found"):
        vqgan.load(tmp_path / "missing.msgpack")
    wrong = vqgan.init_params(cfg)
    wrong["quantize"]["embeddings"] = np.zeros((7, 32), np.float32)
    with pytest.raises(ContractError, match="quantize/embeddings"):
        write_checkpoint(str(tmp_path / "w.msgpack"), cfg, wrong)


@pytest.mark.slow
def test_import_lwm_pickle_round_trips_and_loads(tmp_path):
    rng = np.random.default_rng(0)
    tree = lwm_tree(hidden=32, n_codes=512, rng=rng)  # LWM's names and levels, narrower widths
    src = tmp_path / "vqgan"
    src.write_bytes(pickle.dumps(tree, protocol=4))
    ck = import_lwm(str(src), str(tmp_path / "lwm.msgpack"))
    assert ck.config == vqgan.VQGANConfig(hidden_channels=32, num_embeddings=512)
    loaded = read_checkpoint(str(tmp_path / "lwm.msgpack"))
    assert _flat(loaded.params).keys() == _flat(tree).keys()
    for k, v in _flat(tree).items():  # conversion is lossless: float32 in, the same float32 out
        np.testing.assert_array_equal(_flat(loaded.params)[k], v)
    tok = vqgan.load(tmp_path / "lwm.msgpack", chunk=1)
    codes = tok.encode(rng.integers(0, 256, (1, 256, 256, 3), dtype=np.uint8))
    assert codes.shape == (1, 256) and 0 <= codes.min() and codes.max() < 512


def test_import_accepts_jax_arrays_and_frozen_dicts_in_the_pickle(tmp_path):
    import jax.numpy as jnp
    from flax.core import freeze

    tree = lwm_tree(hidden=32, n_codes=64, rng=np.random.default_rng(1))
    jtree = freeze({"encoder": {"Conv_0": {"kernel": jnp.asarray(tree["encoder"]["Conv_0"]["kernel"])}}})
    src = tmp_path / "vqgan"
    src.write_bytes(pickle.dumps(jtree))
    got = read_lwm_pickle(str(src))
    np.testing.assert_array_equal(got["encoder"]["Conv_0"]["kernel"], tree["encoder"]["Conv_0"]["kernel"])
    assert type(got) is dict and type(got["encoder"]["Conv_0"]["kernel"]) is np.ndarray


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _EvilEval:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({str(self.marker)!r}, 'w')",))


@pytest.mark.parametrize("evil", [_Evil, _EvilEval])
def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path, evil):
    marker = tmp_path / "pwned"
    src = tmp_path / "vqgan"
    src.write_bytes(pickle.dumps({"encoder": {"Conv_0": {"kernel": evil(marker)}}}))
    with pytest.raises(ContractError, match=r"refused to load global (posix\.system|builtins\.eval)"):
        import_lwm(str(src), str(tmp_path / "out.msgpack"))
    assert not marker.exists()
    assert not (tmp_path / "out.msgpack").exists()


def test_non_lwm_trees_are_refused(tmp_path):
    src = tmp_path / "vqgan"
    src.write_bytes(pickle.dumps({"encoder": {"weights": np.zeros(3, np.float32)}}))
    with pytest.raises(ContractError, match="LWM's VQGAN parameter layout"):
        import_lwm(str(src), str(tmp_path / "o.msgpack"))
    src.write_bytes(pickle.dumps({"encoder": [1, 2]}))
    with pytest.raises(ContractError, match="field 'encoder'"):
        read_lwm_pickle(str(src))
    tree = lwm_tree(hidden=32, n_codes=64, rng=np.random.default_rng(2))
    del tree["decoder"]["Conv_1"]
    src.write_bytes(pickle.dumps(tree))
    with pytest.raises(ContractError, match="decoder/Conv_1"):
        import_lwm(str(src), str(tmp_path / "o.msgpack"))
    assert infer_lwm_config(vqgan.param_shapes(vqgan.lwm_config()), "x") == vqgan.lwm_config()


def test_cli_import_lwm_refuses_a_malicious_pickle_with_exit_2(tmp_path):
    marker = tmp_path / "pwned"
    src = tmp_path / "vqgan"
    src.write_bytes(pickle.dumps(_Evil(marker)))
    proc = subprocess.run([sys.executable, "-m", "lwmkit.cli", "vqgan", "import-lwm", str(src), str(tmp_path / "o")],
                          capture_output=True, text=True, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "refused to load global posix.system" in proc.stderr and "Traceback" not in proc.stderr
    assert not marker.exists()
