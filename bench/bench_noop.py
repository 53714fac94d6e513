"""What a no-op `reconciler apply` costs per org, against the floor of its Vapi calls alone.

N SOPS-encrypted org files (assistants only: two each, no tools or numbers), the emulator in
its own process at a given latency, a Postgres (embedded unless `--database-url`). After a
cold apply (which creates the assistants), each no-op apply runs `reconciler apply SPECS`
in this process (`cli.main.main`, as the command runs it: specs loaded and decrypted, pool
opened, every org listed, locked, planned; nothing written but the run's record), timed by
wall clock and by this process's CPU (`time.process_time`: the emulator and Postgres are
other processes). Counted: Vapi requests (the emulator's `/_emulator/stats`), SQL statements
(the state store's counter, every store the command opens).

The floor, in the same run: a bare loop of the same list calls (`GET /assistant` with each
org's key) at the same concurrency with one httpx client, no reconciler work.

Also timed: the same apply as a whole process (`python -m reconciler apply`: interpreter,
imports, everything; CPU from `getrusage(RUSAGE_CHILDREN)`), and the imports the apply path
needs (`python -X importtime`).

    python -m bench.bench_noop --orgs 200 1000 --latency-ms 20 [--runs 3] [--profile DIR]
        [--database-url URL] [--write docs/benchmarks.md]

`--profile DIR` writes a cProfile of one in-process no-op apply per size (`noop-N.pstats`)
and prints its top functions.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import os
import pstats
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from bench.bench_serve import emulator_process, seed_accounts, stats, write_specs
from bench.report import table, write_section
from reconciler.secrets.crypto import MasterKey
from reconciler.state import store
from reconciler.state.db import embedded_url

ROOT = Path(__file__).resolve().parent.parent
CONCURRENCY = 16  # the apply's default (`--concurrency`)

_SQL = [0]
_count = store.Db.count


def _counting(self: store.Db, n: int = 1) -> None:
    """Every store's statements, summed over the stores a command opens (bench only)."""
    _SQL[0] += n
    _count(self, n)


store.Db.count = _counting  # type: ignore[method-assign]


def apply_in_process(specs: Path) -> None:
    from reconciler.cli.main import main
    from reconciler.spec import loader

    # as a fresh `reconciler apply` process: no key's tag remembered from a run before
    getattr(loader, "_PLAIN_TAGS", {}).clear()
    with contextlib.redirect_stdout(io.StringIO()) as out:
        code = main(["apply", str(specs)])
    assert code == 0, out.getvalue()[-2000:]


LISTS = ("/assistant",)
EVERY_KIND = ("/assistant", "/tool", "/phone-number")


def floor(url: str, n: int, lists: tuple[str, ...] = LISTS) -> dict[str, float]:
    """The same list calls alone (each org's, one after the other, as the reconciler makes
    them): one httpx client, CONCURRENCY orgs at a time."""
    keys = [f"bench-org-{i:04d}" for i in range(n)]
    with httpx.Client(base_url=url, limits=httpx.Limits(max_connections=CONCURRENCY)) as http:

        def one(key: str) -> None:
            for path in lists:
                http.get(path, headers={"Authorization": f"Bearer {key}"}).raise_for_status()

        before, t0, cpu0 = stats(url), time.perf_counter(), time.process_time()
        with ThreadPoolExecutor(max_workers=CONCURRENCY) as workers:
            list(workers.map(one, keys))
        row = {"s": time.perf_counter() - t0, "cpu": time.process_time() - cpu0}
    row["vapi"] = sum(stats(url).values()) - sum(before.values())
    row["sql"] = 0
    return row


def one_in_process(url: str, specs: Path) -> dict[str, float]:
    before, q0 = stats(url), _SQL[0]
    t0, cpu0 = time.perf_counter(), time.process_time()
    apply_in_process(specs)
    row = {"s": time.perf_counter() - t0, "cpu": time.process_time() - cpu0}
    after = stats(url)
    row["vapi"] = sum(after.values()) - sum(before.values())
    lists = sum(after.get(f"GET {path}", 0) - before.get(f"GET {path}", 0) for path in EVERY_KIND)
    row["writes"] = row["vapi"] - lists
    row["sql"] = _SQL[0] - q0
    return row


