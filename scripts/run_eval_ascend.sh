#!/usr/bin/env bash
# COCO evaluation on Ascend: bash scripts/run_eval_ascend.sh CONFIG COCO CKPT [eval.py options]
DEVICE_TARGET=Ascend exec bash "$(dirname "$0")/eval.sh" "$@"
