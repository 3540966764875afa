#!/usr/bin/env bash
# DeFRCN base-training evaluation on CPU (COCO AP over the base classes, or VOC AP50):
#   bash scripts/run_eval_pretrain_cpu.sh CONFIG ROOT CKPT [eval.py options] (see scripts/eval.sh)
DEVICE_TARGET=CPU STAGE=pretrain exec bash "$(dirname "$0")/eval.sh" "$@"