def loop_runs(url: str, pg: str, specs: Path, runs: int) -> list[dict[str, float]]:
    """`serve`'s steady state: the real `ReconcileLoop` in this process (its spec cache warm
    after a first run), every org due, as each interval makes them: `runs` no-op runs."""
    from reconciler.controller.loop import LoopConfig, ReconcileLoop
    from reconciler.controller.run import Controller, pool_size
    from reconciler.heap import settled
    from reconciler.state.db import open_pool
    from reconciler.state.store import StateWriter
    from reconciler.vapi.client import http_client

    pool = open_pool(pg, max_size=pool_size(CONCURRENCY))
    state = StateWriter(pool)
    key = MasterKey.from_b64(os.environ["RECONCILER_MASTER_KEY"])
    rows = []
    with http_client(url, max_connections=CONCURRENCY) as http:
        ctl = Controller(state, http, key, concurrency=CONCURRENCY)
        loop = ReconcileLoop(ctl, state, LoopConfig(specs, interval_s=60), replica="bench")
        with settled():  # as `serve` does before its loop starts
            for i in range(runs + 1):  # the first fills the spec cache
                with pool.connection() as conn:
                    conn.execute("UPDATE org_schedule SET next_run_at = now()")
                before, q0 = stats(url), state.queries
                t0, cpu0 = time.perf_counter(), time.process_time()
                report = loop.run_once()
                row = {"s": time.perf_counter() - t0, "cpu": time.process_time() - cpu0}
                assert report is not None and report.ok, report and [o.error for o in report.failed]
                after = stats(url)
                row["vapi"] = sum(after.values()) - sum(before.values())
                lists = sum(
                    after.get(f"GET {path}", 0) - before.get(f"GET {path}", 0)
                    for path in EVERY_KIND
                )
                row["writes"] = row["vapi"] - lists
                row["sql"] = state.queries - q0
                if i:
                    rows.append(row)
    pool.close()
    return rows


def one_process(specs: Path) -> dict[str, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "reconciler", "apply", str(specs)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"s": seconds, "cpu": cpu}


