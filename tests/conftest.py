"""Fixtures for every test: real Postgres (RECONCILER_TEST_DATABASE_URL, else an embedded
server), the Vapi emulator over HTTP, and a throwaway age key for sops. Fixtures are lazy: a test
that asks for none of the Postgres or emulator ones starts neither (tests/unit/conftest.py makes
a unit test that asks for one fail). Helpers to import are in tests/helpers."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pyrage
import pytest
from hypothesis import settings
from psycopg import sql
from psycopg_pool import ConnectionPool

from reconciler.cli.main import main
from reconciler.controller.run import Controller
from reconciler.secrets.crypto import MasterKey
from reconciler.state.db import open_pool, temporary_embedded
from reconciler.state.migrate import migrate
from reconciler.state.store import StateWriter
from reconciler.vapi.client import http_client
from reconciler.vapi.emulator import running_emulator
from tests.helpers import FAST_RETRY, Run, SpecDir, reset_emulator
from tests.helpers.serve import ServeLauncher, session_env

# No wall-clock deadline for hypothesis's examples: on a shared two-core machine an example of
# a few milliseconds can wait 200 ms for a core, and the test would fail as "flaky". Tests that
# bound work measure CPU time themselves.
settings.register_profile("suite", deadline=None)
settings.load_profile("suite")


@pytest.hookimpl(trylast=True)  # after pytest-xdist has added the group to the node id
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Fails the run when `--dist loadgroup` did not group: each pytest-xdist worker would then
    load Vapi's SDK (about a minute of CPU on a loaded machine) instead of one, silently."""
    if not getattr(config.option, "loadgroup", False):
        return
    for item in items:
        if item.get_closest_marker("xdist_group") and "@" not in item.nodeid:
            raise pytest.UsageError(
                f"{item.nodeid}: its xdist_group mark did not take (pytest {pytest.__version__}"
                " and this pytest-xdist disagree on node ids): see pyproject.toml's pins"
            )


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    url = os.environ.get("RECONCILER_TEST_DATABASE_URL")
    if url:
        yield url
        return
    # Outside pytest's basetemp: pytest prunes old basetemps, which would pull the data
    # directory from under a server that a concurrent session still uses.
    with (
        tempfile.TemporaryDirectory(prefix="reconciler-test-pg-") as tmp,
        temporary_embedded(Path(tmp)) as embedded,
    ):
        yield embedded


@pytest.fixture(scope="session")
def database_url(server_url: str) -> Iterator[str]:
    """A fresh database per test session, dropped at the end."""
    name = f"reconciler_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    info = psycopg.conninfo.conninfo_to_dict(server_url)
    info["dbname"] = name
    yield psycopg.conninfo.make_conninfo(**info)
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture(scope="session")
def session_pool(database_url: str) -> Iterator[ConnectionPool]:
    pool = open_pool(database_url, max_size=40, name="reconciler-tests")
    migrate(pool)
    yield pool
    pool.close()


# Every table the migrations make, referencing tables before the tables they reference.
_EMPTY_ORDER = """
WITH RECURSIVE tables AS (
    SELECT c.oid, c.relname FROM pg_class c
    WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p')
      AND c.relname <> 'schema_migrations'
), depth (oid, d) AS (
    SELECT oid, 0 FROM tables
    UNION ALL
    SELECT k.conrelid, depth.d + 1 FROM pg_constraint k JOIN depth ON k.confrelid = depth.oid
    WHERE k.contype = 'f' AND k.conrelid <> k.confrelid AND depth.d < 50
)
SELECT t.relname FROM tables t JOIN depth USING (oid) GROUP BY t.relname ORDER BY max(d) DESC
"""


@pytest.fixture(scope="session")
def _emptying(session_pool: ConnectionPool) -> str:
    """One round trip that empties every table. DELETE, not TRUNCATE: on rows this few it is
    about 100x cheaper (TRUNCATE makes new files for each table and index and syncs them,
    about 40 ms a test, which the suite of about 1,800 such tests paid in CPU and waits)."""
    with session_pool.connection() as conn:
        names = [row[0] for row in conn.execute(_EMPTY_ORDER)]
    assert {"organizations", "assistant_org_mapping", "vapi_resources"} <= set(names), names
    return "; ".join(f'DELETE FROM "{name}"' for name in names)


@pytest.fixture
def pool(session_pool: ConnectionPool, _emptying: str) -> ConnectionPool:
    with session_pool.connection() as conn:
        conn.execute(_emptying)
    return session_pool


@pytest.fixture
def state(pool: ConnectionPool) -> StateWriter:
    return StateWriter(pool)


@pytest.fixture(scope="session")
def emulator_session() -> Iterator[str]:
    with running_emulator() as url:
        yield url


@pytest.fixture
def emulator(emulator_session: str) -> str:
    reset_emulator(emulator_session)
    return emulator_session


@pytest.fixture(scope="session")
def age_identity(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    ident = pyrage.x25519.Identity.generate()
    path = tmp_path_factory.mktemp("age") / "key.txt"
    path.write_text(f"{ident}\n")
    return path, str(ident.to_public())


@pytest.fixture
def specs(
    tmp_path: Path, age_identity: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> SpecDir:
    key_file, public = age_identity
    monkeypatch.setenv("SOPS_AGE_KEY_FILE", str(key_file))
    monkeypatch.delenv("SOPS_AGE_KEY", raising=False)
    return SpecDir(tmp_path / "specs", public)


@pytest.fixture(scope="session")
def master_key() -> MasterKey:
    return MasterKey.generate()


@pytest.fixture
def controller(state: StateWriter, emulator: str, master_key: MasterKey) -> Iterator[Controller]:
    with http_client(emulator, timeout_s=5) as http:
        yield Controller(
            state,
            http,
            master_key,
            concurrency=8,
            retry=FAST_RETRY,
            twilio_base_url=f"{emulator}/_stubs/twilio",  # the emulator's Twilio stub
        )


@pytest.fixture
def cli(
    monkeypatch: pytest.MonkeyPatch,
    database_url: str,
    master_key: MasterKey,
    emulator: str,
    pool: ConnectionPool,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> Any:
    monkeypatch.setenv("RECONCILER_DATABASE_URL", database_url)
    monkeypatch.setenv("RECONCILER_MASTER_KEY", master_key.to_b64())
    monkeypatch.setenv("VAPI_BASE_URL", emulator)
    monkeypatch.setenv("RECONCILER_TWILIO_BASE_URL", f"{emulator}/_stubs/twilio")
    monkeypatch.setenv("RECONCILER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("RECONCILER_CONCURRENCY", "4")
    monkeypatch.delenv("RECONCILER_DEBUG", raising=False)

    def run(*argv: str) -> Run:
        capsys.readouterr()  # drop anything printed before
        code = main(list(argv))
        out, err = capsys.readouterr()
        return Run(code, out, err)

    return run


@pytest.fixture
def launcher(
    database_url: str,
    master_key: MasterKey,
    emulator: str,
    age_identity: tuple[Path, str],
    pool: Any,  # truncates the tables
    tmp_path: Path,
) -> Iterator[ServeLauncher]:
    """Starts real `reconciler serve` processes on the session's database and emulator (each
    stopped at the end); `test_serve.py` has its own, over its own environment."""
    env = session_env(
        database_url, master_key.to_b64(), emulator, age_identity[0], tmp_path / "data"
    )
    launcher = ServeLauncher(tmp_path, env)
    try:
        yield launcher
    finally:
        launcher.close()
