"""A key-padding bias built once (``key_padding_bias``, passed as ``attn_bias``) attends exactly as the mask.

DETR's transformer builds the bias once per encoder / decoder stack and hands it to every layer; this checks
that path against ``key_padding_mask`` on the same layer, and that padded keys get no weight.
"""

import mindspore as ms
import numpy as np
import pytest

from src.layers.attention import MultiheadAttention, key_padding_bias


@pytest.fixture(autouse=True)
def _pynative():
    previous = ms.get_context("mode")
    ms.set_context(mode=ms.PYNATIVE_MODE)
    yield
    ms.set_context(mode=previous)


def test_shared_bias_equals_key_padding_mask():
    rng = np.random.default_rng(0)
    attn = MultiheadAttention(16, 4)
    attn.set_train(False)
    query = ms.Tensor(rng.standard_normal((2, 3, 16)).astype(np.float32))
    key = ms.Tensor(rng.standard_normal((2, 5, 16)).astype(np.float32))
    mask_np = np.array([[False] * 5, [False, False, False, True, True]])
    mask = ms.Tensor(mask_np)
    out_mask, w_mask = attn.attend(query, key, key, key_padding_mask=mask)
    bias = key_padding_bias(mask, 4, 3)
    assert bias.shape == (2, 4, 3, 5)
    out_bias, w_bias = attn.attend(query, key, key, attn_bias=bias)
    np.testing.assert_array_equal(out_bias.asnumpy(), out_mask.asnumpy())
    np.testing.assert_array_equal(w_bias.asnumpy(), w_mask.asnumpy())
    assert np.all(w_bias.asnumpy()[1, :, :, 3:] == 0)
    assert not np.allclose(w_bias.asnumpy()[0, :, :, 3:], 0)
