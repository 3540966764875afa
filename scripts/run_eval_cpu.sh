#!/usr/bin/env bash
# COCO evaluation on CPU: bash scripts/run_eval_cpu.sh CONFIG COCO CKPT [eval.py options]
DEVICE_TARGET=CPU exec bash "$(dirname "$0")/eval.sh" "$@"
