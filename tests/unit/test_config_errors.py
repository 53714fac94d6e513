"""Bad configuration through `main([...])`: one line on stderr naming the culprit, a non-zero
exit, no traceback, and never a secret (password, master key, a malformed value)."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from reconciler.cli.main import listen_address, main
from reconciler.config import Settings
from reconciler.secrets.crypto import MasterKey
from reconciler.state import connect as runtime_module
from reconciler.state import db

SECRET = "hunter2"
VARIABLES = (
    "RECONCILER_DATABASE_URL",
    "RECONCILER_MASTER_KEY",
    "RECONCILER_CONCURRENCY",
    "RECONCILER_VAPI_TIMEOUT",
    "RECONCILER_DEBUG",
    "VAPI_BASE_URL",
)


@dataclass
class Run:
    code: int
    out: str
    err: str
    seconds: float

    @property
    def err_lines(self) -> list[str]:
        return self.err.splitlines()


def assert_one_line_error(run: Run, *, code: int = 1) -> str:
    assert run.code == code, run
    assert len(run.err_lines) == 1, run.err
    assert "Traceback" not in run.out + run.err
    assert "internal error" not in run.err
    assert SECRET not in run.out + run.err
    line: str = run.err_lines[0]
    return line


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A clean environment: no reconciler variables but a private data directory."""
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    data = tmp_path / "data"
    monkeypatch.setenv("RECONCILER_DATA_DIR", str(data))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "specs").mkdir()
    return data


@pytest.fixture
def cli(env: Path, capsys: pytest.CaptureFixture[str]) -> Callable[..., Run]:
    def run(*argv: str) -> Run:
        capsys.readouterr()
        start = time.monotonic()
        code = main(list(argv))
        seconds = time.monotonic() - start
        captured = capsys.readouterr()
        return Run(code, captured.out, captured.err, seconds)

    return run


def closed_port() -> int:
    """A local port nobody listens on: connecting is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# 1 + 2. Database URLs: only host, port, dbname and user are shown; a wrong port fails fast.


@pytest.mark.parametrize(
    "template",
    [
        "host=127.0.0.1 port={port} user=app password=hunter2 dbname=x",
        "postgresql://app@127.0.0.1:{port}/x?password=hunter2",
        "postgresql://app:hunter2@127.0.0.1:{port}/x?sslmode=disable",
    ],
    ids=["keyvalue", "query-password", "userinfo-password"],
)
def test_connect_failure_hides_password_and_is_fast(
    cli: Callable[..., Run], monkeypatch: pytest.MonkeyPatch, template: str
) -> None:
    port = closed_port()
    monkeypatch.setenv("RECONCILER_DATABASE_URL", template.format(port=port))
    run = cli("db", "migrate")
    line = assert_one_line_error(run)
    assert line.startswith(
        f"error: cannot connect to Postgres at host=127.0.0.1 port={port} dbname=x user=app"
    ), line
    assert "sslmode" not in line
    assert run.seconds < 5, f"connect failure took {run.seconds:.1f} s"


def test_unparsable_database_url_is_named_not_echoed(
    cli: Callable[..., Run], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECONCILER_DATABASE_URL", "app hunter2 somewhere")
    line = assert_one_line_error(cli("db", "migrate"))
    assert "RECONCILER_DATABASE_URL" in line
    assert "somewhere" not in line


def test_pool_warnings_are_silenced_while_connecting(
    cli: Callable[..., Run], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Past the probe (made to pass here), the pool's own retries log nothing, and the logger
    is restored afterwards."""

    class Probe:
        def close(self) -> None:
            pass

    monkeypatch.setattr(db.psycopg, "connect", lambda *_a, **_k: Probe())
    monkeypatch.setattr(db, "CONNECT_TIMEOUT_S", 1)
    url = f"postgresql://app:hunter2@127.0.0.1:{closed_port()}/x"
    monkeypatch.setenv("RECONCILER_DATABASE_URL", url)
    pool_logger = logging.getLogger("psycopg.pool")
    filters_before = list(pool_logger.filters)
    with caplog.at_level(logging.DEBUG, logger="psycopg.pool"):
        line = assert_one_line_error(cli("db", "migrate"))
    assert line.startswith("error: cannot connect to Postgres at host=127.0.0.1"), line
    assert [r for r in caplog.records if r.name == "psycopg.pool"] == []
    assert pool_logger.filters == filters_before
    pool_logger.warning("still heard")  # restored: records flow again
    assert [r.getMessage() for r in caplog.records] == ["still heard"]


# 3. Settings: the variable and the problem, never the value.


