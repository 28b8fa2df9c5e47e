"""Exit codes a CI gate can trust: ``lwmkit audit`` exits 0 pass, 1 drift, 3 corrupt (any
malformed array, .npy header or member), 2 unusable input, 4 internal error; a hostile header
is refused before anything is allocated and an unknown member is never read; ``lwmkit train``
refuses a corrupt shard with exit 2 naming it."""

from __future__ import annotations

import io
import json
import shutil
import tracemalloc

import numpy as np
import pytest

from lwmkit.pipelines.audit.job import AuditConfig, audit
from lwmkit.schemas import ContractError, ShardSet


def _npy_header_only(shape: tuple[int, ...], descr: str = "<i4", data: bytes = b"\0" * 64) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue() + data


def _replace(member_suffix: str, data: bytes, only_first: bool = True):
    def edit(members):
        out, done = [], False
        for name, blob in members:
            if name.endswith(member_suffix) and not (only_first and done):
                blob, done = data, True
            out.append((name, blob))
        return out

    return edit


@pytest.fixture
def copy_set(packed_set, tmp_path):
    dest = tmp_path / "set"
    shutil.copytree(packed_set["shards"], dest)
    return dest


def _audit_cli(hk, path, *extra):
    proc = hk.lwmkit("audit", str(path), "-q", *extra)
    return proc.returncode, proc.stdout + proc.stderr


def test_a_clean_set_passes_with_0(hk, copy_set):
    code, out = _audit_cli(hk, copy_set)
    assert code == 0, out
    assert f"PASS {copy_set}" in out


@pytest.mark.parametrize(
    "member, data, message",
    [
        (
            "input_ids.npy",
            _npy_header_only((10**11,)),
            "input_ids': has shape (100000000000,), expected (512,)",
        ),
        (
            "segment_ids.npy",
            _npy_header_only((512,), "<f8", b"\0" * 4096),
            "has dtype float64, expected int32",
        ),
        ("positions.npy", _npy_header_only((512,), "|O"), "it holds Python objects"),
        ("loss_weights.npy", b"\x93NUMPY\x01\x00\xff\xff{garbage", "is not a plain .npy array"),
        (
            "target_ids.npy",
            _npy_header_only((512,), data=b"\0" * 100),
            "holds 100 data bytes, its header says 2048",
        ),
        (
            "meta.json",
            b'{"key": "x", "seq_len": 100000000000, "segments": []}',
            "is 100000000000, the manifest says 512",
        ),
        ("meta.json", b"[" * 100_000, "meta.json is not JSON"),
    ],
    ids=["huge_shape", "wrong_dtype", "pickled", "bad_header", "short_data", "meta_seq_len", "meta_nesting"],
)
def test_a_malformed_member_is_corrupt_3_named_and_allocates_nothing(hk, copy_set, member, data, message):
    shard = hk.tamper(copy_set, 0, _replace(member, data))
    tracemalloc.start()
    result = audit(str(copy_set), config=AuditConfig(runner="local"))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert result.exit_code == 3 and result.verdict == "corrupt"
    problems = [f.message for f in result.findings if f.kind == "corrupt_shard" and f.subject == shard]
    assert problems and message in problems[0], result.findings
    assert peak < 64 << 20, f"audit peaked at {peak / 2**20:.0f} MiB of Python allocations"
    code, out = _audit_cli(hk, copy_set)
    assert code == 3 and f"CORRUPT {copy_set}" in out and "Traceback" not in out


def test_an_unknown_member_is_corrupt_and_never_read_whole(hk, copy_set):
    blob = b"\0" * (200 << 20)  # 200 MB beside a sample's arrays
    shard = hk.tamper(
        copy_set,
        0,
        lambda members: [members[0], (members[0][0].split(".")[0] + ".payload.bin", blob), *members[1:]],
    )
    tracemalloc.start()
    result = audit(str(copy_set), config=AuditConfig(runner="local"))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert result.exit_code == 3
    (problem,) = [f.message for f in result.findings if f.subject == shard and f.kind == "corrupt_shard"]
    assert "payload.bin (209715200 bytes) not a packed-sample member; not read" in problem
    assert peak < 32 << 20, f"audit peaked at {peak / 2**20:.0f} MiB: the unknown member was read"


