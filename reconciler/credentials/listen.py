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
from typing import Protocol

from reconciler.credentials.queries import one_line
from reconciler.state.listen import CONNECT_DEFAULTS as STATE_CONNECT_DEFAULTS
from reconciler.state.listen import PgListener

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
CONNECT_DEFAULTS = STATE_CONNECT_DEFAULTS  # the store's pool uses them too


class Invalidates(Protocol):
    """What the listener calls (the store implements it)."""

    def on_credential(self, org_id: str, provider: str) -> None: ...

    def on_assistant(self, assistant_id: str) -> None: ...

    def on_org(self, org_id: str) -> None: ...

    def on_deaf(self) -> None: ...


class Listener(PgListener):
    """LISTENs on both channels and tells the store what each notification names; after a
    (re)connect, to drop everything (see `state.listen.PgListener`)."""

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
        super().__init__(
            database_url,
            [CREDENTIAL_CHANNEL, MAPPING_CHANNEL],
            self._apply,
            target.on_deaf,
            name=name,
            label="credential cache listener",
            meanwhile="the version check covers",
            ping_every_s=ping_every_s,
            backoff_cap_s=backoff_cap_s,
            poll_s=POLL_S,
            logger=log,
        )

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
