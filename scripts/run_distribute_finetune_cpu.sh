#!/usr/bin/env bash
# Distribute DeFRCN fine-tuning on CPU (one shot / seed):
#   bash scripts/run_distribute_finetune_cpu.sh EXP CONFIG --pretrained SURGERY_CKPT [train.py options]
# e.g. CONFIG configs/defrcn/defrcn_fsod_r101_novel_coco_10shot.yaml with the `remove` surgery output, or a
# gfsod config with the `randinit` one (tools/model_surgery.py); pick the few-shot seed with --set data.seed=S.
# Outputs go to outputs/EXP (logs, resolved config, checkpoints). See scripts/train.sh for the environment.
DEVICE_TARGET=CPU TASK=finetune exec bash "$(dirname "$0")/train.sh" distribute "$@"
