"""FLOP accounting: LLaMA-2-7B figures by hand, both causal conventions, MFU."""

from __future__ import annotations

import pytest

from lwmkit.schemas.training import ModelConfig
from lwmkit.trainer.flops import matmul_params, mfu, model_flops_per_token, step_flops

LLAMA7B = ModelConfig(vision_vocab_size=0)


def test_llama2_7b_counts():
    # all but the input embedding and the 65 RMSNorm scales
    assert matmul_params(LLAMA7B) == 6_738_415_616 - 32000 * 4096 - 65 * 4096
    attn_full = 4 * 4096 * 4096 * 32  # QK^T + PV, fwd, L = 4096
    dense = 2 * matmul_params(LLAMA7B)
    assert model_flops_per_token(LLAMA7B, 4096, causal_halved=False) == pytest.approx(3 * (dense + attn_full))
    assert model_flops_per_token(LLAMA7B, 4096, causal_halved=True) == pytest.approx(3 * (dense + attn_full / 2))
    assert model_flops_per_token(LLAMA7B, 4096, training=False) == pytest.approx(dense + attn_full / 2)


def test_step_flops_reports_both_conventions_and_vision_head():
    lwm = ModelConfig()
    f = step_flops(lwm, 32768, 2)
    assert f.tokens == 65536
    assert f.total_full - f.total_halved == pytest.approx(f.attention_full / 2)
    used = step_flops(lwm, 32768, 2, heads="used")
    assert f.dense - used.dense == pytest.approx(3 * 2 * 4096 * 8448 * 65536)  # the vision head is computed too


def test_mfu():
    assert mfu(1e12, 2.0, 4, 1e12) == pytest.approx(0.125)
    with pytest.raises(ValueError):
        mfu(1.0, 0.0, 1, 1.0)


# ----------------------------------------------------------------------------- honest MFU
def test_vendor_peaks_by_device_kind_and_dtype():
    from lwmkit.trainer.flops import vendor_peak

    assert vendor_peak("NVIDIA H200", "bfloat16") == 989e12
    assert vendor_peak("NVIDIA H100 80GB HBM3", "bfloat16") == 989e12
    assert vendor_peak("NVIDIA H100 PCIe", "bfloat16") == 756e12  # not the SXM figure
    assert vendor_peak("NVIDIA A100-SXM4-80GB", "float32") == 19.5e12
    assert vendor_peak("TPU v5 lite", "bfloat16") == 197e12
    assert vendor_peak("TPU v5 lite", "float32") is None and vendor_peak("cpu", "bfloat16") is None


def test_peak_is_the_larger_of_table_and_measured():
    from lwmkit.trainer.flops import choose_peak

    peak, source = choose_peak("NVIDIA H200", "bfloat16", 760e12)
    assert peak == 989e12 and "vendor" in source and "760.0T" in source
    peak, source = choose_peak("NVIDIA H200", "float32", 68e12)  # issue 21's fp32 matmul beat the table
    assert peak == 68e12 and "measured" in source
    assert choose_peak("TPU v4", "float32", 90e12)[0] == 90e12  # no vendor figure: measured
    with pytest.raises(ValueError):
        choose_peak("cpu", "bfloat16", None)


def _record(tmp_path, peak: float, flops: float) -> tuple[dict, str]:
    import json

    from lwmkit.trainer.logs import TrainLogger

    log = TrainLogger(str(tmp_path), peak_flops=peak, peak_source="test", n_devices=1)
    rec = log.record(stage="s", step=1, steps=1, global_step=1, metrics={"loss": 1.0}, tokens=8192, seconds=1.0,
                     data_seconds=0.0, flops=flops, lr=1e-4)
    log.close()
    lines = [json.loads(x) for x in (tmp_path / "train.jsonl").read_text().splitlines()]
    return rec, json.dumps(lines)


def test_bf16_model_on_bf16_peak(tmp_path, capsys):
    """Issue 21's H200 run: 185 TFLOP/s achieved by a bf16 model printed 272.6% over an fp32
    matmul; over the bf16 peak of the same chip it is 18.7%."""
    from lwmkit.trainer.flops import choose_peak

    peak, _ = choose_peak("NVIDIA H200", "bfloat16", None)
    rec, _ = _record(tmp_path, peak, 2.726 * 68e12)
    assert rec["mfu"] == pytest.approx(0.1874, abs=1e-3)
    assert "MFU 18.7%" in capsys.readouterr().err


def test_mfu_above_100_percent_is_never_printed(tmp_path, capsys):
    rec, jsonl = _record(tmp_path, 68e12, 185e12)  # a peak too low for the work done
    out = capsys.readouterr().err
    assert rec["mfu"] is None and '"mfu": null' in jsonl
    assert "MFU n/a (above peak)" in out and "exceeds the peak" in out
    assert "272" not in out


def test_logger_without_tensorboardx_keeps_the_jsonl(tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # as on a bare accelerator image: import fails
    rec, jsonl = _record(tmp_path, 1e12, 1e11)
    assert rec["mfu"] == pytest.approx(0.1) and '"mfu": 0.1' in jsonl
    assert "tensorboardX is not installed" in capsys.readouterr().err
    assert not (tmp_path / "tensorboard").exists()
