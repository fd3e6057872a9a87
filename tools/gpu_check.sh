#!/usr/bin/env bash
# One short run on a machine with a CUDA GPU and torch (mmcv/mmdet optional):
#   1. builds the CPU extension if it can;
#   2. runs the layer tests that are parametrized over devices (their CUDA cases);
#   3. compiles every Triton SN kernel specialization (tools/triton_compile_check.py) and
#      runs the Triton kernel tests on CUDA tensors (SN_MM_TRITON_TEST_DEVICE=cuda: the same
#      float64-reference tests CI runs on CPU under TRITON_INTERPRET=1);
#   4. the GPU benchmark: SN vs cuDNN BatchNorm2d vs GroupNorm, float32 and fp16/bf16
#      autocast, contiguous and channels_last, the ResNet-50 and RoI shapes, with the
#      Triton kernels as an extra column and the CUDA kernel launches per layer;
#   5. a Mask R-CNN R50-FPN training step with SN vs GN vs BN (only if mmdet is installed).
#
#   bash tools/gpu_check.sh [OUT_DIR]      (default: ./gpu_check_out)
#
# Writes OUT_DIR/env.txt, tests.txt, triton_compile.txt, triton_tests.txt, bench.md and
# mask_rcnn.md. Exits non-zero if a test or the compile check fails; the benchmarks run
# either way. Each step has a time limit (about 15 minutes in all on one GPU).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-gpu_check_out}
mkdir -p "$OUT"
PY=${PYTHON:-python}
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
  $PY -c "import triton; print('triton', triton.__version__)" 2>&1
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
# The CPU extension is optional on a GPU machine (CUDA runs the device-generic op).
$PY setup.py build_ext --inplace > "$OUT/build.txt" 2>&1 || echo "extension not built (see $OUT/build.txt): CPU cases use the pure-torch path"
status=0
if $PY -c "import pytest" 2>/dev/null; then
  timeout 300 $PY -m pytest -q -p no:cacheprovider tests/test_sn_math.py tests/test_toolchain.py \
      tests/test_kernel_paths.py -k "cuda" 2>&1 | tee "$OUT/tests.txt" | tail -5
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
else
  echo "pytest is not installed here: tests skipped" | tee "$OUT/tests.txt"
fi
if $PY -c "import triton" 2>/dev/null; then
  timeout 240 env -u TRITON_INTERPRET $PY tools/triton_compile_check.py --arch 90 80 \
      2>&1 | tee "$OUT/triton_compile.txt" | tail -2
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
  if $PY -c "import pytest" 2>/dev/null; then
    timeout 420 env -u TRITON_INTERPRET SN_MM_TRITON_TEST_DEVICE=cuda $PY -m pytest -q \
        -p no:cacheprovider tests/test_triton_kernels.py 2>&1 | tee "$OUT/triton_tests.txt" | tail -5
    [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
  fi
  KERNELS=triton
else
  echo "triton is not installed: Triton kernels not checked" | tee "$OUT/triton_tests.txt"
  status=1
  KERNELS=aten
fi
timeout 600 $PY bench/bench_sn.py --device cuda --rounds 10 --kernels "$KERNELS" \
    --memory-format both 2>&1 | tee "$OUT/bench.md" | tail -40
if $PY -c "import mmdet" 2>/dev/null; then
  timeout 300 $PY bench/bench_mask_rcnn.py --device cuda --size 800 --batch 2 --steps 10 \
      2>&1 | tee "$OUT/mask_rcnn.md" | tail -8
else
  echo "mmdet is not installed: Mask R-CNN step skipped" | tee "$OUT/mask_rcnn.md"
fi
exit $status
