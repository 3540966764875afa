#!/usr/bin/env bash
# Shared body of the run_{standalone,distribute}_{train,finetune}_*.sh launchers.
# Usage: DEVICE_TARGET=CPU|GPU|Ascend [TASK=train|finetune] bash scripts/train.sh standalone|distribute EXP CONFIG
#        [train.py options]
#   CONFIG is required (there is no default model), e.g. configs/detr/detr_r50.yaml.
#   TASK=finetune: --pretrained is required too (the model_surgery output) or --resume; keys the
#     checkpoint lacks (the FSOD box predictor after `remove`) keep their initialization (--pretrained_partial).
# Environment: DEVICE_NUM (distribute; default 2 on CPU, 8 elsewhere), MASTER_PORT (default 8118),
#              OUTPUT_ROOT (default outputs), PYTHON (default python), MS_CPU_COMM_OP_TIMEOUT (distribute on
#              CPU; default 1800 s, see below).
set -euo pipefail
TASK=${TASK:-train}
usage="usage: $0 standalone|distribute EXP CONFIG [train.py options]"
if [ "$TASK" = finetune ]; then usage="usage: $0 standalone|distribute EXP CONFIG --pretrained CKPT [train.py options]"; fi
if [ $# -lt 3 ] || [[ "$3" == --* ]]; then
  echo "$usage (CONFIG is required, e.g. configs/detr/detr_r50.yaml)" >&2
  exit 2
fi
MODE=$1; EXP=$2; CONFIG=$3; shift 3
: "${DEVICE_TARGET:?set DEVICE_TARGET to CPU, GPU or Ascend}"
EXTRA=()
case "$TASK" in
  train) ;;
  finetune)
    if [[ " $* " != *" --pretrained "* && " $* " != *" --pretrained="* && " $* " != *" --resume"* ]]; then
      echo "$usage (fine-tuning starts from a surgery checkpoint: tools/model_surgery.py)" >&2
      exit 2
    fi
    EXTRA=(--pretrained_partial)
    ;;
  *)
    echo "unknown TASK '$TASK' (train or finetune)" >&2
    exit 2
    ;;
esac
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT="${OUTPUT_ROOT:-$ROOT/outputs}/$EXP"
PY=${PYTHON:-python}
mkdir -p "$OUT"
cd "$ROOT"
case "$MODE" in
  standalone)
    "$PY" train.py --config "$CONFIG" --output_dir "$OUT" --device_target "$DEVICE_TARGET" ${EXTRA[@]+"${EXTRA[@]}"} "$@"
    ;;
  distribute)
    if [ "$DEVICE_TARGET" = CPU ]; then default_num=2; else default_num=8; fi
    if [ "$DEVICE_TARGET" = CPU ]; then
      # A rank that reaches the gradient all-reduce first waits there while another rank still compiles its
      # graph (minutes for DETR-R50 on a shared CPU); MindSpore's CPU collectives give up after
      # MS_CPU_COMM_OP_TIMEOUT seconds ("Reduce wait receiving failed"). Batches are grouped so every rank
      # compiles the same pad bucket at the same step (src/data/group_sampler.py); this covers the uneven
      # compile times that remain.
      export MS_CPU_COMM_OP_TIMEOUT=${MS_CPU_COMM_OP_TIMEOUT:-1800}
    fi
    NUM=${DEVICE_NUM:-$default_num}
    msrun --worker_num "$NUM" --local_worker_num "$NUM" --master_port "${MASTER_PORT:-8118}" \
          --log_dir "$OUT/msrun_logs" --join True \
          train.py --config "$CONFIG" --output_dir "$OUT" --device_target "$DEVICE_TARGET" --distributed \
          ${EXTRA[@]+"${EXTRA[@]}"} "$@"
    ;;
  *)
    echo "unknown mode '$MODE' (standalone or distribute)" >&2
    exit 2
    ;;
esac
