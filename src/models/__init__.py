"""Model registry: ``build_model(cfg)`` is the one place a config becomes networks.

Registered: ``detr``, ``focus_detr`` and ``defrcn``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from mindspore import nn


@dataclass
class Detector:
    """The Cells a config describes.

    Attributes:
        network: ``(image, mask) -> outputs`` (a tuple; DETR: ``(pred_logits [L,B,Q,C+1], pred_boxes [L,B,Q,4])``,
            Focus-DETR: see :class:`src.models.focus_detr.model.FocusDETRWithImageMask`).
        criterion: ``(*outputs, tgt_boxes, tgt_labels, tgt_valid) -> (loss, loss_terms)``; None for a model
            with a ``loss_network``.
        postprocess: ``(*outputs, orig_sizes [B,2]) -> (scores [B,S], labels [B,S] dataset category ids (raw
            COCO ids for COCO), boxes xyxy [B,S,4] in original pixels)``. DeFRCN marks empty slots, and Focus-DETR
            boxes left empty by clipping to the image, with label -1 and score 0.
        loss_names: names of the entries of ``loss_terms`` (any length).
        loss_network: optional ``(image, mask, tgt_boxes, tgt_labels, tgt_valid) -> (loss, loss_terms)`` that
            training uses instead of ``criterion(*network(image, mask), ...)``, for models whose forward pass
            needs the targets (DeFRCN samples proposals against the ground truth). It shares ``network``'s
            parameters.
    """

    network: nn.Cell
    criterion: nn.Cell | None
    postprocess: nn.Cell
    loss_names: tuple
    loss_network: nn.Cell | None = None


def build_model(cfg: dict, distributed: bool = False, catalog=None) -> Detector:
    """Build the detector of ``cfg['model']['name']`` for the classes of ``catalog``.

    Args:
        cfg: a config from :func:`src.config.load_config`.
        distributed: average the criterion's box count over ranks (msrun data parallel).
        catalog: the :class:`src.data.catalog.Catalog` of the dataset; None takes the config's classes without
            reading the dataset (COCO's 80 for COCO configs, ``data.class_names`` for VOC). A null
            ``model.num_classes`` follows it (DETR: max id + 1, Focus-DETR: class count); a pinned one is kept.

    Raises:
        ValueError: for an unknown model name, or a pinned ``model.num_classes`` too small for the catalog.
    """
    from src.data.catalog import build_catalog, resolve_num_classes

    catalog = catalog if catalog is not None else build_catalog(cfg["data"])
    cfg = resolve_num_classes(cfg, catalog)
    if "num_classes" in cfg["model"] and cfg["model"]["num_classes"] < catalog.num_classes(cfg["model"]["name"]):
        raise ValueError(f"model.num_classes={cfg['model']['num_classes']} is too small for the "
                         f"{len(catalog)} classes of {catalog.source} (ids up to {max(catalog.ids)}); set it to "
                         f"null to follow the dataset")
    name = cfg["model"]["name"]
    if name == "detr":
        from src.models.detr.criterion import build_criterion
        from src.models.detr.model import build_detr
        from src.models.detr.postprocess import PostProcess

        model_cfg = {k: v for k, v in cfg["model"].items() if k != "name"}
        network = build_detr(**model_cfg)
        criterion = build_criterion(num_classes=model_cfg["num_classes"], aux_loss=model_cfg["aux_loss"],
                                    distributed=distributed, **cfg["loss"])
        return Detector(network, criterion, PostProcess(), ("loss_ce", "loss_bbox", "loss_giou"))
    if name == "focus_detr":
        from src.models.focus_detr.criterion import build_criterion as build_focus_criterion
        from src.models.focus_detr.model import FocusDETR, FocusDETRWithImageMask, FocusDETRWithLoss
        from src.models.focus_detr.postprocess import FocusDetectorPostProcess

        model_cfg = {k: v for k, v in cfg["model"].items()
                     if k not in ("name", "aux_loss", "num_select", "labels_are_category_ids")}
        model_cfg["cascade"] = tuple(model_cfg["cascade"])
        focus_detr = FocusDETR(**model_cfg)
        network = FocusDETRWithImageMask(focus_detr)
        by_id = cfg["model"]["labels_are_category_ids"]
        criterion = build_focus_criterion(num_classes=model_cfg["num_classes"], aux_loss=cfg["model"]["aux_loss"],
                                          distributed=distributed,
                                          label_table=np.arange(model_cfg["num_classes"]) if by_id
                                          else catalog.id_to_label_table(), **cfg["loss"])
        category_ids = range(model_cfg["num_classes"]) if by_id else catalog.ids
        postprocess = FocusDetectorPostProcess(cfg["model"]["num_select"], category_ids)
        # Training runs the denoising queries, which need the targets inside the forward pass.
        return Detector(network, criterion, postprocess, ("loss_class", "loss_bbox", "loss_giou"),
                        FocusDETRWithLoss(focus_detr, criterion))
    if name == "defrcn":
        from src.models.defrcn.detector import LOSS_NAMES, build_defrcn

        network, postprocess, loss_network = build_defrcn(cfg, catalog.ids)
        return Detector(network, None, postprocess, LOSS_NAMES, loss_network)
    raise ValueError(f"unknown model.name {name!r}; registered: ['detr', 'focus_detr', 'defrcn']")
