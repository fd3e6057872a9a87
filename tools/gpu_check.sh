#!/usr/bin/env bash
# One short run on a machine with a CUDA GPU and torch alone (no mmcv/mmdet needed):
# builds the CPU extension if it can, runs the layer tests that are parametrized over
# devices (their CUDA cases), and the GPU benchmark with its AMP columns.
#
#   bash tools/gpu_check.sh [OUT_DIR]      (default: ./gpu_check_out)
#
# Writes OUT_DIR/env.txt, OUT_DIR/tests.txt and OUT_DIR/bench.md. Exits non-zero if a
# test fails; the benchmark runs either way.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-gpu_check_out}
mkdir -p "$OUT"
PY=${PYTHON:-python}
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
# The CPU extension is optional on a GPU machine (CUDA runs the device-generic op).
$PY setup.py build_ext --inplace > "$OUT/build.txt" 2>&1 || echo "extension not built (see $OUT/build.txt): CPU cases use the pure-torch path"
status=0
if $PY -c "import pytest" 2>/dev/null; then
  $PY -m pytest -q -p no:cacheprovider tests/test_sn_math.py tests/test_toolchain.py \
      tests/test_kernel_paths.py -k "cuda" 2>&1 | tee "$OUT/tests.txt" | tail -5
  status=${PIPESTATUS[0]}
else
  echo "pytest is not installed here: tests skipped" | tee "$OUT/tests.txt"
fi
timeout 420 $PY bench/bench_sn.py --device cuda --rounds 10 2>&1 | tee "$OUT/bench.md" | tail -40
exit $status
