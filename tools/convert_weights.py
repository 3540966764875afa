"""Convert PyTorch detector weights into a MindSpore checkpoint.

Usage (after ``pip install -e .``, which makes ``src`` importable)::

    python tools/convert_weights.py --model detr --source detr-r50-e632da11.pth --output detr_r50.ckpt
    python tools/convert_weights.py --model detr --source ./detr-resnet-50/ --output detr_r50.ckpt \\
        --config configs/detr/detr_r50_dc5.yaml
    python tools/convert_weights.py --model detr_reimpl --source detr_coco.best.pth.tar --output detr_1024.ckpt
    python tools/convert_weights.py --model focus_detr --source focus_detr_r50_4scale_12ep.pth \\
        --output focus_detr_r50.ckpt
    python tools/convert_weights.py --model focus_detr_ms5 --source focus_detr_ms5.ckpt --output ours_ms5.ckpt
    python tools/convert_weights.py --model defrcn --source model_reset_remove.pth --output defrcn_base.ckpt
    python tools/convert_weights.py --model resnet_c2 --source R-101.pkl --output defrcn_r101_imagenet.ckpt
    python tools/convert_weights.py --model resnet_torchvision --source resnet101-5d3b4d8f.pth \\
        --output pcb_resnet101.ckpt

``--model detr``: ``--source`` is a torch-hub checkpoint or a Hugging Face model directory / weights file. Without
``--config`` the model is ``configs/detr/detr_r50.yaml`` with the ResNet depth read from the weights.

``--model detr_reimpl``: ``--source`` is a csm-kr/detr_pytorch ``.pth.tar`` (``model_state_dict``, e.g. its
``detr_coco.best.pth.tar``); the model is ``configs/detr/detr_r50_1024_mosaic.yaml`` unless ``--config`` is given.
``--model detr`` recognizes that layout from its keys as well.

``--model focus_detr``: ``--source`` is a detrex Focus-DETR ``.pth``. Without ``--config`` the model is the
default FocusDETR (detrex 4-scale 12ep settings) with the backbone read from the weights; with ``--config`` it is
the network ``build_model`` makes from that config. Duplicated shared heads are checked and dropped; known-unused
keys (the denoising label embedding) are listed on stdout.

``--model focus_detr_ms5``: ``--source`` is the MindSpore model zoo's 5-scale Focus-DETR ``.ckpt`` (research/cv/
Focus-DETR, R50 5-scale, 47.9 AP; see :mod:`src.models.focus_detr.convert_ms5`). Without ``--config`` the model is
``configs/focus_detr/focus_detr_r50_5scale_mindspore_zoo.yaml``. The denoising label embedding it lacks is written as
zeros and reported.

``--model defrcn`` / ``resnet_c2`` / ``resnet_torchvision`` (DeFRCN, see :mod:`src.models.defrcn.convert`):
``--source`` is a detectron2 / DeFRCN ``.pth`` (the class count is read from its box predictor; a predictor removed
by model surgery is reported as missing by design), the MSRA Caffe2 ``R-101.pkl`` (backbone and res5 of the DeFRCN
model; the RPN, box predictor and affine layers are missing by design) or torchvision's ``resnet101`` ``.pth``
(the PCB feature extractor). ``--depth`` picks ResNet-50 or -101 (default 101); ``--config``/``--set`` are
refused (the source defines the model).

The checkpoint is written only if every source key maps onto a model parameter with the same shape and every
parameter gets a value; otherwise the offending keys are printed and the exit status is 1.

Another model family is added with one entry in :data:`CONVERTERS`: a function ``(source, output, config_path,
overrides) -> summary line`` that raises :class:`src.convert_common.ConversionError` when it refuses (the DeFRCN
converters also take ``depth``).
"""

import argparse
import sys
from pathlib import Path

from src.cli import run
from src.config import load_config
from src.convert_common import ConversionError
from src.data.catalog import resolve_num_classes

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _convert_detr(source, output, config_path, overrides) -> str:
    from src.models.detr.convert import convert_detr_checkpoint

    model_cfg = resolve_num_classes(load_config(config_path or CONFIGS / "detr" / "detr_r50.yaml", overrides))["model"]
    info = convert_detr_checkpoint(source, output, model_cfg, detect_backbone=config_path is None)
    return f"wrote {output}: {info['num_params']} parameters, backbone {info['backbone']}"


