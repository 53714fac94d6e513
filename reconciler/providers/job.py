"""Credential verification under `serve`: a background job (APScheduler, beside the reconcile
loop's) that verifies each stored credential about once per `RECONCILER_VERIFY_INTERVAL`.

Replicas share the work through Postgres, not a leader: every tick (each `TICK_S`, or the
interval when shorter, with jitter) a replica claims the rows that are due (last attempt older
than the interval, or older than the row's last change) in batches, stamping each row's
`verification_attempted_at` in the claiming statement (`FOR UPDATE SKIP LOCKED`). Another
replica's tick finds them not due, so a credential is verified once per interval whatever the
number of replicas, and a new or changed credential within a tick.

The Vapi key is not verified here: every reconcile run lists each org's account with it and
records that (`StateWriter.orgs.finish`), far more often than this job would. `reconciler
verify` checks it with the others.

Stopping: no new check starts; checks in flight end within their bounded waits; rows claimed
but not checked are handed back (due at once, for another replica). A replica killed mid-pass
loses nothing but time: its claimed rows are due again one interval later.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger
from psycopg_pool import ConnectionPool

from reconciler.errors import ReconcilerError
from reconciler.providers.runner import Report, Verifier, summary
from reconciler.providers.verify import PROVIDERS, VAPI, Endpoints, http_client
from reconciler.secrets.crypto import KeyRing
from reconciler.state import verification

log = logging.getLogger("reconciler.verify")

TICK_S = 60.0
"""How often a replica looks for due credentials (a tick with none due is one statement)."""
BATCH = 64
"""Rows claimed at a time (at least; four per check in flight)."""
SERVE_PROVIDERS = tuple(p for p in PROVIDERS if p != VAPI)


class VerifyJob:
    def __init__(
        self,
        pool: ConnectionPool,
        keys: KeyRing,
        endpoints: Endpoints,
        *,
        interval_s: float,
        concurrency: int = 16,
        providers: tuple[str, ...] = SERVE_PROVIDERS,
    ) -> None:
        self.pool = pool
        self.interval_s = interval_s
        self.providers = providers
        self.stopping = threading.Event()
        self.http = http_client(max_connections=max(4, concurrency))
        self.verifier = Verifier(
            pool, keys, endpoints, self.http, concurrency=concurrency, stopping=self.stopping
        )
        self.batch = max(BATCH, 4 * concurrency)
        self._running = threading.Lock()
        self._scheduler: BackgroundScheduler | None = None

    # -- one pass ------------------------------------------------------------------------------

    def run_once(self) -> Report | None:
        """Verifies every due credential, batch by batch; None when a pass is in progress."""
        if not self._running.acquire(blocking=False):
            return None
        try:
            return self._run()
        finally:
            self._running.release()

    def _run(self) -> Report:
        report = Report()
        while not self.stopping.is_set():
            try:
                claimed = verification.claim_due(
                    self.pool,
                    interval_s=self.interval_s,
                    limit=self.batch,
                    providers=self.providers,
                )
                if not claimed:
                    break
                results, unstarted = self.verifier.verify(claimed)
                self.verifier.record(results, claimed)
                verification.release(self.pool, unstarted)
            except ReconcilerError as exc:  # the database: the rows are due again later
                report.notes.append(str(exc))
                log.warning("credential verification: %s", exc)
                break
            except Exception as exc:  # a bug must not end the job; the next tick tries again
                report.notes.append(f"internal error: {type(exc).__name__}")
                log.error("credential verification: internal error: %s", type(exc).__name__)
                break
            for r in results:
                if not r.ok:
                    log.warning(
                        "org %s: credential %s: %s",
                        r.slug,
                        r.provider,
                        r.check.reason,
                        extra={"org": r.slug},
                    )
            report.results += results
            if len(claimed) < self.batch:
                break
        if report.results:
            log.info("%s", summary(report))
        return report

    # -- scheduling ----------------------------------------------------------------------------

    def start(self) -> None:
        tick = min(TICK_S, self.interval_s)
        self._scheduler = BackgroundScheduler(timezone=dt.UTC)
        self._scheduler.add_job(
            self.run_once,
            IntervalTrigger(seconds=tick, jitter=tick * 0.1),
            id="verify-credentials",
            max_instances=1,
            coalesce=True,
            misfire_grace_time=None,
            next_run_time=dt.datetime.now(dt.UTC),
        )
        self._scheduler.start()

    def halt(self) -> None:
        """No new check starts (those in flight finish within their bounded waits)."""
        self.stopping.set()
        if self._scheduler is not None and self._scheduler.running:
            self._scheduler.shutdown(wait=False)

    def wait(self, timeout_s: float) -> bool:
        """After `halt`: True when no pass is running any more (then the client is closed)."""
        finished = self._running.acquire(timeout=max(0.0, timeout_s))
        if finished:
            self._running.release()
            self.http.close()
        return finished
