#!/usr/bin/env bash
# Distribute training on GPU: bash scripts/run_distribute_train_gpu.sh EXP CONFIG [train.py options] (see scripts/train.sh)
DEVICE_TARGET=GPU TASK=train exec bash "$(dirname "$0")/train.sh" distribute "$@"
