"""Which model a checkpoint belongs to, from its parameter names alone, for errors that say what to do.

Signatures (our parameter names, see each model's ``model.py``): DETR has ``query_embed.embedding_table``;
Focus-DETR ``label_enc.*``, ``transformer.tgt_embed*`` or ``transformer.enc_mask_predictor*``; DeFRCN
``affine_rpn.*``, ``proposal_generator.*`` or ``roi_heads.*``. The MindSpore model zoo's 5-scale Focus-DETR
(``src.models.focus_detr.convert_ms5``) and PyTorch parameter names (``running_mean``, ``num_batches_tracked``,
a ``module.`` prefix, DETR's ``backbone.0.body``) need ``tools/convert_weights.py`` first.
"""

from __future__ import annotations

from typing import Iterable, List, Optional, Sequence

CONVERT_HINT = "convert it first with tools/convert_weights.py"
MODELS = ("DETR", "Focus-DETR", "DeFRCN")
SHOWN_KEYS = 3
"""How many keys an error message lists (the rest are counted)."""
MS5_SIGNATURE_KEYS = ("backbone.backbone.body.conv1.weight", "transformer.encoder.layers.0.linear_class.weight")
"""Keys only the MindSpore model zoo's 5-scale Focus-DETR has; their presence identifies that format."""


def is_ms5_state(keys: Iterable[str]) -> bool:
    """True when ``keys`` (parameter names of a checkpoint) are those of the model zoo's 5-scale Focus-DETR."""
    keys = set(keys)
    return all(k in keys for k in MS5_SIGNATURE_KEYS)


def _any_prefix(keys: Sequence[str], prefixes: Iterable[str]) -> bool:
    return any(k.startswith(tuple(prefixes)) for k in keys)


def identify_checkpoint(keys: Iterable[str]) -> Optional[str]:
    """The model named by parameter ``keys``: ``'DETR'``, ``'Focus-DETR'``, ``'DeFRCN'``, a description of a file
    that needs conversion (the MindSpore model zoo's Focus-DETR, PyTorch names), or None when unknown."""
    keys = list(keys)
    if is_ms5_state(keys):
        return f"the MindSpore model zoo's 5-scale Focus-DETR ({CONVERT_HINT} --model focus_detr_ms5)"
    if any(k.endswith(("running_mean", "num_batches_tracked")) for k in keys) or _any_prefix(
            keys, ("module.", "backbone.0.body.")):
        return f"a PyTorch state dict (PyTorch parameter names; {CONVERT_HINT})"
    if _any_prefix(keys, ("label_enc.", "transformer.tgt_embed", "transformer.enc_mask_predictor")):
        return "Focus-DETR"
    if "query_embed.embedding_table" in keys:
        return "DETR"
    if _any_prefix(keys, ("affine_rpn.", "proposal_generator.", "roi_heads.")):
        return "DeFRCN"
    return None


def some_keys(keys: Sequence[str]) -> str:
    """At most :data:`SHOWN_KEYS` of ``keys`` and how many more, e.g. ``'a, b, c and 37 more'``."""
    shown = ", ".join(keys[:SHOWN_KEYS])
    return shown + (f" and {len(keys) - SHOWN_KEYS} more" if len(keys) > SHOWN_KEYS else "")


def mismatch_message(path, checkpoint_keys: Iterable[str], model_keys: Iterable[str], missing: List[str],
                     unexpected: List[str]) -> str:
    """One line for a checkpoint whose keys do not fit a model: which model each is, a few keys, what to do."""
    found = identify_checkpoint(checkpoint_keys)
    wanted = identify_checkpoint(model_keys) or "this config's model"
    counts = (f"{len(missing)} keys missing ({some_keys(missing)}), {len(unexpected)} unexpected "
              f"({some_keys(unexpected)})")
    if found is None:
        return (f"checkpoint '{path}' does not fit {wanted} and is of no model this project knows: {counts}; pass "
                f"a checkpoint trained or converted for the config")
    if found == wanted:
        return (f"checkpoint '{path}' is a {found} checkpoint of other settings than the config (backbone, "
                f"layers, classes...): {counts}; use the config it was trained with")
    if found in MODELS:
        return (f"checkpoint '{path}' is a {found} checkpoint but the config builds {wanted}: {counts}; pass a "
                f"{wanted} checkpoint, or a {found} config")
    return f"checkpoint '{path}' is {found}, not a {wanted} checkpoint: {counts}"
