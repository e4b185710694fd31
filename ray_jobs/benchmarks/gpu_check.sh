#!/usr/bin/env bash
# The GPU benchmarks in one short run on the lent `device` machine (one H200), for the
# "GPU runs" section of docs/benchmarks.md. Prepared so that one call does it all:
#
#   here:   python -m ray_jobs.benchmarks.gpu_bundle      # builds .gpu/ (~37 MiB, needs PyPI)
#   device: run(command="bash ray_jobs/benchmarks/gpu_check.sh", carry=[".gpu"], timeout_s=600)
#
# The device image has torch, transformers, peft and accelerate but not Ray, DeepSpeed, TRL,
# datasets or pydantic, and no network: .gpu/ carries them (see gpu_bundle.py). Each step has
# its own time limit and a failure does not stop the next one, so one call returns whatever
# ran (a step past its limit has its Ray processes killed before the next one starts);
# everything lands in $OUT (at most 8 files come back): gpu_check.log, env.txt and one
# JSON per benchmark. About 8 minutes in all, inside the tool's 10-minute command limit.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check_out}
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false RAY_USAGE_STATS_ENABLED=0
PY=${PY:-python3}

step() {  # step NAME SECONDS COMMAND...: run with a limit, log it, never stop the script
    local name=$1 limit=$2
    shift 2
    echo "=== $name (limit ${limit}s) $(date -u +%T)" | tee -a "$LOG"
    timeout --kill-after=10 "$limit" "$@" >>"$LOG" 2>&1
    local rc=$?
    # A step killed at its limit leaves its local Ray (raylet, GCS, actors holding GPU memory)
    # behind; the device is ours alone, so clear it before the next step. GPU_CHECK_CLEANUP=0
    # when rehearsing on a machine that runs other Rays.
    if [ "${GPU_CHECK_CLEANUP:-1}" = 1 ]; then
        pkill -9 -f 'ray/core/src/ray/' 2>/dev/null
        pkill -9 -f 'ray::' 2>/dev/null
        sleep 2
    fi
    echo "=== $name rc=$rc $(date -u +%T)" | tee -a "$LOG"
    return 0
}

BUNDLE=${GPU_BUNDLE:-.gpu}  # another folder rehearses the run elsewhere (gpu_bundle --python)
if [ ! -d "$BUNDLE/wheels" ]; then
    echo "gpu_check: .gpu/ is missing: build it here with 'python -m ray_jobs.benchmarks.gpu_bundle'" \
         "and name it in the run's carry" >&2
    exit 2
fi
SITE=/tmp/culture_rl_site
rm -rf "$SITE" && mkdir -p "$SITE"
$PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" \
    "$BUNDLE"/wheels/*.whl >>"$LOG" 2>&1 || { echo "gpu_check: wheel install failed" >&2; tail -5 "$LOG"; exit 1; }
tar -xJf "$BUNDLE"/ray-*-slim.tar.xz -C "$SITE" || { echo "gpu_check: ray untar failed" >&2; exit 1; }
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PATH="$SITE/bin:$PATH"

{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    $PY -c "import sys, torch; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
    $PY -m pip list 2>/dev/null | grep -iE "^(torch|transformers|peft|accelerate|tokenizers|pyarrow|fsspec|huggingface.hub|numpy|pandas) "
    $PY -c "import ray, deepspeed, trl, datasets, pydantic; print('ray', ray.__version__, 'deepspeed', deepspeed.__version__, 'trl', trl.__version__, 'datasets', datasets.__version__, 'pydantic', pydantic.VERSION)"
    $PY -c "import culture_rl.cli, culture_rl.distributed.weight_sync.collective, culture_rl.inference.vllm_backend; print('culture_rl imports')"
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

# Short settings: each benchmark's table and ratios, not its full-length run.
step unit-tests 60 $PY -m pytest -q -p no:cacheprovider tests/unit/test_weight_sync.py \
    tests/unit/test_rollout.py tests/unit/test_vllm_backend.py tests/unit/test_benchmark_gpu_plans.py
step weight_sync 90 $PY -m ray_jobs.benchmarks.weight_sync --sizes 10M,50M,200M --repeats 3 \
    --out "$OUT/weight_sync.json"
step rollout_throughput 80 $PY -m ray_jobs.benchmarks.rollout_throughput --prompts 64 \
    --max-new-tokens 32 --repeats 2 --out "$OUT/rollout_throughput.json"
step sft_throughput 150 $PY -m ray_jobs.benchmarks.sft_throughput --models small --stages 0,2 \
    --steps 20 --warmup-steps 3 --out "$OUT/sft_throughput.json"
step ppo_step 120 $PY -m ray_jobs.benchmarks.ppo_step --steps 2 --out "$OUT/ppo_step.json"
grep -E "^=== .* rc=" "$LOG"
