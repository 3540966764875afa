#!/usr/bin/env bash
# Standalone training on CPU: bash scripts/run_standalone_train_cpu.sh EXP [CONFIG] [train.py options]
# CONFIG defaults to configs/defrcn/defrcn_det_r101_base_coco.yaml (DeFRCN COCO base training) when omitted.
# Outputs go to outputs/EXP (logs, resolved config, checkpoints). See scripts/train.sh for the environment.
DEVICE_TARGET=CPU TASK=train exec bash "$(dirname "$0")/train.sh" standalone "$@"
