"""What every repository shares: one pool, one outage breaker and one statement counter (`Db`),
the one-line `StateError`, and the helpers that make a value storable as it was given.

A database error surfaces as one `StateError` line (the first line of Postgres's message, which
names constraints, never values), so a database that dies mid-run fails the orgs in hand with
a clear reason instead of an internal error.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import Connection
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool, PoolTimeout

from reconciler.errors import ReconcilerError
from reconciler.redact import printable

OUTAGE_PAUSE_S = 3.0
MAPPING_RETENTION_S = 30 * 86400
"""How long the mapping of a deleted assistant (and a retired org's webhook secret) still
resolves webhooks: the late end-of-call reports of its last calls."""


class StateError(ReconcilerError):
    """Postgres failed or is unreachable; the message is one line and holds no value."""


def state_error(exc: Exception) -> StateError:
    if isinstance(exc, PoolTimeout):
        return StateError("database unavailable: no connection within the pool timeout")
    lines = str(exc).strip().splitlines()
    first = lines[0].strip() if lines else type(exc).__name__
    kind = "database unavailable" if _is_outage(exc) else "database error"
    return StateError(f"{kind}: {printable(first, 200)}")


_EXACT_FLOAT_LIMIT = float(1 << 53)


def exact_numbers(value: Any) -> Any:
    """`value` with every integral float past 2**53 as the integer it exactly is. jsonb keeps
    numbers as decimals and gives back the digits it was sent: Python writes the float 1e100
    as `1e+100`, which comes back as the integer 10**100, not the float's exact value, so a
    config read back from Postgres would no longer equal the spec's (a perpetual update).
    Written as its exact integer it comes back equal."""
    if isinstance(value, float) and value.is_integer() and abs(value) >= _EXACT_FLOAT_LIMIT:
        return int(value)
    if isinstance(value, dict):
        return {k: exact_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [exact_numbers(v) for v in value]
    return value


def config_jsonb(config: dict[str, Any]) -> Jsonb:
    """An assistant config for a jsonb column, every number coming back equal to itself."""
    return Jsonb(exact_numbers(config))


def holdable(text: str) -> bool:
    """Can Postgres hold `text` in a text column (no NUL byte, encodable as UTF-8)? A name
    that cannot be stored names no row: look-ups answer "not found" without asking, rather than
    fail with the database's own error."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate
        return False
    return True


def writer_name() -> str:
    """Who set the active key: host and process, for `keys status`."""
    return f"{socket.gethostname()} pid {os.getpid()}"


def _is_outage(exc: Exception) -> bool:
    return isinstance(exc, PoolTimeout | psycopg.OperationalError | psycopg.InterfaceError)


class _Breaker:
    """After the database was found unreachable, fail at once for a moment instead of making
    every org wait out the pool timeout: a database that is down for good costs a run seconds,
    not minutes, and one that restarts is tried again shortly after.

    A patient call (the run's own record at its end) waits out the pause, then tries. Once a
    patient call has given an outage its chance (it waited out the pause, or the pool's
    timeout) and still found the database unreachable, the next patient calls fail at once
    like the others until a call gets through: the run's row after its orgs' statuses waited
    and failed would cost the pause and a pool timeout more. A patient call that failed at
    once (a connection cut by a restart) spends nothing: the next one still waits."""

    def __init__(
        self,
        pause_s: float,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pause_s = pause_s
        self._sleep = sleep
        self._clock = clock
        self._until = 0.0
        self._reason = ""
        self._patience_spent = False

    @contextmanager
    def guard(self, *, patient: bool = False) -> Iterator[None]:
        wait = self._until - self._clock()
        waited = wait > 0 and patient and not self._patience_spent
        if waited:
            self._sleep(wait)
        elif wait > 0:
            raise StateError(f"{self._reason} (not retried for a few seconds)")
        try:
            yield
        except (PoolTimeout, psycopg.Error) as exc:
            error = state_error(exc)
            if _is_outage(exc):
                self._reason = str(error)
                self._until = self._clock() + self.pause_s
                if patient and (waited or isinstance(exc, PoolTimeout)):
                    self._patience_spent = True
            raise error from None
        self._patience_spent = False


_JIT_SINCE = 110000  # the `jit` setting exists from Postgres 11


class Db:
    """The plumbing every repository of one store shares, so that an outage seen by one
    stops them all and `queries` counts every statement the store sent (benchmarks count
    statements per org)."""

    def __init__(self, pool: ConnectionPool, *, outage_pause_s: float, retention_s: float) -> None:
        self.pool = pool
        self.mapping_retention_s = retention_s
        self.breaker = _Breaker(outage_pause_s)
        self._lock = threading.Lock()
        self.queries = 0  # statements sent, for benchmarks

    def count(self, n: int = 1) -> None:
        with self._lock:
            self.queries += n

    @contextmanager
    def read(self, *, jit: bool = True) -> Iterator[psycopg.Cursor[dict[str, Any]]]:
        """One counted statement's cursor (rows as dicts), outside any transaction.

        `jit=False`: planned without JIT compilation, in a transaction of its own (`SET LOCAL`,
        so a transaction pooler's next client never inherits it). For a query over many orgs
        that reads a few indexed rows of each: Postgres's cost estimate grows with the orgs
        until it compiles the query, which then costs more than it saves (the run's first
        read of 1,000 orgs: 48 ms, of which JIT 22)."""
        self.count()
        with (
            self.breaker.guard(),
            self.pool.connection() as conn,
            conn.cursor(row_factory=dict_row) as cur,
        ):
            if jit or conn.info.server_version < _JIT_SINCE:
                yield cur
                return
            self.count()
            with conn.transaction():
                cur.execute("SET LOCAL jit = off")
                yield cur

    @contextmanager
    def tx(self, statements: int, *, patient: bool = False) -> Iterator[Connection[Any]]:
        """One transaction of `statements` counted statements."""
        self.count(statements)
        with (
            self.breaker.guard(patient=patient),
            self.pool.connection() as conn,
            conn.transaction(),
        ):
            yield conn

    def exec(self, conn: Connection[Any], query: str, params: Any = None) -> Any:
        """One counted statement on the caller's connection (a statement `tx` did not count)."""
        self.count()
        return conn.execute(query, params)


class Repository:
    """A repository's one field: the store's shared plumbing."""

    def __init__(self, db: Db) -> None:
        self._db = db
