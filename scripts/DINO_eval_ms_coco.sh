#!/usr/bin/env bash
# Focus-DETR COCO evaluation under the name the published Focus-DETR README gives:
#   bash scripts/DINO_eval_ms_coco.sh COCODIR CKPT [CONFIG] [eval.py options, e.g. --max_images 8 --split val2017]
# CONFIG defaults to the R50 4-scale 12-epoch config; DEVICE_TARGET (CPU, GPU, Ascend) defaults to CPU.
# Prints the 12-line COCO table; results and metrics.json go to eval.py's --output_dir (default CKPT's folder).
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 COCODIR CKPT [CONFIG] [eval.py options]" >&2
  exit 2
fi
# eval.sh runs from the repository root: paths the caller gave relative to its own folder are made absolute.
absolute() { case $1 in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$PWD/$1" ;; esac; }
COCO=$(absolute "$1"); CKPT=$(absolute "$2"); shift 2
CONFIG=configs/focus_detr/focus_detr_r50_4scale_12ep.yaml
if [ $# -gt 0 ] && [[ $1 != -* ]]; then
  CONFIG=$1; shift
  if [ -e "$CONFIG" ]; then CONFIG=$(absolute "$CONFIG"); fi
fi
DEVICE_TARGET=${DEVICE_TARGET:-CPU} exec bash "$(dirname "$0")/eval.sh" "$CONFIG" "$COCO" "$CKPT" "$@"
