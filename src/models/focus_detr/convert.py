"""Convert a detrex Focus-DETR checkpoint (PyTorch) into a MindSpore checkpoint for :class:`FocusDETR`.

Source layout: detectron2's ``DetectionCheckpointer`` file written by detrex ``projects/focus_detr`` (the state
dict under ``"model"``; optimizer/scheduler/iteration entries are ignored). Its keys follow the module tree of
``FOCUS_DETR`` (see section 2.2 of the reference notes): a detectron2 ResNet (``backbone.stem.*``,
``backbone.res{2..5}.*`` with FrozenBN under ``.norm``) or a detectron2/Microsoft Swin (``backbone.patch_embed.*``,
``backbone.layers.*``, ``backbone.norm{i}.*``), ``neck.*`` (ChannelMapper), ``transformer.*``, ``class_embed.*``,
``bbox_embed.*`` and ``label_enc.weight``.

What happens to each key:

1. Dropped as bookkeeping: ``*.num_batches_tracked`` and the Swin buffers ``*.attn.relative_position_index``
   (a constant of the window size that our Swin rebuilds itself).
2. Dropped as duplicates, after checking each equals its canonical copy exactly (``nn.Module.state_dict`` repeats
   a module once per path that reaches it): ``transformer.decoder.class_embed.i.*`` and
   ``transformer.decoder.bbox_embed.i.*`` (the decoder holds the model's head lists), and
   ``enhance_MCSP_layerlist.j.*`` and ``transformer.encoder.enhance_MCSP.j.*`` (one module, the class head
   ``class_embed.E`` with ``E`` = number of encoder layers, listed once per encoder layer). A differing copy, or a
   duplicate without its canonical key, is reported naming both keys. Our model uses the last class head
   (``class_embed.D``, ``D`` = decoder layers) for the encoder, so ``E != D`` is refused too.
3. Known unused: ``label_enc.weight``, the label embedding of contrastive denoising, is mapped to
   ``label_enc.embedding_table`` (every :class:`FocusDETR` has it, also with ``dn_number=0``). Only a target
   network without that parameter leaves it out, and it is then listed in the result as known-unused (never
   silently dropped); any other key without a model parameter is an error.
4. Renamed: detectron2 ResNet keys by
   :func:`src.models.focus_detr.backbone.detectron2_to_mindspore_key`; Swin keys keep their names (our Swin uses
   torch's names) under the prefix the model gives its Swin (``backbone.`` for :class:`FocusDETR` with a Swin
   preset, ``backbone.body.`` for a wrapped one); the
   transformer's LayerNorms ``weight/bias`` -> ``gamma/beta``; ``transformer.tgt_embed.weight`` ->
   ``transformer.tgt_embed.embedding_table``. Everything else (neck with its GroupNorm ``weight/bias``,
   attentions, FFNs, heads, ``alpha``, ``level_embeds``) already has our name. Layouts agree: nothing is
   transposed.

The result must cover the model's parameters one-to-one with equal shapes; otherwise
:class:`src.convert_common.ConversionError` lists every problem and nothing is written.
"""

import re
from typing import Dict, Optional

import numpy as np

from src.backbones.resnet import RESNET_DEPTHS
from src.backbones.swin import SWIN_CONFIGS
from src.convert_common import (
    IGNORED_SUFFIXES,
    ConversionError,
    assemble_params,
    cell_param_shapes,
    load_torch_state_dict,
    save_checkpoint_atomic,
)
from src.models.focus_detr.backbone import detectron2_to_mindspore_key

# Constant buffers rebuilt by our modules (Swin's window index table).
CONSTANT_BUFFER_SUFFIXES = (".attn.relative_position_index",)

# Keys of the reference that a target network may lack (one built without the denoising label embedding); they
# are then reported, not converted. Maps the source key to the reason given in the report.
KNOWN_UNUSED = {"label_enc.weight": "contrastive-denoising label embedding; the target network has none"}

