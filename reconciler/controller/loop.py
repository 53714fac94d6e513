"""The reconcile loop of `reconciler serve`: every interval (with jitter), read the specs (from
the git revision when there is one), claim the orgs that are due, and apply them.

- Level-triggered: each run recomputes desired and observed state; what must survive a run
  (schedule, backoff, status) is in Postgres, so a restart or another replica carries on.
- A run never overlaps itself. A trigger (SIGHUP, `POST /api/reconcile`) during a run
  schedules exactly one more run right after it.
- Unchanged spec files are neither parsed nor decrypted again (`spec.cache`); a file that
  failed stays failed until its bytes change or a trigger asks to retry.
- Orgs are claimed through `state.schedule` (one statement), so replicas share the work and an
  org that fails backs off without delaying the others.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from reconciler import metrics
from reconciler.controller.run import STOPPING, Controller, Options, OrgOutcome, RunReport
from reconciler.engine.actions import RetireOrg
from reconciler.engine.runplan import MAX_DELETES, MAX_TEMPLATE_ORGS, bound_deletes
from reconciler.errors import ReconcilerError
from reconciler.redact import printable
from reconciler.spec.cache import DEFAULT_ENTRIES, SpecCache
from reconciler.spec.git import GitSource
from reconciler.spec.loader import Decrypt, LoadResult, Outcome, load_tree
from reconciler.state.schedule import Backoff, Schedule
from reconciler.state.store import StateError, StateWriter

log = logging.getLogger(__name__)

MIN_BATCH = 64
"""Orgs claimed at a time: at least this, or four per org reconciled at once."""
MAX_BATCHES = 8
"""A run's due orgs are claimed in about this many batches (up to `MAX_PER_WORKER` per worker
each): each batch reads the whole fleet's index and decides the run's rules over every spec, so
batches of a fixed size made a run's cost grow with the square of the fleet."""
MAX_PER_WORKER = 8
"""A batch holds at most this many orgs per org reconciled at once: a claim pushes its orgs
`CLAIM_AHEAD` of the interval ahead, so a batch must be done well within it (8 org-times),
or its last orgs come due again before they start and another replica takes them too."""
CLAIM_AHEAD = 0.8
"""A claimed org is due again after this fraction of the interval, so the next tick (whose
jitter may bring it early) finds it due: about one reconcile per interval."""


