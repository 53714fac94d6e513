"""Issue 15's promises that need a real process: `org new` and `set` put no plaintext on disk,
not even for a moment (every file the process opens for writing is read back before each
rename, link, removal and sops run, and at exit); `edit` removes its private folder when it is
interrupted (SIGINT to the terminal's process group, SIGTERM to it alone); and a webhook secret
rotated with `set` shows in `plan` as the credential and each header that carries it. The
in-process tests of the same commands are in tests/unit/test_start.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from reconciler.cli.main import main
from tests.helpers import SpecDir, assert_no_traceback, org_doc

SLUG = "acme-dental"

# Runs `reconciler ARGS` with an audit hook that records every file opened for writing and
# reads each back before the process renames, links, removes or truncates a file, removes a
# tree, starts a subprocess (sops), and at the end: a secret in any of them is reported.
PROBE = r"""
import os, sys
SECRETS = [s.encode() for s in os.environ.pop("PROBE_SECRETS").split(",")]
WRITE = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
CHECKPOINTS = {"subprocess.Popen", "os.rename", "os.link", "os.remove", "os.rmdir",
               "shutil.rmtree", "os.truncate", "os.chmod"}
opened, found, busy = set(), set(), [False]

def scan():
    for path in list(opened):
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            continue
        if any(s in data for s in SECRETS):
            found.add(path)

def hook(event, args):
    if busy[0]:
        return
    busy[0] = True
    try:
        if event == "open":
            path, mode, flags = args
            writing = any(c in mode for c in "wax+") if isinstance(mode, str) else (
                isinstance(flags, int) and flags & WRITE)
            if isinstance(path, (str, bytes)) and writing:
                opened.add(os.path.abspath(os.fsdecode(path)))
        elif event in CHECKPOINTS:
            scan()
    finally:
        busy[0] = False

sys.addaudithook(hook)
from reconciler.cli.main import main
code = main(sys.argv[1:])
busy[0] = True
scan()
print("PROBE " + __import__("json").dumps({"opened": sorted(opened), "found": sorted(found)}),
      file=sys.stderr)
