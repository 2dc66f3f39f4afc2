#!/usr/bin/env bash
# The GPU checks of issue 16 item 2, as one script for a GPU machine (docs/attention.md):
#   1. cuDNN flash attention against float32 math and our own bf16 path
#      (tests/models/fused_attention_test.py, the ON_GPU tests; the rest run there too);
#   2. the ~1B train step (bench/train_step.py --model 1b) with each attention implementation.
#
#   bash bench/gpu_check.sh OUT_DIR
#
# Runs under the machine's own python3 and jax (any jax with the CUDA plugin). Packages that image
# lacks travel as wheels in .whl/ (installed with --no-deps into /tmp/site when the folder exists).
# Expected: the parity tests pass; one JSON row per implementation in OUT_DIR/train_step_1b.json.
set -uo pipefail
out=${1:?usage: bash bench/gpu_check.sh OUT_DIR}
mkdir -p "$out"
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1 JAX_PLATFORMS=cuda JAX_COMPILATION_CACHE_DIR=
{
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
    python3 -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__,
'optax', optax.__version__, jax.devices())"
    uptime
} 2>&1 | tee "$out/env.txt"
python3 -c "import glmvoice_jax.trainers.lm" 2>&1 | tail -5 | tee -a "$out/env.txt"
[ "${PIPESTATUS[0]}" = 0 ] || exit 1
python3 -m pytest -q -s -p no:cacheprovider -o addopts="" -m "not e2e" \
    tests/models/fused_attention_test.py 2>&1 | tee "$out/parity.txt"
python3 bench/train_step.py --model 1b --dtype bfloat16 --remat dots_no_batch \
    --attention cudnn,chunked,causal_blocks,xla --attention_chunk 512 --loss_chunk 1024 \
    --batch 8 --seq 2048 --steps 8 --warmup 2 --out "$out/train_step_1b.json" 2>&1 |
    tee "$out/train_step.txt"
