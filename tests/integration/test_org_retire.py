"""`reconciler org retire SLUG`: `--dry-run` shows and changes nothing; on a terminal it asks
`retire org X (deletes N assistants)? [y/N]`; without a terminal it needs `--yes` (refused in one
line otherwise, before touching anything)."""

from __future__ import annotations

import io
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from reconciler.cli import main as cli_main
from reconciler.secrets.crypto import MasterKey
from reconciler.state.store import StateWriter
from tests.helpers import ROOT, SpecDir, assert_no_traceback, deletes, org_doc, writes
from tests.helpers.serve import session_env
from tests.integration.test_lifecycle import org_row


@pytest.fixture
def gone(specs: SpecDir, cli: Any, emulator: str) -> Path:
    """acme applied (two assistants), then its spec removed: ready to retire."""
    path = specs.write(org_doc("acme"))
    assert cli("apply", str(specs.root)).code == 0
    path.unlink()
    return specs.root


def test_dry_run_shows_what_it_would_do_and_changes_nothing(
    gone: Path, cli: Any, emulator: str, state: StateWriter
) -> None:
    before = writes(emulator)
    result = cli("org", "retire", "acme", "--dry-run", "--path", str(gone))
    assert result.code == 0, result.out + result.err
    assert_no_traceback(result)
    assert result.out.count("- assistant") == 2, result.out  # both deletes shown
    assert "retire" in result.out
    assert "Plan: 0 to create, 0 to update, 3 to delete." in result.out  # and the org
    assert result.err.strip().splitlines()[-1] == "dry run: nothing was changed"
    assert writes(emulator) == before and deletes(emulator) == 0
    assert org_row(state, "acme")["retired_at"] is None


def test_without_a_terminal_it_needs_yes(
    gone: Path, cli: Any, emulator: str, state: StateWriter
) -> None:
    result = cli("org", "retire", "acme", "--path", str(gone))
    assert result.code == 1
    assert result.out == ""
    assert result.err.splitlines() == [
        "error: org retire acme deletes its assistants, numbers and tools and is not undone: "
        "pass --yes to run it without a terminal (or --dry-run to see what it does)"
    ]
    assert deletes(emulator) == 0 and org_row(state, "acme")["retired_at"] is None


@pytest.mark.parametrize(("answer", "retired"), [("n\n", False), ("\n", False), ("YES\n", True)])
def test_on_a_terminal_it_asks(
    gone: Path,
    cli: Any,
    emulator: str,
    state: StateWriter,
    monkeypatch: pytest.MonkeyPatch,
    answer: str,
    retired: bool,
) -> None:
    monkeypatch.setattr(cli_main, "_interactive", lambda: True)
    monkeypatch.setattr(sys, "stdin", io.StringIO(answer))
    result = cli("org", "retire", "acme", "--path", str(gone))
    assert "retire org acme (deletes 2 assistants)? [y/N] " in result.err
    if retired:
        assert result.code == 0, result.out + result.err
        assert deletes(emulator) == 2 and org_row(state, "acme")["status"] == "Retired"
    else:
        assert result.code == 1
        assert "not retired: nothing was changed" in result.err
        assert deletes(emulator) == 0 and org_row(state, "acme")["retired_at"] is None


def test_a_real_terminal_is_asked_and_its_answer_taken(
    gone: Path,
    emulator: str,
    state: StateWriter,
    database_url: str,
    master_key: MasterKey,
    age_identity: tuple[Path, str],
    tmp_path: Path,
) -> None:
    env = session_env(
        database_url, master_key.to_b64(), emulator, age_identity[0], tmp_path / "data"
    )
    primary, secondary = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "org", "retire", "acme", "--path", str(gone)],
        env=env,
        cwd=ROOT,
        stdin=secondary,
        stdout=secondary,
        stderr=secondary,
    )
    os.close(secondary)
    seen = b""
    try:
        deadline = time.monotonic() + 60
        while b"[y/N]" not in seen and time.monotonic() < deadline:
            ready, _, _ = select.select([primary], [], [], 0.5)
            if ready:
                try:
                    seen += os.read(primary, 4096)
                except OSError:
                    break
        assert b"retire org acme (deletes 2 assistants)? [y/N]" in seen, seen
        os.write(primary, b"y\n")
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(primary)
    assert deletes(emulator) == 2 and org_row(state, "acme")["status"] == "Retired"
