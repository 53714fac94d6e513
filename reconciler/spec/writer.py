"""Writing spec files, for `import`, `org new`, `edit` and `set`: encrypted by sops from memory,
checked as `validate` checks them, then put in place atomically.

- **No plaintext on disk.** The plaintext YAML goes to sops on stdin and the ciphertext comes
  back on stdout (`sops.encrypt_bytes`), by the creation rule of the `.sops.yaml` nearest to
  the target file, whatever the working directory.
- **Checked before written.** The ciphertext must hold exactly the document given, with only
  `spec.credentials` encrypted, and pass the offline checks of `reconciler validate`.
- **Atomic.** The ciphertext is written to a temporary file in the target's folder (named so
  that no `validate` or `serve` picks it up), flushed, given the mode of the file it replaces
  (or the umask's for a new one), then renamed over it; a new file is linked into place, so
  an existing one is never overwritten by accident.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

import yaml

from reconciler.errors import ReconcilerError
from reconciler.redact import printable
from reconciler.secrets import sops
from reconciler.spec import loader

TEMP_PREFIX = ".reconciler-"
TEMP_SUFFIX = ".tmp"


class SpecWriteError(ReconcilerError):
    """A spec file could not be written as asked; the file is as it was."""


def dump(doc: dict[str, Any]) -> bytes:
    """A spec document as YAML (strings that YAML would read as something else are quoted)."""
    text = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=100)
    return text.encode("utf-8")


def without_credentials(tree: dict[str, Any]) -> dict[str, Any]:
    """The document without `sops` and without `spec.credentials`: what encryption must keep."""
    spec = tree.get("spec")
    out = {k: v for k, v in tree.items() if k != "sops"}
    if isinstance(spec, dict):
        out["spec"] = {k: v for k, v in spec.items() if k != "credentials"}
    return out


def encrypt_checked(plaintext: bytes, target: Path, expected: dict[str, Any]) -> bytes:
    """The ciphertext of `plaintext` (whose parsed document is `expected`) for the file
    `target`, checked: only `spec.credentials` encrypted, and valid as `validate` sees it."""
    ciphertext = sops.encrypt_bytes(plaintext, target)
    written, problems = loader.parse_yaml(target, ciphertext)
    if written is None:
        raise SpecWriteError(f"{printable(target)}: sops wrote YAML that does not parse")
    if without_credentials(written) != without_credentials(expected):
        where = first_difference(without_credentials(expected), without_credentials(written))
        raise SpecWriteError(
            f"{printable(target)}: sops changed more than spec.credentials (at "
            f"{printable(where)}: its .sops.yaml rule should have `encrypted_regex: "
            "^credentials$`, and a value YAML reads as a date must be quoted)"
        )
    if "sops" not in written:
        raise SpecWriteError(f"{printable(target)}: sops did not encrypt it (no sops metadata)")
    _, problems = loader.check_bytes(target, ciphertext)
    if problems:
        shown = "; ".join(f"{p.field or '(file)'}: {p.message}" for p in problems[:3])
        raise SpecWriteError(f"{printable(target)}: the encrypted file does not validate: {shown}")
    return ciphertext


def first_difference(a: Any, b: Any, path: str = "") -> str:
    """The field path of the first difference between two documents (never a value)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in [*a, *(k for k in b if k not in a)]:
            if a.get(key, _MISSING) != b.get(key, _MISSING):
                return first_difference(a.get(key), b.get(key), f"{path}.{key}" if path else key)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            if x != y:
                return first_difference(x, y, f"{path}[{i}]")
    return path or "(document)"


_MISSING = object()


