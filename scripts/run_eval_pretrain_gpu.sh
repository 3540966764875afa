#!/usr/bin/env bash
# DeFRCN base-training evaluation on GPU (COCO AP over the base classes, or VOC AP50):
#   bash scripts/run_eval_pretrain_gpu.sh CONFIG CKPT [eval.py options, e.g. --coco_path ROOT --max_images N]
# e.g. CONFIG configs/defrcn/defrcn_det_r101_base_coco.yaml. Dataset root: --coco_path, else DATA_ROOT, else
# datasets/coco (datasets/VOCdevkit for a VOC config). See scripts/eval.sh.
DEVICE_TARGET=GPU STAGE=pretrain exec bash "$(dirname "$0")/eval.sh" "$@"
