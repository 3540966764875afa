#!/usr/bin/env bash
# Offline inference of an exported MINDIR on a COCO split: preprocess -> inference -> postprocess (12-line table).
#
#   bash scripts/run_infer_310.sh MINDIR DATA_PATH ANN_FILE DEVICE_TARGET [DEVICE_ID]
#
# DATA_PATH: COCO root (images in DATA_PATH/<split>/); ANN_FILE: DATA_PATH/annotations/instances_<split>.json.
# DEVICE_TARGET Ascend builds and runs the C++ harness ascend310_infer/ (MindSpore C++ API, Ascend 310);
# CPU or GPU run the same file protocol with tools/infer_mindir.py (MindSpore Python, ms.load + GraphCell).
# Environment: CONFIG (the config the MINDIR was exported from; default configs/detr/detr_r50.yaml),
# IMAGE_SIZE ("H W" it was exported with; default the config's largest eval pad bucket), MAX_IMAGES (first N
# images only), OUTPUT_DIR (default ./infer_output/<MINDIR name>), PYTHON (default python3).
set -euo pipefail

usage="usage: bash scripts/run_infer_310.sh MINDIR DATA_PATH ANN_FILE DEVICE_TARGET [DEVICE_ID]"
if [ $# -lt 4 ] || [ $# -gt 5 ]; then
  echo "$usage" >&2
  exit 2
fi
ROOT=$(cd "$(dirname "$0")/.." && pwd)
abspath() { echo "$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"; }
MINDIR=$(abspath "$1")
DATA_PATH=$(abspath "$2")
ANN_FILE=$(abspath "$3")
DEVICE_TARGET=$4
DEVICE_ID=${5:-0}
PYTHON=${PYTHON:-python3}
CONFIG=${CONFIG:-configs/detr/detr_r50.yaml}

fail() { echo "run_infer_310.sh: error: $*" >&2; exit 1; }
[ -f "$MINDIR" ] || fail "MINDIR '$MINDIR' does not exist; write it with export.py"
[ -d "$DATA_PATH" ] || fail "DATA_PATH '$DATA_PATH' is not a folder"
[ -f "$ANN_FILE" ] || fail "ANN_FILE '$ANN_FILE' does not exist"
SPLIT=$(basename "$ANN_FILE" .json)
SPLIT=${SPLIT#instances_}
[ "instances_${SPLIT}.json" = "$(basename "$ANN_FILE")" ] || fail "ANN_FILE must be named instances_<split>.json"
case "$DEVICE_TARGET" in
  Ascend | GPU | CPU) ;;
  *) fail "DEVICE_TARGET must be Ascend, GPU or CPU, got '$DEVICE_TARGET'" ;;
esac

if [ "$DEVICE_TARGET" = "Ascend" ]; then
  # Stop before any work on a machine that cannot build or run the harness.
  ASCEND_HOME=${ASCEND_HOME_PATH:-}
  if [ -z "$ASCEND_HOME" ] || [ ! -d "$ASCEND_HOME" ]; then
    fail "the Ascend toolkit was not found (ASCEND_HOME_PATH='${ASCEND_HOME}'). On an Ascend 310 machine run" \
         "'source /usr/local/Ascend/ascend-toolkit/set_env.sh' first; elsewhere pass DEVICE_TARGET CPU or GPU"
  fi
  MINDSPORE_PATH=${MINDSPORE_PATH:-$("$PYTHON" -c "import mindspore, os; print(os.path.dirname(mindspore.__file__))" 2>/dev/null || true)}
  if [ ! -f "${MINDSPORE_PATH}/include/api/model.h" ]; then
    fail "the MindSpore C++ headers were not found ('${MINDSPORE_PATH}/include/api/model.h'); install the" \
         "MindSpore Ascend package or set MINDSPORE_PATH to a folder with include/api and lib/libmindspore.so"
  fi
fi

OUTPUT_DIR=$(abspath "${OUTPUT_DIR:-./infer_output/$(basename "$MINDIR" .mindir)}")
mkdir -p "$OUTPUT_DIR"
cd "$ROOT"
size_args=()
if [ -n "${IMAGE_SIZE:-}" ]; then
  read -r -a size_args <<< "--image_size $IMAGE_SIZE"
fi
subset_args=()
if [ -n "${MAX_IMAGES:-}" ]; then
  subset_args=(--max_images "$MAX_IMAGES")
fi

if [ "$DEVICE_TARGET" = "Ascend" ]; then
  echo "== building ascend310_infer"
  MINDSPORE_PATH="$MINDSPORE_PATH" PYTHON="$PYTHON" bash ascend310_infer/build.sh > "$OUTPUT_DIR/build.log" 2>&1 \
    || fail "building ascend310_infer failed; see $OUTPUT_DIR/build.log"
fi

echo "== preprocess ($SPLIT) -> $OUTPUT_DIR/input"
"$PYTHON" preprocess.py --config "$CONFIG" --coco_path "$DATA_PATH" --split "$SPLIT" \
  --output_dir "$OUTPUT_DIR/input" --mindrecord_dir "$OUTPUT_DIR/mindrecord" "${size_args[@]}" "${subset_args[@]}" \
  2>&1 | tee "$OUTPUT_DIR/preprocess.log"

echo "== inference on $DEVICE_TARGET -> $OUTPUT_DIR/result"
rm -rf "$OUTPUT_DIR/result"
mkdir -p "$OUTPUT_DIR/result"
if [ "$DEVICE_TARGET" = "Ascend" ]; then
  ascend310_infer/out/main --mindir_path="$MINDIR" --input_dir="$OUTPUT_DIR/input" \
    --result_dir="$OUTPUT_DIR/result" --device_id="$DEVICE_ID" 2>&1 | tee "$OUTPUT_DIR/infer.log"
else
  DEVICE_ID="$DEVICE_ID" "$PYTHON" tools/infer_mindir.py --mindir "$MINDIR" --input_dir "$OUTPUT_DIR/input" \
    --output_dir "$OUTPUT_DIR/result" --device_target "$DEVICE_TARGET" 2>&1 | tee "$OUTPUT_DIR/infer.log"
fi

echo "== postprocess"
"$PYTHON" postprocess.py --config "$CONFIG" --result_dir "$OUTPUT_DIR/result" --ann_file "$ANN_FILE" \
  --output_dir "$OUTPUT_DIR" 2>&1 | tee "$OUTPUT_DIR/acc.log"
