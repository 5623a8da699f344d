#!/usr/bin/env bash
# Issue 18's GPU measurement in one call of a lent device machine: BERT-base and GPT-2 small
# bf16 training steps, tp against HF, by `benchmarks/throughput.py --device cuda`, eager and
# then under torch.compile; MFU is over the bf16 matmul peak measured in the same run, and
# the eager run ends with a profile of one step of each implementation.
#
#   bash benchmarks/gpu_check.sh prepare    # here (the package index reachable): fills .whl/
#   bash benchmarks/gpu_check.sh run        # there: the device command, with .whl carried
#
# The device image has python3 with torch, transformers, tokenizers, typer, pluggy, ... but not
# pydantic, and nothing can be fetched there. `prepare` builds the wheels of tpcli and every
# plugin from this checkout and downloads pydantic's (CPython 3.12, manylinux; the versions of
# this checkout's venv), into .whl/ (git-ignored through .git/info/exclude). `run` installs them
# into /tmp/site, prints the GPU and the versions, then writes each table under $OUT as it
# finishes (eager.md, compiled-bert.md, compiled-gpt2.md). Each command has its own timeout
# (EAGER_S=120, COMPILED_S=100 each), so what ran comes back; with the install that is about 6
# minutes: call `run` with timeout_s=420, which leaves device time for a second call.
#
# Sizes: BERT 8*SCALE x 128 tokens, GPT-2 4*SCALE x 512 (SCALE=16 unless set). A dry run of
# the same path on a CPU: `WHEEL_PYTHON=3.11 bash benchmarks/gpu_check.sh prepare`, then
# `PYTHON=<a venv's python without tp> DEVICE=cpu PRECISIONS=fp32 SCALE=1
# EXTRA="--layers 1 --steps 1" bash benchmarks/gpu_check.sh run` (the last --steps wins).
set -uo pipefail
cd "$(dirname "$0")/.."

prepare() {
    local py=${PYTHON:-.venv/bin/python}
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    rm -rf .whl && mkdir -p .whl
    "$py" -m pip wheel -q --no-deps --no-build-isolation -w .whl . plugins/tp-* || return 1
    local pins
    pins=$("$py" - <<'EOF'
from importlib.metadata import version
print(" ".join(f"{n}=={version(n)}" for n in
               ("pydantic", "pydantic_core", "annotated-types", "typing-inspection",
                "typing_extensions")))
EOF
) || return 1
    # shellcheck disable=SC2086
    "$py" -m pip download -q --no-deps --only-binary=:all: \
        --python-version "${WHEEL_PYTHON:-3.12}" --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .whl $pins || return 1
    ls -l .whl
    du -sh .whl
}

run() {
    local python3=${PYTHON:-python3}
    OUT=${OUT:-$PWD/gpu-out}
    mkdir -p "$OUT"
    local scale=${SCALE:-16}
    "$python3" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || { echo "the carried wheels did not install"; return 1; }
    export PYTHONPATH=/tmp/site HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
    (  # from /tmp: `python3 -c` puts the current folder (the checkout's tpcli) first on its path
        cd /tmp || exit 1
        nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm \
            --format=csv || echo "(no nvidia-smi)"
        "$python3" -c "import torch, transformers, tpcli, pathlib; print('torch', torch.__version__,
'cuda', torch.version.cuda, '| transformers', transformers.__version__, '| tpcli from',
pathlib.Path(tpcli.__file__).parent)"
        "$python3" -c "from tpcli.plugins import get_plugins; r = get_plugins().registry;
print('converters bert, gpt2:', r.has('converter', 'bert'), r.has('converter', 'gpt2'))"
    ) 2>&1 | tee "$OUT/machine.txt"
    local common=(--device "${DEVICE:-cuda}" --models bert,gpt2 --precisions "${PRECISIONS:-bf16}"
                  --batch-scale "$scale" --warmup 3 --no-preprocess)
    # shellcheck disable=SC2206
    local extra=(${EXTRA:-})
    # eager, with one profiled step of each (top ops by self CUDA time: where MFU is lost)
    timeout "${EAGER_S:-120}" "$python3" benchmarks/throughput.py "${common[@]}" --steps 20 \
        --profile "${extra[@]}" 2>&1 | tee "$OUT/eager.md"
    local model
    for model in bert gpt2; do  # one model a command: a compile that overruns loses only itself
        timeout "${COMPILED_S:-100}" "$python3" benchmarks/throughput.py "${common[@]}" \
            --steps 20 --compile "${extra[@]}" --models "$model" 2>&1 \
            | tee "$OUT/compiled-$model.md"
    done
}

case "${1:-}" in
    prepare) prepare ;;
    run) run ;;
    *) echo "usage: bash benchmarks/gpu_check.sh prepare|run (see the comment at its top)" >&2
       exit 2 ;;
esac
