"""Would a no-op `apply` finish sooner if it listed the accounts while it still reads the specs?

Every `apply` reads, checks and decrypts every spec before it lists any account (the run's
rules need the whole fleet). This measures what overlapping the two could at best give: the
specs read (`load_tree`) and the floor's list calls (`bench_noop.floor`, 16 at a time) one
after the other, then both at once (the list calls in a thread while this thread reads).
Wall clock; the emulator in its own process.

    python -m bench.bench_overlap [--orgs 1000] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

from bench import bench_noop as bn
from bench.bench_serve import emulator_process, seed_accounts, write_specs
from reconciler.spec import loader


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--orgs", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    n = args.orgs
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        home = root / "home"
        home.mkdir()
        os.environ["HOME"] = str(home)
        os.environ["SOPS_AGE_KEY_FILE"] = str(write_specs(root, n, folder="s"))
        with emulator_process(20) as url:
            seed_accounts(url, n)
            loader.load_tree(root / "s")  # warm: imports, the first TLS context
            rows = []
            for _ in range(args.runs):
                t = time.perf_counter()
                loaded = loader.load_tree(root / "s")
                load_s = time.perf_counter() - t
                assert len(loaded.specs) == n and not loaded.problems
                t = time.perf_counter()
                bn.floor(url, n)
                floor_s = time.perf_counter() - t
                lister = threading.Thread(target=bn.floor, args=(url, n))
                t = time.perf_counter()
                lister.start()
                loader.load_tree(root / "s")
                lister.join()
                both_s = time.perf_counter() - t
                rows.append((load_s, floor_s, both_s))
    load_s, floor_s, both_s = (statistics.median(r[i] for r in rows) for i in range(3))
    print(
        "| orgs | read the specs, s | the list calls, s | one after the other / floor "
        "| both at once / floor |\n|---|---|---|---|---|\n"
        f"| {n} | {load_s:.2f} | {floor_s:.2f} | {(load_s + floor_s) / floor_s:.2f}x "
        f"| {both_s / floor_s:.2f}x |\n\nMedians of {args.runs} runs; pair by pair, one after "
        "the other over both at once: " + ", ".join(f"{(a + b) / c:.2f}" for a, b, c in rows)
    )


if __name__ == "__main__":
    main()
