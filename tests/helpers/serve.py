"""Running real `reconciler serve` processes in tests: free ports, environments, start/stop with
bounded waits, HTTP calls, Postgres look-ups, and atomic spec edits (a file is never seen
half-written by the loop: it is written or encrypted elsewhere, then renamed into place).

Every process a `ServeLauncher` starts is killed by `close()`, which the test fixtures call in
their teardown, whatever happened in the test.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psycopg
import pytest
import yaml
from psycopg.rows import dict_row

from tests.helpers import ROOT, SHORT_KEEPALIVE, SpecDir, encrypt_in_place, live, sops_rules

T = TypeVar("T")

START_WITHIN_S = 30.0
STOP_WITHIN_S = 10.0
# Variables a test environment may carry that would change what a serve process does.
_DROPPED = ("RECONCILER_", "VAPI_", "SOPS_AGE_KEY")


def free_port() -> int:
    """A local TCP port free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(
    check: Callable[[], T], within_s: float, what: str, *, every_s: float = 0.1
) -> tuple[T, float]:
    """Polls `check()` until it returns a truthy value; returns it and the seconds it took.
    Fails the test after `within_s`, saying `what` (and the last value seen)."""
    start = time.monotonic()
    while True:
        value = check()
        if value:
            return value, time.monotonic() - start
        if time.monotonic() - start > within_s:
            pytest.fail(f"not within {within_s:g} s: {what} (last: {value!r})")
        time.sleep(every_s)


# -- environment and processes -----------------------------------------------------------------


def base_env(**values: str | None) -> dict[str, str]:
    """This process's environment without reconciler/Vapi/sops settings, plus `values` (None:
    left unset)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_DROPPED)}
    env.update({k: v for k, v in values.items() if v is not None})
    env["PYTHONUNBUFFERED"] = "1"
    return env


def session_env(
    database_url: str, master_key: str, emulator: str, age_key_file: Path, data_dir: Path
) -> dict[str, str]:
    """`base_env` for a `reconciler` process on the test session's Postgres, emulator and key."""
    return base_env(
        RECONCILER_DATABASE_URL=database_url,
        RECONCILER_MASTER_KEY=master_key,
        VAPI_BASE_URL=emulator,
        RECONCILER_DATA_DIR=str(data_dir),
        SOPS_AGE_KEY_FILE=str(age_key_file),
        RECONCILER_CONCURRENCY="4",
    )


