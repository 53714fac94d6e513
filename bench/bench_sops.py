"""SOPS decryption: in-process (`reconciler.secrets.native`) against the `sops` binary, then
what that means for `reconciler apply` of unchanged orgs as a whole process.

1. N org files encrypted by the real binary (one age key, `encrypted_regex: ^credentials$`,
   `mac_only_encrypted`), decrypted from memory natively (one thread) and through the binary
   (one process per file, 8 at a time as the loader runs it), same run; the decrypted documents
   are checked equal (as the loader reads them) outside the timings. Then `load_tree` (walk,
   validate, decrypt, parse, pydantic) with either decryptor.
2. `reconciler apply` of M orgs already converged (one list call each, the emulator in its own
   process at the given latency, an embedded Postgres), timed as the whole process from
   `exec` to exit: natively, and with every file handed to the binary (by
   `SOPS_DECRYPTION_ORDER=pgp,age`, which the native path leaves to the binary).

    python -m bench.bench_sops --files 1000 --orgs 200 --latency-ms 20 [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.bench_serve import emulator_process, seed_accounts, stats, write_specs
from bench.report import table, write_section
from reconciler.secrets import native, sops
from reconciler.secrets.crypto import MasterKey
from reconciler.spec.loader import load_tree, parse_yaml
from reconciler.state.db import embedded_url

ROOT = Path(__file__).resolve().parent.parent


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def decrypt_all(
    decrypt: Callable[[Path, bytes], bytes], files: dict[Path, bytes], workers: int
) -> dict[Path, bytes]:
    if workers == 1:
        return {p: decrypt(p, d) for p, d in files.items()}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return dict(zip(files, pool.map(lambda p: decrypt(p, files[p]), files), strict=True))


def same_documents(a: dict[Path, bytes], b: dict[Path, bytes]) -> bool:
    return all(parse_yaml(p, a[p])[0] == parse_yaml(p, b[p])[0] is not None for p in a)


def apply_wall(specs: Path, env: dict[str, str], runs: int) -> list[float]:
    """Wall seconds of `reconciler apply SPECS` as a whole process, `runs` times."""
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "reconciler", "apply", str(specs)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
        times.append(time.perf_counter() - t0)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--orgs", type=int, default=200)
    ap.add_argument("--latency-ms", type=int, default=20)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--write", type=Path)
    args = ap.parse_args()
    rows: list[list[str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        home = root / "home"  # no ssh keys or default keys.txt of this machine's user
        home.mkdir()
        os.environ["HOME"] = str(home)
        key_file = write_specs(root, args.files)
        os.environ["SOPS_AGE_KEY_FILE"] = str(key_file)
        files = {p: p.read_bytes() for p in sorted((root / "specs").glob("org-*.yaml"))}
        assert len(files) == args.files

        # 1. decryption alone, from memory
        native.reset_stats()
        ours: dict[Path, bytes] = {}
        native_s = timed(lambda: ours.update(decrypt_all(native.decrypt_bytes, files, 1)))
        assert native.stats() == {"native": args.files}, native.stats()
        theirs: dict[Path, bytes] = {}
        binary_s = timed(lambda: theirs.update(decrypt_all(sops.decrypt_bytes, files, 8)))
        assert same_documents(ours, theirs)
        rows.append([f"decrypt {args.files} files, native", "1", f"{native_s:.2f}"])
        rows.append([f"decrypt {args.files} files, sops binary", "8", f"{binary_s:.2f}"])
        native.reset_stats()
        load_native = timed(lambda: load_tree(root / "specs", native.decrypt_bytes))
        assert native.stats() == {"native": args.files}
        load_binary = timed(lambda: load_tree(root / "specs", sops.decrypt_bytes))
        rows.append([f"load_tree {args.files} files, native", "8", f"{load_native:.2f}"])
        rows.append([f"load_tree {args.files} files, sops binary", "8", f"{load_binary:.2f}"])

        # 2. `reconciler apply` of converged orgs, as a process
        subset = root / "specs-apply"
        subset.mkdir()
        for path in list(files)[: args.orgs]:
            shutil.copy(path, subset / path.name)
        with emulator_process(args.latency_ms) as url:
            seed_accounts(url, args.orgs)
            env = {
                **os.environ,
                "RECONCILER_DATABASE_URL": embedded_url(root / "pg", cleanup="delete"),
                "RECONCILER_MASTER_KEY": MasterKey.generate().to_b64(),
                "RECONCILER_DATA_DIR": str(root / "data"),
                "VAPI_BASE_URL": url,
            }
            apply_wall(subset, env, 1)  # cold: creates the assistants
            before = stats(url)
            native_runs = apply_wall(subset, env, args.runs)
            binary_env = {**env, "SOPS_DECRYPTION_ORDER": "pgp,age"}
            binary_runs = apply_wall(subset, binary_env, args.runs)
            after = stats(url)
        calls = sum(after.values()) - sum(before.values())
        lists = after.get("GET /assistant", 0) - before.get("GET /assistant", 0)
        assert calls == lists == 2 * args.runs * args.orgs, (calls, lists)  # no write
    apply_native = statistics.median(native_runs)
    apply_binary = statistics.median(binary_runs)
    rows.append(
        [
            f"`reconciler apply`, {args.orgs} unchanged orgs, native (median of {args.runs})",
            "8",
            f"{apply_native:.2f}",
        ]
    )
    rows.append(
        [
            f"`reconciler apply`, {args.orgs} unchanged orgs, sops binary (median of {args.runs})",
            "8",
            f"{apply_binary:.2f}",
        ]
    )
    body = table(["step", "decrypt workers", "seconds"], rows)
    body += (
        f"\n\nNative decryption of {args.files} org files takes {native_s:.2f} s on one thread "
        f"({native_s / args.files * 1000:.2f} ms a file), {binary_s / native_s:.0f}x less than "
        f"the sops binary with 8 processes at a time ({binary_s:.2f} s), same run, same files "
        "(decrypted to the same documents, checked). Whole loads (walk, validation, "
        f"decryption, parsing, models): {load_binary / load_native:.1f}x faster. "
        f"`reconciler apply` of {args.orgs} converged orgs ({args.orgs} list calls at "
        f"{args.latency_ms} ms, no write), process start included: {apply_native:.2f} s "
        f"natively against {apply_binary:.2f} s with every file through the binary (forced by "
        "`SOPS_DECRYPTION_ORDER=pgp,age`, which the native path leaves to it; medians of "
        f"{args.runs}; min {min(native_runs):.2f} / max {max(native_runs):.2f} s natively). "
        "2 cores, shared with the emulator and Postgres.\n"
    )
    print(body)
    if args.write:
        write_section(
            args.write,
            "bench_sops",
            f"SOPS decryption: native vs the sops binary ({args.files} files; apply of "
            f"{args.orgs} orgs at {args.latency_ms} ms)",
            f"python -m bench.bench_sops --files {args.files} --orgs {args.orgs} "
            f"--latency-ms {args.latency_ms}",
            body,
        )


if __name__ == "__main__":
    main()
