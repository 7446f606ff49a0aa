#!/usr/bin/env bash
# One device-tool call: set up the lent GPU machine, run the GPU tests and the benchmarks, logs under
# $OUT. Usage (as the device tool's command, with carry [".whl"]):
#   bash tools/device_check.sh [fp4|softmax_topk|all]
# The device image's numpy 2.5 breaks numba-cuda 0.30: a numpy 2.4.x cp312 wheel must be in .whl/
# (see the device tool's README for the pip download line). The project runs from the tree
# (PYTHONPATH), against the image's numba-cuda and its CUDA 13.0 NVVM / ptxas.
set -u
what=${1:-all}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python -m dsv4_numba info > "$OUT/info.txt" 2>&1
run() {  # name, timeout, command...
    local name=$1 t=$2; shift 2
    timeout "$t" "$@" > "$OUT/$name.log" 2>&1; echo "$name rc=$?" | tee -a "$OUT/summary.txt"
    tail -3 "$OUT/$name.log"
}
case $what in fp4|all)
    run gpu_fp4 200 python -m pytest -q tests/gpu/test_fp4_gpu.py
    run bench_fp4 200 python tools/bench_fp4.py --out "$OUT/bench_fp4.md";; esac
case $what in softmax_topk|all)
    run gpu_softmax_topk 200 python -m pytest -q tests/gpu/test_softmax_topk_gpu.py
    run bench_softmax_topk 200 python tools/bench_softmax_topk.py --quick;; esac
for f in "$OUT"/bench_*.log; do [ -f "$f" ] && tail -25 "$f"; done
