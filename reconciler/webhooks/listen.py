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
from collections.abc import Callable
from typing import Protocol

from reconciler.protocol import WEBHOOK_CHANNEL
from reconciler.state.listen import PgListener, failure_reason

log = logging.getLogger(__name__)

ORG_PREFIX = "org:"
LISTENER_NAME = "reconciler-webhooks-listen"
"""The listener's `application_name`, to find its session in `pg_stat_activity`."""


class Invalidates(Protocol):
    def invalidate(self, assistant_id: str | None = None) -> None: ...

    def invalidate_org(self, org_id: str) -> None: ...


class RecordsUse(Protocol):
    def take_used(self) -> list[str]: ...

    def keep_used(self, assistant_ids: list[str]) -> None: ...


class CacheListener(PgListener):
    """LISTENs on `reconciler_webhooks` and drops from the resolver's cache what each
    notification names; after a (re)connect, everything (see `state.listen.PgListener`)."""

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
        super().__init__(
            database_url,
            [WEBHOOK_CHANNEL],
            self._apply,
            resolver.invalidate,
            name=LISTENER_NAME,
            label="webhook cache listener",
            meanwhile="cache entries expire on their TTL",
            ping_every_s=ping_every_s,
            backoff_cap_s=backoff_cap_s,
            poll_s=poll_s,
            logger=log,
        )

    def _apply(self, _channel: str, payload: str) -> None:
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
                log.warning("webhook last_used_at not written (%s)", failure_reason(exc))
                return 0
            return len(ids)

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            self.flush()
