"""Wiring settings into live parts (pool, key, HTTP client, controller) for one command."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from psycopg_pool import ConnectionPool

from reconciler.config import Settings
from reconciler.controller.run import Controller, pool_size
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


@dataclass
class Runtime:
    settings: Settings
    pool: ConnectionPool
    state: StateReader
    key: KeyRing
    http: httpx.Client
    controller: Controller
    database_url: str = ""


@contextmanager
def runtime(
    settings: Settings,
    *,
    write: bool,
    lock_wait_s: float = 0.0,
    extra_connections: int = 0,
    on_response: Callable[[httpx.Response], None] | None = None,
    warn: Warn | None = None,
) -> Iterator[Runtime]:
    """`write=False` (plan, resolve) builds a StateReader only, so it cannot write by
    construction, and migrates nothing and creates no key file: an out-of-date schema is an
    error that says to run `reconciler db migrate`."""
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
        state = (
            StateWriter(pool, mapping_retention_s=retention)
            if write
            else StateReader(pool, mapping_retention_s=retention)
        )
        concurrency = _fit_concurrency(state, concurrency, extra_connections, warn)
        with http_client(
            settings.vapi_base_url,
            timeout_s=settings.vapi_timeout_s,
            max_connections=max(16, concurrency),
            on_response=on_response,
        ) as http:
            controller = Controller(
                state,
                http,
                key,
                concurrency=concurrency,
                lock_wait_s=lock_wait_s,
                secret_grace_s=settings.secret_grace_s,
                twilio_base_url=settings.twilio_base_url,
            )
            yield Runtime(settings, pool, state, key, http, controller, url)
    finally:
        pool.close()


def _fit_concurrency(
    state: StateReader, concurrency: int, extra: int = 0, warn: Warn | None = None
) -> int:
    """The concurrency the server's free connections allow (each org in flight needs
    `pool_size` of them), said once on stderr when it is lower than asked."""
    available = state.free_connections() + 1  # the pool's own open connection counts as ours
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
