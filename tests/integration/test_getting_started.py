"""docs/getting-started.md is run as written: its fenced `bash` blocks, in order, in one bash
with `set -euo pipefail`, from a fresh temporary folder, so the walkthrough cannot rot.

A block right after a `<!-- not run -->` line is skipped: only the install block (the test
runs this checkout's `reconciler`). HOME, XDG_CONFIG_HOME and RECONCILER_DATA_DIR point into
the temporary folder (the age key and the embedded Postgres land there, not in the user's),
reconciler/Vapi/sops settings of the test's own environment are dropped, and the ports come
from EMULATOR_PORT and SERVE_PORT, which the page reads with defaults. Whatever happens, every
process the page started in the background is killed at the end (its process group).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import ROOT
from tests.helpers.serve import base_env, free_port

PAGE = ROOT / "docs" / "getting-started.md"
NOT_RUN = "<!-- not run -->"
TIMEOUT_S = 90.0
_FENCE = re.compile(r"^```bash\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def bash_blocks(text: str) -> tuple[list[str], list[str]]:
    """The page's ```bash blocks in order: (those to run, those marked not run)."""
    run: list[str] = []
    skipped: list[str] = []
    for match in _FENCE.finditer(text):
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1].strip()
        (skipped if before == NOT_RUN else run).append(match.group(1))
    return run, skipped


def script_of(text: str) -> str:
    run, _ = bash_blocks(text)
    return "set -euo pipefail\n" + "\n".join(run)


def run_page(text: str, tmp: Path, timeout_s: float = TIMEOUT_S) -> tuple[int | None, str]:
    """Runs the page's blocks; (exit code, or None on timeout; everything it printed)."""
    home, work = tmp / "home", tmp / "work"
    home.mkdir()
    work.mkdir()
    bin_dir = Path(sys.executable).parent
    assert (bin_dir / "reconciler").exists(), f"no reconciler script beside {sys.executable}"
    env = base_env(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        RECONCILER_DATA_DIR=str(tmp / "data"),
        EMULATOR_PORT=str(free_port()),
        SERVE_PORT=str(free_port()),
        PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    for name in ("EDITOR", "VISUAL", "VIRTUAL_ENV"):
        env.pop(name, None)
    log = tmp / "page.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["bash", "-c", script_of(text)],
            cwd=work,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its background processes are in its group: killed below
        )
        try:
            code: int | None = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            code = None
        finally:
            _kill_group(proc)
    return code, log.read_text(errors="replace")


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to every process of the page's group, SIGKILL to those left after 5 s."""
    for sig, grace_s in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 0.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
    if proc.poll() is None:
        proc.wait(timeout=5)


def test_the_page_has_the_steps_it_promises() -> None:
    run, skipped = bash_blocks(PAGE.read_text())
    assert len(skipped) == 1 and "pip install" in skipped[0], skipped
    script = "\n".join(run)
    for step in (
        "reconciler vapi-emulator",
        "RECONCILER_PROVIDER_STUBS=",
        "reconciler init",
        "reconciler org new acme",
        "reconciler validate",
        "reconciler plan",
        "reconciler apply",
        "reconciler serve",
        "curl -fsS",
        "/webhooks/vapi",
        "reconciler status",
    ):
        assert step in script, step
    assert "RECONCILER_DATABASE_URL" not in script  # everything local: the embedded Postgres


def test_getting_started_runs_as_written(tmp_path: Path) -> None:
    code, out = run_page(PAGE.read_text(), tmp_path)
    assert code == 0, f"exit {code} (None: past {TIMEOUT_S:g} s)\n{out}"
    assert "Traceback" not in out and "internal error" not in out, out
    # what the page says each step shows
    assert "1 spec(s) valid" in out, out
    assert "Plan: 4 to create, 0 to update, 0 to delete." in out, out
    assert "Applied: 4 to create, 0 to update, 0 to delete." in out, out
    assert "Plan: 0 to create, 0 to update, 0 to delete." in out, out  # plan after apply
    assert re.search(r'\{"orgId": "[0-9a-f-]{36}", "slug": "acme"\}', out), out
    assert re.search(r"^acme\s+Ready\b", out, re.MULTILINE), out
    # nothing of it escaped the temporary folder
    specs = tmp_path / "work" / "voice-specs" / "specs" / "acme.yaml"
    assert specs.exists()
    assert (tmp_path / "home" / ".config" / "sops" / "age" / "keys.txt").exists()
    assert (tmp_path / "data" / "master.key").exists()


@pytest.mark.parametrize(
    ("original", "broken"),
    [
        ("--vapi-key-env", "--vapi-key-envv"),  # a misspelled flag of a foreground command
        ('--listen "127.0.0.1:${SERVE_PORT', '--lissten "127.0.0.1:${SERVE_PORT'),  # background
    ],
    ids=["foreground-flag", "background-flag"],
)
def test_a_wrong_command_in_the_page_fails_it(tmp_path: Path, original: str, broken: str) -> None:
    """A background command that fails does not stop `set -e`: the page's wait loops give up
    when its process is gone, and the next command fails at once."""
    text = PAGE.read_text()
    assert original in text
    code, out = run_page(text.replace(original, broken, 1), tmp_path, timeout_s=60.0)
    assert code not in (0, None), out  # failed, and at once rather than at the time bound
