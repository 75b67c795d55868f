#!/usr/bin/env bash
# The history gate on this machine, for real: RUNS A/A smoke runs (default 10) go into a fresh
# history store, each checked against the history as it grows (`check --history`) and, side by
# side, against the first run by today's one-baseline rule (`check --baseline`); then one run
# slowed on purpose, checked the same way; then the trend page, and a screenshot of it in
# Chromium. Runs 2-5 have fewer than 5 earlier runs, so the gate judges them by its fallback,
# the one-baseline rule; from run 6 on, by the history rule: ten runs show that rule on five.
#
# The slowed run has OMP_NUM_THREADS=1 (torch threads 2 -> 1, which env.json records, so the
# gate names it as what changed) and a patched mode through MPBENCH_RUNNER_FACTORY in which every
# linear layer's matmul runs twice (a kernel twice as slow, as a bad library build would be):
# on a shared 2-core machine one thread alone moves the tiny models by less than the machine's
# own between-run noise (SLOWDOWN=threads leaves the patch out, to see that).
#
#   bash benchmarks/history_sequence.sh [OUT_DIR]   # default reports/history-sequence
#
# The smoke suite with its fp32, amp_bf16 and bf16 cases (24 cases: fp16 and fp8 take most of
# a smoke run's time on a CPU and add nothing here), 30 timed steps a case: about 30 s a run on 2
# idle cores, 6 minutes in all. A benchmark, not a test: what it prints depends on how noisy
# this machine is while it runs. Prints one line per run; everything else (each check's output and JSON, the
# trend page, the screenshot) is left in OUT_DIR.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-reports/history-sequence}
MPBENCH=${MPBENCH:-.venv/bin/mpbench}
PYTHON=${PYTHON:-.venv/bin/python}
DB="$OUT/history.db"
RUNS=${RUNS:-10}
# 30 timed steps a case, not the smoke suite's 6 (a smoke test's): a gated run times enough
# steps for a steady median, as suites/ci.toml does; it adds about 10 s a run.
FLAGS=(--precisions fp32,amp_bf16,bf16 --iterations 30 -q --no-report)
# REUSE=1 keeps the runs already in OUT_DIR and only checks them again (adding is a no-op).
if [ -z "${REUSE:-}" ]; then rm -rf "$OUT"; fi
mkdir -p "$OUT" && rm -f "$OUT/summary.txt"

# One line from a check's JSON: its exit code, the rule it applied and the failing cases.
describe() {
  "$PYTHON" - "$1" "$2" <<'EOF'
import json, sys
path, code = sys.argv[1], sys.argv[2]
try:
    data = json.load(open(path))
except OSError:
    print(f"exit {code} (nothing judged)")
    raise SystemExit
notes = " ".join(data.get("notes", []))
rule = "history" if "history gate:" in notes else ("one-baseline" if "one-baseline" in notes else "baseline")
failing = sorted({f["case_id"] for f in data["findings"] if f["fails"]})
print(f"exit {code} ({rule}; {data['counts']['compared']} compared, {len(failing)} failing)")
EOF
}

check() {
  local name=$1
  "$MPBENCH" check "$OUT/$name" --history "$DB" --json "$OUT/$name.history.json" \
    >"$OUT/$name.history.txt" 2>&1
  local history_code=$?
  local history_line baseline_line="-"
  history_line=$(describe "$OUT/$name.history.json" "$history_code")
  if [ "$name" != run-1 ]; then
    "$MPBENCH" check "$OUT/$name" --baseline "$OUT/run-1" --json "$OUT/$name.baseline.json" \
      >"$OUT/$name.baseline.txt" 2>&1
    baseline_line=$(describe "$OUT/$name.baseline.json" "$?")
  fi
  printf '%-6s %-10s check --history: %-48s check --baseline run-1: %s\n' \
    "$name" "$2" "$history_line" "$baseline_line" | tee -a "$OUT/summary.txt"
}

for i in $(seq 1 "$RUNS"); do
  [ -d "$OUT/run-$i" ] ||
    "$MPBENCH" run smoke --out "$OUT/run-$i" "${FLAGS[@]}" --history "$DB" || exit $?
  check "run-$i" "A/A"
done
slowed="run-$((RUNS + 1))"
cat >"$OUT/slow_kernels.py" <<'EOF'
"""mpbench's runner with every linear layer's matmul run twice (the result is the second's)."""
import torch
import torch.nn.functional as F

from bench.engine.executors import default_runner_factory

_linear, _addmm = F.linear, torch.addmm


def _twice(op):
    def slow(*args, **kwargs):
        op(*args, **kwargs)
        return op(*args, **kwargs)

    return slow


def slow_runner(suite, device):
    F.linear, torch.addmm = _twice(_linear), _twice(_addmm)  # GPT-2's Conv1D calls addmm
    return default_runner_factory(suite, device)
EOF
if [ -d "$OUT/$slowed" ]; then
  check "$slowed" "slowed"
elif [ "${SLOWDOWN:-patched}" = threads ]; then
  OMP_NUM_THREADS=1 "$MPBENCH" run smoke --out "$OUT/$slowed" "${FLAGS[@]}" --history "$DB" || exit $?
  check "$slowed" "1 thread"
else
  OMP_NUM_THREADS=1 PYTHONPATH="$OUT${PYTHONPATH:+:$PYTHONPATH}" \
    MPBENCH_RUNNER_FACTORY=slow_kernels:slow_runner \
    "$MPBENCH" run smoke --out "$OUT/$slowed" "${FLAGS[@]}" --history "$DB" || exit $?
  check "$slowed" "slowed"
fi
grep -h "last good run" "$OUT/$slowed.history.txt"

"$MPBENCH" history report --db "$DB" --out "$OUT/trend.html"
if command -v chromium >/dev/null 2>&1; then
  chromium --headless --no-sandbox --disable-gpu --screenshot="$OUT/trend.png" \
    --window-size=1400,2000 "file://$(realpath "$OUT/trend.html")" >/dev/null 2>&1 &&
    echo "screenshot: $OUT/trend.png"
fi
