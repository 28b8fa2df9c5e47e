from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from lwmkit.schemas import ContractError, VocabLayout
from lwmkit.tokenizers.vision_layout import (
    block_length,
    decode_block,
    encode_block,
    find_blocks,
    sample_frames,
)

LLAMA = VocabLayout(text_vocab_size=32000, bos_id=1, eos_id=2, vision_start_ids=(529, 4924, 29958), vision_end_ids=(1533, 4924, 29958))


def codes_strategy(max_frames: int = 4):
    return st.integers(1, max_frames).flatmap(lambda n: arrays(np.int32, (n, 256), elements=st.integers(0, 8191)))


@settings(max_examples=50, deadline=None)
@given(codes=codes_strategy())
def test_round_trip(codes):
    ids, mask = encode_block(codes, LLAMA)
    assert ids.dtype == np.int32 and mask.dtype == bool
    assert len(ids) == block_length(len(codes), LLAMA) == 6 + 257 * len(codes)
    np.testing.assert_array_equal(decode_block(ids, mask, LLAMA), codes)


@settings(max_examples=30, deadline=None)
@given(codes=codes_strategy(), prefix=st.integers(0, 20), suffix=st.integers(0, 20))
def test_blocks_are_found_in_a_stream(codes, prefix, suffix):
    ids, mask = encode_block(codes, LLAMA)
    stream_mask = np.concatenate([np.zeros(prefix, bool), mask, np.zeros(suffix, bool)])
    (start, end), = find_blocks(stream_mask)
    assert (start, end) == (prefix + 3, prefix + len(ids) - 3)


def test_lwm_layout_facts():
    codes = np.arange(2 * 256).reshape(2, 256) % 8192
    ids, mask = encode_block(codes, LLAMA)
    assert ids[:3].tolist() == [529, 4924, 29958] and ids[-3:].tolist() == [1533, 4924, 29958]
    assert ids[3 + 256] == 8192 and ids[3 + 2 * 257 - 1] == 8193
    assert not mask[:3].any() and not mask[-3:].any() and mask[3:-3].all()
    image_ids, _ = encode_block(codes[:1], LLAMA)
    assert len(image_ids) == 263  # LWM: an image costs 263 tokens


@pytest.mark.parametrize(
    "codes,message",
    [
        (np.zeros((1, 255), np.int32), "must have shape"),
        (np.full((1, 256), 8192), "codes must lie in"),
        (np.zeros(300, np.int32), "not a multiple of 256"),
    ],
)
def test_bad_codes(codes, message):
    with pytest.raises(ContractError, match=message):
        encode_block(codes, LLAMA)


def test_corrupt_blocks_are_refused():
    ids, mask = encode_block(np.zeros((2, 256), np.int32), LLAMA)
    swapped = ids.copy()
    swapped[3 + 256] = 8193  # end-of-vision where end-of-frame belongs
    with pytest.raises(ContractError, match="misplaced"):
        decode_block(swapped, mask, LLAMA)
    with pytest.raises(ContractError, match="does not open"):
        decode_block(ids[1:], mask[1:], LLAMA)
    with pytest.raises(ContractError, match="whole frames"):
        decode_block(np.delete(ids, 10), np.delete(mask, 10), LLAMA)


def test_frame_sampling_is_linspace():
    assert sample_frames(5, 10).tolist() == [0, 1, 2, 3, 4]
    assert sample_frames(100, 4).tolist() == [0, 33, 66, 99]