def run_cli(
    env: dict[str, str], *args: str, cwd: Path = ROOT, timeout_s: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """`python -m reconciler ARGS` in `env` (see `base_env`), in `cwd`; its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "reconciler", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


class Serve:
    """One `reconciler serve` process: stderr and stdout go to files (never a pipe that could
    fill up and block it)."""

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        port: int,
        log_path: Path,
        token: str | None,
        replica: str | None,
    ) -> None:
        self.proc = proc
        self.port = port
        self.log_path = log_path
        self.token = token
        self.replica = replica
        # serve keeps an idle connection 5 s: drop ours sooner (see `SHORT_KEEPALIVE`)
        self.http = httpx.Client(
            base_url=f"http://127.0.0.1:{port}", timeout=10, limits=SHORT_KEEPALIVE
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def get(self, path: str, *, token: str | None = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        return self.http.get(path, headers=headers)

    def post(self, path: str, *, token: str | None = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        return self.http.post(path, headers=headers)

    def status_code(self, path: str) -> int | None:
        """The status of GET `path`, None while nothing answers; fails at once if the process
        has exited."""
        if self.proc.poll() is not None:
            pytest.fail(f"serve exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
        try:
            return self.http.get(path).status_code
        except httpx.HTTPError:
            return None

    def wait_ready(self, within_s: float = START_WITHIN_S) -> float:
        _, took = wait_until(
            lambda: self.status_code("/readyz") == 200, within_s, f"{self.url}/readyz is 200"
        )
        return took

    def send(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, within_s: float = STOP_WITHIN_S) -> tuple[int, float]:
        """Sends `sig` and waits for the exit; returns (exit status, seconds). Fails the test
        (after a SIGKILL) when it does not exit within `within_s`."""
        start = time.monotonic()
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=within_s + 2.0)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"serve did not exit within {within_s} s of {sig!r}:\n{self.log()[-3000:]}")
        return code, time.monotonic() - start

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def close(self) -> None:
        self.kill()
        self.http.close()


class ServeLauncher:
    """Starts serve processes with a shared environment; `close()` kills whatever still runs."""

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.workdir = workdir
        self.env = env
        self.started: list[Serve] = []

    def start(
        self,
        *args: str,
        interval: str = "1s",
        env: dict[str, str | None] | None = None,
        wait_ready: bool = True,
    ) -> Serve:
        """Starts `reconciler serve ARGS` on a free port; waits for /readyz unless told not."""
        merged = dict(self.env)
        for key, value in (env or {}).items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = value
        port = free_port()
        n = len(self.started)
        log_path = self.workdir / f"serve-{n}.stderr.log"
        out_path = self.workdir / f"serve-{n}.stdout.log"
        argv = [
            sys.executable,
            "-m",
            "reconciler",
            "serve",
            *args,
            "--interval",
            interval,
            "--listen",
            f"127.0.0.1:{port}",
        ]
        with log_path.open("wb") as err, out_path.open("wb") as out:
            proc = subprocess.Popen(argv, env=merged, cwd=ROOT, stdout=out, stderr=err)
        serve = Serve(
            proc,
            port,
            log_path,
            merged.get("RECONCILER_ADMIN_TOKEN"),
            merged.get("RECONCILER_REPLICA_ID"),
        )
        self.started.append(serve)
        if wait_ready:
            serve.wait_ready()
        return serve

    def close(self) -> None:
        for serve in self.started:
            serve.close()


def assert_clean_log(log: str) -> None:
    """The log holds no traceback and no internal error."""
    assert "Traceback" not in log, log
    assert "internal error" not in log, log


# -- Postgres --------------------------------------------------------------------------------


def query(
    url: str, statement: str, params: Iterable[Any] | dict[str, Any] = ()
) -> list[dict[str, Any]]:
    """The rows of one SQL statement on the database of `url`, as dicts."""
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        return conn.execute(statement, params).fetchall()  # type: ignore[arg-type]


def orgs_by_slug(url: str) -> dict[str, dict[str, Any]]:
    """Each organizations row (status, conditions, revisions) by slug."""
    rows = query(
        url,
        "SELECT o.id::text AS id, o.slug, o.status, o.status_message, o.conditions,"
        " o.last_reconciled_at, o.last_attempted_revision, o.last_applied_revision"
        " FROM organizations o",
    )
    return {r["slug"]: r for r in rows}


def schedule(url: str) -> dict[str, dict[str, Any]]:
    """org_schedule by org id, with `due_in_s` (next_run_at - now()) as seconds."""
    rows = query(
        url,
        "SELECT org_id::text AS org_id, next_run_at, spec_digest, failures, claimed_by,"
        " claimed_at, EXTRACT(EPOCH FROM next_run_at - now())::float AS due_in_s"
        " FROM org_schedule",
    )
    return {r["org_id"]: r for r in rows}


def condition(row: dict[str, Any], kind: str) -> dict[str, str]:
    """The one condition of type `kind` in an organizations row."""
    [found] = [c for c in row["conditions"] if c["type"] == kind]
    return dict(found)


def all_ready(url: str, slugs: Iterable[str]) -> bool:
    """Whether every org of `slugs` has a row and is Ready."""
    rows = orgs_by_slug(url)
    return all(s in rows and rows[s]["status"] == "Ready" for s in slugs)


# -- the emulator ------------------------------------------------------------------------------


def first_messages(emulator: str, api_key: str) -> list[Any]:
    """The sorted firstMessage of every assistant in the account of `api_key`."""
    return sorted(str(a.get("firstMessage")) for a in live(emulator, api_key))


def has_first_message(emulator: str, api_key: str, text: str) -> bool:
    """Whether an assistant in the account of `api_key` has the firstMessage `text`."""
    return any(a.get("firstMessage") == text for a in live(emulator, api_key))


# -- specs -----------------------------------------------------------------------------------


def write_spec(
    specs: SpecDir,
    doc: dict[str, Any],
    *,
    recipient: str | None = None,
    name: str | None = None,
    encrypt: bool = True,
) -> Path:
    """Writes `doc` into `specs` atomically: encrypted (to `recipient`, else to the folder's own
    key) in a staging folder, then renamed into place."""
    staging = specs.root.parent / f".staging-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        rules = (specs.root / ".sops.yaml").read_text()
        if recipient is not None:
            rules = sops_rules(recipient)
        (staging / ".sops.yaml").write_text(rules)
        filename = f"{name or doc['metadata']['slug']}.yaml"
        path = staging / filename
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        if encrypt:
            encrypt_in_place(path)
        target = specs.root / filename
        os.replace(path, target)
        return target
    finally:
        for leftover in staging.iterdir():
            leftover.unlink()
        staging.rmdir()


def edit_spec(path: Path, old: str, new: str) -> None:
    """Replaces `old` by `new` in a spec file's plain (unencrypted) part, atomically. The specs
    use `mac_only_encrypted`, so the file still decrypts: no sops run needed."""
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text.replace(old, new))
    os.replace(tmp, path)


def secrets_of(doc: dict[str, Any]) -> list[str]:
    """The Vapi API key and webhook secret of a spec document."""
    vapi = doc["spec"]["credentials"]["vapi"]
    return [vapi["apiKey"], vapi["webhookSecret"]]


def assert_no_secret(texts: dict[str, str], secrets: Iterable[str]) -> None:
    """No secret of `secrets` appears in any of `texts` (by where it was read)."""
    for where, text in texts.items():
        for secret in secrets:
            assert secret not in text, f"a secret value appears in {where}"


def json_lines(text: str) -> list[dict[str, Any]]:
    """Each non-empty line of `text` parsed as JSON (a JSON log)."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]
