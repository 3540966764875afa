#!/usr/bin/env bash
# DeFRCN base-training evaluation on GPU (COCO AP over the base classes, or VOC AP50):
#   bash scripts/run_eval_pretrain_gpu.sh CONFIG ROOT CKPT [eval.py options] (see scripts/eval.sh)
DEVICE_TARGET=GPU STAGE=pretrain exec bash "$(dirname "$0")/eval.sh" "$@"
