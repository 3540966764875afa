#!/usr/bin/env bash
# Standalone training on CPU: bash scripts/run_standalone_train_cpu.sh EXP CONFIG [train.py options] (see scripts/train.sh)
DEVICE_TARGET=CPU TASK=train exec bash "$(dirname "$0")/train.sh" standalone "$@"
