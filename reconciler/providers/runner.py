"""Verifying many stored credentials: open each row with the key ring, check it against its
provider (orgs and providers concurrently, bounded), and record what each provider answered.

One org's or one provider's failure never stops the others: a row that does not decrypt is
its own `unreadable` line, a provider that is down is `unavailable` for the rows that use it,
and an unexpected error in one check is that check's line. Every reason masks every secret of
its org (all of its active rows, whichever are being verified).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
from psycopg_pool import ConnectionPool

from reconciler.providers import metrics
from reconciler.providers.verify import (
    OK,
    UNREADABLE,
    Check,
    Endpoints,
    secret_values,
    verify,
)
from reconciler.redact import printable
from reconciler.secrets.crypto import CredentialDecryptError, KeyRing
from reconciler.state import verification
from reconciler.state.verification import StoredCredential, Verified

REASON_LIMIT = 200


@dataclass(frozen=True)
class Result:
    """One (org, provider) verdict."""

    org_id: str
    slug: str
    provider: str
    check: Check

    @property
    def ok(self) -> bool:
        return self.check.ok

    @property
    def outcome(self) -> str:
        return self.check.outcome


@dataclass
class Report:
    results: list[Result] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what could not be done (one line each)

    @property
    def failed(self) -> list[Result]:
        return [r for r in self.results if not r.ok]

    @property
    def ok(self) -> bool:
        return not self.failed and not self.notes

    @property
    def orgs(self) -> int:
        return len({r.org_id for r in self.results})

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.results:
            out[r.outcome] = out.get(r.outcome, 0) + 1
        return out


def _opened(ring: KeyRing, c: StoredCredential) -> dict[str, Any] | CredentialDecryptError:
    """The decrypted config, or why it does not open (bound to its row: `org_id:provider`)."""
    try:
        return ring.decrypt(c.encrypted_config, aad=f"{c.org_id}:{c.provider}")
    except CredentialDecryptError as exc:
        return exc


class Verifier:
    """Checks stored credentials and records the verdicts. Thread-safe; `stopping` (serve's
    shutdown) keeps checks not yet started from starting."""

    def __init__(
        self,
        pool: ConnectionPool,
        keys: KeyRing,
        endpoints: Endpoints,
        http: httpx.Client,
        *,
        concurrency: int = 16,
        stopping: threading.Event | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.pool = pool
        self.keys = keys
        self.endpoints = endpoints
        self.http = http
        self.concurrency = max(1, concurrency)
        self.stopping = stopping or threading.Event()
        self.sleep = sleep

    def verify(
        self, credentials: Sequence[StoredCredential]
    ) -> tuple[list[Result], list[StoredCredential]]:
        """The verdict on each credential (in the order given), and the credentials not
        checked because the process is stopping."""
        if not credentials:
            return [], []
        opened = {c.row_id: _opened(self.keys, c) for c in credentials}
        known = self._org_secrets(credentials, opened)
        results: dict[str, Result] = {}
        todo: list[tuple[StoredCredential, dict[str, Any]]] = []
        for c in credentials:
            config = opened[c.row_id]
            if isinstance(config, CredentialDecryptError):
                reason = printable(f"{c.provider}: {config}", REASON_LIMIT)
                results[c.row_id] = Result(c.org_id, c.slug, c.provider, Check(UNREADABLE, reason))
            else:
                todo.append((c, config))

        def one(item: tuple[StoredCredential, dict[str, Any]]) -> Result | None:
            c, config = item
            if self.stopping.is_set():
                return None
            check = verify(
                self.http,
                c.provider,
                config,
                self.endpoints,
                known=known.get(c.org_id, ()),
                sleep=self._sleep,
            )
            return Result(c.org_id, c.slug, c.provider, check)

        if todo:
            with ThreadPoolExecutor(
                max_workers=min(self.concurrency, len(todo)), thread_name_prefix="verify"
            ) as executor:
                for (c, _), result in zip(todo, executor.map(one, todo), strict=True):
                    if result is not None:
                        results[c.row_id] = result
        done = [results[c.row_id] for c in credentials if c.row_id in results]
        unstarted = [c for c in credentials if c.row_id not in results]
        for r in done:
            metrics.VERIFICATIONS.labels(r.provider, r.outcome).inc()
        return done, unstarted

    def _sleep(self, seconds: float) -> None:
        """A retry's wait, cut short when the process stops."""
        if self.sleep is time.sleep:
            self.stopping.wait(seconds)
        else:
            self.sleep(seconds)

    def _org_secrets(
        self,
        credentials: Sequence[StoredCredential],
        opened: dict[str, dict[str, Any] | CredentialDecryptError],
    ) -> dict[str, list[str]]:
        """Every secret value of each org concerned: of the rows at hand, and of its other
        active rows (read and opened here, for masking only)."""
        org_ids = sorted({c.org_id for c in credentials})
        others = verification.select_credentials(self.pool, org_ids=org_ids)
        configs: dict[str, list[dict[str, Any]]] = {o: [] for o in org_ids}
        for c in [*credentials, *others]:
            config = opened.get(c.row_id)
            if config is None:
                config = opened[c.row_id] = _opened(self.keys, c)
            if not isinstance(config, CredentialDecryptError):
                configs[c.org_id].append(config)
        return {org: secret_values(cs) for org, cs in configs.items()}

    def record(self, results: Iterable[Result], credentials: Sequence[StoredCredential]) -> int:
        """Writes each verdict onto its row (one statement); returns the rows written."""
        by_id = {(c.org_id, c.provider): c for c in credentials}
        rows = [
            Verified(by_id[(r.org_id, r.provider)], r.ok, None if r.ok else r.check.reason)
            for r in results
            if (r.org_id, r.provider) in by_id
        ]
        written = verification.record(self.pool, rows)
        if rows:
            metrics.LAST_VERIFICATION_TIMESTAMP.set(time.time())
        return written


def summary(report: Report) -> str:
    """`verified N credential(s) of M org(s): X ok, Y failed` (and the failures by outcome)."""
    counts = report.counts()
    failed = len(report.failed)
    kinds = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()) if k != OK)
    return (
        f"verified {len(report.results)} credential(s) of {report.orgs} org(s): "
        f"{counts.get(OK, 0)} ok, {failed} failed" + (f" ({kinds})" if kinds else "")
    )
