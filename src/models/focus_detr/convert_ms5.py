"""Convert the MindSpore model zoo's 5-scale Focus-DETR checkpoint into a checkpoint of our :class:`FocusDETR`.

Source layout: the ``.ckpt`` that ``mindspore.save_checkpoint`` writes for the network of
``research/cv/Focus-DETR`` (the same code as linxid/Focus-DETR-mindspore, ``models/focus_detr/focus_detr.py::
Focus_DETR`` built from ``config/Focus_DETR/Focus_DETR_5scale.py``), i.e. the checkpoint its README evaluates with
``DINO_eval_ms_coco.sh`` (R50, 5 scales, 47.9 AP). The target is the model of
``configs/focus_detr/focus_detr_r50_5scale_mindspore_zoo.yaml`` (its options are explained in
:class:`src.models.focus_detr.model.FocusDETR`). What happens to each source key:

1. ResNet (``backbone.backbone.body.*``, the model zoo's ResNet names): ``down_sample_layer`` -> ``downsample``,
   BatchNorm ``gamma/beta/moving_mean/moving_variance`` -> our FrozenBN ``weight/bias/running_mean/running_var``,
   under ``backbone.body.``.
2. ``input_proj.{i}.{0,1}`` (conv, GroupNorm ``gamma/beta``) -> ``neck.convs.{i}.{conv,norm}`` for the backbone
   levels and ``neck.extra_convs.{i - n}`` for the extra level(s) (GroupNorm ``weight/bias``).
3. Encoder and decoder layers: ``cross_attn`` -> ``attentions.1``; the self-attention's separate
   ``self_attn.dense{1,2,3}`` (query, key, value projections) are stacked in that order into
   ``attentions.0.attn.in_proj_{weight,bias}``, ``self_attn.out_proj`` -> ``attentions.0.attn.out_proj``;
   ``linear1/linear2`` -> ``ffns.0.layers.{0.0,1}``; LayerNorms by where they sit: encoder ``norm1`` (after the
   deformable attention) -> ``norms.0``, ``norm3`` (after the FFN) -> ``norms.1``, ``norm2`` (after the OESM
   self-attention) -> ``norm2``; decoder ``norm2`` (after self-attention) -> ``norms.0``, ``norm1`` (after
   cross-attention) -> ``norms.1``, ``norm3`` -> ``norms.2``; the encoder's ``linear_class`` keeps its name.
4. Heads: the port shares ONE class head and ONE box head between all decoder layers (``class_embed.0``,
   ``bbox_embed.0``; further indices, if stored, must be equal copies) -> copied into each of our
   ``class_embed.{0..D-1}`` / ``bbox_embed.{0..D-1}``; the two-stage heads ``enc_out_class_embed`` /
   ``enc_out_bbox_embed`` (with or without a ``transformer.`` prefix) -> ``class_embed.D`` / ``bbox_embed.D``.
   ``transformer.decoder.{class,bbox}_embed.*`` are the same Cells reached again: checked equal, dropped.
5. ``transformer.level_embed`` -> ``transformer.level_embeds``; ``alpha``, ``enc_mask_predictor``, ``enc_output``,
   ``enc_output_norm``, ``tgt_embed.embedding_table``, ``decoder.ref_point_head``, ``decoder.norm`` keep their names.
6. Not in the source, by design: ``label_enc.embedding_table`` (the denoising label embedding, used only in
   training; the port has no denoising). It is written as zeros and listed in the report.

Any other source key, a shape mismatch or a model parameter left without a value is an error
(:class:`src.convert_common.ConversionError`) and nothing is written.
"""

import re
from typing import Dict

import numpy as np

from src.checkpoint_kind import MS5_SIGNATURE_KEYS as SIGNATURE_KEYS
from src.checkpoint_kind import is_ms5_state
from src.convert_common import ConversionError, assemble_params, cell_param_shapes, save_checkpoint_atomic

FILLED = {"label_enc.embedding_table": "denoising label embedding (training only; the port has none): zeros"}

