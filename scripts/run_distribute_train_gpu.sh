#!/usr/bin/env bash
# Distribute training on GPU: bash scripts/run_distribute_train_gpu.sh EXP [CONFIG] [train.py options]
# CONFIG defaults to configs/defrcn/defrcn_det_r101_base_coco.yaml (DeFRCN COCO base training) when omitted.
# Outputs go to outputs/EXP (logs, resolved config, checkpoints). See scripts/train.sh for the environment.
DEVICE_TARGET=GPU TASK=train exec bash "$(dirname "$0")/train.sh" distribute "$@"