def import_times(specs: Path) -> tuple[float, list[tuple[int, str]]]:
    """The imports of one whole `reconciler apply` process (`-X importtime`): their total
    (ms: the top-level imports' cumulative times) and the largest cumulative ones (µs, module
    indented as nested)."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "reconciler", "apply", str(specs)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    rows = []
    for line in done.stderr.splitlines():
        parts = line.split("|")
        if line.startswith("import time:") and len(parts) == 3 and parts[1].strip().isdigit():
            rows.append((int(parts[1]), parts[2][1:].rstrip()))
    total = sum(us for us, name in rows if not name.startswith(" ")) / 1000
    return total, sorted(rows, reverse=True)[:12]


def profile(specs: Path, out: Path, n: int) -> str:
    """cProfile of one in-process no-op apply, every thread (the orgs run in a pool's threads,
    which a profiler of the main thread alone would miss); times in the threads include their
    waits (for Vapi, Postgres, locks)."""
    threads: list[cProfile.Profile] = []
    lock = threading.Lock()

    def start(frame: Any, event: str, arg: Any) -> None:
        sys.setprofile(None)
        prof = cProfile.Profile()
        with lock:
            threads.append(prof)
        prof.enable()

    main_prof = cProfile.Profile()
    threading.setprofile(start)
    main_prof.enable()
    try:
        apply_in_process(specs)
    finally:
        main_prof.disable()
        threading.setprofile(None)  # type: ignore[arg-type]
    stats = pstats.Stats(main_prof, stream=io.StringIO())
    for prof in threads:
        prof.create_stats()
        stats.add(prof)
    path = out / f"noop-{n}.pstats"
    stats.dump_stats(path)
    text = io.StringIO()
    pstats.Stats(str(path), stream=text).sort_stats("tottime").print_stats(40)
    pstats.Stats(str(path), stream=text).sort_stats("cumulative").print_stats(60)
    return text.getvalue()


def measure(
    root: Path,
    url: str,
    pg: str,
    n: int,
    runs: int,
    profile_dir: Path | None,
    *,
    kinds: bool = False,
) -> dict[str, Any]:
    source = "specs-kinds" if kinds else "specs"
    specs = root / f"{source}-{n}"
    specs.mkdir()
    for i in range(n):
        name = f"org-{i:04d}.yaml"
        (specs / name).write_bytes((root / source / name).read_bytes())
    httpx.post(f"{url}/_emulator/reset").raise_for_status()
    seed_accounts(url, n)
    os.environ["RECONCILER_DATABASE_URL"] = pg
    apply_in_process(specs)  # cold: creates every assistant
    noop = [one_in_process(url, specs) for _ in range(runs)]
    looped = loop_runs(url, pg, specs, runs)
    floors = [floor(url, n, EVERY_KIND if kinds else LISTS) for _ in range(runs)]
    whole = [one_process(specs) for _ in range(runs)]
    imports = import_times(specs)
    prof = profile(specs, profile_dir, n) if profile_dir is not None else ""

    def med(rows: list[dict[str, float]], key: str) -> float:
        return statistics.median(r[key] for r in rows)

    return {
        "n": n,
        "kinds": "every kind" if kinds else "assistants only",
        "noop": {k: med(noop, k) for k in noop[0]},
        "loop": {k: med(looped, k) for k in looped[0]},
        "floor": {k: med(floors, k) for k in floors[0]},
        "whole": {k: med(whole, k) for k in whole[0]},
        "profile": prof,
        "imports": imports,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--orgs", type=int, nargs="+", default=[200, 1000])
    ap.add_argument("--latency-ms", type=int, default=20)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--database-url")
    ap.add_argument("--profile", type=Path)
    ap.add_argument("--write", type=Path)
    ap.add_argument(
        "--kinds",
        action="store_true",
        help="also orgs with every kind (two tools, a SIP number), measured in the same run",
    )
    args = ap.parse_args()
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        home = root / "home"  # no ssh keys or default keys.txt of this machine's user
        home.mkdir()
        os.environ["HOME"] = str(home)
        key_file = write_specs(root, max(args.orgs))
        os.environ["SOPS_AGE_KEY_FILE"] = str(key_file)
        if args.kinds:
            write_specs(root, max(args.orgs), kinds=True, folder="specs-kinds", key_file=key_file)
        os.environ["RECONCILER_MASTER_KEY"] = MasterKey.generate().to_b64()
        os.environ["RECONCILER_DATA_DIR"] = str(root / "data")
        with emulator_process(args.latency_ms) as url:
            os.environ["VAPI_BASE_URL"] = url
            for kinds in (False, True) if args.kinds else (False,):
                for n in sorted(args.orgs):
                    # a database of its own per size: no orphans of the other size
                    tag = f"pg-{n}-kinds" if kinds else f"pg-{n}"
                    pg = args.database_url or embedded_url(root / tag, cleanup="delete")
                    results.append(measure(root, url, pg, n, args.runs, args.profile, kinds=kinds))
                    if args.database_url:
                        _truncate(args.database_url)
    cells = []

    def row(r: dict[str, Any], name: str, m: dict[str, float], *, counts: bool = True) -> list[str]:
        n, fl = r["n"], r["floor"]
        return [
            r["kinds"],
            str(n),
            name,
            f"{m['s']:.2f}",
            f"{m['cpu'] / n * 1000:.2f}",
            f"{m['vapi'] / n:.2f}" if counts else "-",
            f"{int(m['writes'])}" if counts else "-",
            f"{int(m['sql'])}" if counts else "-",
            f"{m['s'] / fl['s']:.2f}x",
            f"{m['cpu'] / fl['cpu']:.2f}x",
        ]

    for r in results:
        cells.append(row(r, "`apply`, in process", r["noop"]))
        cells.append(row(r, "`serve` loop, spec cache warm", r["loop"]))
        cells.append(row(r, "`apply`, whole process", r["whole"], counts=False))
        cells.append(row(r, "floor: the list calls alone", {**r["floor"], "writes": 0}))
    body = table(
        [
            "orgs have",
            "orgs",
            "no-op run",
            "s",
            "cpu ms / org",
            "vapi / org",
            "vapi writes",
            "sql / run",
            "wall / floor",
            "cpu / floor",
        ],
        cells,
    )
    body += (
        f"\n\nMedians of {args.runs} runs of each. `apply` in process: `cli.main.main` (imports "
        "done; specs read and decrypted, every org listed and planned). `serve` loop: the real "
        "`ReconcileLoop` with every org due, its spec cache filled by a run before (a file "
        "whose bytes did not change is neither read as YAML nor decrypted again). Whole "
        "process: `python -m reconciler apply` (interpreter start and imports included). The "
        f"floor: the same list calls alone, {CONCURRENCY} at a time with one httpx client. "
        f"Emulator latency {args.latency_ms} ms, in its own process; CPU is the reconciler "
        "process's only; `sql / run` counts every statement of the run, whatever the number "
        "of orgs.\n"
    )
    total, top = results[-1]["imports"]
    body += (
        f"\nImports of one whole `reconciler apply` process (`python -X importtime -m "
        f"reconciler apply SPECS`): {total:.0f} ms in all; the largest (cumulative, nested "
        "ones indented):\n\n"
        + table(["module", "cumulative ms"], [[f"`{m}`", f"{us / 1000:.1f}"] for us, m in top])
        + "\n"
    )
    print(body)
    for r in results:
        if r["profile"]:
            print(f"--- profile, {r['n']} orgs ---\n{r['profile']}")
    if args.write:
        write_section(
            args.write,
            "bench_noop",
            "No-op apply: CPU per org against the floor of its list calls",
            "python -m bench.bench_noop --orgs "
            + " ".join(str(n) for n in args.orgs)
            + f" --latency-ms {args.latency_ms} --runs {args.runs}"
            + (" --kinds" if args.kinds else ""),
            body,
        )


def _truncate(url: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "TRUNCATE reconcile_runs, assistant_org_mapping, assistants, org_credentials,"
            " organizations, org_runs, org_schedule, master_key CASCADE"
        )


if __name__ == "__main__":
    main()
