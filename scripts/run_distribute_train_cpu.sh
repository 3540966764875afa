#!/usr/bin/env bash
# Distribute training on CPU: bash scripts/run_distribute_train_cpu.sh EXP CONFIG [train.py options]
# Outputs go to outputs/EXP (logs, resolved config, checkpoints). See scripts/train.sh for the environment.
DEVICE_TARGET=CPU exec bash "$(dirname "$0")/train.sh" distribute "$@"
