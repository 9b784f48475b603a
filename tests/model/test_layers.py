"""Relative position buckets against transformers' implementation; attention masks by hand."""

import numpy as np
import pytest
import torch
from transformers.models.t5.modeling_t5 import T5Attention

from flan_jax.model.attention import attention_mask, resolve_backend
from flan_jax.model.layers import relative_position_bucket


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("num_buckets,max_distance", [(32, 128), (16, 20), (8, 300)])
def test_relative_position_bucket_matches_hf(bidirectional, num_buckets, max_distance):
    rel = np.arange(-400, 401)[None, :]
    got = relative_position_bucket(rel.astype(np.int32), bidirectional=bidirectional,
                                   num_buckets=num_buckets, max_distance=max_distance)
    want = T5Attention._relative_position_bucket(
        torch.tensor(rel), bidirectional=bidirectional, num_buckets=num_buckets,
        max_distance=max_distance).numpy()
    np.testing.assert_array_equal(np.asarray(got), want)


def test_attention_mask_segments_padding_and_causality():
    # One row: segments [1, 1, 2, 2, 2, 0 (pad)], positions restart per segment.
    seg = np.array([[1, 1, 2, 2, 2, 0]])
    pos = np.array([[0, 1, 0, 1, 2, 0]])
    full = np.asarray(attention_mask(seg, seg, pos, pos, causal=False))[0, 0]
    want = np.array([[1, 1, 0, 0, 0, 0],
                     [1, 1, 0, 0, 0, 0],
                     [0, 0, 1, 1, 1, 0],
                     [0, 0, 1, 1, 1, 0],
                     [0, 0, 1, 1, 1, 0],
                     [0, 0, 0, 0, 0, 0]], bool)
    np.testing.assert_array_equal(full, want)
    causal = np.asarray(attention_mask(seg, seg, pos, pos, causal=True))[0, 0]
    np.testing.assert_array_equal(causal, want & (pos[0][None, :] <= pos[0][:, None]))


def test_unknown_attention_backend_names_the_choices():
    assert resolve_backend("auto") == "xla"
    with pytest.raises(ValueError, match="attention_backend='flash'.*xla"):
        resolve_backend("flash")
