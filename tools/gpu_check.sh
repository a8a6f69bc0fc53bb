#!/usr/bin/env bash
# The CUDA checks and GPU benchmarks, on a lent GPU machine that has no internet (CI never has a GPU).
#
# Here (with internet to PyPI), once: the wheels and mamba-ssm's sdist go to .whl/ (git-ignored via .git/info/exclude):
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 -d .whl flash-linear-attention==0.6.0 fla-core==0.6.0 fastcore plotly narwhals
#   MAMBA_SKIP_CUDA_BUILD=TRUE pip download --no-deps --no-binary=:all: --no-build-isolation -d .whl mamba-ssm
# There (the device tool, carrying .whl):  bash tools/gpu_check.sh PART   with PART one of
#   tests   the fast kernels (fla, mamba-ssm) against the PyTorch references (pytest -m cuda)  -> gpu-tests.log
#   bench   benchmarks/generation.py and benchmarks/kernels.py --device cuda                 -> *-cuda.json
#   decode  compiled decoding on CUDA graphs: greedy equals eager (pytest -m cuda -k cuda_graphs), then the eager and
#           compiled decode benchmark (generation.py --compiled --device cuda)               -> generation-compiled-cuda.json
#   all     tests and bench (the default; decode is its own call)
# mamba-ssm's selective-scan extension is built for the visible GPU only (tools/build_selective_scan.py, build.log).
#
# Seen on an H200 (2026-11-30, torch 2.11, Triton 3.6.0, fla 0.6.0): the build took 127 s on 14 jobs; each fla test
# took 40-50 s, nearly all of it Triton compiling and autotuning on a fresh machine, so `tests` alone needs about
# 10 minutes: give each PART its own call. Results go to $OUT (default runs/gpu).
set -u
PART=${1:-all}
OUT=${OUT:-runs/gpu}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
T0=$(date +%s); stamp() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
mkdir -p /tmp/mamba && tar xzf .whl/mamba_ssm-*.tar.gz -C /tmp/mamba --strip-components=1 || exit 1
export PYTHONPATH=/tmp/site:/tmp/mamba:/tmp/mamba/build:$PWD
python3 -c "import torch, triton, transformers, fla; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__, 'fla', fla.__version__)"

stamp "building mamba-ssm's selective_scan_cuda in the background"
(timeout ${BUILD_S:-300} python3 tools/build_selective_scan.py /tmp/mamba > "$OUT/build.log" 2>&1; echo "rc=$?" >> "$OUT/build.log") &
BUILD=$!
PYTEST="python3 -m pytest tests/test_kernels.py tests/test_kernels_delta.py -m cuda -p no:cacheprovider --tb=short -rA"

if [[ $PART == tests || $PART == all ]]; then
    stamp "fla kernels against the references (the build runs meanwhile)"
    timeout ${FLA_S:-420} $PYTEST -k "not mamba_ssm and not ssd and not selective_scan" 2>&1 | tee "$OUT/gpu-tests.log" | grep -E "PASSED|FAILED|SKIPPED|ERROR|passed|failed"
fi

wait $BUILD; stamp "build: $(tail -2 "$OUT/build.log" | tr '\n' ' ')"
if ! ls /tmp/mamba/build/selective_scan_cuda*.so >/dev/null 2>&1; then
    # mamba_ssm/__init__ imports the extension: without it, a stand-in that raises on use keeps its Triton SSD kernel testable
    mkdir -p /tmp/mamba/build
    printf 'def __getattr__(name):\n    raise RuntimeError("selective_scan_cuda was not built on this machine: see build.log")\n' \
        > /tmp/mamba/build/selective_scan_cuda.py
fi
python3 -c "import mamba_ssm; print('mamba_ssm', mamba_ssm.__version__)" 2>&1 | tail -2

if [[ $PART == tests || $PART == all ]]; then
    stamp "mamba-ssm kernels against the references"
    timeout ${MAMBA_S:-240} $PYTEST -k "mamba_ssm or ssd or selective_scan" 2>&1 | tee -a "$OUT/gpu-tests.log" | grep -E "PASSED|FAILED|SKIPPED|ERROR|passed|failed"
fi

if [[ $PART == bench || $PART == all ]]; then
    stamp "decode benchmark"
    timeout ${GEN_S:-300} python3 benchmarks/generation.py --device cuda --contexts 512 8192 32768 --new 32 --repeats 3 \
        --long-repeats 2 --students phi_mamba mamba2 gla gated_deltanet hybrid_mamba2_attn1 --max-gib 60 2>&1 | grep -v "it/s\]" | tail -30
    cp benchmarks/results/generation-cuda.json "$OUT/" 2>/dev/null
    stamp "kernel benchmark"
    timeout ${KERNELS_S:-240} python3 benchmarks/kernels.py --device cuda --lengths 1024 4096 --repeats 2 2>&1 | grep -v "it/s\]" | tail -30
    cp benchmarks/results/kernels-cuda.json "$OUT/" 2>/dev/null
fi
if [[ $PART == decode ]]; then
    stamp "compiled decoding with CUDA graphs against eager"
    timeout ${DECODE_TEST_S:-240} python3 -m pytest tests/test_hf.py -m cuda -k cuda_graphs -p no:cacheprovider --tb=short -rA 2>&1 \
        | tee "$OUT/gpu-decode-tests.log" | grep -E "PASSED|FAILED|SKIPPED|ERROR|passed|failed"
    stamp "eager and compiled decode benchmark"
    timeout ${DECODE_BENCH_S:-300} python3 benchmarks/generation.py --device cuda --compiled --contexts 512 8192 32768 --new 32 \
        --repeats 3 --long-repeats 2 --max-gib 60 2>&1 | grep -v "it/s\]" | tail -30
    cp benchmarks/results/generation-compiled-cuda.json "$OUT/" 2>/dev/null
fi
stamp done