_BN_LEAF = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}
_BACKBONE = re.compile(r"^backbone\.backbone\.body\.(.+)\.(weight|gamma|beta|moving_mean|moving_variance)$")
_INPUT_PROJ = re.compile(r"^input_proj\.(\d+)\.([01])\.(weight|bias|gamma|beta)$")
_LAYER = re.compile(r"^transformer\.(encoder|decoder)\.layers\.(\d+)\.(.+)$")
_SELF_ATTN_QKV = re.compile(r"^self_attn\.dense([123])\.(weight|bias)$")
_HEAD = re.compile(r"^(class_embed|bbox_embed)\.(\d+)\.(.+)$")
_TWO_STAGE = re.compile(r"^(?:transformer\.)?enc_out_(class|bbox)_embed\.(.+)$")
_DECODER_HEAD_COPY = re.compile(r"^transformer\.decoder\.(class_embed|bbox_embed)\.(\d+)\.(.+)$")
_LN_LEAF = {"gamma": "gamma", "beta": "beta"}
_LAYER_RENAMES = {
    "encoder": {"norm1": "norms.0", "norm3": "norms.1", "norm2": "norm2"},
    "decoder": {"norm2": "norms.0", "norm1": "norms.1", "norm3": "norms.2"},
}
_SAME_NAME = re.compile(r"^transformer\.(alpha|enc_mask_predictor\..+|enc_output\..+|enc_output_norm\..+"
                        r"|tgt_embed\.embedding_table|decoder\.ref_point_head\..+|decoder\.norm\..+)$")


def checkpoint_is_ms5(path) -> bool:
    """True when the MindSpore ``.ckpt`` at ``path`` is the model zoo's 5-scale Focus-DETR (by its keys).

    Only the signature keys are read. A missing or unreadable file gives False (the caller reports it).
    """
    import mindspore as ms

    try:
        found = ms.load_checkpoint(str(path), choice_func=lambda name: name in SIGNATURE_KEYS)
    except (ValueError, RuntimeError, TypeError, OSError):
        return False
    return is_ms5_state(found)


def _layer_name(kind: str, rest: str):
    """Our name inside ``transformer.{kind}.layers.{j}.`` for the port's ``rest``, or None (dense1-3 handled apart)."""
    module, _, leaf = rest.partition(".")
    if module == "cross_attn":
        return f"attentions.1.{leaf}"
    if rest.startswith("self_attn.out_proj."):
        return f"attentions.0.attn.out_proj.{rest.rsplit('.', 1)[1]}"
    if module == "linear1":
        return f"ffns.0.layers.0.0.{leaf}"
    if module == "linear2":
        return f"ffns.0.layers.1.{leaf}"
    if module == "linear_class" and kind == "encoder":
        return rest
    if module in _LAYER_RENAMES[kind] and leaf in _LN_LEAF:
        return f"{_LAYER_RENAMES[kind][module]}.{leaf}"
    return None


