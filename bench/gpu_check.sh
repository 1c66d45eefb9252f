#!/usr/bin/env bash
# The GPU check, in one call on a machine with an NVIDIA GPU and PyTorch with CUDA (no Kafka, no
# Redis, no network): the predictor's equality tests with device=cuda against the in-memory store
# (tests/unit/test_predictor.py: every cell, float32/float16/bfloat16 states, fused and per-layer
# kernels, classifiers, the staging), then entity-steps/s at batch sizes 1k to 64k on CUDA and on
# the CPU in the same run (bench/gpu_check.py). Well under 5 minutes.
#
# The project's other wheels travel with the working tree in .whl/ (`make gpu-wheels` fetches
# them here, for that machine's Python 3.12); they are installed into /tmp/site, never over the
# machine's own torch or numpy. Output: the tests' summary and one JSON object (also in
# $OUT/gpu_check.json and $OUT/gpu_tests.log when OUT is set).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-build/gpu-check}
mkdir -p "$out"
export OUT="$out"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
device=cuda
python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || {
  echo "no CUDA device here: the checks run on the CPU"; device=cpu; }
rc=0
STREAMER_TEST_DEVICE=$device timeout 240 python3 -m pytest tests/unit/test_predictor.py \
  -p no:cacheprovider -q -o addopts="" -W default 2>&1 | tee "$out/gpu_tests.log" || rc=$?
timeout 200 python3 bench/gpu_check.py "$@" || rc=$?
exit $rc
