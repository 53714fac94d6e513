"""Spec loading: the sops binary is one process per file, so decryption runs in a thread pool.

python -m bench.bench_specs --files 200 [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import uuid
from pathlib import Path

import pyrage

from bench.report import table, write_section
from reconciler.spec.loader import load_tree, validate_tree
from tests.helpers import SpecDir, org_doc


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=200)
    ap.add_argument("--write", type=Path)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ident = pyrage.x25519.Identity.generate()
        key = Path(tmp) / "key.txt"
        key.write_text(f"{ident}\n")
        os.environ["SOPS_AGE_KEY_FILE"] = str(key)
        specs = SpecDir(Path(tmp) / "specs", str(ident.to_public()))
        for i in range(args.files):
            specs.write(org_doc(f"org-{i:04d}", org_id=str(uuid.uuid4())))
        rows = []
        t0 = time.perf_counter()
        assert not validate_tree(specs.root).problems
        rows.append(["validate (offline)", "-", f"{time.perf_counter() - t0:.2f}"])
        base = 0.0
        for workers in (1, 8):
            t0 = time.perf_counter()
            result = load_tree(specs.root, workers=workers)
            took = time.perf_counter() - t0
            assert len(result.specs) == args.files and not result.problems
            base = base or took
            rows.append([f"load + decrypt, {workers} worker(s)", str(workers), f"{took:.2f}"])
    body = table(["step", "workers", "seconds"], rows)
    body += (
        f"\n\n{args.files} files, one sops process each. 8 workers vs 1: "
        f"{base / float(rows[-1][2]):.1f}x faster (same run, 2 cores)."
    )
    print(body)
    if args.write:
        write_section(
            args.write,
            "bench_specs",
            f"Spec loading: {args.files} SOPS-encrypted files",
            f"python -m bench.bench_specs --files {args.files}",
            body,
        )


if __name__ == "__main__":
    main()
