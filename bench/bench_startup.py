"""Start-up: how long light commands take as whole processes, against the cost of importing what
the database, HTTP and terminal commands need (the same interpreter, in the same run).

python -m bench.bench_startup --runs 15 [--baseline-src DIR] [--write docs/benchmarks.md]

--baseline-src DIR: also `--help` of another tree's `reconciler` package (e.g. `git archive REV
reconciler | tar -x -C DIR`), run from DIR with the same interpreter, in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.report import table, write_section

ROOT = Path(__file__).resolve().parent.parent
BASELINE = "reconciler --help, the baseline tree (--baseline-src)"
HEAVY = "import reconciler.server.runtime, reconciler.cli.render, reconciler.vapi.emulator"
CASES: list[tuple[str, list[str]]] = [
    ("python -c pass (interpreter alone)", [sys.executable, "-c", "pass"]),
    ("reconciler --help", [sys.executable, "-m", "reconciler", "--help"]),
    (
        "reconciler validate specs/examples",
        [sys.executable, "-m", "reconciler", "validate", "specs/examples"],
    ),
    ("reconciler schema --check", [sys.executable, "-m", "reconciler", "schema", "--check"]),
    ("import what plan/apply need", [sys.executable, "-c", HEAVY]),
]


def medians_s(cases: list[tuple[str, list[str], Path]], runs: int) -> dict[str, float]:
    """Each case's median wall time. The cases take turns (one run of each, then again), so
    a machine whose speed drifts during the call (other users' work) weighs on all alike."""
    times: dict[str, list[float]] = {name: [] for name, _, _ in cases}
    for _ in range(runs):
        for name, argv, cwd in cases:
            t0 = time.perf_counter()
            subprocess.run(argv, cwd=cwd, capture_output=True, check=True)
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--write", type=Path)
    ap.add_argument("--baseline-src", type=Path, metavar="DIR")
    args = ap.parse_args()
    cases = [(name, argv, ROOT) for name, argv in CASES]
    if args.baseline_src:
        argv = [sys.executable, "-m", "reconciler", "--help"]
        cases.append((BASELINE, argv, args.baseline_src.resolve()))
    results = medians_s(cases, args.runs)
    rows = [[name, f"{seconds * 1000:.0f}"] for name, seconds in results.items()]
    body = table(["process", "median ms"], rows)
    if args.baseline_src:
        body += (
            f"\n\n`--help` takes {results['reconciler --help'] / results[BASELINE]:.2f}x the "
            "time of the baseline tree's (the same interpreter and environment, in turns)."
        )
    heavy = results["import what plan/apply need"]
    body += (
        f"\n\n`--help` takes {results['reconciler --help'] / heavy:.2f}x and `validate` "
        f"{results['reconciler validate specs/examples'] / heavy:.2f}x the time of merely "
        "importing what plan and apply need (same run, in turns, medians of "
        f"{args.runs}); they load no database, HTTP or terminal library (a test checks it)."
    )
    print(body)
    if args.write:
        write_section(
            args.write,
            "bench_startup",
            "Start-up of light commands",
            f"python -m bench.bench_startup --runs {args.runs}"
            + (f" --baseline-src {args.baseline_src}" if args.baseline_src else ""),
            body,
        )


if __name__ == "__main__":
    main()