sys.exit(code)
"""


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """HOME and TMPDIR in tmp_path, no key variables, the working directory elsewhere."""
    paths = {name: tmp_path / name for name in ("home", "tmp", "elsewhere")}
    for p in paths.values():
        p.mkdir()
    monkeypatch.setenv("HOME", str(paths["home"]))
    monkeypatch.setenv("TMPDIR", str(paths["tmp"]))
    for name in ("XDG_CONFIG_HOME", "SOPS_AGE_KEY_FILE", "SOPS_AGE_KEY", "SOPS_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(paths["elsewhere"])
    assert main(["init", str(tmp_path / "repo")]) == 0
    paths["specs"] = tmp_path / "repo" / "specs"
    return paths


def probe(*argv: str, secrets: list[str]) -> tuple[subprocess.CompletedProcess[str], Any]:
    env = {**os.environ, "PROBE_SECRETS": ",".join(secrets)}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, env=env, timeout=120
    )
    line = next(ln for ln in done.stderr.splitlines() if ln.startswith("PROBE "))
    return done, json.loads(line.removeprefix("PROBE "))


def files_holding(root: Path, secrets: list[str]) -> list[Path]:
    return [
        p
        for p in root.rglob("*")
        if p.is_file() and any(s.encode() in p.read_bytes() for s in secrets)
    ]


def test_org_new_and_set_put_no_plaintext_on_disk(
    home: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key, secret, rotated = (f"{p}-{uuid.uuid4().hex}" for p in ("sk-probe", "whsec-p", "whsec-r"))
    monkeypatch.setenv("PROBE_KEY", key)
    monkeypatch.setenv("PROBE_SECRET", secret)
    monkeypatch.setenv("PROBE_ROTATED", rotated)
    done, seen = probe(
        "org", "new", SLUG, "--path", str(home["specs"]), "--vapi-key-env", "PROBE_KEY",
        "--webhook-secret-env", "PROBE_SECRET", secrets=[key, secret],
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert seen["opened"], "the probe saw no file written: it would prove nothing"
    assert seen["found"] == []
    path = home["specs"] / f"{SLUG}.yaml"
    done, seen = probe(
        "set", str(path), "spec.credentials.vapi.webhookSecret", "--from-env", "PROBE_ROTATED",
        secrets=[key, secret, rotated],
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert seen["opened"] and seen["found"] == []
    # nor did sops leave anything anywhere (HOME, TMPDIR, the repository)
    assert files_holding(tmp_path, [key, secret, rotated]) == []
    assert main(["validate", str(home["specs"])]) == 0


SLEEPING_EDITOR = r"""
import os, pathlib, signal, sys, time
signal.signal(signal.SIGINT, signal.SIG_DFL)  # dies of Ctrl-C as most programs do
seen = pathlib.Path(os.environ["EDIT_SEEN"])
seen.with_suffix(".part").write_text(f"{os.getpid()} {sys.argv[1]}")
seen.with_suffix(".part").replace(seen)  # whole or absent, never half written
time.sleep(60)
"""


@pytest.mark.parametrize("how", ["SIGINT to the process group", "SIGTERM to reconciler"])
def test_edit_removes_its_private_folder_when_interrupted(
    home: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    monkeypatch.setenv("ACME_KEY", "sk-interrupted-1")
    specs = home["specs"]
    assert main(["org", "new", SLUG, "--path", str(specs), "--vapi-key-env", "ACME_KEY"]) == 0
    path = specs / f"{SLUG}.yaml"
    written = path.read_bytes()
    editor = tmp_path / "sleeping_editor.py"
    editor.write_text(SLEEPING_EDITOR)
    seen = tmp_path / "seen.txt"
    env = {**os.environ, "EDITOR": f"{sys.executable} {editor}", "EDIT_SEEN": str(seen)}
    env.pop("XDG_RUNTIME_DIR", None)  # so the folder is in TMPDIR, inside tmp_path
    proc = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "edit", str(path)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )
    try:
        deadline = time.monotonic() + 30
        while not seen.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        editor_pid, opened = seen.read_text().split(" ", 1)
        folder = Path(opened).parent
        assert folder.parent == home["tmp"]
        assert (folder.stat().st_mode & 0o777, Path(opened).stat().st_mode & 0o777) == (
            0o700,
            0o600,
        )
        if how.startswith("SIGINT"):
            os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
        else:
            os.kill(proc.pid, signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    expected = signal.SIGINT if how.startswith("SIGINT") else signal.SIGTERM
    assert proc.returncode == 128 + expected, err
    assert not folder.exists()
    assert list(home["tmp"].iterdir()) == []
    assert path.read_bytes() == written
    assert err.strip().splitlines() == [
        f"error: {path}: interrupted by {expected.name}: nothing changed"
    ]
    with pytest.raises(ProcessLookupError):
        os.kill(int(editor_pid), 0)  # the editor was stopped too


def test_a_webhook_secret_rotated_with_set_shows_in_plan(
    cli: Any, specs: SpecDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, new = f"whsec-old-{uuid.uuid4().hex}", f"whsec-new-{uuid.uuid4().hex}"
    doc = org_doc(SLUG, secret=old)
    for assistant in doc["spec"]["assistants"].values():
        assistant["server"] = {"url": "https://hooks.example.com/webhooks/vapi"}
    path = specs.write(doc)
    assert cli("apply", str(specs.root)).code == 0
    monkeypatch.setenv("NEW_WEBHOOK_SECRET", new)
    done = cli(
        "set", str(path), "spec.credentials.vapi.webhookSecret", "--from-env", "NEW_WEBHOOK_SECRET"
    )
    assert done.code == 0, done.err
    plan = cli("plan", str(specs.root), "--detailed-exitcode")
    assert plan.code == 2, plan.out + plan.err
    as_json = cli("plan", str(specs.root), "--format", "json")
    assert as_json.code == 0, as_json.err
    lines = [line.strip() for line in plan.out.splitlines()]
    assert "~ credential vapi (sensitive value changed)" in lines
    header = "server.headers.x-vapi-secret: (sensitive) -> (sensitive value changed)"
    for role in ("inbound", "outbound"):
        at = next(i for i, line in enumerate(lines) if line.startswith(f"~ assistant {role} "))
        assert lines[at + 1] == header, plan.out
    assert "Plan: 0 to create, 3 to update, 0 to delete." in lines
    for run in (done, plan, as_json):
        assert old not in run.out + run.err and new not in run.out + run.err
        assert_no_traceback(run)
