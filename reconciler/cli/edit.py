"""`reconciler edit FILE`: change an encrypted spec in `$EDITOR`, as `sops edit` does, with the
reconciler's own checks.

- The decrypted spec (as sops prints it: comments kept) is written to a private temporary
  folder (mode 0700, the file 0600; in `$XDG_RUNTIME_DIR` when it is a private folder, else the
  system's temporary folder) so that the editor's swap and backup files land there too. The
  folder is removed on every way out: success, error, the editor failing, SIGINT, SIGTERM and
  SIGHUP (the editor is then stopped first).
- While the editor runs, SIGINT is left to it (Ctrl-C inside vim must not end the session);
  an editor that exits non-zero, or is killed, aborts without touching the file.
- On save the spec is checked as `validate` checks it; if it is not valid the editor opens
  again with the problems as comments on top. Saving it unchanged after that, or empty, gives
  up without touching the file.
- Content unchanged (the same document, whatever the whitespace): the file is left byte for
  byte as it was. Otherwise it is re-encrypted by the `.sops.yaml` nearest to it and replaced
  atomically (its mode kept), unless it changed on disk meanwhile.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

from reconciler.errors import ReconcilerError

HEADER = "# reconciler edit: "
TEMP_PREFIX = "reconciler-edit-"


class EditAborted(ReconcilerError):
    """The edit ended without writing the file."""


class _Signalled(BaseException):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def cmd_edit(args: argparse.Namespace) -> int:
    from reconciler.redact import printable
    from reconciler.secrets import sops
    from reconciler.spec import loader, writer

    path = Path(args.file)
    shown = printable(path)
    editor = editor_command()
    original, _ = writer.read_encrypted(path)
    # sops must be able to encrypt this file before anyone spends time editing it
    sops.encrypt_bytes(b"reconciler: preflight\n", path)
    plain = writer.decrypt_text(path, original)
    before, parse_problems = loader.parse_yaml(path, plain)
    if before is None:
        raise EditAborted(f"{shown}: sops's output does not parse: {parse_problems[0].message}")
    try:
        with _terminating_signals(), private_folder() as folder:
            work = folder / path.name
            _write_private(work, plain)
            offered = plain
            while True:
                code = run_editor(editor, work)
                if code < 0:  # e.g. Ctrl-C reached an editor that does not handle it
                    raise _Signalled(-code)
                if code != 0:
                    raise EditAborted(
                        f"{shown}: the editor exited with status {code}: nothing changed"
                    )
                text = strip_header(work.read_bytes())
                if not _has_content(text):
                    raise EditAborted(f"{shown}: emptied in the editor: nothing changed")
                doc, problems = writer.parse_plaintext(path, text)
                if doc is not None and doc == before:
                    print(f"{shown}: no change (the file is untouched)")
                    return 0
                if not problems:
                    assert doc is not None
                    try:
                        ciphertext = writer.encrypt_checked(text, path, doc)
                    except ReconcilerError as exc:
                        problems = [str(exc).removeprefix(f"{shown}: ")]
                    else:
                        writer.write_atomic(path, ciphertext, replace=True, expected=original)
                        print(f"{shown}: saved (re-encrypted)")
                        return 0
                if text == offered:
                    raise EditAborted(
                        f"{shown}: not valid and not changed since: nothing written ({problems[0]})"
                    )
                offered = text
                _write_private(work, with_header(text, problems))
    except _Signalled as exc:
        name = signal.Signals(exc.signum).name
        print(f"error: {shown}: interrupted by {name}: nothing changed", file=sys.stderr)
        return 128 + exc.signum
    except OSError as exc:  # the private folder or its file
        raise EditAborted(
            f"{shown}: {exc.strerror or type(exc).__name__} in the temporary folder: "
            "nothing changed"
        ) from None


def editor_command() -> list[str]:
    """`$EDITOR` split as a shell would (e.g. `code --wait`), else the first of vim, nano, vi."""
    import shutil

    configured = os.environ.get("EDITOR", "").strip()
    if configured:
        try:
            words = shlex.split(configured)
        except ValueError:
            raise EditAborted("EDITOR cannot be split into words (unbalanced quotes?)") from None
        if words:
            return words
    for candidate in ("vim", "nano", "vi"):
        if shutil.which(candidate):
            return [candidate]
    raise EditAborted("no editor: set EDITOR (e.g. EDITOR=vim)")


@contextlib.contextmanager
def private_folder() -> Iterator[Path]:
    """A new folder only this user can enter (0700), removed with everything in it on exit."""
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=_runtime_dir()))
    try:
        os.chmod(folder, 0o700)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _runtime_dir() -> str | None:
    """$XDG_RUNTIME_DIR (a per-user, memory-backed folder on most Linux systems) when it is a
    folder of this user that nobody else can enter; else None (the system's default)."""
    candidate = os.environ.get("XDG_RUNTIME_DIR", "")
    if not candidate or not os.path.isabs(candidate):
        return None
    try:
        st = os.stat(candidate)
    except OSError:
        return None
    if not os.path.isdir(candidate) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        return None
    return candidate


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600)
    with os.fdopen(fd, "wb") as out:
        os.fchmod(out.fileno(), 0o600)
        out.write(data)


@contextlib.contextmanager
def _terminating_signals() -> Iterator[None]:
    """SIGTERM and SIGHUP raise `_Signalled` (so every `finally` runs) instead of ending the
    process at once."""

    def raise_signalled(signum: int, frame: FrameType | None) -> None:
        raise _Signalled(signum)

    previous = {s: signal.signal(s, raise_signalled) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def run_editor(editor: list[str], path: Path) -> int:
    """Runs the editor on `path` and returns its exit status (negative: killed by a signal).
    SIGINT is the editor's while it runs (a terminal sends Ctrl-C to both); if this process
    is told to stop (SIGTERM, SIGHUP), the editor is stopped before the exception goes on."""
    import subprocess

    def ignore(signum: int, frame: FrameType | None) -> None:
        return None

    previous = signal.signal(signal.SIGINT, ignore)  # a handler, not SIG_IGN: not inherited
    try:
        try:
            proc = subprocess.Popen([*editor, str(path)])
        except OSError as exc:
            raise EditAborted(f"cannot run the editor {editor[0]}: {exc.strerror or exc}") from None
        try:
            return proc.wait()
        except BaseException:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            raise
    finally:
        signal.signal(signal.SIGINT, previous)


def with_header(text: bytes, problems: list[str]) -> bytes:
    """`text` with the problems as comments on top, for the editor."""
    lines = [
        f"{HEADER}not saved: this is not a valid spec. Fix it and save; save it unchanged "
        "or empty to give up.",
        *(f"{HEADER}  {problem}" for problem in problems[:20]),
    ]
    return ("\n".join(lines) + "\n").encode() + text


def strip_header(text: bytes) -> bytes:
    """`text` without the problem comments `with_header` put on top."""
    lines = text.splitlines(keepends=True)
    while lines and lines[0].startswith(HEADER.encode()):
        lines.pop(0)
    return b"".join(lines)


def _has_content(text: bytes) -> bool:
    return any(line.strip() and not line.lstrip().startswith(b"#") for line in text.splitlines())
