#!/usr/bin/env bash
# One GPU session's benchmark in one command, for a GPU machine that cannot reach a package
# registry (the device tool's machines: python 3.12 with torch and most of the stack).
#
#   bench/gpu_session.sh fetch    here, with PyPI: the wheels of bench/gpu_requirements.txt
#                                 for CPython 3.12 on x86-64 Linux into .whl/ (git-ignored)
#   bench/gpu_session.sh run OUT  on the GPU machine, with .whl/ carried along: install the
#                                 wheels offline, run the gpu-marked tests and every row of
#                                 bench/gpu_throughput.py; results.json and the logs go to OUT
#   bench/gpu_session.sh packing OUT
#                                 on the GPU machine too (a call of its own: each must end
#                                 within the device's 10 minutes): bench/packing.py on the
#                                 1.1B Llama, padded against packed, its log to OUT
#
# The commit is not in the copied tree: pass it as KUBETUNE_COMMIT (git rev-parse --short HEAD).
set -euo pipefail
cd "$(dirname "$0")/.."

fetch() {
    rm -rf .whl && mkdir .whl
    python -m pip download --quiet --dest .whl --no-deps --only-binary=:all: \
        --python-version 3.12 --implementation cp --abi cp312 \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform any \
        -r bench/gpu_requirements.txt
    du -sh .whl
}

install() {
    local out=$1
    mkdir -p "$out"
    python3 -m pip install --quiet --no-index --find-links .whl -r bench/gpu_requirements.txt \
        2>&1 | tee "$out/install.log"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
}

export PYTHONPATH="$PWD/trainer:$PWD/operator:$PWD"

run() {
    local out=${1:?usage: bench/gpu_session.sh run OUT}
    install "$out"
    # No conftest: the suite's fixtures need the Kubernetes emulator, which the image lacks.
    python3 -m pytest --noconftest -m gpu -p no:cacheprovider -q \
        tests/integration/test_gpu_throughput_bench.py 2>&1 | tee "$out/gpu-tests.log"
    python3 bench/gpu_throughput.py --json "$out/results.json" 2>&1 | tee "$out/throughput.log"
}

case "${1:-}" in
    fetch) fetch ;;
    run) shift; run "$@" ;;
    packing)
        out=${2:?usage: bench/gpu_session.sh packing OUT}
        install "$out"
        python3 bench/packing.py --model llama-1.1b --repeats 1 2>&1 | tee "$out/packing.log"
        ;;
    *) sed -n '2,16p' "$0" >&2; exit 2 ;;
esac
