"""Wiring settings into live parts (pool, key, HTTP client, controller) for one command."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from psycopg_pool import ConnectionPool

from reconciler.config import Settings
from reconciler.controller.run import Controller, pool_size
from reconciler.errors import ConfigError
from reconciler.secrets.crypto import MasterKey
from reconciler.state.db import embedded_url, open_pool
from reconciler.state.migrate import check_schema, migrate
from reconciler.state.store import StateReader, StateWriter
from reconciler.vapi.client import http_client

Warn = Callable[[str], None]
"""Where a start-up warning goes: stderr for commands, the log for `serve` (JSON lines)."""


def stderr_warning(text: str) -> None:
    print(f"warning: {text}", file=sys.stderr)


def database_url(settings: Settings) -> str:
    if settings.database_url is not None:
        return settings.database_url.get_secret_value()
    return embedded_url(settings.data_dir)


def master_key(settings: Settings, *, create: bool = True, warn: Warn | None = None) -> MasterKey:
    """From RECONCILER_MASTER_KEY; with the embedded default, one kept in the data directory.
    `create=False` (commands that write nothing) never writes a key file: without one, nothing
    was ever encrypted here, so a throwaway key plans the same."""
    if settings.master_key is not None:
        return MasterKey.from_b64(settings.master_key.get_secret_value())
    if settings.database_url is not None:
        raise ConfigError("RECONCILER_MASTER_KEY is required with RECONCILER_DATABASE_URL")
    path = settings.data_dir / "master.key"
    if path.exists():
        return _read_key_file(path)
    key = MasterKey.generate()
    if not create:
        return key
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"{settings.data_dir}: cannot create the data directory (RECONCILER_DATA_DIR): "
            f"{exc.strerror}"
        ) from None
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another first run got there first: use its key
        return _read_key_file(path)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot create the master key: {exc.strerror}") from None
    with os.fdopen(fd, "w") as fh:
        fh.write(key.to_b64() + "\n")
    (warn or stderr_warning)(
        f"generated a master key at {path} (mode 0600); set RECONCILER_MASTER_KEY in production"
    )
    return key


KEY_FILE_WAIT_S = 2.0
"""How long a key file may stay half-written (another first run creating it) before it is bad."""


def _read_key_file(path: Path) -> MasterKey:
    """The key in `path`. A process that just created the file may not have written it yet, so
    an empty or unterminated file is read again for a moment before it counts as corrupt."""
    deadline = time.monotonic() + KEY_FILE_WAIT_S
    while True:
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not text"
            raise ConfigError(f"{path}: cannot read the master key: {reason}") from None
        try:
            return MasterKey.from_b64(text)
        except ConfigError:
            if text.endswith("\n") or time.monotonic() >= deadline:
                raise ConfigError(f"{path}: not a valid master key (base64 of 32 bytes)") from None
        time.sleep(0.05)


@dataclass
class Runtime:
    settings: Settings
    pool: ConnectionPool
    state: StateReader
    key: MasterKey
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
    key = master_key(settings, create=write, warn=warn)
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
