#!/usr/bin/env bash
# Standalone training on GPU: bash scripts/run_standalone_train_gpu.sh EXP CONFIG [train.py options]
# Outputs go to outputs/EXP (logs, resolved config, checkpoints). See scripts/train.sh for the environment.
DEVICE_TARGET=GPU exec bash "$(dirname "$0")/train.sh" standalone "$@"
