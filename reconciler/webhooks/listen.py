"""The resolver's two background threads, both off the request path and never raising into it:
cache invalidation across processes (`CacheListener`, Postgres LISTEN/NOTIFY) and batched
`last_used_at` writes (`UsageFlusher`).

Migration 0003's triggers announce, at commit, every change the resolver caches on channel
`reconciler_webhooks`: an assistant id (mapping inserted, deleted or changed) or `org:<uuid>`
(an org's Vapi credential, slug or forward URL). LISTEN needs a session of its own, so it does
not work through a transaction-pooling proxy (PgBouncer in transaction mode): point the
listener at Postgres directly, or turn it off (`WebhookResolver.from_url(listen=False)`); the
cache TTLs (60 s, 5 s for unknown ids and orgs without a credential) then bound how long a
change takes to count.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from reconciler.protocol import WEBHOOK_CHANNEL
from reconciler.redact import safe_message

log = logging.getLogger(__name__)

ORG_PREFIX = "org:"
LISTENER_NAME = "reconciler-webhooks-listen"
"""The listener's `application_name`, to find its session in `pg_stat_activity`."""
_CONNECT_DEFAULTS: dict[str, Any] = {
    "connect_timeout": 5,
    # a silently dead network is noticed in seconds, not at the kernel's TCP timeout
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 15_000,
}


class Invalidates(Protocol):
    def invalidate(self, assistant_id: str | None = None) -> None: ...

    def invalidate_org(self, org_id: str) -> None: ...


class RecordsUse(Protocol):
    def take_used(self) -> list[str]: ...

    def keep_used(self, assistant_ids: list[str]) -> None: ...


def _reason(exc: BaseException, url: str | None = None) -> str:
    """One line about a failure, without a password should libpq ever echo one."""
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0] if lines else ''}"
    password = conninfo_to_dict(url).get("password") if url else None
    if password:
        text = text.replace(str(password), "***")
    return safe_message(text, limit=200)


class CacheListener:
    """A daemon thread with a dedicated autocommit connection (not from the pool) that
    LISTENs and invalidates the resolver's cache on each notification. On a lost connection
    it reconnects with capped backoff and then clears the whole cache (notifications sent
    meanwhile are lost); it logs one line when it loses the connection and one when it is
    back."""

    def __init__(
        self,
        resolver: Invalidates,
        database_url: str,
        *,
        backoff_cap_s: float = 30.0,
        ping_every_s: float = 10.0,
        poll_s: float = 0.5,
    ) -> None:
        self._resolver = resolver
        self._url = database_url
        self._cap = backoff_cap_s
        self._ping_every = ping_every_s
        self._poll = poll_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.listening = threading.Event()
        self.connects = 0  # successful LISTENs: the first, then one per reconnect

    def start(self, wait_s: float = 5.0) -> bool:
        """Starts the thread and waits up to `wait_s` for its first LISTEN, so an app starts
        with invalidation in place. False if not listening yet (it keeps trying)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=LISTENER_NAME, daemon=True)
            self._thread.start()
        return self.listening.wait(wait_s)

    def close(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _connect(self) -> psycopg.Connection[Any]:
        given = conninfo_to_dict(self._url)
        extra = {k: v for k, v in _CONNECT_DEFAULTS.items() if k not in given}
        return psycopg.connect(self._url, autocommit=True, application_name=LISTENER_NAME, **extra)

    def _run(self) -> None:
        delay = 0.0
        failing = False
        while not self._stop.is_set():
            try:
                with self._connect() as conn:
                    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(WEBHOOK_CHANNEL)))
                    self._resolver.invalidate()  # what was announced while deaf is lost
                    self.connects += 1
                    self.listening.set()
                    if failing:
                        log.info("webhook cache listener: listening again")
                    failing, delay = False, 0.0
                    self._listen(conn)
            except Exception as exc:  # never into the app: it keeps serving on TTLs
                self.listening.clear()
                if self._stop.is_set():
                    break
                if not failing:
                    log.warning(
                        "webhook cache listener: no connection (%s); retrying with backoff,"
                        " cache entries expire on their TTL meanwhile",
                        _reason(exc, self._url),
                    )
                failing = True
                delay = min(self._cap, max(0.25, delay * 2))
                self._stop.wait(delay)
        self.listening.clear()

    def _listen(self, conn: psycopg.Connection[Any]) -> None:
        pinged = time.monotonic()
        while not self._stop.is_set():
            for notify in conn.notifies(timeout=self._poll):
                self._apply(notify.payload)
            if time.monotonic() - pinged >= self._ping_every:
                conn.execute("SELECT 1")  # a dead server raises here (and so reconnects)
                pinged = time.monotonic()

    def _apply(self, payload: str) -> None:
        if payload.startswith(ORG_PREFIX):
            self._resolver.invalidate_org(payload[len(ORG_PREFIX) :])
        else:
            self._resolver.invalidate(payload)


class UsageFlusher:
    """Writes the resolver's used assistant ids (`last_used_at`) every `every_s` seconds in
    one statement, from a daemon thread: requests never wait on it. A failed write is logged
    in one line and its ids are kept for the next one; `close()` writes what is left."""

    def __init__(
        self,
        resolver: RecordsUse,
        touch: Callable[[list[str]], None],
        *,
        every_s: float = 5.0,
    ) -> None:
        self._resolver = resolver
        self._touch = touch
        self._every = every_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # one flush at a time (the thread's, or close's)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="reconciler-webhooks-usage", daemon=True
            )
            self._thread.start()

    def close(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self.flush()

    def flush(self) -> int:
        """Writes the ids used since the last flush; returns how many (0 on failure)."""
        with self._lock:
            ids = self._resolver.take_used()
            if not ids:
                return 0
            try:
                self._touch(ids)
            except Exception as exc:  # the database is down: try again next time
                self._resolver.keep_used(ids)
                log.warning("webhook last_used_at not written (%s)", _reason(exc))
                return 0
            return len(ids)

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            self.flush()
