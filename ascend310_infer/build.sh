#!/bin/bash
# Build ascend310_infer/out/main against the MindSpore C++ API.
#   bash ascend310_infer/build.sh            (MINDSPORE_PATH defaults to the installed mindspore package)
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
if [ -z "${MINDSPORE_PATH:-}" ]; then
  MINDSPORE_PATH=$("$PYTHON" -c "import mindspore, os; print(os.path.dirname(mindspore.__file__))")
fi
rm -rf out
mkdir out
cd out
cmake .. -DMINDSPORE_PATH="$MINDSPORE_PATH"
make -j"$(nproc)"
echo "built $(pwd)/main"
