"""The run's first read of every org is planned without JIT compilation, and the setting
never outlives that read on its pooled connection (a transaction pooler's next client, or
this process's next statement, gets the server's own setting)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from psycopg_pool import ConnectionPool

from reconciler.controller.run import Controller
from reconciler.state import _orgs
from reconciler.state.db import open_pool
from reconciler.state.store import StateReader, StateWriter
from tests.helpers import loaded, org_doc


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


def test_the_read_of_every_org_runs_with_jit_off_and_one_orgs_as_is(
    one_connection: ConnectionPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the observe query's own path, asked what JIT setting its statement runs under
    monkeypatch.setattr(_orgs, "_OBSERVE_SQL", "SELECT current_setting('jit') AS id, %s AS ids")
    state = StateReader(one_connection)
    before = state.queries
    assert list(state.orgs.observe(["x"], many=True)) == ["off"]
    assert state.queries - before == 2  # the setting is a statement of its own, counted
    assert _jit(one_connection) == "on"  # SET LOCAL: gone with the read's transaction
    # one org's read (under its lock) is one statement, as the server would plan it
    assert list(state.orgs.observe(["x"])) == ["on"]
    assert state.queries - before == 3


def test_a_failed_read_leaves_no_setting_behind(
    one_connection: ConnectionPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_orgs, "_OBSERVE_SQL", "SELECT 1 / 0 AS id, %s AS ids")
    state = StateReader(one_connection)
    with pytest.raises(Exception, match="division by zero"):
        state.orgs.observe(["x"], many=True)
    assert _jit(one_connection) == "on"


def test_an_apply_reads_its_orgs_together_without_jit_and_each_under_its_lock_as_is(
    controller: Controller, state: StateWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = [org_doc("alpha"), org_doc("bravo")]
    assert controller.apply(loaded(*docs)).ok  # cold: creates both
    observe = state.orgs.observe
    reads: list[tuple[int, bool]] = []

    def spied(org_ids: list[str], *, many: bool = False) -> Any:
        reads.append((len(org_ids), many))
        return observe(org_ids, many=many)

    monkeypatch.setattr(state.orgs, "observe", spied)
    docs[0]["spec"]["assistants"]["inbound"]["firstMessage"] = "Changed"
    assert controller.apply(loaded(*docs)).counts()["update"] == 1
    assert reads == [(2, True), (1, False)]  # the run's first read, then alpha's under its lock
