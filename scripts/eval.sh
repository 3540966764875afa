#!/usr/bin/env bash
# Shared body of run_eval_*.sh. Usage: DEVICE_TARGET=... bash scripts/eval.sh CONFIG COCO CKPT [eval.py options]
set -euo pipefail
if [ $# -lt 3 ]; then echo "usage: $0 CONFIG COCO CKPT [eval.py options]" >&2; exit 2; fi
: "${DEVICE_TARGET:?set DEVICE_TARGET to CPU, GPU or Ascend}"
CONFIG=$1; COCO=$2; CKPT=$3; shift 3
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" eval.py --config "$CONFIG" --coco_path "$COCO" --checkpoint "$CKPT" \
     --device_target "$DEVICE_TARGET" "$@"
