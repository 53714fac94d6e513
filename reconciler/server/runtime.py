"""Wiring settings into live parts (pool, key, HTTP client, controller) for one command."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar, overload

import httpx
from psycopg_pool import ConnectionPool

from reconciler.config import Settings
from reconciler.controller.run import Controller, PlanController, pool_size
from reconciler.secrets.crypto import KeyRing
from reconciler.state.connect import (
    Warn,
    database_url,
    master_keys,
    stderr_warning,
)
from reconciler.state.db import open_pool
from reconciler.state.migrate import check_schema, migrate
from reconciler.state.store import StateReader, StateWriter
from reconciler.vapi.client import http_client

S = TypeVar("S", bound=StateReader, covariant=True)
C = TypeVar("C", bound=PlanController, covariant=True)


@dataclass(frozen=True)
class Runtime(Generic[S, C]):
    """The live parts of one command: `Runtime[StateWriter, Controller]` for the commands
    that write, `Runtime[StateReader, PlanController]` for those that only read."""

    settings: Settings
    pool: ConnectionPool
    state: S
    key: KeyRing
    http: httpx.Client
    controller: C
    database_url: str = ""


Reading = Runtime[StateReader, PlanController]
Writing = Runtime[StateWriter, Controller]


@overload
def runtime(
    settings: Settings,
    *,
    write: Literal[True],
    lock_wait_s: float = ...,
    extra_connections: int = ...,
    on_response: Callable[[httpx.Response], None] | None = ...,
    warn: Warn | None = ...,
) -> AbstractContextManager[Writing]: ...


@overload
def runtime(
    settings: Settings,
    *,
    write: Literal[False],
    lock_wait_s: float = ...,
    extra_connections: int = ...,
    on_response: Callable[[httpx.Response], None] | None = ...,
    warn: Warn | None = ...,
) -> AbstractContextManager[Reading]: ...


def runtime(
    settings: Settings,
    *,
    write: bool,
    lock_wait_s: float = 0.0,
    extra_connections: int = 0,
    on_response: Callable[[httpx.Response], None] | None = None,
    warn: Warn | None = None,
) -> AbstractContextManager[Runtime[Any, Any]]:
    """`write=False` (plan, resolve) builds a StateReader and a PlanController only, so it
    cannot write by construction (its types have no write method), and migrates nothing and
    creates no key file: an out-of-date schema is an error that says to run `reconciler db
    migrate`. `write=True` builds a StateWriter and a Controller."""
    return _runtime(
        settings,
        write=write,
        lock_wait_s=lock_wait_s,
        extra_connections=extra_connections,
        on_response=on_response,
        warn=warn,
    )


@contextmanager
def _runtime(
    settings: Settings,
    *,
    write: bool,
    lock_wait_s: float,
    extra_connections: int,
    on_response: Callable[[httpx.Response], None] | None,
    warn: Warn | None,
) -> Iterator[Runtime[Any, Any]]:
    key = master_keys(settings, create=write, warn=warn)
    url = database_url(settings)
    concurrency = settings.concurrency
    pool = open_pool(url, max_size=pool_size(concurrency) + extra_connections)
    try:
        if write:
            migrate(pool)
        else:
            check_schema(pool)
        retention = settings.mapping_retention_s
        writer = StateWriter(pool, mapping_retention_s=retention) if write else None
        state = writer or StateReader(pool, mapping_retention_s=retention)
        concurrency = _fit_concurrency(state, concurrency, extra_connections, warn)
        with http_client(
            settings.vapi_base_url,
            timeout_s=settings.vapi_timeout_s,
            max_connections=max(16, concurrency),
            on_response=on_response,
        ) as http:
            parts: dict[str, Any] = {
                "concurrency": concurrency,
                "lock_wait_s": lock_wait_s,
                "secret_grace_s": settings.secret_grace_s,
                "twilio_base_url": settings.twilio_base_url,
            }
            controller = (
                Controller(writer, http, key, **parts)
                if writer is not None
                else PlanController(state, http, key, **parts)
            )
            yield Runtime(settings, pool, state, key, http, controller, url)
    finally:
        pool.close()


def _fit_concurrency(
    state: StateReader, concurrency: int, extra: int = 0, warn: Warn | None = None
) -> int:
    """The concurrency the server's free connections allow (each org in flight needs
    `pool_size` of them), said once on stderr when it is lower than asked."""
    available = state.health.free_connections() + 1  # the pool's own open connection counts as ours
    if pool_size(concurrency) + extra <= available:
        return concurrency
    fitted = max(1, (available - pool_size(0) - extra) // 2)
    (warn or stderr_warning)(
        f"RECONCILER_CONCURRENCY={concurrency} needs {pool_size(concurrency)} "
        f"Postgres connections and the server has {available} free: "
        f"reconciling {fitted} org(s) at a time"
    )
    state.pool.resize(min_size=1, max_size=max(2, pool_size(fitted) + extra))
    return fitted


def data_path(settings: Settings, name: str) -> Path:
    return settings.data_dir / name
