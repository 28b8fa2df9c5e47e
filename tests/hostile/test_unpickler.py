"""Unpickler limits: ``lwmkit vqgan import-lwm`` on a pickle nested 200k deep, one that holds
itself, or an ndarray whose header claims 2**40 elements exits 2 with one line, allocates
nothing for the claim and writes no output."""

from __future__ import annotations

import pickle
import struct
import tracemalloc

import numpy as np
import pytest

from lwmkit.schemas import ContractError
from lwmkit.tokenizers.vqgan_checkpoint import read_lwm_pickle


def _deep(n: int) -> bytes:
    key = b"X" + struct.pack("<I", 1) + b"a"  # BINUNICODE 'a'
    return b"\x80\x04" + (b"}" + key) * n + b"}" + b"s" * n + b"."  # {'a': {'a': ... {}}}


def _cycle() -> bytes:
    return b"\x80\x04}q\x00X\x01\x00\x00\x00ah\x00s."  # d = {'a': d}


class _Array:
    """Pickles as numpy does (``_reconstruct`` + ``__setstate__``) with the shapes we choose."""

    def __init__(self, placeholder: tuple, shape: tuple, data: bytes):
        self.placeholder, self.shape, self.data = placeholder, shape, data

    def __reduce__(self):
        from numpy._core import multiarray

        state = (1, self.shape, np.dtype("f4"), False, self.data)
        return multiarray._reconstruct, (np.ndarray, self.placeholder, b"b"), state


CASES = {
    "nested_200k": (_deep(200_000), "nests deeper than 32 levels"),
    "holds_itself": (_cycle(), "nests deeper than 32 levels (or holds itself)"),
    "array_2_40": (pickle.dumps({"w": _Array((0,), (2**40,), b"\0" * 16)}, protocol=4),
                   "ndarray of shape (1099511627776,) exceeds 268435456 elements"),
    "placeholder_2_40": (pickle.dumps({"w": _Array((2**40,), (4,), b"\0" * 16)}, protocol=4),
                         "ndarray of shape (1099511627776,) exceeds"),
    "short_data": (pickle.dumps({"w": _Array((0,), (1000,), b"\0" * 16)}, protocol=4),
                   "ndarray of shape (1000,) carries 16 data bytes, not 4000"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_pickles_are_refused_in_one_line_without_allocating(case, hk, tmp_path):
    blob, message = CASES[case]
    src, out = tmp_path / "vqgan.pkl", tmp_path / "out.msgpack"
    src.write_bytes(blob)
    tracemalloc.start()
    with pytest.raises(ContractError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_lwm_pickle(str(src))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 256 << 20, f"{peak / 2**20:.0f} MiB allocated for a hostile claim"
    proc = hk.lwmkit("vqgan", "import-lwm", str(src), str(out))
    errors = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(errors) == 1 and str(src) in errors[0] and message in errors[0]
    assert "Traceback" not in proc.stderr
    assert not out.exists()


def test_a_real_numpy_array_still_unpickles(tmp_path):
    tree = {"params": {"encoder": {"w": np.arange(12, dtype=np.float32).reshape(3, 4)}}}
    src = tmp_path / "ok.pkl"
    src.write_bytes(pickle.dumps(tree, protocol=4))
    got = read_lwm_pickle(str(src))
    assert type(got["encoder"]["w"]) is np.ndarray
    np.testing.assert_array_equal(got["encoder"]["w"], tree["params"]["encoder"]["w"])
