#!/usr/bin/env bash
# Focus-DETR COCO evaluation under the name the published Focus-DETR README gives:
#   bash scripts/DINO_eval_ms_coco.sh COCODIR CKPT [CONFIG] [eval.py options, e.g. --max_images 8 --split val2017]
# CONFIG defaults to the R50 4-scale 12-epoch config; DEVICE_TARGET (CPU, GPU, Ascend) defaults to CPU.
# The MindSpore model zoo's own checkpoint (research/cv/Focus-DETR, R50 5-scale, 47.9 AP) is recognized by its
# parameter names: CONFIG then defaults to focus_detr_r50_5scale_mindspore_zoo.yaml and the checkpoint is first
# converted (tools/convert_weights.py --model focus_detr_ms5, with the same --set overrides) into
# CKPT_DIR/NAME_converted.ckpt beside it, which is what eval.py loads.
# Prints the 12-line COCO table; results and metrics.json go to eval.py's --output_dir (default
# eval_<checkpoint stem>_<split>/ beside the checkpoint eval.py loads).
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 COCODIR CKPT [CONFIG] [eval.py options]" >&2
  exit 2
fi
# eval.sh runs from the repository root: paths the caller gave relative to its own folder are made absolute.
absolute() { case $1 in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$PWD/$1" ;; esac; }
REPO=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python}
COCO=$(absolute "$1"); CKPT=$(absolute "$2"); shift 2
CONFIG=
if [ $# -gt 0 ] && [[ $1 != -* ]]; then
  CONFIG=$1; shift
  if [ -e "$CONFIG" ]; then CONFIG=$(absolute "$CONFIG"); fi
fi
# (A missing CKPT is left to eval.py to report.)
if [ -f "$CKPT" ] && [ "$(cd "$REPO" && "$PY" -m tools.checkpoint_format "$CKPT")" = focus_detr_ms5 ]; then
  CONFIG=${CONFIG:-$REPO/configs/focus_detr/focus_detr_r50_5scale_mindspore_zoo.yaml}
  # eval.py takes "--set A B ..."; the converter takes "--set A --set B".
  SETS=(); in_set=0
  for arg in "$@"; do
    case $arg in
      --set) in_set=1 ;;
      --*) in_set=0 ;;
      *) if [ $in_set = 1 ]; then SETS+=(--set "$arg"); fi ;;
    esac
  done
  CONVERTED="$(dirname "$CKPT")/$(basename "$CKPT" .ckpt)_converted.ckpt"
  echo "MindSpore model zoo 5-scale Focus-DETR checkpoint detected; converting it to $CONVERTED"
  (cd "$REPO" && "$PY" -m tools.convert_weights --model focus_detr_ms5 --source "$CKPT" --output "$CONVERTED" \
     --config "$CONFIG" ${SETS[@]+"${SETS[@]}"})
  CKPT=$CONVERTED
fi
CONFIG=${CONFIG:-$REPO/configs/focus_detr/focus_detr_r50_4scale_12ep.yaml}
DEVICE_TARGET=${DEVICE_TARGET:-CPU} exec bash "$(dirname "$0")/eval.sh" "$CONFIG" "$COCO" "$CKPT" "$@"
