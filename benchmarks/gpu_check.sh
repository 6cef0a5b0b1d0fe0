#!/usr/bin/env bash
# The GPU check in one command (prepared for a lent GPU; never part of CI): the gpu-marked tests, both kernel
# benchmarks (quick sizes) and the end-to-end sampling benchmark (digits UNet, 20 NFE, fused vs unfused, batch
# 256 and 1024, host syncs per call). Each step has its own time limit so the whole run stays under 5 minutes;
# JSON results go to benchmarks/results/ (named with the GPU) and logs to $LOG_DIR (default: the same folder).
#
#   bash benchmarks/gpu_check.sh            # from the repository root, with a CUDA build of torch installed
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
LOG_DIR=${LOG_DIR:-benchmarks/results}
mkdir -p "$LOG_DIR"
status=0

step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    echo "=== $name (limit ${limit}s)"
    if timeout "$limit" "$@" 2>&1 | tee "$LOG_DIR/gpu-check-$name.log"; then
        echo "=== $name: ok"
    else
        echo "=== $name: FAILED (exit ${PIPESTATUS[0]})"
        status=1
    fi
}

"$PY" -c "import torch, sys; print(torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name()); sys.exit(0 if torch.cuda.is_available() else 3)" \
    || { echo "no CUDA device: nothing to check"; exit 3; }
# sdekit.kernels maps to the top-level kernels/ folder: install the package itself (no dependencies fetched)
"$PY" -m pip install --quiet --no-deps --no-build-isolation -e . || { echo "pip install -e . failed"; exit 2; }

step gpu-tests 120 "$PY" -m pytest -q -m gpu -p no:cacheprovider tests
step bench-combine 60 "$PY" benchmarks/bench_combine.py --quick
step bench-attention 60 "$PY" benchmarks/bench_attention.py --quick
step bench-sampling 90 "$PY" benchmarks/bench_sampling_device.py --batches 256,1024
exit $status
