"""Convert PyTorch detector weights into a MindSpore checkpoint.

Usage (after ``pip install -e .``, which makes ``src`` importable)::

    python tools/convert_weights.py --model detr --source detr-r50-e632da11.pth --output detr_r50.ckpt
    python tools/convert_weights.py --model detr --source ./detr-resnet-50/ --output detr_r50.ckpt \\
        --config configs/detr/detr_r50_dc5.yaml
    python tools/convert_weights.py --model focus_detr --source focus_detr_r50_4scale_12ep.pth \\
        --output focus_detr_r50.ckpt

``--model detr``: ``--source`` is a torch-hub checkpoint or a Hugging Face model directory / weights file. Without
``--config`` the model is ``configs/detr/detr_r50.yaml`` with the ResNet depth read from the weights.

``--model focus_detr``: ``--source`` is a detrex Focus-DETR ``.pth``. Without ``--config`` the model is the
default FocusDETR (detrex 4-scale 12ep settings) with the backbone read from the weights; with ``--config`` it is
the network ``build_model`` makes from that config. Duplicated shared heads are checked and dropped; known-unused
keys (the denoising label embedding) are listed on stdout.

The checkpoint is written only if every source key maps onto a model parameter with the same shape and every
parameter gets a value; otherwise the offending keys are printed and the exit status is 1.

Another model family is added with one entry in :data:`CONVERTERS`: a function ``(source, output, config_path,
overrides) -> summary line`` that raises :class:`src.convert_common.ConversionError` when it refuses.
"""

import argparse
import sys
from pathlib import Path

from src.config import load_config
from src.convert_common import ConversionError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _convert_detr(source, output, config_path, overrides) -> str:
    from src.models.detr.convert import convert_detr_checkpoint

    model_cfg = load_config(config_path or CONFIGS / "detr" / "detr_r50.yaml", overrides)["model"]
    info = convert_detr_checkpoint(source, output, model_cfg, detect_backbone=config_path is None)
    return f"wrote {output}: {info['num_params']} parameters, backbone {info['backbone']}"


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


# model family -> converter; see the module docstring for the signature.
CONVERTERS = {"detr": _convert_detr, "focus_detr": _convert_focus_detr}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, choices=sorted(CONVERTERS), help="model family")
    parser.add_argument("--source", required=True, help="PyTorch checkpoint (.pth), or HF directory / weights file")
    parser.add_argument("--output", required=True, help="MindSpore .ckpt to write")
    parser.add_argument("--config", help="YAML config of the target model (default: per model, see above)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, e.g. --set model.num_classes=21 (repeatable)")
    args = parser.parse_args(argv)

    try:
        summary = CONVERTERS[args.model](args.source, args.output, args.config, args.overrides)
    except ConversionError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
