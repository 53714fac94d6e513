"""Start-up: how long light commands take as whole processes, against the cost of importing what
the database, HTTP and terminal commands need (the same interpreter, in the same run).

python -m bench.bench_startup --runs 15 [--write docs/benchmarks.md]
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


def median_s(argv: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(argv, cwd=ROOT, capture_output=True, check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--write", type=Path)
    args = ap.parse_args()
    results = {name: median_s(argv, args.runs) for name, argv in CASES}
    rows = [[name, f"{seconds * 1000:.0f}"] for name, seconds in results.items()]
    body = table(["process", "median ms"], rows)
    heavy = results["import what plan/apply need"]
    body += (
        f"\n\n`--help` takes {results['reconciler --help'] / heavy:.2f}x and `validate` "
        f"{results['reconciler validate specs/examples'] / heavy:.2f}x the time of merely "
        "importing what plan and apply need (same run, medians of "
        f"{args.runs}); they load no database, HTTP or terminal library (a test checks it)."
    )
    print(body)
    if args.write:
        write_section(
            args.write,
            "bench_startup",
            "Start-up of light commands",
            f"python -m bench.bench_startup --runs {args.runs}",
            body,
        )


if __name__ == "__main__":
    main()
