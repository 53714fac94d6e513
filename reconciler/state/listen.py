"""Postgres LISTEN on a connection of its own, for the caches that other processes' writes must
reach at once: the webhook resolver's and the credential library's (each says what it does
with a notification).

LISTEN needs a session of its own, so it does not work through a transaction-pooling proxy
(PgBouncer in transaction mode): point it at Postgres directly, or turn it off; the caches then
fall back on their own bounds (TTLs, version checks).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from reconciler.redact import safe_message

log = logging.getLogger(__name__)

CONNECT_DEFAULTS: dict[str, Any] = {  # unless the URL sets them
    "connect_timeout": 5,
    # a silently dead network is noticed in seconds, not at the kernel's TCP timeout
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": 10_000,
}


def failure_reason(exc: BaseException, url: str | None = None) -> str:
    """One line about a failure, without a password should libpq ever echo one."""
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0] if lines else ''}"
    try:
        password = conninfo_to_dict(url).get("password") if url else None
    except psycopg.Error:
        password = None
    if password:
        text = text.replace(str(password), "***")
    return safe_message(text, limit=200)


def with_connect_defaults(url: str) -> dict[str, Any]:
    """The keyword arguments that add `CONNECT_DEFAULTS` the URL does not set."""
    given = conninfo_to_dict(url)
    return {k: v for k, v in CONNECT_DEFAULTS.items() if k not in given}


class PgListener:
    """A daemon thread that LISTENs on `channels` and hands each notification to
    `on_notify(channel, payload)`. After every (re)connect it calls `on_listen()`: what was
    announced while it was deaf is lost, so its owner drops everything. It pings every
    `ping_every_s`; a ping's answer proves that every change committed before the ping was
    sent has been delivered (Postgres sends a session its notifications before answering it),
    so `confirmed_at` is the monotonic time of the last such proof. On a lost connection it
    reconnects with capped backoff, logging one line when it loses it and one when it is back
    (prefixed with `label`). It never raises into its owner."""

    def __init__(
        self,
        database_url: str,
        channels: Sequence[str],
        on_notify: Callable[[str, str], None],
        on_listen: Callable[[], None],
        *,
        name: str,
        label: str,
        meanwhile: str,
        ping_every_s: float = 1.0,
        backoff_cap_s: float = 10.0,
        poll_s: float = 0.2,
        logger: logging.Logger = log,
    ) -> None:
        self._log = logger
        self._url = database_url
        self._channels = tuple(channels)
        self._on_notify = on_notify
        self._on_listen = on_listen
        self._name = name
        self._label = label
        self._meanwhile = meanwhile  # what bounds staleness while deaf, for the log line
        self._ping_every = ping_every_s
        self._cap = backoff_cap_s
        self._poll = poll_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.listening = threading.Event()
        self.confirmed_at = float("-inf")
        self.connects = 0  # successful LISTENs: the first, then one per reconnect

    def start(self, wait_s: float = 5.0) -> bool:
        """Starts the thread and waits up to `wait_s` for its first LISTEN, so its owner starts
        with invalidation in place. False if not listening yet (it keeps trying)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()
        return self.listening.wait(wait_s)

    def close(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(
            self._url,
            autocommit=True,
            application_name=self._name,
            **with_connect_defaults(self._url),
        )

    def _run(self) -> None:
        delay = 0.0
        failing = False
        while not self._stop.is_set():
            try:
                with self._connect() as conn:
                    sent = time.monotonic()
                    for channel in self._channels:
                        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                    self._on_listen()
                    self.confirmed_at = sent
                    self.connects += 1
                    self.listening.set()
                    if failing:
                        self._log.info("%s: listening again", self._label)
                    failing, delay = False, 0.0
                    self._listen(conn)
            except Exception as exc:  # never into the owner: its own bounds cover meanwhile
                self.listening.clear()
                if self._stop.is_set():
                    break
                if not failing:
                    self._log.warning(
                        "%s: no connection (%s); retrying with backoff, %s meanwhile",
                        self._label,
                        failure_reason(exc, self._url),
                        self._meanwhile,
                    )
                failing = True
                delay = min(self._cap, max(0.25, delay * 2))
                self._stop.wait(delay)
        self.listening.clear()

    def _listen(self, conn: psycopg.Connection[Any]) -> None:
        pinged = time.monotonic()
        while not self._stop.is_set():
            for notify in conn.notifies(timeout=min(self._poll, self._ping_every)):
                self._on_notify(notify.channel, notify.payload)
            if time.monotonic() - pinged < self._ping_every:
                continue
            sent = pinged = time.monotonic()
            conn.execute("SELECT 1")  # a dead server raises here (and so reconnects)
            # notifications that came with the answer are buffered by psycopg: handle them
            # before counting the ping as proof
            for notify in conn.notifies(timeout=0):
                self._on_notify(notify.channel, notify.payload)
            self.confirmed_at = sent