def write_atomic(
    target: Path, data: bytes, *, replace: bool, expected: bytes | None = None
) -> None:
    """Puts `data` at `target` atomically: a temporary file in the same folder, renamed over
    the old file (`replace`, keeping its mode) or linked into place as a new one (refused when
    `target` exists). Readers see the old file or the new one, never a part of either. With
    `expected`, the old file must still hold exactly those bytes (nobody changed it since it
    was read), else nothing is written."""
    folder = target.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if expected is not None and target.read_bytes() != expected:
            raise SpecWriteError(
                f"{printable(target)} changed on disk since it was read: nothing written "
                "(run the command again)"
            )
        if replace:
            mode = stat.S_IMODE(os.stat(target).st_mode)
        else:
            umask = os.umask(0o022)
            os.umask(umask)
            mode = 0o666 & ~umask
        fd, temp_name = tempfile.mkstemp(
            prefix=f"{TEMP_PREFIX}{target.name}-", suffix=TEMP_SUFFIX, dir=folder
        )
    except OSError as exc:
        raise SpecWriteError(
            f"{printable(target)}: cannot write: {exc.strerror or type(exc).__name__}"
        ) from None
    temp = Path(temp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
            os.fchmod(out.fileno(), mode)
        if replace:
            os.replace(temp, target)
        else:
            try:
                os.link(temp, target)
            except FileExistsError:
                raise SpecWriteError(f"{printable(target)} already exists") from None
        _fsync_folder(folder)
    except OSError as exc:
        raise SpecWriteError(
            f"{printable(target)}: cannot write: {exc.strerror or type(exc).__name__}"
        ) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()


def _fsync_folder(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_new(doc: dict[str, Any], target: Path) -> None:
    """A new spec file for `doc` (plaintext credentials in memory only), encrypted and checked;
    refused when `target` exists."""
    if target.exists() or target.is_symlink():
        raise SpecWriteError(f"{printable(target)} already exists")
    write_atomic(target, encrypt_checked(dump(doc), target, doc), replace=False)


# -- reading a spec to change it ------------------------------------------------------------------


def read_encrypted(path: Path) -> tuple[bytes, dict[str, Any]]:
    """The bytes of the SOPS-encrypted spec file `path` (bounded, a regular file) and the
    document they parse to (credentials still encrypted)."""
    try:
        real = path.resolve(strict=True)
    except (OSError, RuntimeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "cannot resolve"
        raise SpecWriteError(f"{printable(path)}: cannot read: {reason}") from None
    data, problems = loader.read_spec(path, real)
    if data is None:
        raise SpecWriteError(str(problems[0]))
    doc, problems = loader.parse_yaml(path, data)
    if doc is None:
        raise SpecWriteError(str(problems[0]))
    if "sops" not in doc:
        raise SpecWriteError(
            f"{printable(path)}: not SOPS-encrypted (no sops metadata): encrypt it first "
            "(`sops encrypt -i` in its folder, or `reconciler org new` for a new one)"
        )
    return data, doc


def decrypt_text(path: Path, data: bytes) -> bytes:
    """The plaintext YAML of `data` (the content of `path`) as sops prints it, comments kept:
    what `edit` shows and `set` changes. Decrypted in memory; never written here."""
    return sops.decrypt_bytes(path, data)


def parse_plaintext(path: Path, text: bytes) -> tuple[dict[str, Any] | None, list[str]]:
    """The document of a decrypted spec and, if it is not one `validate` would accept once
    encrypted, the one-line problems (field path and message, never a value)."""
    doc, problems = loader.parse_yaml(path, text)
    if doc is None:
        return None, [_problem_line(p) for p in problems]
    found = loader.check_decrypted(path, doc)
    return doc, [_problem_line(p) for p in found]


def _problem_line(problem: loader.Problem) -> str:
    text = str(problem)
    prefix = f"{printable(problem.path)}: "
    return text.removeprefix(prefix)


def replace_checked(path: Path, original: bytes, text: bytes, doc: dict[str, Any]) -> None:
    """Re-encrypts the changed plaintext `text` (which parses to `doc` and passed
    `parse_plaintext`) over the spec file `path`, which must still hold `original`."""
    ciphertext = encrypt_checked(text, path, doc)
    write_atomic(path, ciphertext, replace=True, expected=original)
