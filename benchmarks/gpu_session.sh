#!/usr/bin/env bash
# One prepared GPU session (the `device` tool's machine, or any CUDA box): selfcheck with the ci
# suite, then the fp8/bf16 modes of the ci suite eager and compiled. Every step has its own
# timeout and the script goes on after a failure, so one broken step still leaves the others'
# figures. Logs and run directories are packed into $OUT (default ./gpu-out).
#
#   bash benchmarks/gpu_session.sh [STEP...]
#   steps: env dryrun selfcheck compile ci-bert-infer (default: env dryrun selfcheck compile)
#
# On the device machine torchao travels as a wheel in .whl/ (see the device tool's README).
set -u
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=.:${PYTHONPATH:-}
STEPS=${*:-env dryrun selfcheck compile}
WORK=/tmp/mpbench-gpu
mkdir -p "$WORK"

step() {  # step NAME TIMEOUT_S COMMAND...: run, log to $OUT/NAME.log, report the exit code
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  echo "=== $name (limit ${limit}s): $*"
  timeout --signal=INT --kill-after=20 "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "=== $name: exit $rc after $((SECONDS - t0)) s"
  tail -n 60 "$OUT/$name.log"
}

for s in $STEPS; do
  case $s in
    env)
      nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem,power.limit \
        --format=csv
      python3 -c "import torch, transformers, torchao; print('torch', torch.__version__, \
'transformers', transformers.__version__, 'torchao', torchao.__version__)"
      ;;
    dryrun)
      step dryrun-standard 25 python3 -m bench run standard --dry-run
      ;;
    selfcheck)
      step selfcheck 300 python3 -m bench selfcheck --out "$WORK/selfcheck"
      ;;
    ci-bert-infer)  # the ci cases a first, cut-short session did not reach
      step ci-bert-infer 80 python3 -m bench run ci --models bert-base --workloads infer \
        --out "$WORK/ci-bert-infer"
      ;;
    compile)
      step compile 100 python3 -m bench run ci --models gpt2-124m --workloads train \
        --precisions fp32,bf16,fp8 --execution eager,compiled --batch-sizes 32 --iterations 20 \
        --out "$WORK/compile"
      ;;
    *)
      echo "unknown step $s" && exit 2
      ;;
  esac
done
tar -czf "$OUT/runs.tgz" -C "$WORK" . 2>/dev/null
ls -la "$OUT"
