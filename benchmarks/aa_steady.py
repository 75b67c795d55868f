"""The issue-10 A/A criterion on two finished runs of the same suite: per case, the change of the
median step time, and whether either run flagged the case unstable (timing.unstable) or its
warm-up unsettled. "No case moves more than LIMIT unless flagged unstable" is the goal.

    python benchmarks/aa_steady.py RUN_A RUN_B [--limit 0.15]

Run the pair back to back first, e.g. `mpbench run --out A -q --no-report` twice.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from bench.results.rundir import load_run


def main(argv: list[str] | None = None) -> int:
    """Print the changes, the flags and whether the goal held; exit 1 when it did not."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first", type=Path)
    parser.add_argument("second", type=Path)
    parser.add_argument("--limit", type=float, default=0.15)
    args = parser.parse_args(argv)
    first = {r.case.id: r for r in load_run(args.first).results if r.ok}
    second = {r.case.id: r for r in load_run(args.second).results if r.ok}
    changes, offenders, flagged_moves = [], [], 0
    for case_id in sorted(first.keys() & second.keys()):
        a, b = first[case_id].timing, second[case_id].timing
        change = b.median_s / a.median_s - 1
        changes.append(abs(change))
        flagged = bool(a.unstable or b.unstable)
        mark = " unstable" if flagged else ""
        if abs(change) > args.limit:
            if flagged:
                flagged_moves += 1
            else:
                offenders.append(case_id)
                mark += "  <-- moved past the limit, not flagged"
        spread = f"robust cv {a.robust_cv or 0:.3f}/{b.robust_cv or 0:.3f}"  # what flags
        print(f"{case_id:45} {change:+7.1%}  {spread}  cv {a.cv:.3f}/{b.cv:.3f}{mark}")
    print(
        f"\n{len(changes)} cases: median |change| {statistics.median(changes):.1%}, "
        f"max {max(changes):.1%}; {sum(c > 0.10 for c in changes)} above 10%, "
        f"{sum(c > args.limit for c in changes)} above {args.limit:.0%} "
        f"({flagged_moves} of them flagged unstable)"
    )
    held = not offenders
    print("goal held" if held else f"goal missed: {len(offenders)} unflagged case(s) moved")
    return 0 if held else 1


if __name__ == "__main__":
    raise SystemExit(main())
