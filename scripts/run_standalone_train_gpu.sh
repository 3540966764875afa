#!/usr/bin/env bash
# Standalone training on GPU: bash scripts/run_standalone_train_gpu.sh EXP CONFIG [train.py options] (see scripts/train.sh)
DEVICE_TARGET=GPU TASK=train exec bash "$(dirname "$0")/train.sh" standalone "$@"
