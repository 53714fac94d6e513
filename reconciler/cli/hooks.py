"""`python -m reconciler.cli.hooks no-plaintext FILE...`: the pre-commit hook that refuses
plaintext credentials (see .pre-commit-hooks.yaml at the repository root).

A file is refused when one of its YAML documents has `spec.credentials` that are not all SOPS
ciphertext (`validate`'s own check, so a decrypted spec is refused wherever it lies, not only
under the specs folder), or when it holds an age identity (`AGE-SECRET-KEY-1...`: the key to
every spec). Each problem is one line naming the file and the field, never the value; exit 1
if any. Files that are not YAML, or not specs, are otherwise left alone: `reconciler validate`
checks the specs folder itself.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from reconciler.spec.loader import MAX_SPEC_BYTES, SPEC_SUFFIXES, Problem, credential_problems

_AGE_IDENTITY = re.compile(rb"AGE-SECRET-KEY-1[QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L]{58}")


def file_problems(path: Path) -> list[Problem]:
    """What the hook refuses in one file."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return [Problem(path, "", f"cannot read: {exc.strerror or type(exc).__name__}")]
    problems: list[Problem] = []
    if _AGE_IDENTITY.search(data):
        problems.append(
            Problem(path, "", "an age identity (AGE-SECRET-KEY-1...): keep it out of git")
        )
    if path.suffix not in SPEC_SUFFIXES or len(data) > MAX_SPEC_BYTES:
        return problems
    try:
        docs = list(yaml.safe_load_all(data))
    except (yaml.YAMLError, RecursionError):
        return problems  # not YAML this hook can read: `validate` reports a spec's
    for doc in docs:
        if isinstance(doc, dict):
            problems.extend(credential_problems(path, doc))
    return problems


def no_plaintext(files: Sequence[str]) -> int:
    failed = 0
    for name in files:
        problems = file_problems(Path(name))
        for problem in problems:
            print(problem)
        failed += bool(problems)
    if failed:
        print(
            f"{failed} file(s) refused: encrypt credentials with sops "
            "(`reconciler edit`, `reconciler set`), keep age keys out of git",
            file=sys.stderr,
        )
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reconciler.cli.hooks")
    sub = parser.add_subparsers(dest="hook", required=True)
    p = sub.add_parser("no-plaintext", help="refuse plaintext credentials and age identities")
    p.add_argument("files", nargs="*")
    args = parser.parse_args(argv)
    return no_plaintext(args.files)


if __name__ == "__main__":
    sys.exit(main())
