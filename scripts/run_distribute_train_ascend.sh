#!/usr/bin/env bash
# Distribute training on Ascend: bash scripts/run_distribute_train_ascend.sh EXP CONFIG [train.py options] (see scripts/train.sh)
DEVICE_TARGET=Ascend TASK=train exec bash "$(dirname "$0")/train.sh" distribute "$@"