_DECODER_HEAD_COPY = re.compile(r"^transformer\.decoder\.(class_embed|bbox_embed)\.(\d+)\.(.+)$")
_MCSP_COPY = re.compile(r"^(?:enhance_MCSP_layerlist|transformer\.encoder\.enhance_MCSP)\.(\d+)\.(.+)$")
_CLASS_HEAD = re.compile(r"^class_embed\.(\d+)\.")
_LAYERNORM = re.compile(
    r"^(transformer\.(?:enc_output_norm|enc_mask_predictor\.layer1\.0|decoder\.norm"
    r"|(?:encoder|decoder)\.layers\.\d+\.(?:norms\.\d+|norm2)))\.(weight|bias)$"
)
_EMBEDDINGS = {"transformer.tgt_embed.weight": "transformer.tgt_embed.embedding_table",
               "label_enc.weight": "label_enc.embedding_table"}
_SWIN_KEY = re.compile(r"^backbone\.((?:patch_embed|layers|norm\d|absolute_pos_embed)\b.*)$")


def is_swin_state(state) -> bool:
    """True when the backbone keys are Swin's (``backbone.patch_embed.proj.weight`` present)."""
    return "backbone.patch_embed.proj.weight" in state


def infer_backbone(state: Dict[str, np.ndarray]) -> Optional[str]:
    """Name the backbone of a detrex state dict, or None if it is not recognized.

    ResNet: ``"resnet50"``/``"resnet101"`` from the number of ``res4`` blocks. Swin: the :data:`SWIN_CONFIGS`
    preset whose embed width (patch embedding rows), blocks per stage and window size (from the relative position
    bias table, ``(2w-1)^2`` rows) all match.
    """
    if is_swin_state(state):
        embed_dim = state["backbone.patch_embed.proj.weight"].shape[0]
        depths, window = {}, None
        for key, value in state.items():
            match = re.match(r"^backbone\.layers\.(\d+)\.blocks\.(\d+)\.attn\.relative_position_bias_table$", key)
            if match:
                depths.setdefault(int(match[1]), set()).add(int(match[2]))
                window = (int(round(value.shape[0] ** 0.5)) + 1) // 2
        depth_tuple = tuple(len(depths[i]) for i in sorted(depths))
        for name, preset in SWIN_CONFIGS.items():
            if (preset["embed_dim"], tuple(preset["depths"]), preset["window_size"]) == (embed_dim, depth_tuple,
                                                                                        window):
                return name
        return None
    blocks = {int(m[1]) for k in state for m in [re.match(r"^backbone\.res4\.(\d+)\.", k)] if m}
    for name, depths in RESNET_DEPTHS.items():
        if len(blocks) == depths[2]:
            return name
    return None


def _swin_prefix(param_shapes) -> str:
    # The model may hold its Swin directly as ``backbone`` or inside a wrapper as ``backbone.body``.
    return "backbone.body." if "backbone.body.patch_embed.proj.weight" in param_shapes else "backbone."


def detrex_to_mindspore_name(key: str, swin_prefix: str = "backbone.") -> str:
    """Rename one non-duplicate detrex key to the MindSpore parameter name (rule 4 of the module docstring).

    Args:
        key: a detrex state-dict key.
        swin_prefix: prefix of the model's Swin parameters (used only for Swin keys).

    Returns:
        The MindSpore name (the key itself when no rename applies).
    """
    resnet = detectron2_to_mindspore_key(key)
    if resnet is not None:
        return resnet
    swin = _SWIN_KEY.match(key)
    if swin:
        return swin_prefix + swin[1]
    norm = _LAYERNORM.match(key)
    if norm:
        return f"{norm[1]}.{'gamma' if norm[2] == 'weight' else 'beta'}"
    return _EMBEDDINGS.get(key, key)


def _canonical_of_duplicates(state) -> Dict[str, str]:
    """Duplicate key -> the canonical key it must equal (rule 2 of the module docstring)."""
    mcsp_indices = {int(m[1]) for k in state for m in [_MCSP_COPY.match(k)] if m}
    duplicates = {}
    for key in state:
        head = _DECODER_HEAD_COPY.match(key)
        mcsp = _MCSP_COPY.match(key)
        if head:
            duplicates[key] = f"{head[1]}.{head[2]}.{head[3]}"
        elif mcsp:
            # detrex shares class_embed[encoder.num_layers]; the list holds one entry per encoder layer.
            duplicates[key] = f"class_embed.{len(mcsp_indices)}.{mcsp[2]}"
    return duplicates


