"""Convert PyTorch DETR weights (torch-hub or Hugging Face layout) into a MindSpore checkpoint.

Sources understood:

* the official torch-hub checkpoint of facebookresearch/detr (``torch.load(f)["model"]``, keys such as
  ``backbone.0.body.layer1.0.conv1.weight`` or ``transformer.encoder.layers.0.self_attn.in_proj_weight``);
* a Hugging Face ``DetrForObjectDetection`` (a directory holding ``model.safetensors``, its sharded index, or
  ``pytorch_model.bin``; or one such file) with either backbone naming: timm's (the torchvision names under
  ``model.backbone.conv_encoder.model.``, as in ``facebook/detr-resnet-50``) or HF's own ResNet
  (``embedder.embedder.*``, ``encoder.stages.{s}.layers.{b}.layer.{i}.*``, ``shortcut.*``). HF's separate
  ``q_proj/k_proj/v_proj`` are stacked, in that order, into torch's packed ``in_proj_weight``/``in_proj_bias``;
* a csm-kr/detr_pytorch ``.pth.tar`` (``torch.load(f)["model_state_dict"]``, keys such as ``backbone.4.0.conv1.weight``
  or ``transformer.encoder.encoders.0.attn.q.weight``; see :func:`reimpl_to_hub`).

Hugging Face and csm-kr keys are first renamed to the torch-hub names (as transformers' own
``convert_detr_original_pytorch_checkpoint_to_pytorch.py`` does in reverse), and torch-hub names then map to the
MindSpore names of ``src.models.detr.model.DETR`` (``backbone.0.body`` -> ``backbone.body``, LayerNorm
``weight/bias`` -> ``gamma/beta``, ``query_embed.weight`` -> ``query_embed.embedding_table``). Layouts agree, so
no tensor is transposed. Conversion is strict: it raises ``ConversionError`` listing every unmapped source key,
every model parameter left without a value and every shape mismatch, and then writes nothing.
"""

import json
import re
from pathlib import Path

import numpy as np

from src.backbones.resnet import RESNET_DEPTHS
from src.convert_common import (
    IGNORED_SUFFIXES,
    ConversionError,
    assemble_params,
    cell_param_shapes,
    load_torch_state_dict,
    save_checkpoint_atomic,
)
from src.models.detr.model import build_detr

__all__ = ["ConversionError", "IGNORED_SUFFIXES", "convert_detr_checkpoint", "hf_to_hub", "hub_to_mindspore_name",
           "infer_backbone", "is_hf_layout", "is_reimpl_layout", "load_source_state_dict", "map_to_model",
           "model_param_shapes", "reimpl_to_hub", "save_checkpoint_atomic"]


def load_source_state_dict(source) -> dict:
    """Read a torch-hub ``.pth``, a safetensors/bin file or a Hugging Face model directory.

    Returns:
        dict mapping source key to float32 ``np.ndarray``.

    Raises:
        ConversionError: If the path does not exist or holds no recognizable weights.
    """
    path = Path(source)
    if path.is_dir():
        for name in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"):
            if (path / name).is_file():
                return load_source_state_dict(path / name)
        raise ConversionError(f"{path}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin")
    if not path.is_file():
        raise ConversionError(f"source not found: {path}")
    if path.name.endswith(".index.json"):
        shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
        state = {}
        for shard in shards:
            state.update(load_source_state_dict(path.parent / shard))
        return state
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file

        return {k: v.astype(np.float32) for k, v in load_file(str(path)).items()}
    return load_torch_state_dict(path)


