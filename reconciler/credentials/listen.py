"""Keeping the credential cache true to Postgres, from two background threads.

`Listener`: a connection of its own (not from the pool) that LISTENs on
`reconciler_credentials` (migration 0005: `org_id:provider` for every change to what a read
returns) and `reconciler_webhooks` (migration 0003: an assistant id whose mapping changed, or
`org:<uuid>` for an org's row or Vapi credential), and drops what each names. After every
(re)connect it clears the whole cache: what was announced while it was deaf is lost. It pings
every `ping_every_s`; a ping's answer proves that every change committed before the ping was
sent has been delivered (Postgres sends a session its notifications before answering it), so
`confirmed_at` is the monotonic time of the last such proof.

`Checker`: when that proof is older than `stale_after_s` (the listener lost its connection,
or is stuck on a dead one, or LISTEN is off behind a transaction pooler), every `every_s` it
runs the store's version check through the pool: one statement comparing every cached entry
(the md5 of its ciphertext and its active flag; the org and role of an assistant) with
Postgres, dropping those that differ. So a change is seen within about `every_s` (twice that
for a read that raced the check) while the listener is down, at once while it is up, and no
query is ever made on a read that the cache answers.

Neither thread ever raises into a read. While neither can reach Postgres, cached entries are
served until their TTL and not beyond (misses raise `CredentialUnavailable`).
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

from reconciler.credentials.queries import one_line

log = logging.getLogger(__name__)

CREDENTIAL_CHANNEL = "reconciler_credentials"
"""Migration 0005: `org_id:provider` of every credential change, at commit."""
MAPPING_CHANNEL = "reconciler_webhooks"
"""Migration 0003 (`reconciler.protocol.WEBHOOK_CHANNEL`): an assistant id, or `org:<uuid>`."""
ORG_PREFIX = "org:"
POLL_S = 0.2
"""How often the listener looks up from its connection (how long `close()` may wait for it)."""
LISTENER_NAME = "reconciler-credentials-listen"
"""The listener's `application_name`, to find its session in `pg_stat_activity`."""
CONNECT_DEFAULTS: dict[str, Any] = {  # unless the URL sets them; the store's pool uses them too
    "connect_timeout": 5,
    # a silently dead network is noticed in seconds, not at the kernel's TCP timeout
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": 10_000,
}


class Invalidates(Protocol):
    """What the listener calls (the store implements it)."""

    def on_credential(self, org_id: str, provider: str) -> None: ...

    def on_assistant(self, assistant_id: str) -> None: ...

    def on_org(self, org_id: str) -> None: ...

    def on_deaf(self) -> None: ...


def _reason(exc: BaseException, url: str) -> str:
    text = one_line(exc)
    try:
        password = conninfo_to_dict(url).get("password")
    except psycopg.Error:
        password = None
    return text.replace(str(password), "***") if password else text


class Listener:
    def __init__(
        self,
        target: Invalidates,
        database_url: str,
        *,
        ping_every_s: float = 1.0,
        backoff_cap_s: float = 10.0,
        name: str = LISTENER_NAME,
    ) -> None:
        self._target = target
        self._url = database_url
        self._ping_every = ping_every_s
        self._cap = backoff_cap_s
        self._name = name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.listening = threading.Event()
        self.confirmed_at = float("-inf")
        self.connects = 0

    def start(self, wait_s: float = 5.0) -> bool:
        """Starts the thread and waits up to `wait_s` for its first LISTEN; False if not
        listening yet (it keeps trying; the checker covers meanwhile)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()
        return self.listening.wait(wait_s)

    def close(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _connect(self) -> psycopg.Connection[Any]:
        given = conninfo_to_dict(self._url)
        extra = {k: v for k, v in CONNECT_DEFAULTS.items() if k not in given}
        return psycopg.connect(self._url, autocommit=True, application_name=self._name, **extra)

    def _run(self) -> None:
        delay = 0.0
        failing = False
        while not self._stop.is_set():
            try:
                with self._connect() as conn:
                    sent = time.monotonic()
                    for channel in (CREDENTIAL_CHANNEL, MAPPING_CHANNEL):
                        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                    self._target.on_deaf()  # what was announced before LISTEN is lost
                    self.confirmed_at = sent
                    self.connects += 1
                    self.listening.set()
                    if failing:
                        log.warning("credential cache listener: listening again")
                    failing, delay = False, 0.0
                    self._listen(conn)
            except Exception as exc:  # never into a read: the checker covers meanwhile
                self.listening.clear()
                if self._stop.is_set():
                    break
                if not failing:
                    log.warning(
                        "credential cache listener: no connection (%s); retrying, the version"
                        " check covers meanwhile",
                        _reason(exc, self._url),
                    )
                failing = True
                delay = min(self._cap, max(0.25, delay * 2))
                self._stop.wait(delay)
        self.listening.clear()

    def _listen(self, conn: psycopg.Connection[Any]) -> None:
        pinged = time.monotonic()
        while not self._stop.is_set():
            for notify in conn.notifies(timeout=min(POLL_S, self._ping_every)):
                self._apply(notify.channel, notify.payload)
            if time.monotonic() - pinged < self._ping_every:
                continue
            sent = pinged = time.monotonic()
            conn.execute("SELECT 1")  # a dead server raises here (and so reconnects)
            # notifications that came with the answer are buffered by psycopg: handle them
            # before counting the ping as proof
            for notify in conn.notifies(timeout=0):
                self._apply(notify.channel, notify.payload)
            self.confirmed_at = sent

    def _apply(self, channel: str, payload: str) -> None:
        if channel == CREDENTIAL_CHANNEL:
            org_id, sep, provider = payload.partition(":")
            if sep:
                self._target.on_credential(org_id, provider)
            else:  # `*` (the table was truncated), or anything unexpected: drop everything
                self._target.on_deaf()
        elif payload.startswith(ORG_PREFIX):
            self._target.on_org(payload[len(ORG_PREFIX) :])
        else:
            self._target.on_assistant(payload)


class Checker:
    """Runs `check` every `every_s` while `confirmed_at()` is older than `stale_after_s`."""

    def __init__(
        self,
        check: Callable[[], None],
        confirmed_at: Callable[[], float],
        *,
        every_s: float = 1.0,
        stale_after_s: float = 3.0,
    ) -> None:
        self._check = check
        self._confirmed_at = confirmed_at
        self._every = every_s
        self._stale_after = stale_after_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False
        self.checks = 0  # version checks run (for tests and stats)
        self.last_ok = float("-inf")  # monotonic time of the last successful check's start

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="reconciler-credentials-check", daemon=True
            )
            self._thread.start()

    def close(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def due(self) -> bool:
        return time.monotonic() - self._confirmed_at() > self._stale_after

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            if self.due():
                self.run_once()

    def run_once(self) -> bool:
        started = time.monotonic()
        try:
            self._check()
        except Exception as exc:  # never into a read
            if not self._failing:
                self._failing = True
                log.warning(
                    "credential cache: cannot check cached credentials against Postgres (%s);"
                    " they are served until their TTL, none is loaded",
                    one_line(exc),
                )
            return False
        self.checks += 1
        self.last_ok = started
        if self._failing:
            self._failing = False
            log.warning("credential cache: checking cached credentials against Postgres again")
        return True