def test_drift_is_1_and_only_drift(hk, copy_set, packed_set, tmp_path):
    mixture = tmp_path / "skewed.yaml"
    import yaml

    mix = yaml.safe_load(packed_set["mixture"].read_text())
    mix["sources"][0]["weight"] = mix["sources"][0]["weight"] * 50
    mixture.write_text(yaml.safe_dump(mix))
    code, out = _audit_cli(hk, copy_set, "--mixture", str(mixture))
    assert code == 1 and f"DRIFT {copy_set}" in out, out


@pytest.mark.parametrize("case", ["no_manifest", "bad_mixture", "unwritable_report"])
def test_unusable_input_is_2_with_one_line(hk, copy_set, tmp_path, case):
    extra: tuple[str, ...] = ()
    path = copy_set
    if case == "no_manifest":
        path = tmp_path / "empty"
        path.mkdir()
    elif case == "bad_mixture":
        (tmp_path / "m.yaml").write_text("sources: [\n")
        extra = ("--mixture", str(tmp_path / "m.yaml"))
    else:
        (tmp_path / "blocker").write_text("a file where the report's folder should be")
        extra = ("--json", str(tmp_path / "blocker" / "a.json"))
    proc = hk.lwmkit("audit", str(path), "-q", *extra)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert (case != "unwritable_report") or "blocker" in errors[0]


def test_a_crash_inside_audit_is_4_never_1(copy_set, monkeypatch, capsys):
    from lwmkit.cli import main
    from lwmkit.pipelines.audit import job as audit_module

    def broken(*args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(audit_module, "recount", broken)  # fault injection: any bug in the audit
    with pytest.raises(SystemExit) as exc:
        main(["audit", str(copy_set), "-q"])
    assert exc.value.code == 4
    err = capsys.readouterr().err
    (line,) = [x for x in err.splitlines() if "error:" in x]
    assert "internal error in audit (KeyError: 'a bug'); full trace in " in line
    log = line.rsplit("full trace in ", 1)[1].strip()
    assert "raise KeyError" in open(log).read()


def test_help_documents_every_exit_code(hk):
    proc = hk.lwmkit("audit", "--help")
    text = " ".join(proc.stdout.split())
    for code in ("0 pass", "1 a source", "3 integrity", "2 unusable", "4 internal error"):
        assert code in text, code


def test_train_refuses_a_corrupt_shard_with_2_naming_it(hk, copy_set, tmp_path):
    n_shards = len(json.loads((copy_set / "manifest.json").read_text())["shards"])
    names = [
        hk.tamper(copy_set, i, _replace("input_ids.npy", _npy_header_only((10**11,)), False))
        for i in range(n_shards)
    ]
    shard = names[0]  # every sample of every shard: the first batch meets one whatever its rows
    with pytest.raises(ContractError, match=shard):
        for _ in ShardSet.open(str(copy_set)).iter_shard(0):
            pass
    config = tmp_path / "train.yaml"
    config.write_text(_TRAIN.format(data=copy_set, ckpt=tmp_path / "ck"))
    env = {**__import__("os").environ, "JAX_PLATFORMS": "cpu"}
    proc = hk.lwmkit("train", str(config), env=env, timeout=600)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(errors) == 1 and any(n in errors[0] for n in names) and "(100000000000,)" in errors[0], errors
    assert "Traceback" not in proc.stderr and "MemoryError" not in proc.stderr


_TRAIN = """
model: {{text_vocab_size: 8000, vision_vocab_size: 8448, d_model: 32, n_layers: 1, n_heads: 2, mlp_dim: 64,
        attention_block: 128, loss_chunk: 512}}
mesh: {{data: 1, fsdp: -1, tensor: 1, sequence: 1}}
optimizer: {{lr: 1.0e-3, warmup_steps: 1, schedule: constant}}
checkpoint: {{dir: {ckpt}, every_steps: 100, keep: 1}}
seed: 0
stages:
  - {{name: s512, seq_len: 512, rope_theta: 10000.0, steps: 2, batch_size: 2, data: {data}}}
"""


def test_reports_json_is_consistent_with_exit(hk, copy_set, tmp_path):
    out = tmp_path / "r.json"
    code, _ = _audit_cli(hk, copy_set, "--json", str(out))
    report = json.loads(out.read_text())
    assert report["exit_code"] == code == 0 and report["verdict"] == "pass"
