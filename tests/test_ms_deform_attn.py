"""Multi-scale deformable attention vs the pure-PyTorch path of transformers' Deformable DETR (graph mode)."""

import mindspore as ms
import numpy as np
import pytest
import torch
from mindspore import Tensor, nn
from transformers import DeformableDetrConfig
from transformers.models.deformable_detr.modeling_deformable_detr import (
    DeformableDetrEncoder,
    DeformableDetrMultiscaleDeformableAttention,
    MultiScaleDeformableAttention,
)

from src.layers.ms_deform_attn import MSDeformAttn, level_start_indices, multi_scale_deformable_attention

# Non-square levels of different sizes, including a 1x1 map, as a 4-level neck produces on a small image.
SHAPES = ((6, 9), (3, 5), (2, 3), (1, 1))
NUM_TOKENS = sum(h * w for h, w in SHAPES)


def _padding_mask(rng, batch):
    """[B, S] True on padding: image 0 unpadded, image 1 padded bottom/right at every level."""
    masks = []
    for b in range(batch):
        per_level = []
        for h, w in SHAPES:
            m = np.zeros((h, w), bool)
            if b == 1:
                m[max(1, h - 1):, :] = True
                m[:, max(1, w - 2):] = True
            per_level.append(m.reshape(-1))
        masks.append(np.concatenate(per_level))
    return np.stack(masks)


def _torch_core(value, locations, weights):
    return MultiScaleDeformableAttention()(
        value, torch.tensor(SHAPES), list(SHAPES), torch.tensor(level_start_indices(SHAPES)), locations, weights, 64
    )


class _Core(nn.Cell):
    def construct(self, value, locations, weights, cotangent):
        # A random cotangent makes the gradient check sensitive to every output element.
        return (multi_scale_deformable_attention(value, SHAPES, locations, weights) * cotangent).sum()


def _channel_first(value):
    """[B, S, h, d] (transformers' layout) -> [B, h, d, S] (ours)."""
    return np.ascontiguousarray(value.transpose(0, 2, 3, 1))


def test_level_start_indices():
    assert level_start_indices(SHAPES) == (0, 54, 69, 75)


