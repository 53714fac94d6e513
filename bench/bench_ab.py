"""A no-op `reconciler apply` of this checkout against another commit's, alternating, each
against the floor of its own list calls measured in the same process.

Separate runs of `bench_noop` on a shared machine differ by more than a tenth from one
another, so a change worth a tenth is lost between them. Here each pair runs the other commit
and this checkout (ABBA: the first of a pair alternates), one child process each (the same specs, the emulator, Postgres),
and each child reports its no-op applies' CPU and wall time divided by the floor (the same
list calls alone, `bench_noop.floor`) measured in that same child: ratios, paired.

    python -m bench.bench_ab --base REV [--orgs 1000] [--pairs 4] [--runs 3] [--kinds]
        [--database-url URL]

The child code is this file's; it loads `reconciler` and `bench.bench_noop` of the checkout
it measures (a git worktree of REV), so REV must have `bench_noop`'s helpers (any commit since
the no-op benchmark measured every kind).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def child(orgs: int, runs: int, kinds: bool, database_url: str) -> dict[str, Any]:
    import httpx

    from bench import bench_noop as bn
    from bench.bench_serve import emulator_process, seed_accounts, write_specs
    from reconciler.secrets.crypto import MasterKey

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        home = root / "home"
        home.mkdir()
        os.environ["HOME"] = str(home)
        os.environ["SOPS_AGE_KEY_FILE"] = str(write_specs(root, orgs, kinds=kinds, folder="s"))
        os.environ["RECONCILER_MASTER_KEY"] = MasterKey.generate().to_b64()
        os.environ["RECONCILER_DATA_DIR"] = str(root / "data")
        os.environ["RECONCILER_DATABASE_URL"] = database_url
        with emulator_process(20) as url:
            os.environ["VAPI_BASE_URL"] = url
            httpx.post(f"{url}/_emulator/reset").raise_for_status()
            seed_accounts(url, orgs)
            bn._truncate(database_url)
            bn.apply_in_process(root / "s")  # cold: creates everything
            lists = bn.EVERY_KIND if kinds else bn.LISTS
            noop, floors = [], []
            for _ in range(runs):  # interleaved: both see the same moments of the machine
                noop.append(bn.one_in_process(url, root / "s"))
                floors.append(bn.floor(url, orgs, lists))
            bn._truncate(database_url)
    s = statistics.median(r["s"] for r in noop)
    cpu = statistics.median(r["cpu"] for r in noop)
    fs = statistics.median(f["s"] for f in floors)
    fcpu = statistics.median(f["cpu"] for f in floors)
    assert all(r["writes"] == 0 for r in noop), noop
    import reconciler

    return {
        "reconciler": str(Path(reconciler.__file__).parent.parent),
        "cpu_ms": cpu / orgs * 1000,
        "floor_cpu_ms": fcpu / orgs * 1000,
        "wall": s / fs,
        "cpu": cpu / fcpu,
        "sql": statistics.median(r["sql"] for r in noop),
        "vapi": statistics.median(r["vapi"] for r in noop) / orgs,
    }


def run_child(checkout: Path, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child"]
    cmd += ["--orgs", str(args.orgs), "--runs", str(args.runs), "--database-url", args.db]
    cmd += ["--kinds"] if args.kinds else []
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    done = subprocess.run(cmd, cwd=checkout, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{checkout}: {done.stderr[-2000:]}")
    row: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    if Path(row["reconciler"]).resolve() != checkout.resolve():
        raise SystemExit(f"measured {row['reconciler']}, not {checkout}")
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base")
    ap.add_argument("--orgs", type=int, default=1000)
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--kinds", action="store_true")
    ap.add_argument("--database-url", dest="db")
    ap.add_argument("--child", action="store_true")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.orgs, args.runs, args.kinds, args.db)))
        return
    if not args.base or not args.db:
        raise SystemExit("--base REV and --database-url URL are needed")
    rev = subprocess.run(
        ["git", "rev-parse", "--short", args.base], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(base), args.base],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        try:
            rows: dict[str, list[dict[str, Any]]] = {"base": [], "this": []}
            for i in range(args.pairs):
                # ABBA: neither side always runs first (a machine's slow moments come and go)
                order = [("base", base), ("this", ROOT)]
                for name, checkout in order if i % 2 == 0 else order[::-1]:
                    rows[name].append(run_child(checkout, args))
                b, t = rows["base"][-1], rows["this"][-1]
                print(
                    f"pair {i + 1}: cpu/floor {b['cpu']:.2f}x -> {t['cpu']:.2f}x, "
                    f"wall/floor {b['wall']:.2f}x -> {t['wall']:.2f}x",
                    file=sys.stderr,
                )
        finally:
            subprocess.run(
                ["git", "worktree", "remove", "--force", str(base)], cwd=ROOT, check=False
            )
    kinds = "every kind" if args.kinds else "assistants only"
    print(
        f"| {kinds}, {args.orgs} orgs | cpu ms / org | floor cpu ms / org | cpu / floor "
        "| wall / floor | sql / run | vapi / org |\n|---|---|---|---|---|---|---|"
    )
    for name, label in (("base", f"`{rev}`"), ("this", f"this checkout (`{head}` + its changes)")):
        med = {
            k: statistics.median(r[k] for r in rows[name])
            for k in rows[name][0]
            if k != "reconciler"
        }
        print(
            f"| {label} | {med['cpu_ms']:.2f} | {med['floor_cpu_ms']:.2f} | {med['cpu']:.2f}x "
            f"| {med['wall']:.2f}x | {med['sql']:.0f} | {med['vapi']:.2f} |"
        )
    ratios = [t["cpu"] / b["cpu"] for b, t in zip(rows["base"], rows["this"], strict=True)]
    print(
        f"\nMedians of {args.pairs} pairs ({args.runs} no-op applies and {args.runs} floors "
        "each, interleaved; pairs in ABBA order). This checkout's cpu / floor over the "
        f"base's: median {statistics.median(ratios):.2f}, pair by pair "
        + ", ".join(f"{r:.2f}" for r in ratios)
    )


if __name__ == "__main__":
    main()
