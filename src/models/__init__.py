"""Model registry: ``build_model(cfg)`` is the one place a config becomes networks.

Registered (:data:`MODELS`): ``detr``, ``focus_detr`` and ``defrcn``. Each name maps to its folder's ``model.py``,
whose ``build_detector(model_cfg, loss_cfg, catalog, distributed, seed)`` returns a
:class:`src.models.contract.Detector`; a new model is a new folder and one line in :data:`MODELS`.
:func:`build_inference_net` is what ``eval.py``, ``infer.py`` and ``export.py`` run; :func:`build_score_calibrator`
gives ``src.evaluation`` a model's optional score calibrator.
"""

from __future__ import annotations

import importlib
import os

from src.checkpoint import checkpoint_catalog, load_pretrained
from src.data.catalog import build_catalog, resolve_num_classes
from src.models.contract import Detector, InferenceNet, ScoreCalibrator

__all__ = ["MODELS", "Detector", "InferenceNet", "ScoreCalibrator", "build_inference_net", "build_model",
           "build_score_calibrator", "unpadded_parts"]

MODELS = {
    "detr": "src.models.detr.model",
    "focus_detr": "src.models.focus_detr.model",
    "defrcn": "src.models.defrcn.model",
}
"""The registry: ``model.name`` -> the module whose ``build_detector(model_cfg, loss_cfg, catalog, distributed,
seed)`` builds it from the config's ``model`` and ``loss`` sections (``seed``: ``train.seed``), and whose
``unpadded_parts(inference_network)`` names the Cells unpadded evaluation compiles (:mod:`src.models.contract`)."""


def model_module(name: str):
    """The registered module of ``model.name`` ``name``.

    Raises:
        ValueError: ``name`` is not registered (lists the registered names).
    """
    if name not in MODELS:
        raise ValueError(f"unknown model.name {name!r}; registered: {list(MODELS)}")
    return importlib.import_module(MODELS[name])


def unpadded_parts(name: str, net: InferenceNet) -> list:
    """``(cell, signature)`` of the Cells of ``net``, the inference network of model ``name``, that unpadded
    evaluation compiles once as dynamic-shape graphs (the model's ``unpadded_parts``).

    Raises:
        ValueError: ``name`` is not registered.
    """
    return model_module(name).unpadded_parts(net)


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
    catalog = catalog if catalog is not None else build_catalog(cfg["data"])
    cfg = resolve_num_classes(cfg, catalog)
    if "num_classes" in cfg["model"] and cfg["model"]["num_classes"] < catalog.num_classes(cfg["model"]["name"]):
        raise ValueError(f"model.num_classes={cfg['model']['num_classes']} is too small for the "
                         f"{len(catalog)} classes of {catalog.source} (ids up to {max(catalog.ids)}); set it to "
                         f"null to follow the dataset")
    build_detector = model_module(cfg["model"]["name"]).build_detector
    return build_detector(cfg["model"], cfg["loss"], catalog, distributed, cfg["train"]["seed"])


def build_inference_net(cfg: dict, checkpoint: str | os.PathLike, catalog=None) -> InferenceNet:
    """The inference network of ``cfg`` with ``checkpoint``'s weights (strict), in eval mode.

    What eval.py, infer.py and export.py run: ``(image, mask, orig_size) -> (scores, labels, boxes)``
    (:class:`src.models.contract.InferenceNet`).

    Args:
        cfg: a config from :func:`src.config.load_config`.
        checkpoint: a training or converted ``.ckpt``.
        catalog: the classes to predict; None takes the classes the checkpoint was trained on
            (:func:`src.checkpoint.checkpoint_catalog`), and for converted weights the config's.

    Raises:
        src.checkpoint.CheckpointNotFoundError, CheckpointFormatError, CheckpointMismatchError,
        CheckpointShapeError: a missing or unreadable file, keys or shapes that do not fit the model.
    """
    detector = build_model(cfg, catalog=catalog if catalog is not None else checkpoint_catalog(checkpoint))
    load_pretrained(checkpoint, detector.network, strict=True)
    net = detector.inference_network
    net.set_train(False)
    return net


def build_score_calibrator(cfg: dict, root, cache_root: str | os.PathLike) -> ScoreCalibrator | None:
    """The model's :class:`src.models.contract.ScoreCalibrator` for an evaluation run, or None.

    A model offers one by defining ``build_score_calibrator(cfg, root, cache_root)`` in its ``model.py`` (DeFRCN:
    PCB when ``eval.pcb_enable``); models without it get None. ``root``: the dataset root; ``cache_root``: the
    evaluation's cache folder (the MindRecord folder), under which the calibrator keeps its own sub-folder.

    Raises:
        ValueError: an unknown model name; whatever the model's builder raises (named input errors).
    """
    build = getattr(model_module(cfg["model"]["name"]), "build_score_calibrator", None)
    return None if build is None else build(cfg, root, cache_root)
