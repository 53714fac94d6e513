"""The run's first read of every org is planned without JIT compilation, and the setting
never outlives that read on its pooled connection (a transaction pooler's next client, or
this process's next statement, gets the server's own setting)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from psycopg_pool import ConnectionPool

from reconciler.state import _orgs
from reconciler.state.db import open_pool
from reconciler.state.store import StateReader


@pytest.fixture
def one_connection(database_url: str) -> Iterator[ConnectionPool]:
    """One connection, so that what a read leaves on it is what the next read finds; JIT on
    for the session whatever the server's default, so a read that kept it would show it."""
    pool = open_pool(database_url, max_size=1, name="reconciler-jit-test")
    try:
        with pool.connection() as conn:
            conn.execute("SET jit = on")
        yield pool
    finally:
        pool.close()


def _jit(pool: ConnectionPool) -> str:
    with pool.connection() as conn:
        row = conn.execute("SHOW jit").fetchone()
    assert row is not None
    return str(row[0])


def test_the_first_read_of_every_org_runs_with_jit_off(
    one_connection: ConnectionPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the observe query's own path, asked what JIT setting its statement runs under
    monkeypatch.setattr(_orgs, "_OBSERVE_SQL", "SELECT current_setting('jit') AS id, %s AS ids")
    state = StateReader(one_connection)
    before = state.queries
    assert list(state.orgs.observe(["x"])) == ["off"]
    assert state.queries - before == 2  # the setting is a statement of its own, counted
    assert _jit(one_connection) == "on"  # SET LOCAL: gone with the read's transaction


def test_a_failed_read_leaves_no_setting_behind(
    one_connection: ConnectionPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_orgs, "_OBSERVE_SQL", "SELECT 1 / 0 AS id, %s AS ids")
    state = StateReader(one_connection)
    with pytest.raises(Exception, match="division by zero"):
        state.orgs.observe(["x"])
    assert _jit(one_connection) == "on"
