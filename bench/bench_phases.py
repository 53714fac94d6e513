"""Where a no-op `reconciler apply` spends its time: reading, checking and decrypting the
specs (`spec.loader.load_tree`) against the controller's run (`Controller.apply`: the first
read of Postgres, every org's desired state, its listing and plan), inside `cli.main.main`
as the command runs them, each timed by wall clock and by this process's CPU (every thread).

The same specs, emulator and database as `bench_noop` (N SOPS-encrypted org files, the
emulator in its own process at a given latency); a cold apply first, then `--runs` no-op
applies, then the floor: the same list calls alone.

    python -m bench.bench_phases --database-url URL [--orgs 1000] [--runs 8]
        [--latency-ms 20] [--kinds]

The database's tables are emptied first (a run before with another master key would
otherwise refuse every org). Pair it with py-spy (`record --gil -p PID`) to see which
thread holds the interpreter lock.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from bench import bench_noop
from bench.bench_serve import emulator_process, seed_accounts, write_specs
from reconciler.controller import run as run_module
from reconciler.secrets.crypto import MasterKey
from reconciler.spec import loader

_TIMES: dict[str, tuple[float, float]] = {}


def _timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def timed(*args: Any, **kwargs: Any) -> Any:
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            return fn(*args, **kwargs)
        finally:
            _TIMES[name] = (time.perf_counter() - t0, time.process_time() - c0)

    return timed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--database-url", required=True)
    ap.add_argument("--orgs", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=8)
    ap.add_argument("--latency-ms", type=int, default=20)
    ap.add_argument("--kinds", action="store_true", help="orgs with every kind")
    args = ap.parse_args()
    loader.load_tree = _timed("load", loader.load_tree)  # type: ignore[assignment]
    apply = _timed("controller", run_module.Controller.apply)
    run_module.Controller.apply = apply  # type: ignore[method-assign]
    bench_noop._truncate(args.database_url)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        home = root / "home"  # no ssh keys or default keys.txt of this machine's user
        home.mkdir()
        os.environ["HOME"] = str(home)
        key_file = write_specs(root, args.orgs)
        specs = root / "specs"
        if args.kinds:
            folder = "specs-kinds"
            write_specs(root, args.orgs, kinds=True, folder=folder, key_file=key_file)
            specs = root / folder
        os.environ["SOPS_AGE_KEY_FILE"] = str(key_file)
        os.environ["RECONCILER_MASTER_KEY"] = MasterKey.generate().to_b64()
        os.environ["RECONCILER_DATA_DIR"] = str(root / "data")
        os.environ["RECONCILER_DATABASE_URL"] = args.database_url
        with emulator_process(args.latency_ms) as url:
            os.environ["VAPI_BASE_URL"] = url
            httpx.post(f"{url}/_emulator/reset").raise_for_status()
            seed_accounts(url, args.orgs)
            bench_noop.apply_in_process(specs)  # cold: creates everything
            print(f"{args.orgs} orgs, latency {args.latency_ms} ms, no-op applies:")
            for _ in range(args.runs):
                t0, c0 = time.perf_counter(), time.process_time()
                bench_noop.apply_in_process(specs)
                wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                (lw, lc), (cw, cc) = _TIMES["load"], _TIMES["controller"]
                print(
                    f"  all {wall:.2f} s, cpu {cpu:.2f} s | load {lw:.2f} s, cpu {lc:.2f} s"
                    f" | controller {cw:.2f} s, cpu {cc:.2f} s"
                )
            lists = bench_noop.EVERY_KIND if args.kinds else bench_noop.LISTS
            floor = bench_noop.floor(url, args.orgs, lists)
            print(f"  floor {floor['s']:.2f} s, cpu {floor['cpu']:.2f} s")
    bench_noop._truncate(args.database_url)


if __name__ == "__main__":
    main()
