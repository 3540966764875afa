#!/usr/bin/env bash
# COCO evaluation on GPU: bash scripts/run_eval_gpu.sh CONFIG COCO CKPT [eval.py options]
DEVICE_TARGET=GPU exec bash "$(dirname "$0")/eval.sh" "$@"