def map_ms5_state(state: Dict[str, np.ndarray], param_shapes: Dict[str, tuple]):
    """Map the model zoo's 5-scale Focus-DETR parameters onto our model's, strictly (rules in the module docstring).

    Args:
        state: source parameter name -> ``np.ndarray``.
        param_shapes: our parameter name -> shape, for the target network.

    Returns:
        tuple ``(params, report)``: ``params`` maps every parameter name of the target to a float32 array;
        ``report`` has ``mapped`` (source keys used), ``duplicates`` (sorted keys dropped after the equality check)
        and ``filled`` (our name -> why it is not in the source).

    Raises:
        ConversionError: listing every unmapped source key, differing duplicate, shape mismatch and parameter left
            without a value.
    """
    problems = []
    heads = sorted({int(m[2]) for k in param_shapes for m in [_HEAD.match(k)] if m})
    if not heads:
        raise ConversionError("the target network has no class_embed/bbox_embed heads; is it a FocusDETR?")
    num_dec = heads[-1]
    renamed, duplicates, qkv = [], [], {}
    shared = {}  # (head kind, leaf) -> (source key, value) of the shared decoder head
    for key, value in state.items():
        backbone = _BACKBONE.match(key)
        proj = _INPUT_PROJ.match(key)
        layer = _LAYER.match(key)
        head = _HEAD.match(key)
        two_stage = _TWO_STAGE.match(key)
        if backbone:
            path = backbone[1].replace("down_sample_layer", "downsample")
            renamed.append((key, f"backbone.body.{path}.{_BN_LEAF.get(backbone[2], backbone[2])}", value))
        elif proj:
            level, part, leaf = int(proj[1]), proj[2], proj[3]
            num_convs = len({m[1] for k in param_shapes for m in [re.match(r"^neck\.convs\.(\d+)\.", k)] if m})
            prefix = f"neck.convs.{level}" if level < num_convs else f"neck.extra_convs.{level - num_convs}"
            sub = "conv" if part == "0" else "norm"
            renamed.append((key, f"{prefix}.{sub}.{_BN_LEAF.get(leaf, leaf) if sub == 'norm' else leaf}", value))
        elif _DECODER_HEAD_COPY.match(key):
            duplicates.append(key)
        elif layer:
            kind, index, rest = layer.groups()
            dense = _SELF_ATTN_QKV.match(rest)
            if dense:
                qkv.setdefault((kind, index, dense[2]), {})[int(dense[1])] = (key, value)
                continue
            name = _layer_name(kind, rest)
            renamed.append((key, None if name is None else f"transformer.{kind}.layers.{index}.{name}", value))
        elif head:
            kind, leaf = head[1], head[3]
            first = shared.setdefault((kind, leaf), (key, value))
            if first[0] != key and not np.array_equal(first[1], value):
                problems.append(f"decoder heads are not shared: {key} differs from {first[0]}")
        elif two_stage:
            renamed.append((key, f"{two_stage[1]}_embed.{num_dec}.{two_stage[2]}", value))
        elif key == "transformer.level_embed":
            renamed.append((key, "transformer.level_embeds", value))
        elif _SAME_NAME.match(key):
            renamed.append((key, key, value))
        else:
            renamed.append((key, None, value))
    for key in duplicates:
        copy = _DECODER_HEAD_COPY.match(key)
        canonical = shared.get((copy[1], copy[3]))
        if canonical is None or not np.array_equal(canonical[1], state[key]):
            problems.append(f"duplicate differs from (or lacks) its canonical head: {key}")
    for (kind, leaf), (key, value) in shared.items():
        for layer_index in range(num_dec):
            renamed.append((key if layer_index == 0 else f"{key} (copy {layer_index})",
                            f"{kind}.{layer_index}.{leaf}", value))
    for (kind, index, leaf), parts in qkv.items():
        keys = [parts[i][0] for i in (1, 2, 3) if i in parts]
        if len(keys) != 3:
            problems.append(f"incomplete self-attention projections of transformer.{kind}.layers.{index}: {keys}")
            continue
        stacked = np.concatenate([parts[i][1] for i in (1, 2, 3)], axis=0)
        suffix = "in_proj_weight" if leaf == "weight" else "in_proj_bias"
        renamed.append(("+".join(keys), f"transformer.{kind}.layers.{index}.attentions.0.attn.{suffix}", stacked))
    params = assemble_params(renamed, param_shapes, problems, exempt=tuple(FILLED))
    filled = {}
    for name, why in FILLED.items():
        if name in param_shapes and name not in params:
            params[name] = np.zeros(param_shapes[name], np.float32)
            filled[name] = why
    return params, {"mapped": len(renamed), "duplicates": sorted(duplicates), "filled": filled}


def load_mindspore_params(source) -> Dict[str, np.ndarray]:
    """Read a MindSpore ``.ckpt`` as name -> float32 array.

    Raises:
        ConversionError: the file is missing or is not a MindSpore checkpoint.
    """
    from pathlib import Path

    import mindspore as ms

    path = Path(source)
    if not path.is_file():
        raise ConversionError(f"source not found: {path}")
    try:
        loaded = ms.load_checkpoint(str(path))
    except (ValueError, RuntimeError, TypeError) as err:
        raise ConversionError(f"{path}: cannot read as a MindSpore checkpoint: {err}") from err
    return {k: v.asnumpy().astype(np.float32) for k, v in loaded.items()}


def convert_ms5_checkpoint(source, output, network) -> dict:
    """Convert the model zoo's 5-scale Focus-DETR ``source`` ``.ckpt`` into ``output`` for ``network``.

    Args:
        source: the port's checkpoint (its own parameter names).
        output: destination ``.ckpt``; written atomically, only if the mapping is complete.
        network: the target Cell (``build_model(cfg).network`` of the 5-scale model-zoo config).

    Returns:
        dict: the report of :func:`map_ms5_state` plus ``num_params``.

    Raises:
        ConversionError: ``source`` is not in this format, or its parameters do not map one-to-one (nothing is
            written).
    """
    state = load_mindspore_params(source)
    if not is_ms5_state(state):
        raise ConversionError(f"{source}: not a MindSpore model zoo 5-scale Focus-DETR checkpoint (expected the "
                              f"keys {list(SIGNATURE_KEYS)})")
    params, report = map_ms5_state(state, cell_param_shapes(network))
    save_checkpoint_atomic(params, output)
    return {**report, "num_params": len(params)}
