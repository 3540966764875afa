#!/usr/bin/env bash
# Shared body of the run_eval_*.sh launchers.
#   DEVICE_TARGET=CPU|GPU|Ascend bash scripts/eval.sh CONFIG COCO CKPT [eval.py options]      (run_eval_*.sh)
#   DEVICE_TARGET=... STAGE=pretrain|finetune bash scripts/eval.sh CONFIG CKPT [eval.py options]
#     (DeFRCN's run_eval_{pretrain,finetune}_*.sh). The dataset root is --coco_path if given, else DATA_ROOT,
#     else datasets/VOCdevkit for a VOC config (name containing _voc) and datasets/coco otherwise, relative to
#     the caller's folder. finetune: PCB_MODEL (if set) turns PCB on with that extractor (--set
#     eval.pcb_enable=true eval.pcb_model=PCB_MODEL); pick the few-shot seed of the support set with
#     --set data.seed=S.
# Relative CONFIG / CKPT / root paths are taken from the caller's folder. PYTHON defaults to python.
set -euo pipefail
: "${DEVICE_TARGET:?set DEVICE_TARGET to CPU, GPU or Ascend}"
abspath() { case "$1" in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
STAGE=${STAGE:-}
if [ -z "$STAGE" ]; then
  if [ $# -lt 3 ]; then echo "usage: $0 CONFIG COCO CKPT [eval.py options]" >&2; exit 2; fi
  CONFIG=$(abspath "$1"); ROOT_ARGS=(--coco_path "$(abspath "$2")"); CKPT=$(abspath "$3"); shift 3
  EXTRA=()
else
  case "$STAGE" in pretrain|finetune) ;; *) echo "STAGE must be pretrain or finetune, got '$STAGE'" >&2; exit 2 ;; esac
  if [ $# -lt 2 ]; then echo "usage: $0 CONFIG CKPT [eval.py options]" >&2; exit 2; fi
  CONFIG=$(abspath "$1"); CKPT=$(abspath "$2"); shift 2
  if [[ " $* " == *" --coco_path"* ]]; then
    ROOT_ARGS=()
  else
    case "$(basename "$CONFIG")" in *_voc*) default_root=datasets/VOCdevkit ;; *) default_root=datasets/coco ;; esac
    ROOT_ARGS=(--coco_path "$(abspath "${DATA_ROOT:-$default_root}")")
  fi
  EXTRA=()
  if [ "$STAGE" = finetune ] && [ -n "${PCB_MODEL:-}" ]; then
    EXTRA=(--set eval.pcb_enable=true "eval.pcb_model=$(abspath "$PCB_MODEL")")
  fi
fi
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" eval.py --config "$CONFIG" --checkpoint "$CKPT" --device_target "$DEVICE_TARGET" \
     ${ROOT_ARGS[@]+"${ROOT_ARGS[@]}"} ${EXTRA[@]+"${EXTRA[@]}"} "$@"