_HF_BACKBONE = re.compile(r"^model\.backbone\.(?:conv_encoder\.)?model\.(.+)$")
_HF_NATIVE_RESNET = [
    (re.compile(r"^embedder\.embedder\.convolution\.weight$"), lambda m: "conv1.weight"),
    (re.compile(r"^embedder\.embedder\.normalization\.(\w+)$"), lambda m: f"bn1.{m[1]}"),
    (re.compile(r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d+)\.convolution\.weight$"),
     lambda m: f"layer{int(m[1]) + 1}.{m[2]}.conv{int(m[3]) + 1}.weight"),
    (re.compile(r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d+)\.normalization\.(\w+)$"),
     lambda m: f"layer{int(m[1]) + 1}.{m[2]}.bn{int(m[3]) + 1}.{m[4]}"),
    (re.compile(r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.convolution\.weight$"),
     lambda m: f"layer{int(m[1]) + 1}.{m[2]}.downsample.0.weight"),
    (re.compile(r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.normalization\.(\w+)$"),
     lambda m: f"layer{int(m[1]) + 1}.{m[2]}.downsample.1.{m[3]}"),
]
# timm's ResNet uses the torchvision names already.
_TORCHVISION_RESNET = re.compile(r"^(conv1\.weight|bn1\.\w+|layer\d\.\d+\.(conv\d|bn\d|downsample\.[01])\.\w+)$")
_HF_TOP = [
    (re.compile(r"^model\.input_projection\.(weight|bias)$"), lambda m: f"input_proj.{m[1]}"),
    (re.compile(r"^model\.query_position_embeddings\.weight$"), lambda m: "query_embed.weight"),
    (re.compile(r"^class_labels_classifier\.(weight|bias)$"), lambda m: f"class_embed.{m[1]}"),
    (re.compile(r"^bbox_predictor\.layers\.(\d+)\.(weight|bias)$"), lambda m: f"bbox_embed.layers.{m[1]}.{m[2]}"),
    (re.compile(r"^model\.decoder\.layernorm\.(weight|bias)$"), lambda m: f"transformer.decoder.norm.{m[1]}"),
]
_HF_LAYER = re.compile(r"^model\.(encoder|decoder)\.layers\.(\d+)\.(.+)$")
_HF_ATTN = re.compile(r"^(self_attn|encoder_attn)\.(q|k|v|o|out)_proj\.(weight|bias)$")
_HF_LAYER_MODULES = {
    ("encoder", "self_attn_layer_norm"): "norm1", ("encoder", "final_layer_norm"): "norm2",
    ("decoder", "self_attn_layer_norm"): "norm1", ("decoder", "encoder_attn_layer_norm"): "norm2",
    ("decoder", "final_layer_norm"): "norm3",
    ("encoder", "fc1"): "linear1", ("encoder", "fc2"): "linear2", ("encoder", "mlp.fc1"): "linear1",
    ("encoder", "mlp.fc2"): "linear2", ("decoder", "fc1"): "linear1", ("decoder", "fc2"): "linear2",
    ("decoder", "mlp.fc1"): "linear1", ("decoder", "mlp.fc2"): "linear2",
}


def _hf_backbone_key(body_key: str):
    for pattern, rename in _HF_NATIVE_RESNET:
        match = pattern.match(body_key)
        if match:
            return "backbone.0.body." + rename(match)
    if _TORCHVISION_RESNET.match(body_key):
        return "backbone.0.body." + body_key
    return None


def _hf_layer_key(kind: str, index: str, rest: str):
    """Rename one HF transformer-layer key to ``(hub_key, part)``.

    ``part`` is ``"q"``, ``"k"`` or ``"v"`` for a slice of the packed ``in_proj_*`` (``hub_key`` then names the
    packed tensor), else None. ``hub_key`` is None when no rule applies.
    """
    prefix = f"transformer.{kind}.layers.{index}."
    match = _HF_ATTN.match(rest)
    if match:
        attn = "self_attn" if match[1] == "self_attn" else "multihead_attn"
        if match[2] in ("o", "out"):
            return f"{prefix}{attn}.out_proj.{match[3]}", None
        return f"{prefix}{attn}.in_proj_{match[3]}", match[2]
    module, _, param = rest.rpartition(".")
    target = _HF_LAYER_MODULES.get((kind, module))
    return (f"{prefix}{target}.{param}" if target else None), None


def _first_match(rules, key: str):
    """The target of the first ``(pattern, rename)`` rule whose pattern matches ``key``, else None."""
    for pattern, rename in rules:
        match = pattern.match(key)
        if match:
            return rename(match)
    return None


def _rename_to_hub(state: dict, rename_key):
    """Apply ``rename_key(key) -> (hub_key or None, part)`` to every entry; q/k/v parts are stacked in torch's
    (q, k, v) row order into the packed ``in_proj_*`` they name.

    Returns:
        Tuple ``(hub_state, unmapped)``: the renamed dict and the sorted source keys no rule accepts (including
        q/k/v sets with a member missing).
    """
    hub, unmapped, packed = {}, [], {}
    for key, value in state.items():
        target, part = rename_key(key)
        if target is None:
            unmapped.append(key)
        elif part is not None:
            packed.setdefault(target, {})[part] = value
        else:
            hub[target] = value
    for target, parts in packed.items():
        if set(parts) == {"q", "k", "v"}:
            hub[target] = np.concatenate([parts["q"], parts["k"], parts["v"]], axis=0)
        else:
            unmapped.append(f"{target} (q/k/v projections incomplete: only {sorted(parts)})")
    return hub, sorted(unmapped)


def _hf_key(key: str):
    backbone = _HF_BACKBONE.match(key)
    if backbone:
        return _hf_backbone_key(backbone[1]), None
    layer = _HF_LAYER.match(key)
    if layer:
        return _hf_layer_key(layer[1], layer[2], layer[3])
    return _first_match(_HF_TOP, key), None


def hf_to_hub(state: dict):
    """Rename a Hugging Face DETR state dict to torch-hub names.

    Returns:
        Tuple ``(hub_state, unmapped)``: the renamed dict (q/k/v stacked into ``in_proj_*``) and the sorted
        HF keys no rule accepts (including q/k/v sets with a member missing).
    """
    return _rename_to_hub(state, _hf_key)


# csm-kr/detr_pytorch: backbone = nn.Sequential(*torchvision_resnet50.children()[:-2]), so its indices are
# 0 conv1, 1 bn1, (2 relu, 3 maxpool: no weights), 4..7 layer1..layer4.
_REIMPL_BACKBONE = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3", "7": "layer4"}
_REIMPL_TOP = [
    (re.compile(r"^backbone\.([0-7])\.(.+)$"),
     lambda m: f"backbone.0.body.{_REIMPL_BACKBONE[m[1]]}.{m[2]}" if m[1] in _REIMPL_BACKBONE else None),
    (re.compile(r"^(input_proj|query_embed|transformer\.decoder\.norm)\.(weight|bias)$"), lambda m: m[0]),
    (re.compile(r"^class_layer\.(weight|bias)$"), lambda m: f"class_embed.{m[1]}"),
    (re.compile(r"^box_layer\.box_layers\.([024])\.(weight|bias)$"),
     lambda m: f"bbox_embed.layers.{int(m[1]) // 2}.{m[2]}"),
]
_REIMPL_LAYER = re.compile(
    r"^transformer\.(encoder\.encoders|decoder\.decoders)\.(\d+)\.(\w+)\.(?:(\w+)\.)?(weight|bias)$")
_REIMPL_MODULES = {"attn": "self_attn", "attn_t": "self_attn", "attn_x": "multihead_attn", "norm1": "norm1",
                   "norm2": "norm2", "norm3": "norm3"}


def _reimpl_layer_key(match):
    """``(hub_key, part)`` for one csm-kr transformer-layer key; ``part`` as in :func:`_hf_layer_key`."""
    kind = "encoder" if match[1].startswith("encoder") else "decoder"
    prefix = f"transformer.{kind}.layers.{match[2]}."
    module, sub, param = match[3], match[4], match[5]
    if module == "mlp" and sub in ("fc1", "fc2"):
        return f"{prefix}linear{sub[-1]}.{param}", None
    attn = _REIMPL_MODULES.get(module)
    if attn is None or (sub is None) != module.startswith("norm"):
        return None, None
    if sub is None:
        return f"{prefix}{attn}.{param}", None
    if sub == "proj":
        return f"{prefix}{attn}.out_proj.{param}", None
    if sub in ("q", "k", "v"):
        return f"{prefix}{attn}.in_proj_{param}", sub
    return None, None


def _reimpl_key(key: str):
    name = key[len("module."):] if key.startswith("module.") else key
    layer = _REIMPL_LAYER.match(name)
    if layer:
        return _reimpl_layer_key(layer)
    return _first_match(_REIMPL_TOP, name), None


def is_reimpl_layout(keys) -> bool:
    """True for csm-kr/detr_pytorch naming (``transformer.encoder.encoders.*``, optionally ``module.``-prefixed)."""
    return any(k.startswith(("transformer.encoder.encoders.", "module.transformer.encoder.encoders.")) for k in keys)


def reimpl_to_hub(state: dict):
    """Rename a csm-kr/detr_pytorch state dict to facebookresearch/detr (torch-hub) names.

    Its network computes what facebookresearch/detr's does on an unpadded 1024x1024 input (its sine position
    encoding is DETR's, built for a fixed 32x32 feature map; it has no padding mask), so only names change: its
    ``nn.Sequential`` ResNet indices (``_REIMPL_BACKBONE``), its "timm-like" attention with
    separate ``q``/``k``/``v`` linears (stacked into torch's packed ``in_proj_*``) and ``proj`` (``out_proj``),
    ``mlp.fc1``/``mlp.fc2`` (``linear1``/``linear2``), ``attn_t``/``attn_x`` (decoder self/cross attention),
    ``class_layer`` and ``box_layer.box_layers.{0,2,4}`` (``class_embed``, ``bbox_embed.layers.{0,1,2}``). A
    ``module.`` prefix (a checkpoint saved from DistributedDataParallel) is removed.

    Returns:
        Tuple ``(hub_state, unmapped)`` as :func:`hf_to_hub`.
    """
    return _rename_to_hub(state, _reimpl_key)


_LAYERNORM = re.compile(r"^(transformer\..*\.norm\d?)\.(weight|bias)$")


def hub_to_mindspore_name(key: str) -> str:
    """Map a torch-hub DETR key to the MindSpore parameter name (see the module docstring)."""
    if key.startswith("backbone.0.body."):
        return "backbone.body." + key[len("backbone.0.body."):]
    if key == "query_embed.weight":
        return "query_embed.embedding_table"
    match = _LAYERNORM.match(key)
    if match:
        return f"{match[1]}.{'gamma' if match[2] == 'weight' else 'beta'}"
    return key


def is_hf_layout(keys) -> bool:
    """True for Hugging Face naming (``model.*``, ``class_labels_classifier.*``), False for torch-hub naming."""
    return any(k.startswith(("model.", "class_labels_classifier.", "bbox_predictor.")) for k in keys)


def infer_backbone(hub_state: dict):
    """``"resnet50"``/``"resnet101"`` from the number of ``layer3`` blocks, or None if it matches neither."""
    blocks = {int(m[1]) for k in hub_state for m in [re.match(r"^backbone\.0\.body\.layer3\.(\d+)\.", k)] if m}
    for name, depths in RESNET_DEPTHS.items():
        if len(blocks) == depths[2]:
            return name
    return None


def map_to_model(state: dict, param_shapes: dict) -> dict:
    """Map a source state dict (either layout) onto the model's parameters, strictly.

    Args:
        state: source key -> ``np.ndarray``.
        param_shapes: MindSpore parameter name -> shape tuple, for the target model.

    Returns:
        MindSpore parameter name -> float32 ``np.ndarray``, covering exactly ``param_shapes``.

    Raises:
        ConversionError: Listing every unmapped source key, every missing parameter and every shape mismatch.
    """
    state = {k: v for k, v in state.items() if not k.endswith(IGNORED_SUFFIXES)}
    problems = []
    for is_layout, to_hub in ((is_hf_layout, hf_to_hub), (is_reimpl_layout, reimpl_to_hub)):
        if is_layout(state):
            state, unmapped = to_hub(state)
            problems += [f"unmapped source key: {k}" for k in unmapped]
            break
    renamed = [(key, hub_to_mindspore_name(key), value) for key, value in state.items()]
    return assemble_params(renamed, param_shapes, problems)


def model_param_shapes(model_cfg: dict) -> dict:
    """Build DETR from ``model_cfg`` (the config's ``model:`` keys, ``name`` allowed) and list its parameters."""
    kwargs = {k: v for k, v in model_cfg.items() if k != "name"}
    return cell_param_shapes(build_detr(**kwargs))


def convert_detr_checkpoint(source, output, model_cfg: dict, detect_backbone: bool = False) -> dict:
    """Convert ``source`` to a MindSpore checkpoint at ``output`` for the model described by ``model_cfg``.

    Args:
        source: torch-hub ``.pth``, HF directory or weights file.
        output: Destination ``.ckpt``; written only if the mapping is complete (no partial file is ever left).
        model_cfg: Keys of the config's ``model:`` section.
        detect_backbone: Replace ``model_cfg["backbone"]`` by the depth found in the weights (ResNet-50/101).

    Returns:
        dict with ``num_params`` and the ``backbone`` used.

    Raises:
        ConversionError: If the weights do not map one-to-one onto the model (nothing is written).
    """
    state = {k: v for k, v in load_source_state_dict(source).items() if not k.endswith(IGNORED_SUFFIXES)}
    model_cfg = dict(model_cfg)
    if detect_backbone:
        hub_state = state
        if is_hf_layout(state):
            hub_state = hf_to_hub(state)[0]
        elif is_reimpl_layout(state):
            hub_state = reimpl_to_hub(state)[0]
        model_cfg["backbone"] = infer_backbone(hub_state) or model_cfg["backbone"]
    params = map_to_model(state, model_param_shapes(model_cfg))
    save_checkpoint_atomic(params, output)
    return {"num_params": len(params), "backbone": model_cfg["backbone"]}