def map_focus_detr_state(state: Dict[str, np.ndarray], param_shapes: Dict[str, tuple]):
    """Map a detrex Focus-DETR state dict onto the model's parameters, strictly.

    Args:
        state: detrex key -> ``np.ndarray`` (the ``"model"`` dict of the checkpoint).
        param_shapes: MindSpore parameter name -> shape, for the target model.

    Returns:
        tuple ``(params, report)``: ``params`` maps every MindSpore parameter name to a float32 array;
        ``report`` is a dict with ``mapped`` (count), ``duplicates`` (sorted duplicate keys dropped after the
        equality check), ``bookkeeping`` (sorted keys dropped as bookkeeping/constant buffers) and ``unused``
        (known-unused key -> reason).

    Raises:
        ConversionError: Listing every differing or orphan duplicate, every unmapped source key, every shape
            mismatch and every model parameter left without a value.
    """
    problems = []
    bookkeeping = sorted(k for k in state if k.endswith(IGNORED_SUFFIXES + CONSTANT_BUFFER_SUFFIXES))
    state = {k: v for k, v in state.items() if k not in set(bookkeeping)}

    duplicates = _canonical_of_duplicates(state)
    for dup, canonical in sorted(duplicates.items()):
        if canonical not in state:
            problems.append(f"duplicate without its canonical copy: {dup} (expected {canonical})")
        elif state[dup].shape != state[canonical].shape or not np.array_equal(state[dup], state[canonical]):
            problems.append(f"duplicate differs from its canonical copy: {dup} vs {canonical}")
    mcsp_heads = {v.split(".")[1] for k, v in duplicates.items() if _MCSP_COPY.match(k)}
    class_heads = {int(m[1]) for k in param_shapes for m in [_CLASS_HEAD.match(k)] if m}
    if mcsp_heads and class_heads and mcsp_heads != {str(max(class_heads))}:
        problems.append(f"the reference's encoder (MCSP) head is class_embed.{min(mcsp_heads)} but this model uses "
                        f"class_embed.{max(class_heads)} (encoder and decoder layer counts differ)")

    swin_prefix = _swin_prefix(param_shapes)
    renamed, unused = [], {}
    for key, value in state.items():
        if key in duplicates:
            continue
        name = detrex_to_mindspore_name(key, swin_prefix)
        if key in KNOWN_UNUSED and name not in param_shapes:
            unused[key] = KNOWN_UNUSED[key]
            continue
        renamed.append((key, name, value))
    params = assemble_params(renamed, param_shapes, problems)
    report = {"mapped": len(params), "duplicates": sorted(duplicates), "bookkeeping": bookkeeping, "unused": unused}
    return params, report


def build_focus_detr_for_conversion(backbone: str):
    """Build a default :class:`FocusDETR` (detrex 4-scale settings) with ``backbone`` (ResNet or Swin preset).

    Raises:
        ConversionError: If the model cannot be built with that backbone.
    """
    from src.models.focus_detr.model import FocusDETR

    try:
        return FocusDETR(backbone=backbone)
    except ValueError as err:
        raise ConversionError(f"cannot build FocusDETR for the checkpoint's backbone {backbone!r}: {err}") from err


def convert_focus_detr_checkpoint(source, output, network=None) -> dict:
    """Convert the detrex checkpoint ``source`` into a MindSpore checkpoint at ``output``.

    Args:
        source: detrex ``.pth`` (``DetectionCheckpointer`` file or a bare state dict).
        output: destination ``.ckpt``; written (atomically) only if the mapping is complete.
        network: the target Cell (e.g. ``build_model(cfg).network``); None builds the default FocusDETR with the
            backbone found in the weights.

    Returns:
        dict: the report of :func:`map_focus_detr_state` plus ``num_params`` and ``backbone`` (the detected
        backbone name, or None).

    Raises:
        ConversionError: If the weights do not map one-to-one onto the model (nothing is written).
    """
    state = load_torch_state_dict(source)
    backbone = infer_backbone(state)
    if network is None:
        if backbone is None:
            raise ConversionError(f"{source}: backbone not recognized (neither a detectron2 ResNet-50/101 nor a "
                                  f"Swin preset of {sorted(SWIN_CONFIGS)}); pass the target model explicitly")
        network = build_focus_detr_for_conversion(backbone)
    params, report = map_focus_detr_state(state, cell_param_shapes(network))
    save_checkpoint_atomic(params, output)
    return {**report, "num_params": len(params), "backbone": backbone}
