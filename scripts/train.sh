#!/usr/bin/env bash
# Shared body of the run_{standalone,distribute}_train_*.sh launchers.
# Usage: DEVICE_TARGET=CPU|GPU|Ascend bash scripts/train.sh standalone|distribute EXP CONFIG [train.py options]
# Environment: DEVICE_NUM (distribute; default 2 on CPU, 8 elsewhere), MASTER_PORT (default 8118),
#              OUTPUT_ROOT (default outputs), PYTHON (default python).
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 standalone|distribute EXP CONFIG [train.py options]" >&2
  exit 2
fi
MODE=$1; EXP=$2; CONFIG=$3; shift 3
: "${DEVICE_TARGET:?set DEVICE_TARGET to CPU, GPU or Ascend}"
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT="${OUTPUT_ROOT:-$ROOT/outputs}/$EXP"
PY=${PYTHON:-python}
mkdir -p "$OUT"
cd "$ROOT"
case "$MODE" in
  standalone)
    "$PY" train.py --config "$CONFIG" --output_dir "$OUT" --device_target "$DEVICE_TARGET" "$@"
    ;;
  distribute)
    if [ "$DEVICE_TARGET" = CPU ]; then default_num=2; else default_num=8; fi
    NUM=${DEVICE_NUM:-$default_num}
    msrun --worker_num "$NUM" --local_worker_num "$NUM" --master_port "${MASTER_PORT:-8118}" \
          --log_dir "$OUT/msrun_logs" --join True \
          train.py --config "$CONFIG" --output_dir "$OUT" --device_target "$DEVICE_TARGET" --distributed "$@"
    ;;
  *)
    echo "unknown mode '$MODE' (standalone or distribute)" >&2
    exit 2
    ;;
esac
