"""The CPU of a no-op `reconciler apply` and of its floor, counted in instructions (valgrind's
callgrind), not seconds: whatever else the machine is doing, the count of single-threaded
work is the same from run to run, and that of the threaded listing moves by a percent or two
(how often the threads hand the interpreter lock over), against a tenth and more for seconds
on a shared machine.

Each count is the difference between two processes under callgrind after the same start
(imports), one making K=1 and one K=3 of the measured thing: half of it is one no-op apply
(`bench_noop.one_in_process`: specs read and decrypted, every org listed and planned, the
run recorded) or one floor (`bench_noop.floor`: the same list calls alone, 16 at a time).
The emulator runs in a process of its own, uncounted; the cold apply that creates
everything runs before, at full speed. Per org, each count includes its run's fixed part
(the floor makes an httpx client, with its TLS context, each time).

    python -m bench.bench_instructions --database-url URL [--orgs 100] [--base REV] [--loop]

`--loop`: also one no-op run of `serve`'s loop (`bench_noop.loop_runs`: every org due, the
spec cache filled by a run before, the heap settled as `serve` settles it), K=1 and K=3 runs.

`--base REV`: the same counts for REV (a git worktree), on the same specs and state (REV
must plan them as a no-op: no write is allowed). About a minute a process at 100 orgs:
eight processes with `--base`.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_COLLECTED = re.compile(r"Collected : (\d+)")


def child(mode: str, k: int, specs: Path, url: str) -> None:
    import reconciler
    from bench import bench_noop as bn

    measured = Path(reconciler.__file__).resolve()
    assert measured.is_relative_to(Path.cwd().resolve()), f"measured {measured}"
    n = sum(1 for p in specs.iterdir() if p.name.startswith("org-"))
    if mode == "loop":  # serve's steady state: after a run that fills its spec cache
        pg = os.environ["RECONCILER_DATABASE_URL"]
        rows = bn.loop_runs(url, pg, specs, k)
        assert all(row["writes"] == 0 for row in rows), rows
        return
    for _ in range(k):
        if mode == "apply":
            row = bn.one_in_process(url, specs)
            assert row["writes"] == 0, row  # a no-op, or the count is not of one
        else:
            bn.floor(url, n)


def count(checkout: Path, mode: str, k: int, root: Path, url: str) -> int:
    cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable]
    cmd += [str(Path(__file__).resolve()), "--child", mode, "--k", str(k)]
    cmd += ["--specs", str(root / "s"), "--url", url]
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    done = subprocess.run(cmd, cwd=checkout, env=env, capture_output=True, text=True)
    found = _COLLECTED.search(done.stderr)
    if done.returncode != 0 or found is None:
        raise SystemExit(f"{checkout} {mode} k={k}: {done.stderr[-2000:]}")
    return int(found.group(1))


def per_org(checkout: Path, mode: str, root: Path, url: str, orgs: int) -> float:
    one, three = (count(checkout, mode, k, root, url) for k in (1, 3))
    return (three - one) / 2 / orgs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--orgs", type=int, default=100)
    ap.add_argument("--base")
    ap.add_argument("--database-url", dest="db")
    ap.add_argument("--child", choices=("apply", "floor", "loop"))
    ap.add_argument(
        "--loop", action="store_true", help="also a no-op run of serve's loop (spec cache warm)"
    )
    ap.add_argument("--k", type=int, default=1)
    ap.add_argument("--specs", type=Path)
    ap.add_argument("--url")
    args = ap.parse_args()
    if args.child:
        child(args.child, args.k, args.specs, args.url)
        return
    if not args.db:
        raise SystemExit("--database-url URL is needed")
    import httpx

    from bench import bench_noop as bn
    from bench.bench_serve import emulator_process, seed_accounts, write_specs
    from reconciler.secrets.crypto import MasterKey

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "home").mkdir()
        os.environ["HOME"] = str(root / "home")
        os.environ["SOPS_AGE_KEY_FILE"] = str(write_specs(root, args.orgs, folder="s"))
        os.environ["RECONCILER_MASTER_KEY"] = MasterKey.generate().to_b64()
        os.environ["RECONCILER_DATA_DIR"] = str(root / "data")
        os.environ["RECONCILER_DATABASE_URL"] = args.db
        checkouts = [("this checkout", ROOT)]
        base = root / "base"
        if args.base:
            subprocess.run(
                ["git", "worktree", "add", "--detach", str(base), args.base],
                cwd=ROOT,
                check=True,
                capture_output=True,
            )
            checkouts.insert(0, (f"`{args.base}`", base))
        try:
            with emulator_process(20) as url:
                os.environ["VAPI_BASE_URL"] = url
                httpx.post(f"{url}/_emulator/reset").raise_for_status()
                seed_accounts(url, args.orgs)
                bn._truncate(args.db)
                bn.apply_in_process(root / "s")  # cold: creates every assistant
                loop = " serve loop run, M instructions / org | loop / floor |" * args.loop
                print(
                    f"| {args.orgs} orgs, assistants only | no-op apply, M instructions / org "
                    f"| floor, M instructions / org | apply / floor |{loop}\n"
                    f"|---|---|---|---|{'---|---|' * args.loop}",
                    flush=True,
                )
                for label, checkout in checkouts:
                    apply = per_org(checkout, "apply", root, url, args.orgs)
                    floor = per_org(checkout, "floor", root, url, args.orgs)
                    row = f"| {label} | {apply / 1e6:.2f} | {floor / 1e6:.2f} | {apply / floor:.2f}x |"
                    if args.loop:
                        run = per_org(checkout, "loop", root, url, args.orgs)
                        row += f" {run / 1e6:.2f} | {run / floor:.2f}x |"
                    print(row, flush=True)
                bn._truncate(args.db)  # as found: the next benchmark's orgs are its own
        finally:
            if args.base:
                subprocess.run(
                    ["git", "worktree", "remove", "--force", str(base)], cwd=ROOT, check=False
                )


if __name__ == "__main__":
    main()
