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