@pytest.mark.parametrize(
    "argv", [("plan", "specs"), ("apply", "specs"), ("resolve", "asst_1"), ("db", "migrate")]
)
def test_invalid_setting_names_variable_not_value(
    cli: Callable[..., Run], monkeypatch: pytest.MonkeyPatch, argv: tuple[str, ...]
) -> None:
    monkeypatch.setenv("RECONCILER_CONCURRENCY", "abc-hunter2")
    line = assert_one_line_error(cli(*argv))
    assert line.startswith("error: invalid environment: RECONCILER_CONCURRENCY: "), line
    assert "integer" in line


def test_every_invalid_setting_is_listed(
    cli: Callable[..., Run], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECONCILER_CONCURRENCY", "0")
    monkeypatch.setenv("RECONCILER_VAPI_TIMEOUT", "hunter2")
    line = assert_one_line_error(cli("plan", "specs"))
    assert "RECONCILER_CONCURRENCY: Input should be greater than or equal to 1" in line
    assert "RECONCILER_VAPI_TIMEOUT: Input should be a valid number" in line


# 4. --listen HOST:PORT is checked by argparse.


@pytest.mark.parametrize("listen", ["localhost", "localhost:", "127.0.0.1:http", "[::1]:70000"])
def test_emulator_listen_must_be_host_port(
    env: Path, capsys: pytest.CaptureFixture[str], listen: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["vapi-emulator", "--listen", listen])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.splitlines()[-1]
    assert last.startswith("reconciler vapi-emulator: error: argument --listen:"), err
    assert "HOST:PORT" in last


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("127.0.0.1:8787", ("127.0.0.1", 8787)),
        ("localhost:1", ("localhost", 1)),
        (":9000", ("127.0.0.1", 9000)),
        ("[::1]:8080", ("::1", 8080)),
    ],
)
def test_listen_address_parses(text: str, address: tuple[str, int]) -> None:
    assert listen_address(text) == address


# 5. The master key file in the data directory.


def test_corrupt_master_key_file_is_named(cli: Callable[..., Run], env: Path) -> None:
    env.mkdir()
    (env / "master.key").write_text("not-a-key-hunter2\n")
    line = assert_one_line_error(cli("plan", "specs"))
    assert line == f"error: {env / 'master.key'}: not a valid master key (base64 of 32 bytes)"


def _refuse_embedded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stand in for the embedded server with one that refuses connections (fast, no server)."""
    url = f"host=127.0.0.1 port={closed_port()} user=app dbname=embedded"
    monkeypatch.setattr(runtime_module, "embedded_url", lambda _data_dir: url)


def _lose_race(
    monkeypatch: pytest.MonkeyPatch, key_path: Path, winner: MasterKey, delay_s: float
) -> None:
    """Make our O_EXCL create lose to "another process" that has created `key_path` and writes
    `winner` into it after `delay_s`."""
    real_open = os.open

    def racing_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if Path(path) == key_path and flags & os.O_EXCL:
            key_path.touch()
            write = lambda: key_path.write_text(winner.to_b64() + "\n")  # noqa: E731
            if delay_s:
                threading.Timer(delay_s, write).start()
            else:
                write()
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(runtime_module.os, "open", racing_open)


def test_master_key_race_through_cli(
    cli: Callable[..., Run], env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _refuse_embedded(monkeypatch)
    winner = MasterKey.generate()
    _lose_race(monkeypatch, env / "master.key", winner, delay_s=0)
    line = assert_one_line_error(cli("apply", "specs"))  # no "generated a master key" warning
    assert line.startswith("error: cannot connect to Postgres at host=127.0.0.1"), line
    assert (env / "master.key").read_text() == winner.to_b64() + "\n"


def test_master_key_race_waits_for_the_other_writer(
    env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    winner = MasterKey.generate()
    _lose_race(monkeypatch, env / "master.key", winner, delay_s=0.3)
    key = runtime_module.master_key(Settings(RECONCILER_DATA_DIR=env))
    assert key == winner
    assert capsys.readouterr().err == ""


def test_concurrent_first_runs_agree_on_one_key(env: Path) -> None:
    settings = Settings(RECONCILER_DATA_DIR=env)
    barrier = threading.Barrier(8)
    keys: list[MasterKey] = []
    errors: list[BaseException] = []

    def first_run() -> None:
        barrier.wait()
        try:
            keys.append(runtime_module.master_key(settings))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=first_run) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(keys) == 8
    assert len({k.raw for k in keys}) == 1
    assert MasterKey.from_b64((env / "master.key").read_text()) == keys[0]
