#!/usr/bin/env bash
# Quick start on a fresh machine, CPU only, offline after the pip install:
#   1. install the runtime requirements (+ scikit-image, whose bundled photographs are the sample set)
#   2. build a COCO-format sample set from those photographs and the boxes in data/sample_annotations.json
#   3. train the tiny DETR of configs/detr/detr_quickstart.yaml on it for 1000 steps until it has memorised it
#      (graph mode, CPU; 500 steps gave AP50 0.786)
#   4. evaluate the checkpoint with pycocotools
#   5. draw its detections on the photographs: outputs/quickstart/infer/*.jpg
# Environment: PYTHON (default python3), QUICKSTART_DIR (default outputs/quickstart), SKIP_INSTALL=1 to use
# the current environment as it is.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
OUT=${QUICKSTART_DIR:-outputs/quickstart}
CFG=configs/detr/detr_quickstart.yaml

if [ "${SKIP_INSTALL:-0}" != 1 ]; then
  "${PYTHON:-python3}" -m venv .venv
  # shellcheck disable=SC1091
  . .venv/bin/activate
  python -m pip install --quiet -r requirements.txt "$(grep '^scikit-image' requirements-dev.txt)"
  python -m pip install --quiet --no-deps -e .
fi
PY=${PYTHON_RUN:-python}

"$PY" tools/build_sample_set.py --output_dir "$OUT/sample_coco"
"$PY" train.py --config "$CFG" --coco_path "$OUT/sample_coco" --output_dir "$OUT/train" --max_steps 1000
CKPT=$(ls -t "$OUT"/train/checkpoints/*.ckpt | head -n 1)
"$PY" eval.py --config "$CFG" --coco_path "$OUT/sample_coco" --checkpoint "$CKPT" \
      --split sample --output_dir "$OUT/eval"
"$PY" infer.py --config "$CFG" --checkpoint "$CKPT" --output_dir "$OUT/infer" \
      --images "$OUT"/sample_coco/sample/*.jpg --score_threshold 0.3
echo "quick start done: detections drawn in $OUT/infer/"
