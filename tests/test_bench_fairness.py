"""The DETR benchmark compares equal work: its PyTorch reference trains exactly the backbone tensors DETR trains.

transformers' DETR with a native ResNet backbone freezes every backbone parameter by default (its name filter
misses its own ResNet's ``stages.N`` names); a benchmark built on that default compared our full training step
with a reference that never back-propagated through its backbone. This test builds the benchmark's reference as
the benchmark builds it and maps its trainable backbone tensors, by name, onto ours, and checks that it drops out
what DETR drops out (transformers' defaults leave the attention weights and FFN activations undropped).
"""

import os
import re

from benchmarks.bench_detr import mindspore_trainable_backbone, torch_reference, torch_trainable_backbone
from src.config import load_config
from src.models.detr.model import build_detr


def _torchvision_name(transformers_name: str) -> str:
    """transformers ResNet name -> torchvision/DETR layout (stage s -> layer s+1, shortcut -> downsample.0)."""
    pattern = r"stages\.(\d)\.layers\.(\d+)\.(?:layer\.(\d)|(shortcut))\.convolution\.weight$"
    match = re.search(pattern, transformers_name)
    assert match, f"unexpected trainable reference tensor {transformers_name}"
    stage, block, conv, shortcut = match.groups()
    part = "downsample.0" if shortcut else f"conv{int(conv) + 1}"
    return f"backbone.body.layer{int(stage) + 1}.{block}.{part}.weight"


def test_reference_trains_the_backbone_tensors_detr_trains():
    ours = mindspore_trainable_backbone(build_detr("resnet50"))
    reference = torch_trainable_backbone(torch_reference(train=True))
    assert len(ours) == 42, "DETR-R50 trains the 42 convolution weights of layer2-layer4"
    assert len(reference) == len(ours)
    assert sorted(map(_torchvision_name, reference)) == sorted(ours)


def test_reference_drops_out_what_detr_drops_out():
    detr_dropout = load_config(os.path.join("configs", "detr", "detr_r50.yaml"))["model"]["dropout"]
    config = torch_reference(train=True).config
    assert detr_dropout == 0.1
    assert (config.dropout, config.attention_dropout, config.activation_dropout) == (detr_dropout,) * 3
