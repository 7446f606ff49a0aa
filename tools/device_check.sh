#!/usr/bin/env bash
# One device-tool call: set up the lent GPU machine, run GPU tests and benchmarks, logs under $OUT.
# Usage (as the device tool's command, with carry [".whl"]):
#   bash tools/device_check.sh [SECTION...]      SECTION: demo fp4 softmax_topk ptx fmha indexer
#                                                (default: all)
#   SECTION=path/to/test_file.py runs that file (pytest -s);
#   SECTION=name:test   only the GPU tests,   name:bench   only the benchmark.
# Each section runs tests/gpu/test_<name>_gpu.py then tools/bench_<name>.py (when they exist), each
# under its own timeout (TEST_T / BENCH_T seconds, default 150 / 170) so one hang cannot eat the call.
# Kernels go through Numba's disk cache (below); PRECOMPILE=... fills it in parallel first.
# The device image's numpy 2.5 breaks numba-cuda 0.30: a numpy 2.4.x cp312 wheel must be in .whl/
# (see the device tool's README for the pip download line). The project runs from the tree
# (PYTHONPATH), against the image's numba-cuda and its CUDA 13.0 NVVM / ptxas.
set -u
sections=${*:-demo fp4 softmax_topk ptx fmha indexer}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
# Numba's disk cache for every kernel, keyed on source stamps that follow content and imports:
# each kernel compiles once per machine, not once per process (pytest-xdist worker, benchmark).
python3 tools/stamp_sources.py
export DSV4_NUMBA_CACHE=1 NUMBA_CACHE_DIR=${NUMBA_CACHE_DIR:-/tmp/ncache}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python -m dsv4_numba info > "$OUT/info.txt" 2>&1
run() {  # name, timeout, command...
    local name=$1 t=$2; shift 2
    local t0=$SECONDS
    timeout "$t" "$@" > "$OUT/$name.log" 2>&1
    echo "$name rc=$? $((SECONDS - t0))s" | tee -a "$OUT/summary.txt"
    tail -4 "$OUT/$name.log"
}
# PRECOMPILE="topk_split topk_rowblock": compile those kernels in parallel first (~2.5 min for 16
# top-k kernels on 16 cores, instead of ~1.5 min each in every process that launches them).
# "topk_split" now also matches the 24 cluster forms (_c2 .. _c16); name the ones a run needs, a
# trailing $ for an exact name: PRECOMPILE='topk_split_f32_v4_t256$ topk_split_f32_v4_t256_c16'
# ("auto" at <= 4 rows of 65536 fp32 scores runs topk_split_f32_v4_t256_c16; at 131072,
# topk_split_f32_v4_t512_c16)
if [ -n "${PRECOMPILE:-}" ]; then run precompile 300 python3 tools/precompile.py $PRECOMPILE; fi
for s in $sections; do
    name=${s%%:*}; part=${s#*:}; [ "$part" = "$s" ] && part=both
    if [ -f "$s" ]; then run "$(basename "$s" .py)" "${TEST_T:-150}" python -m pytest -q -s "$s"; continue; fi
    if [ "$name" = demo ]; then run demo 150 python -m dsv4_numba demo; continue; fi
    t=tests/gpu/test_${name}_gpu.py; b=tools/bench_${name}.py
    if [ "$part" != bench ] && [ -f "$t" ]; then run "gpu_$name" "${TEST_T:-150}" python -m pytest -q -x "$t"; fi
    if [ "$part" != test ] && [ -f "$b" ]; then
        run "bench_$name" "${BENCH_T:-170}" python "$b" ${BENCH_ARGS:-}; fi
done
echo "==== summary"; cat "$OUT/summary.txt"
for f in "$OUT"/bench_*.log; do [ -f "$f" ] && { echo "==== $f"; tail -30 "$f"; }; done
