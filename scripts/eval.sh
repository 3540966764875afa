#!/usr/bin/env bash
# Shared body of the run_eval_*.sh launchers:
#   DEVICE_TARGET=CPU|GPU|Ascend [STAGE=pretrain|finetune] bash scripts/eval.sh CONFIG ROOT CKPT [eval.py options]
# ROOT is the dataset root (eval.py's --coco_path: the COCO folder, or the VOCdevkit for a VOC config).
# STAGE=finetune (DeFRCN's run_eval_finetune_*.sh): PCB_MODEL (if set) turns PCB on with that extractor
# (--set eval.pcb_enable=true eval.pcb_model=PCB_MODEL); pick the few-shot seed of the support set with
# --set data.seed=S.
# Relative CONFIG / ROOT / CKPT / PCB_MODEL paths are taken from the caller's folder. PYTHON defaults to python.
set -euo pipefail
: "${DEVICE_TARGET:?set DEVICE_TARGET to CPU, GPU or Ascend}"
abspath() { case "$1" in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
STAGE=${STAGE:-}
case "$STAGE" in ""|pretrain|finetune) ;; *) echo "STAGE must be pretrain or finetune, got '$STAGE'" >&2; exit 2 ;; esac
if [ $# -lt 3 ]; then echo "usage: $0 CONFIG ROOT CKPT [eval.py options]" >&2; exit 2; fi
CONFIG=$(abspath "$1"); ROOT=$(abspath "$2"); CKPT=$(abspath "$3"); shift 3
EXTRA=()
if [ "$STAGE" = finetune ] && [ -n "${PCB_MODEL:-}" ]; then
  EXTRA=(--set eval.pcb_enable=true "eval.pcb_model=$(abspath "$PCB_MODEL")")
fi
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" eval.py --config "$CONFIG" --coco_path "$ROOT" --checkpoint "$CKPT" \
     --device_target "$DEVICE_TARGET" ${EXTRA[@]+"${EXTRA[@]}"} "$@"
