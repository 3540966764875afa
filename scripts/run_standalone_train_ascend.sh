#!/usr/bin/env bash
# Standalone training on Ascend: bash scripts/run_standalone_train_ascend.sh EXP CONFIG [train.py options] (see scripts/train.sh)
DEVICE_TARGET=Ascend TASK=train exec bash "$(dirname "$0")/train.sh" standalone "$@"
