"""Reconciling many orgs: each org is its own Vapi account, so they run concurrently (bounded),
and one org's failure never stops the others."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx

from reconciler.engine.actions import Action, OrgPlan
from reconciler.engine.apply import Applier
from reconciler.engine.desired import desired_org
from reconciler.engine.model import DesiredOrg
from reconciler.engine.observe import observed_from_rows
from reconciler.engine.planner import CREATE_GRACE_S, plan_org
from reconciler.errors import ReconcilerError
from reconciler.secrets.crypto import MasterKey
from reconciler.spec.loader import LoadResult, Problem
from reconciler.state.store import StateReader, StateWriter
from reconciler.vapi.client import RetryPolicy, VapiAuthError, VapiError, VapiReader, VapiWriter

log = logging.getLogger(__name__)
_Client = TypeVar("_Client", VapiReader, VapiWriter)


@dataclass
class OrgOutcome:
    slug: str
    org_id: str
    plan: OrgPlan | None = None
    error: str | None = None
    done: list[Action] | None = None  # apply only: the actions that took effect

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class RunReport:
    outcomes: list[OrgOutcome] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failed(self) -> list[OrgOutcome]:
        return [o for o in self.outcomes if not o.ok]

    @property
    def ok(self) -> bool:
        return not self.failed and not self.problems

    def counts(self) -> dict[str, int]:
        c: Counter[str] = Counter()
        for o in self.outcomes:
            actions = o.done if o.done is not None else (o.plan.actions if o.plan else ())
            for action in actions:
                c[action.kind] += 1
        return {k: c.get(k, 0) for k in ("create", "update", "delete", "adopt")}

    @property
    def has_changes(self) -> bool:
        return any(o.plan is not None and o.plan.has_changes for o in self.outcomes)


def _message(exc: Exception) -> str:
    if isinstance(exc, ReconcilerError):
        return str(exc)
    return f"internal error: {type(exc).__name__}"  # never str(exc): it may hold anything


class Controller:
    """Holds the long-lived parts (pool, HTTP client, key) and runs plan or apply over specs."""

    def __init__(
        self,
        state: StateReader,
        http: httpx.Client,
        key: MasterKey,
        *,
        concurrency: int = 16,
        retry: RetryPolicy | None = None,
        create_grace_s: float = CREATE_GRACE_S,
    ) -> None:
        self.state = state
        self.http = http
        self.key = key
        self.concurrency = concurrency
        self.retry = retry or RetryPolicy()
        self.create_grace_s = create_grace_s

    def _desired(self, loaded: LoadResult) -> list[tuple[DesiredOrg | None, OrgOutcome]]:
        out: list[tuple[DesiredOrg | None, OrgOutcome]] = []
        known = self.state.org_ids_by_slug()
        for spec in loaded.specs:
            md = spec.org.metadata
            outcome = OrgOutcome(md.slug, str(md.id))
            owner = known.get(md.slug)
            if owner is not None and owner != str(md.id):
                outcome.error = (
                    f"slug {md.slug} belongs to org {owner} in Postgres, not to {md.id}: "
                    "a new id for an existing slug is refused"
                )
                out.append((None, outcome))
                continue
            try:
                out.append((desired_org(spec.org, self.key, source=str(spec.path)), outcome))
            except Exception as exc:  # anything in one org's spec is that org's failure only
                outcome.error = _message(exc)
                out.append((None, outcome))
        return self._refuse_shared_accounts(out)

    def _refuse_shared_accounts(
        self, items: list[tuple[DesiredOrg | None, OrgOutcome]]
    ) -> list[tuple[DesiredOrg | None, OrgOutcome]]:
        """BYOC means one Vapi account per org; two specs on one key would fight over it."""
        by_key: dict[str, list[str]] = {}
        for desired, outcome in items:
            if desired is not None and desired.vapi_api_key is not None:
                digest = self.key.fingerprint({"vapiApiKey": desired.vapi_api_key.reveal()})
                by_key.setdefault(digest, []).append(outcome.slug)
        shared = {slug: slugs for slugs in by_key.values() if len(slugs) > 1 for slug in slugs}
        if not shared:
            return items
        out: list[tuple[DesiredOrg | None, OrgOutcome]] = []
        for desired, outcome in items:
            if outcome.slug in shared:
                others = ", ".join(s for s in shared[outcome.slug] if s != outcome.slug)
                outcome.error = (
                    f"shares its Vapi API key with {others}: each org needs its own Vapi account"
                )
                desired = None
            out.append((desired, outcome))
        return out

    def _each(
        self,
        items: list[tuple[DesiredOrg | None, OrgOutcome]],
        work: Callable[[DesiredOrg, OrgOutcome], None],
    ) -> list[OrgOutcome]:
        def guarded(item: tuple[DesiredOrg | None, OrgOutcome]) -> OrgOutcome:
            desired, outcome = item
            if desired is None:
                return outcome
            try:
                work(desired, outcome)
            except Exception as exc:  # one org's failure never stops the others
                outcome.error = _message(exc)
                if not isinstance(exc, ReconcilerError):
                    log.error("org %s: unexpected %s", outcome.slug, type(exc).__name__)
            return outcome

        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(guarded, items))

    def _client(self, desired: DesiredOrg, kind: type[_Client]) -> _Client | None:
        key = desired.vapi_api_key
        return kind(self.http, key.reveal(), retry=self.retry) if key is not None else None

    @staticmethod
    def _list_live(
        reader: VapiReader | None,
    ) -> tuple[list[dict[str, Any]] | None, VapiError | None]:
        if reader is None:
            return None, None  # no Vapi key: the account cannot be seen, so not planned
        try:
            return reader.list_assistants(), None
        except VapiError as exc:
            return None, exc

    def plan(self, loaded: LoadResult, *, prune: bool = False) -> RunReport:
        """Read-only: Postgres reads and Vapi GETs, through reader objects only."""
        started = time.monotonic()
        items = self._desired(loaded)
        rows = self.state.observe([d.org_id for d, _ in items if d is not None])

        def work(desired: DesiredOrg, outcome: OrgOutcome) -> None:
            live, error = self._list_live(self._client(desired, VapiReader))
            outcome.plan = plan_org(
                desired,
                observed_from_rows(rows.get(desired.org_id), live),
                prune=prune,
                create_grace_s=self.create_grace_s,
            )
            if error is not None:
                outcome.error = str(error)
            elif outcome.plan.blocked:  # apply would fail the org for the same reason
                outcome.error = "; ".join(outcome.plan.blocked)

        outcomes = self._each(items, work)
        return RunReport(outcomes, list(loaded.problems), time.monotonic() - started)

    def apply(
        self, loaded: LoadResult, *, prune: bool = False, command: str = "apply"
    ) -> RunReport:
        if not isinstance(self.state, StateWriter):
            raise TypeError("apply needs a StateWriter")
        state: StateWriter = self.state
        started = time.monotonic()
        items = self._desired(loaded)
        run_id = state.start_run(command, len(items))

        def work(desired: DesiredOrg, outcome: OrgOutcome) -> None:
            with state.org_lock(desired.org_id) as lock:
                if not lock.held:
                    outcome.error = "skipped: another reconciler is working on this org"
                    return
                self._apply_org(state, desired, outcome, prune, lock.check)

        outcomes = self._each(items, work)
        report = RunReport(outcomes, list(loaded.problems), time.monotonic() - started)
        errors = [{"org": o.slug, "error": o.error or ""} for o in report.failed]
        errors += [{"file": str(p.path), "error": str(p)} for p in loaded.problems]
        state.finish_run(run_id, len(errors), report.counts(), errors)
        return report

    def _apply_org(
        self,
        state: StateWriter,
        desired: DesiredOrg,
        outcome: OrgOutcome,
        prune: bool,
        still_locked: Callable[[], None],
    ) -> None:
        writer = self._client(desired, VapiWriter)
        row = state.observe([desired.org_id]).get(desired.org_id)  # re-read under the lock
        live, list_error = self._list_live(writer)
        plan = plan_org(
            desired, observed_from_rows(row, live), prune=prune, create_grace_s=self.create_grace_s
        )
        outcome.plan = plan
        outcome.done = []
        try:
            Applier(desired, writer, state, self.key, still_locked).apply(plan, outcome.done)
        except Exception as exc:
            self._finish(state, desired, error=_message(exc))
            raise
        if writer is not None and list_error is None and "vapi" in desired.credentials:
            state.mark_verified(desired.org_id, "vapi", None)
        if list_error is not None:
            if isinstance(list_error, VapiAuthError):
                state.mark_verified(desired.org_id, "vapi", str(list_error))
            self._finish(state, desired, error=str(list_error))
            raise list_error
        self._finish(state, desired, error=None)

    @staticmethod
    def _finish(state: StateWriter, desired: DesiredOrg, *, error: str | None) -> None:
        state.set_status(desired.org_id, "Failed" if error else "Ready", error)


def slugs_filter(loaded: LoadResult, slugs: Iterable[str]) -> LoadResult:
    """`--org`: keep only the named orgs; an unknown slug is a problem."""
    wanted = set(slugs)
    if not wanted:
        return loaded
    known = {s.org.metadata.slug for s in loaded.specs} | {p.path.stem for p in loaded.problems}
    problems = [p for p in loaded.problems if p.path.stem in wanted]
    problems += [Problem(Path(s), "", "no spec with this slug") for s in sorted(wanted - known)]
    return LoadResult([s for s in loaded.specs if s.org.metadata.slug in wanted], problems)
