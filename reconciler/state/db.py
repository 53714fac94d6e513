"""Connections to Postgres: a URL from the operator, or an embedded server in a data directory."""

from __future__ import annotations

import logging
import select
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool

from reconciler.errors import ConfigError
from reconciler.state.embedded import embedded_url as embedded_url  # re-exported: the CLI,
from reconciler.state.embedded import temporary_embedded as temporary_embedded  # demo, tests

log = logging.getLogger(__name__)


CONNECT_TIMEOUT_S = 5
"""libpq `connect_timeout` when the URL sets none: an unreachable host fails in seconds."""
POOL_TIMEOUT_S = 10.0
"""How long a statement waits for a connection (and the pool keeps trying to reconnect)."""


def open_pool(url: str, *, max_size: int = 20, name: str = "reconciler") -> ConnectionPool:
    """Autocommit connections: every write states its own transaction explicitly.

    One probe connection first, so a wrong URL fails at once with one line that names the
    server (never the password), instead of the pool retrying and logging each attempt.
    """
    where = redact_url(url)  # also rejects an unparsable URL before anything else
    kwargs: dict[str, Any] = {"autocommit": True, "application_name": name}
    if "connect_timeout" not in conninfo_to_dict(url):
        kwargs["connect_timeout"] = CONNECT_TIMEOUT_S
    try:
        psycopg.connect(url, **kwargs).close()
    except psycopg.Error as exc:
        raise ConfigError(f"cannot connect to Postgres at {where}: {_reason(exc, url)}") from None
    pool = ConnectionPool(
        url,
        min_size=1,
        max_size=max_size,
        kwargs=kwargs,
        open=False,
        name=name,
        timeout=POOL_TIMEOUT_S,
        # a connection is proved alive before it is handed out, so a restarted Postgres costs
        # a reconnect, not an org
        check=check_alive,
        reconnect_timeout=POOL_TIMEOUT_S,
    )
    with _quiet("psycopg.pool"):  # it logs every failed attempt as a multi-line warning
        try:
            pool.open(wait=True, timeout=2 * CONNECT_TIMEOUT_S)
        except Exception:
            pool.close()
            raise ConfigError(f"cannot connect to Postgres at {where}") from None
    return pool


def check_alive(conn: psycopg.Connection[Any]) -> None:
    """The pool's check before it hands out a connection, without a round trip in the common
    case: an idle connection has nothing to read, while one the server closed (restart, kill,
    terminate) has its socket readable (an error, then EOF); only then is a real round trip
    made, which raises on a dead connection so the pool replaces it."""
    if conn.closed or conn.broken:
        raise psycopg.OperationalError("the connection is closed")
    readable, _, _ = select.select([conn.pgconn.socket], [], [], 0)
    if readable:
        ConnectionPool.check_connection(conn)


@contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    """Drop the logger's records for the block. A filter of our own, removed afterwards, so
    concurrent callers restore nothing of each other's (unlike toggling `disabled`)."""
    logger = logging.getLogger(logger_name)

    def drop_all(_record: logging.LogRecord) -> bool:
        return False

    logger.addFilter(drop_all)
    try:
        yield
    finally:
        logger.removeFilter(drop_all)


def _reason(exc: psycopg.Error, url: str) -> str:
    """The first line of libpq's message, without the password should it ever appear."""
    lines = str(exc).strip().splitlines()
    reason = lines[0].strip() if lines else type(exc).__name__
    password = conninfo_to_dict(url).get("password")
    if password:
        reason = reason.replace(str(password), "***")
    return reason


def redact_url(url: str) -> str:
    """Where a database URL points (host, port, dbname, user), for messages: never the password
    nor any other parameter. Accepts URLs and `key=value` strings; an unparsable one is a
    ConfigError that does not echo it (it may hold a password)."""
    try:
        info = conninfo_to_dict(url)
    except psycopg.Error:
        raise ConfigError(
            "RECONCILER_DATABASE_URL is not a valid Postgres URL or key=value connection string"
        ) from None
    parts = [f"{key}={info[key]}" for key in ("host", "port", "dbname", "user") if info.get(key)]
    return " ".join(parts) if parts else "the libpq defaults"