def batch_size(fleet: int, concurrency: int) -> int:
    """Orgs claimed at a time in a run over `fleet` specs: enough for `MAX_BATCHES` batches
    to cover the fleet, but at least `MIN_BATCH` and four per worker, and at most
    `MAX_PER_WORKER` per worker."""
    least = max(MIN_BATCH, 4 * concurrency)
    return max(least, min(-(-fleet // MAX_BATCHES), MAX_PER_WORKER * concurrency))


@dataclass
class LoopConfig:
    path: Path  # the specs: a folder or file, relative to the git checkout when there is one
    interval_s: float = 60.0
    jitter: float = 0.1  # fraction of the interval
    prune: bool = False
    max_deletes: int = MAX_DELETES  # of the whole run: every batch and orphan together
    max_template_orgs: int = MAX_TEMPLATE_ORGS  # orgs a run may move to a template version
    accept_rollouts: frozenset[str] = frozenset()  # `name@version`s that may move more
    git: GitSource | None = None
    backoff: Backoff = field(default_factory=Backoff)
    batch: int | None = None  # orgs claimed at a time (default: `batch_size`)


@dataclass
class LoopState:
    """What /readyz needs to know of this process's runs."""

    loaded_once: bool = False  # specs were read at least once
    last_error: str | None = None  # the last run that could not run at all


class ReconcileLoop:
    def __init__(
        self,
        controller: Controller,
        state: StateWriter,
        config: LoopConfig,
        *,
        replica: str,
        decrypt: Decrypt | None = None,  # `secrets.native` (`load_tree`)
    ) -> None:
        self.controller = controller
        self.state = state
        self.config = config
        self.decrypt = decrypt
        self.cache: SpecCache[Outcome] = SpecCache()
        self.schedule = Schedule(state, replica)
        self.status = LoopState()
        self._running = threading.Lock()
        self._again = threading.Event()
        self._reported: frozenset[tuple[Path, str]] = frozenset()
        self._force = False
        self._scheduler: BackgroundScheduler | None = None
        self._specs_seen: tuple[int, int, int, str | None] | None = None

    # -- one run -------------------------------------------------------------------------------

    def run_once(self) -> RunReport | None:
        """One reconcile; None when another run is in progress (it runs once more after)."""
        if not self._running.acquire(blocking=False):
            self._again.set()
            return None
        try:
            report = self._run()
            while self._again.is_set() and not self.controller.stopping.is_set():
                self._again.clear()
                report = self._run()
            return report
        finally:
            self._running.release()

    def _run(self) -> RunReport | None:
        started = time.monotonic()
        try:
            root, revision = self._source()
            loaded = load_tree(root, self.decrypt, cache=self.cache)
        except ReconcilerError as exc:
            self._failed_run(printable(str(exc)))
            return None
        # two entries per file (checked, decrypted), with room for the previous contents
        self.cache.max_entries = max(
            DEFAULT_ENTRIES, 4 * (len(loaded.specs) + len(loaded.problems))
        )
        self.status.loaded_once = True
        self._say_specs(loaded, revision)
        metrics.SPECS_FAILING.set(len(loaded.failed_files))
        try:
            refused = self.controller.master_key_refusal()
            if refused is not None:  # a replica left behind by `keys rotate`: it claims nothing
                self._failed_run(f"{refused}; this replica claims no org")
                return None
            report = self._apply(loaded, revision, orphans=root.is_dir())
        except StateError as exc:
            self._failed_run(str(exc))
            return None
        except Exception as exc:  # a bug must not end the loop; the next run tries again
            self._failed_run(f"internal error: {type(exc).__name__}")
            return None
        self.status.last_error = None
        metrics.RECONCILE_SECONDS.observe(time.monotonic() - started)
        metrics.LAST_RUN_TIMESTAMP.set(time.time())
        if report is not None:
            self._count(report)
        return report

    def _say_specs(self, loaded: LoadResult, revision: str | None) -> None:
        """`specs: N file(s), M org(s)` on the first read, and again whenever a count or the
        revision changes (not every run: a quiet log for a quiet folder)."""
        files = len({spec.path for spec in loaded.specs} | loaded.bad_paths)
        orgs = len({spec.org.metadata.id for spec in loaded.specs})
        seen = (files, orgs, len(loaded.failed_files), revision)
        if seen == self._specs_seen:
            return
        self._specs_seen = seen
        failing = f", {len(loaded.failed_files)} failing to load" if loaded.failed_files else ""
        at = f" at revision {revision[:12]}" if revision else ""
        log.info("specs: %d file(s), %d org(s)%s%s", files, orgs, failing, at)

    def _failed_run(self, reason: str) -> None:
        self.status.last_error = reason
        log.error("reconcile run failed: %s", reason)

    def _source(self) -> tuple[Path, str | None]:
        git = self.config.git
        if git is None:
            return self.config.path, None
        try:
            revision = git.fetch()
        except ReconcilerError as exc:
            if git.last is None:
                raise
            log.warning("%s; reconciling the last fetched revision %s", exc, git.last.commit)
            revision = git.last
        return revision.root / self.config.path, revision.commit

    def _apply(
        self, loaded: LoadResult, revision: str | None, *, orphans: bool = False
    ) -> RunReport | None:
        """Claims and applies due orgs in batches (each batch is one `Controller.apply`), so
        an org is claimed shortly before it is worked on: a long run does not hold orgs that
        another replica could take meanwhile. Then the orphans (the whole folder read). With
        `--prune`, deletes and retirements wait for the end of the run, where they are counted
        together against `--max-deletes`: past it, none is made (`_deletes`)."""
        force, self._force = self._force, False
        ids = [str(s.org.metadata.id) for s in loaded.specs]  # once a run, not once a batch
        digests = {org_id: s.digest for org_id, s in zip(ids, loaded.specs, strict=True)}
        problems = frozenset((p.path, str(p)) for p in loaded.problems)
        ahead = self.config.interval_s * CLAIM_AHEAD
        batch = self.config.batch or batch_size(len(digests), self.controller.concurrency)
        merged: RunReport | None = None
        while digests and not self.controller.stopping.is_set():
            claimed = self.schedule.claim(digests, next_in_s=ahead, limit=batch, force=force)
            if not claimed:
                break
            report = self._apply_batch(loaded, ids, claimed, revision, first=merged is None)
            merged = _merge(merged, report)
            digests = {k: v for k, v in digests.items() if k not in claimed}
            if len(claimed) < batch:
                break
        if merged is None and problems != self._reported:  # nothing due, but news to report
            merged = self._apply_batch(loaded, ids, set(), revision, first=True)
        if orphans and not self.controller.stopping.is_set():
            merged = _merge(merged, self._orphans(loaded, revision))
        if merged is not None and self.config.prune:
            merged = self._deletes(loaded, merged, revision)
        if merged is not None and not merged.notes:  # a status not recorded is tried again
            self._reported = problems
        return merged

    def _options(self, *, orphans: bool = False) -> Options:
        return Options(
            prune=self.config.prune,
            orphans=orphans,
            max_deletes=self.config.max_deletes,
            defer_deletes=True,
            max_template_orgs=self.config.max_template_orgs,
            accept_rollouts=self.config.accept_rollouts,
        )

    def _apply_batch(
        self,
        loaded: LoadResult,
        ids: list[str],
        claimed: set[str],
        revision: str | None,
        *,
        first: bool,
    ) -> RunReport:
        """`ids`: the org id of each of `loaded.specs`, in order."""
        subset = LoadResult(
            [s for s, org_id in zip(loaded.specs, ids, strict=True) if org_id in claimed],
            loaded.problems if first else [],  # spec problems: reported by the first batch
            loaded.failed_ids if first else {},
            loaded.templates,
            loaded.lock_path,
            loaded.all_specs,
        )
        report = self.controller.apply(
            subset, command="serve", revision=revision, peers=loaded, options=self._options()
        )
        self._finished(report)
        return report

    def _finished(self, report: RunReport) -> None:
        results = {o.org_id: o.ok for o in report.outcomes if not o.skipped}
        released = [o.org_id for o in report.outcomes if o.skipped == STOPPING]
        try:
            self.schedule.finished(results, self.config.backoff)
            self.schedule.release(released)
        except StateError as exc:  # the schedule catches up next run; nothing is lost
            report.notes.append(f"the schedule was not updated: {exc}")

    def _orphans(self, loaded: LoadResult, revision: str | None) -> RunReport | None:
        """Orgs in Postgres whose spec is gone from the folder (never one whose file failed):
        each run reports them Orphaned (status, metrics, one log line each); with `--prune`
        they are counted for retirement at the end of the run, and never retired in a run
        where a file failed to load. Nothing is done (no run row) when there is none."""
        options = self._options(orphans=True)
        if not self.controller.run_plan(LoadResult([], []), peers=loaded, options=options).orphans:
            return None
        return self.controller.apply(
            LoadResult([], []), command="serve", revision=revision, peers=loaded, options=options
        )

    def _deletes(self, loaded: LoadResult, merged: RunReport, revision: str | None) -> RunReport:
        """The run's deletes and retirements, held back by its batches, counted together
        against `--max-deletes` (`engine.runplan.bound_deletes`): within it they are made (each
        org planned again under its lock, and bounded again as it applies); past it none is,
        and the run says so."""
        deferred = {
            o.org_id: o.deferred for o in merged.outcomes if o.deferred is not None and o.ok
        }
        if not deferred or self.controller.stopping.is_set():
            return merged
        bound = bound_deletes(deferred, self.config.max_deletes)
        if not bound.allowed:
            merged.notes.append(bound.note)
            return merged
        specs = [s for s in loaded.specs if str(s.org.metadata.id) in deferred]
        options = Options(
            prune=True,
            orphans=len(specs) < len(deferred),
            max_deletes=self.config.max_deletes,
            max_template_orgs=self.config.max_template_orgs,
            accept_rollouts=self.config.accept_rollouts,
        )
        report = self.controller.apply(
            LoadResult(specs, []),
            command="serve",
            revision=revision,
            peers=loaded,
            options=options,
            only=frozenset(deferred),
        )
        self._finished(report)
        done = {o.org_id for o in report.outcomes}
        merged.outcomes = [o for o in merged.outcomes if o.org_id not in done]
        return _merge(merged, report) or report

    @staticmethod
    def _count(report: RunReport) -> None:
        run = {"run": report.run_id}
        orphaned = 0
        for o in report.outcomes:
            outcome = org_outcome(o)
            metrics.ORG_OUTCOMES.labels(o.slug, outcome).inc()
            if o.error:
                log.warning("org %s: %s", o.slug, o.error, extra={"org": o.slug, **run})
            elif outcome == "Orphaned" and o.plan is not None:
                orphaned += 1
                log.warning(
                    "org %s is orphaned: %s", o.slug, o.plan.orphaned, extra={"org": o.slug, **run}
                )
        metrics.ORGS_ORPHANED.set(orphaned)
        for problem in report.problems:
            log.warning("%s", problem, extra=run)
        for note in report.notes:
            log.warning("%s", note, extra=run)
        verbs = {"create": "created", "update": "updated", "delete": "deleted", "adopt": "adopted"}
        counts = "".join(f", {verbs[k]} {v}" for k, v in report.counts().items() if v)
        log.info(
            "run %s: %d org(s), %d failed, %d file(s) failing%s",
            report.run_id,
            len(report.outcomes),
            len(report.failed),
            len(report.failed_files),
            counts,
            extra=run,
        )

    # -- scheduling ----------------------------------------------------------------------------

    def trigger(self) -> None:
        """Run now (SIGHUP, the API), and retry files that failed before."""
        self.cache.forget(lambda outcome: outcome[0] is not None)
        self._reported = frozenset()
        self._force = True  # backing-off orgs too: the operator says the cause is fixed
        if self._running.locked():
            self._again.set()  # the run in progress runs once more...
        if self._scheduler is not None and self._scheduler.running:  # ...or the job now
            job = self._scheduler.get_job("reconcile")
            if job is not None:
                job.modify(next_run_time=dt.datetime.now(dt.UTC))

    def start(self) -> None:
        interval = self.config.interval_s
        self._scheduler = BackgroundScheduler(timezone=dt.UTC)
        self._scheduler.add_job(
            self.run_once,
            IntervalTrigger(seconds=interval, jitter=interval * self.config.jitter or None),
            id="reconcile",
            max_instances=1,
            coalesce=True,
            misfire_grace_time=None,
            next_run_time=dt.datetime.now(dt.UTC),  # the first run at once
        )
        self._scheduler.start()

    def stop(self, timeout_s: float) -> bool:
        """Stop taking work, let the org in hand finish; True when the run ended in time."""
        self.controller.stopping.set()
        if self._scheduler is not None and self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        finished = self._running.acquire(timeout=max(0.0, timeout_s))
        if finished:
            self._running.release()
        return finished


def org_outcome(o: OrgOutcome) -> str:
    """The outcome label of an org in a run (metrics, logs)."""
    if o.skipped:
        return "Skipped"
    if o.ok and any(isinstance(a, RetireOrg) for a in o.done or ()):
        return "Retired"
    if o.ok and o.plan is not None and o.plan.orphaned:
        return "Orphaned"
    if o.stalled:
        return "Stalled"
    return "Ready" if o.ok else "Failed"


def _merge(a: RunReport | None, b: RunReport | None) -> RunReport | None:
    if a is None or b is None:
        return a or b
    merged = RunReport(a.outcomes + b.outcomes, a.problems + b.problems, a.seconds + b.seconds)
    merged.notes = a.notes + b.notes
    merged.warnings = a.warnings + b.warnings
    merged.failing = sorted(set(a.failing) | set(b.failing))
    merged.run_id = a.run_id
    return merged
