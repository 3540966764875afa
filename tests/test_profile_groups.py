"""benchmarks/profile_detr.py sorts both frameworks' kernels into the same op groups.

The table in benchmarks/README.md compares MindSpore and PyTorch group by group; a kernel filed under the wrong
group on one side (e.g. PyTorch's max pool under reductions, ours under other) would move time between rows.
"""

import pytest

from benchmarks.profile_detr import GROUPS, MS_RULES, TORCH_RULES, group_of, grouped


@pytest.mark.parametrize("name, group", [
    ("Conv2D", "conv forward"),
    ("Conv2DBackpropInput", "conv backward-input"),
    ("Conv2DBackpropFilter", "conv backward-weight"),
    ("BatchMatMul", "matmul/dense"),
    ("SoftmaxGrad", "softmax"),
    ("AdamWeightDecay", "optimizer"),
    ("LayerNormGrad", "reductions"),
    ("ReduceSum", "reductions"),
    ("ReluGrad", "element-wise"),
    ("BiasAdd", "element-wise"),
    ("MaxPool3DWithArgmax", "other"),
    ("Transpose", "other"),
])
def test_mindspore_kernel_groups(name, group):
    assert group_of(name, MS_RULES) == group


@pytest.mark.parametrize("name, group", [
    ("aten::mkldnn_convolution", "conv forward"),
    ("aten::convolution_backward", "conv backward-input"),
    ("aten::addmm", "matmul/dense"),
    ("aten::_scaled_dot_product_flash_attention_for_cpu", "matmul/dense"),
    ("aten::_softmax_backward_data", "softmax"),
    ("aten::_foreach_mul_", "optimizer"),
    ("aten::native_layer_norm_backward", "reductions"),
    ("aten::max_pool2d_with_indices", "other"),
    ("aten::clamp_min", "element-wise"),
    ("aten::threshold_backward", "element-wise"),
    ("aten::copy_", "other"),
])
def test_torch_operator_groups(name, group):
    assert group_of(name, TORCH_RULES) == group


def test_grouped_sums_every_kernel_once():
    totals = grouped({"Conv2D": 5.0, "Add": 1.5, "Mul": 0.5, "Unknown": 2.0}, MS_RULES)
    assert set(totals) == set(GROUPS)
    assert totals["conv forward"] == 5.0 and totals["element-wise"] == 2.0 and totals["other"] == 2.0
    assert sum(totals.values()) == 9.0
