"""The audit of credential reads: recorded on the read path as one tuple appended to a queue,
written in batches by a background thread (every `every_s`, or sooner once `batch` rows
wait), and flushed by `close()`.

Never a value: a row is (org id, provider, caller, time, outcome). A failing database never
reaches a read: a batch that cannot be written is kept for the next attempt, up to
`max_pending` rows waiting in all; rows past that bound, and those still unwritten when the
store closes, are dropped and counted (`dropped`, and the metric
`reconciler_credential_audit_rows_total{fate="dropped"}`), with one log line when writes start
failing and one when they work again.

Retention: after a successful write, at most once an hour per process (and again at once
while a delete found a full batch), rows older than `retention_s` are deleted, `expire_batch`
at a time, through the `at` index.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Protocol

from reconciler.credentials.queries import AuditRow, one_line

log = logging.getLogger(__name__)

RETENTION_S = 90 * 86400.0
EXPIRE_EVERY_S = 3600.0
EXPIRE_BATCH = 10_000
CLOSE_TIMEOUT_S = 2.0
"""How long `close()` waits for a connection for its last write."""


class AuditWriter(Protocol):
    def write_audit(
        self, rows: Sequence[AuditRow], caller: str, *, timeout_s: float | None = None
    ) -> None: ...

    def expire_audit(self, retention_s: float, limit: int) -> int: ...


class AuditLog:
    def __init__(
        self,
        writer: AuditWriter,
        caller: str,
        *,
        every_s: float = 1.0,
        batch: int = 1000,
        max_pending: int = 100_000,
        retention_s: float | None = RETENTION_S,
        expire_every_s: float = EXPIRE_EVERY_S,
        expire_batch: int = EXPIRE_BATCH,
    ) -> None:
        if batch < 1 or max_pending < 1 or every_s <= 0:
            raise ValueError("audit batch and max_pending must be >= 1, every_s > 0")
        self._writer = writer
        self._caller = caller
        self._every = every_s
        self._batch = batch
        self._max_pending = max_pending
        self._retention_s = retention_s
        self._expire_every = expire_every_s
        self._expire_batch = expire_batch
        self._expire_due = 0.0  # monotonic time of the next retention delete (0: the first flush)
        self._pending: deque[AuditRow] = deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._flush_lock = threading.Lock()  # one writer at a time (the thread's, or close's)
        self._count_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._failing = False
        self._dropped_since_ok = 0
        self.written = 0
        self.dropped = 0
        self.closed = False

    # --- the read path ----------------------------------------------------------------------

    def record(self, org_id: str | None, provider: str, outcome: str) -> None:
        """One read, queued: no I/O, no lock unless the queue is full."""
        pending = self._pending
        if len(pending) >= self._max_pending or self.closed:
            self._drop(1)
            return
        pending.append((org_id, provider, time.time(), outcome))
        if len(pending) >= self._batch and not self._wake.is_set():
            self._wake.set()

    def _drop(self, n: int) -> None:
        with self._count_lock:
            self.dropped += n
            self._dropped_since_ok += n

    # --- the background thread --------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="reconciler-credentials-audit", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._every)
            self._wake.clear()
            if self._stop.is_set():
                break
            if self._flush() and self._retention_s is not None:
                self._expire()  # only right after rows were written: the database is up

    def close(self, timeout_s: float = 5.0) -> None:
        """Stops the thread and writes what is left (waiting at most `CLOSE_TIMEOUT_S` for a
        connection); what cannot be written is dropped and counted. Idempotent."""
        if self.closed:
            return
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self.closed = True  # reads from now on are dropped (counted), not queued
        self.flush(timeout_s=CLOSE_TIMEOUT_S, final=True)

    def flush(self, *, timeout_s: float | None = None, final: bool = False) -> bool:
        """Writes what is queued, `batch` rows per statement; True if nothing failed. A failed
        batch goes back to the queue (within `max_pending`) unless `final`."""
        return self._flush(timeout_s=timeout_s, final=final) is not None

    def _flush(self, *, timeout_s: float | None = None, final: bool = False) -> int | None:
        """`flush`, returning the rows written (None on a failure)."""
        written = 0
        with self._flush_lock:
            # what is queued now: rows queued meanwhile wait for the next tick, so a steady
            # stream of reads costs one write per tick, not a write per few rows
            left = len(self._pending)
            while left > 0 and self._pending:
                rows = self._take(min(self._batch, left))
                left -= len(rows)
                try:
                    self._writer.write_audit(rows, self._caller, timeout_s=timeout_s)
                except Exception as exc:  # the database: never into a read
                    self._failed(rows, exc, final)
                    if final:  # nothing more will be written
                        rest = len(self._pending)
                        self._pending.clear()
                        self._drop(rest)
                    return None
                written += len(rows)
                with self._count_lock:
                    self.written += len(rows)
                if self._failing:
                    self._failing = False
                    log.warning(
                        "credential audit: writing again (%d row(s) dropped meanwhile)",
                        self._dropped_since_ok,
                    )
                    self._dropped_since_ok = 0
            return written

    def _take(self, n: int) -> list[AuditRow]:
        rows: list[AuditRow] = []
        pending = self._pending
        while pending and len(rows) < n:
            rows.append(pending.popleft())
        return rows

    def _failed(self, rows: list[AuditRow], exc: Exception, final: bool) -> None:
        room = 0 if final else max(0, self._max_pending - len(self._pending))
        kept = rows[:room]
        self._pending.extendleft(reversed(kept))
        self._drop(len(rows) - len(kept))
        if final:
            log.warning(
                "credential audit: %d row(s) dropped at close, the database failed (%s)",
                len(rows) - len(kept) + len(self._pending),
                one_line(exc),
            )
        elif not self._failing:
            self._failing = True
            log.warning(
                "credential audit: cannot write (%s); keeping up to %d row(s), dropping the rest"
                " until it works again",
                one_line(exc),
                self._max_pending,
            )

    def _expire(self) -> None:
        now = time.monotonic()
        if now < self._expire_due or self._retention_s is None:
            return
        try:
            deleted = self._writer.expire_audit(self._retention_s, self._expire_batch)
        except Exception as exc:
            log.warning("credential audit: retention delete failed (%s)", one_line(exc))
            self._expire_due = now + self._expire_every
            return
        # a full batch: more to delete, next flush; else in an hour
        self._expire_due = now if deleted >= self._expire_batch else now + self._expire_every

    def counts(self) -> dict[str, int]:
        with self._count_lock:
            return {
                "written": self.written,
                "dropped": self.dropped,
                "pending": len(self._pending),
            }