def test_core_matches_transformers_forward_and_grads():
    rng = np.random.default_rng(0)
    batch, heads, head_dim, queries, levels, points = 2, 2, 4, 7, len(SHAPES), 3
    value = rng.standard_normal((batch, NUM_TOKENS, heads, head_dim)).astype(np.float32)
    value[_padding_mask(rng, batch)] = 0.0  # what the module's value masking produces
    # Some points fall outside [0, 1] to exercise the zero padding of grid_sample.
    locations = rng.uniform(-0.15, 1.15, (batch, queries, heads, levels, points, 2)).astype(np.float32)
    weights = rng.random((batch, queries, heads, levels, points)).astype(np.float32)
    cotangent = rng.standard_normal((batch, queries, heads * head_dim)).astype(np.float32)

    cotangent_ours = np.ascontiguousarray(cotangent.transpose(0, 2, 1))  # ours is [B, h*d, Q]
    inputs = (Tensor(_channel_first(value)), Tensor(locations), Tensor(weights))
    out = _Core()(*inputs, Tensor(np.ones_like(cotangent_ours)))
    grads = ms.grad(_Core(), grad_position=(0, 1, 2))(*inputs, Tensor(cotangent_ours))

    t_value, t_loc, t_w = (torch.tensor(x, requires_grad=True) for x in (value, locations, weights))
    t_out = _torch_core(t_value, t_loc, t_w)
    (t_out * torch.tensor(cotangent)).sum().backward()

    ms_full = multi_scale_deformable_attention(inputs[0], SHAPES, *inputs[1:])
    assert ms_full.shape == (batch, heads * head_dim, queries)
    np.testing.assert_allclose(ms_full.asnumpy().transpose(0, 2, 1), t_out.detach().numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(out.asnumpy(), t_out.detach().numpy().sum(), atol=1e-4, rtol=1e-6)
    grads = (grads[0].asnumpy().transpose(0, 3, 1, 2),) + tuple(g.asnumpy() for g in grads[1:])
    for name, got, ref in zip(("value", "locations", "weights"), grads, (t_value, t_loc, t_w)):
        assert np.abs(ref.grad.numpy()).max() > 0, name
        np.testing.assert_allclose(got, ref.grad.numpy(), atol=1e-4, rtol=0, err_msg=name)


def _hf_attention(embed_dim, heads, points):
    config = DeformableDetrConfig(d_model=embed_dim, num_feature_levels=len(SHAPES), disable_custom_kernels=True)
    return DeformableDetrMultiscaleDeformableAttention(config, num_heads=heads, n_points=points).eval()


def _copy_random_weights(ours, theirs, rng):
    """Random weights (the default init has all-zero attention logits) copied torch -> MindSpore by name."""
    params = dict(ours.parameters_and_names())
    with torch.no_grad():
        for name, tensor in theirs.named_parameters():
            data = rng.standard_normal(tuple(tensor.shape)).astype(np.float32) * 0.3
            tensor.copy_(torch.from_numpy(data))
            params[name].set_data(Tensor(data))
    assert len(params) == len(list(theirs.named_parameters()))


class _ModuleLoss(nn.Cell):
    def __init__(self, attn):
        super().__init__()
        self.attn = attn

    def construct(self, query, value, reference_points, mask, pos, cotangent):
        out = self.attn(query, value, reference_points, SHAPES, key_padding_mask=mask, query_pos=pos)
        return (out * cotangent).sum()


@pytest.mark.parametrize("ref_dim", [2, 4])
def test_module_matches_transformers(ref_dim):
    rng = np.random.default_rng(ref_dim)
    batch, embed_dim, heads, points, queries = 2, 16, 4, 2, 6
    ours = MSDeformAttn(embed_dim, heads, len(SHAPES), points)
    theirs = _hf_attention(embed_dim, heads, points)
    _copy_random_weights(ours, theirs, rng)

    query = rng.standard_normal((batch, queries, embed_dim)).astype(np.float32)
    pos = rng.standard_normal((batch, queries, embed_dim)).astype(np.float32)
    value = rng.standard_normal((batch, NUM_TOKENS, embed_dim)).astype(np.float32)
    mask = _padding_mask(rng, batch)
    refs = rng.uniform(0.05, 0.95, (batch, queries, len(SHAPES), ref_dim)).astype(np.float32)
    if ref_dim == 4:
        refs[..., 2:] *= 0.4
    cotangent = rng.standard_normal((batch, queries, embed_dim)).astype(np.float32)

    out = ours(Tensor(query), Tensor(value), Tensor(refs), SHAPES, key_padding_mask=Tensor(mask),
               query_pos=Tensor(pos))
    loss = _ModuleLoss(ours)
    param_grads = ms.grad(loss, grad_position=(1, 2), weights=loss.trainable_params())(
        Tensor(query), Tensor(value), Tensor(refs), Tensor(mask), Tensor(pos), Tensor(cotangent)
    )

    t_value, t_refs = torch.tensor(value, requires_grad=True), torch.tensor(refs, requires_grad=True)
    t_out, _ = theirs(
        torch.tensor(query), attention_mask=torch.tensor(~mask), encoder_hidden_states=t_value,
        position_embeddings=torch.tensor(pos), reference_points=t_refs, spatial_shapes=torch.tensor(SHAPES),
        spatial_shapes_list=list(SHAPES), level_start_index=torch.tensor(level_start_indices(SHAPES)),
    )
    # detrex (and ours) add the residual inside the block; transformers adds it in the encoder layer.
    t_out = t_out + torch.tensor(query)
    (t_out * torch.tensor(cotangent)).sum().backward()

    np.testing.assert_allclose(out.asnumpy(), t_out.detach().numpy(), atol=1e-5, rtol=0)
    (g_value, g_refs), g_params = param_grads
    np.testing.assert_allclose(g_value.asnumpy(), t_value.grad.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(g_refs.asnumpy(), t_refs.grad.numpy(), atol=1e-4, rtol=1e-5)
    torch_grads = dict(theirs.named_parameters())
    for param, grad in zip(loss.trainable_params(), g_params):
        ref = torch_grads[param.name.removeprefix("attn.")].grad.numpy()
        np.testing.assert_allclose(grad.asnumpy(), ref, atol=1e-4, rtol=1e-5, err_msg=param.name)


def test_padding_values_do_not_leak():
    rng = np.random.default_rng(5)
    ours = MSDeformAttn(16, 4, len(SHAPES), 2)
    _copy_random_weights(ours, _hf_attention(16, 4, 2), rng)
    mask = _padding_mask(rng, 2)
    query = Tensor(rng.standard_normal((2, 5, 16)).astype(np.float32))
    refs = Tensor(rng.uniform(0, 1, (2, 5, len(SHAPES), 2)).astype(np.float32))
    value = rng.standard_normal((2, NUM_TOKENS, 16)).astype(np.float32)
    garbage = value.copy()
    garbage[mask] = 1e3
    a = ours(query, Tensor(value), refs, SHAPES, key_padding_mask=Tensor(mask)).asnumpy()
    b = ours(query, Tensor(garbage), refs, SHAPES, key_padding_mask=Tensor(mask)).asnumpy()
    np.testing.assert_array_equal(a, b)
    c = ours(query, Tensor(garbage), refs, SHAPES).asnumpy()
    assert np.abs(c[1] - a[1]).max() > 1.0  # without the mask the padded values are read


def test_init_matches_reference_init():
    heads, levels, points, embed_dim = 8, 4, 4, 64
    torch.manual_seed(0)
    config = DeformableDetrConfig(d_model=embed_dim, encoder_layers=1, encoder_attention_heads=heads,
                                  num_feature_levels=levels, encoder_n_points=points)
    reference = DeformableDetrEncoder(config).layers[0].self_attn
    ours = MSDeformAttn(embed_dim, heads, levels, points)
    np.testing.assert_allclose(ours.sampling_offsets.bias.asnumpy(),
                               reference.sampling_offsets.bias.detach().numpy(), atol=1e-6)
    for name in ("sampling_offsets.weight", "attention_weights.weight", "attention_weights.bias",
                 "value_proj.bias", "output_proj.bias"):
        assert not np.any(dict(ours.parameters_and_names())[name].asnumpy()), name
    bound = np.sqrt(6.0 / (2 * embed_dim))  # xavier-uniform on a square matrix
    for proj in (ours.value_proj, ours.output_proj):
        w = proj.weight.asnumpy()
        assert np.abs(w).max() <= bound and w.std() > 0.5 * bound / np.sqrt(3)