def _convert_detr_reimpl(source, output, config_path, overrides) -> str:
    return _convert_detr(source, output, config_path or CONFIGS / "detr" / "detr_r50_1024_mosaic.yaml", overrides)


def _convert_focus_detr(source, output, config_path, overrides) -> str:
    from src.models.focus_detr.convert import convert_focus_detr_checkpoint

    network = None
    if config_path is not None:
        from src.models import build_model

        network = build_model(load_config(config_path, overrides)).network
    elif overrides:
        raise ConversionError("--set needs --config for --model focus_detr")
    info = convert_focus_detr_checkpoint(source, output, network)
    lines = [f"wrote {output}: {info['num_params']} parameters, backbone {info['backbone']}, "
             f"{len(info['duplicates'])} duplicated shared entries checked and dropped, "
             f"{len(info['bookkeeping'])} bookkeeping/constant buffers dropped"]
    lines += [f"known-unused source key (not converted): {key} ({why})" for key, why in info["unused"].items()]
    return "\n".join(lines)


def _convert_focus_detr_ms5(source, output, config_path, overrides) -> str:
    from src.models import build_model
    from src.models.focus_detr.convert_ms5 import convert_ms5_checkpoint

    config = config_path or CONFIGS / "focus_detr" / "focus_detr_r50_5scale_mindspore_zoo.yaml"
    info = convert_ms5_checkpoint(source, output, build_model(load_config(config, overrides)).network)
    lines = [f"wrote {output}: {info['num_params']} parameters from the MindSpore model zoo's 5-scale Focus-DETR, "
             f"{len(info['duplicates'])} duplicated shared entries checked and dropped"]
    lines += [f"not in the source: {name} ({why})" for name, why in info["filled"].items()]
    return "\n".join(lines)


def _defrcn_converter(kind: str):
    """Converter for one DeFRCN source layout (``kind`` of :func:`convert_defrcn_checkpoint`)."""

    def convert(source, output, config_path, overrides, depth=101) -> str:
        from src.models.defrcn.convert import convert_defrcn_checkpoint

        if config_path is not None or overrides:
            raise ConversionError(f"--config/--set are not used by --model {kind}; the model is given by the source")
        info = convert_defrcn_checkpoint(source, output, kind, depth=depth)
        classes = f", {info['num_classes']} classes" if info["num_classes"] is not None else ""
        return (f"wrote {output}: {info['num_written']} of {info['num_model_params']} parameters from "
                f"{info['num_source_keys']} source keys (ResNet-{depth}{classes}), "
                f"{len(info['missing_by_design'])} missing by design, {len(info['dropped'])} source keys dropped, "
                f"{len(info['filled'])} BatchNorm statistics filled")

    return convert


# model family -> converter; see the module docstring for the signature.
DEFRCN_KINDS = ("defrcn", "resnet_c2", "resnet_torchvision")
CONVERTERS = {"detr": _convert_detr, "detr_reimpl": _convert_detr_reimpl, "focus_detr": _convert_focus_detr,
              "focus_detr_ms5": _convert_focus_detr_ms5,
              **{kind: _defrcn_converter(kind) for kind in DEFRCN_KINDS}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, choices=sorted(CONVERTERS), help="model family")
    parser.add_argument("--source", required=True, help="PyTorch checkpoint (.pth), or HF directory / weights file")
    parser.add_argument("--output", required=True, help="MindSpore .ckpt to write")
    parser.add_argument("--config", help="YAML config of the target model (default: per model, see above)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, e.g. --set model.num_classes=21 (repeatable)")
    parser.add_argument("--depth", type=int, choices=(50, 101),
                        help=f"ResNet depth for --model {'/'.join(DEFRCN_KINDS)} (default 101)")
    args = parser.parse_args(argv)
    kwargs = {}
    if args.depth is not None:
        if args.model not in DEFRCN_KINDS:
            parser.error(f"--depth only applies to --model {'/'.join(DEFRCN_KINDS)}")
        kwargs["depth"] = args.depth

    try:
        summary = CONVERTERS[args.model](args.source, args.output, args.config, args.overrides, **kwargs)
    except ConversionError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(summary)
    return 0


if __name__ == "__main__":
    run(main)
