#!/usr/bin/env bash
# DeFRCN fine-tuned model evaluation on CPU (overall / base / novel AP, with PCB when the config enables it):
#   [PCB_MODEL=pcb_resnet101.ckpt] bash scripts/run_eval_finetune_cpu.sh CONFIG ROOT CKPT [eval.py options]
# e.g. CONFIG configs/defrcn/defrcn_gfsod_r101_novel_coco_10shot.yaml --set data.seed=3 (the support set of PCB
# is that shot / seed's split). PCB_MODEL turns PCB on with that extractor (tools/convert_weights.py --model
# resnet_torchvision output; or pass --set eval.pcb_model=... / eval.pcb_enable=false).
DEVICE_TARGET=CPU STAGE=finetune exec bash "$(dirname "$0")/eval.sh" "$@"
