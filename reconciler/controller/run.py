"""Reconciling many orgs: each org is its own Vapi account, so they run concurrently (bounded),
and one org's failure never stops the others.

Every org ends a run with an outcome (done, failed with a reason, or skipped because another
reconciler holds it), and `apply` writes every org's status in one batch at the end, after
the checks that span orgs (two keys on one Vapi account), so a status is written once per run.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Protocol, TypedDict, TypeVar, Unpack

import httpx

from reconciler.controller import status
from reconciler.controller.accounts import AccountRegistry
from reconciler.controller.status import stalled_files
from reconciler.engine.actions import Action, CreateResource, OrgPlan, RetireOrg, UpsertOrg
from reconciler.engine.apply import Applier, WriteGuard
from reconciler.engine.desired import desired_org, leaf_fingerprint
from reconciler.engine.kinds import KINDS, PHONE_NUMBER, ResourceKind
from reconciler.engine.model import (
    DesiredCredential,
    DesiredOrg,
    ObservedOrg,
    Sensitive,
    account_ids,
    tag_of,
)
from reconciler.engine.observe import observed_from_rows
from reconciler.engine.planner import CREATE_GRACE_S, plan_org
from reconciler.engine.rollouts import Decision, Mover, Row, decide, waves_of
from reconciler.engine.runplan import (
    MAX_DELETES,
    MAX_TEMPLATE_ORGS,
    FailedFile,
    KnownOrg,
    RunFacts,
    RunPlan,
    SpecFacts,
    TemplateMoveFact,
    bound_deletes,
    plan_run,
)
from reconciler.engine.stamp import OrgStamp, stale, stamp
from reconciler.errors import MasterKeyRefused, ReconcilerError
from reconciler.metrics import ORG_WEBHOOKS
from reconciler.redact import SENSITIVE, mask_tree, printable
from reconciler.secrets.crypto import Keys, UnknownKeyId, as_ring
from reconciler.spec.loader import LoadResult, Problem, SpecFile
from reconciler.spec.models import Organization
from reconciler.state.store import (
    SECRET_GRACE_S,
    OrgIndexRow,
    OrgLock,
    OrgStatus,
    StateError,
    StateReader,
    StateWriter,
)
from reconciler.twilio import API as TWILIO_API
from reconciler.twilio import NumberLookup, TwilioRefused, TwilioUnavailable
from reconciler.vapi.client import RetryPolicy, VapiAuthError, VapiError, VapiReader, VapiWriter

log = logging.getLogger(__name__)
STOPPING = "not started: the reconciler is shutting down"
ORPHANED = "its spec is gone from the specs"


@dataclass(frozen=True)
class Options:
    """What a run may do beyond converging what the specs say (all off by default)."""

    prune: bool = False  # delete removed or duplicate assistants, retire orgs whose spec is gone
    orphans: bool = False  # the specs are the whole fleet: an org without one is orphaned
    max_deletes: int = MAX_DELETES  # more deletes than this in one run: none at all
    # serve: an org's deletes (and an orphan's retirement) wait for the end of the run, where
    # the run's deletes are counted together against `max_deletes` (`ReconcileLoop`); apply
    # counts them first instead, with a read-only plan of the run
    defer_deletes: bool = False
    adopt_by_name: bool = False
    accept_account_change: frozenset[str] = frozenset()  # slugs
    max_template_orgs: int = MAX_TEMPLATE_ORGS  # orgs one run may move to a template version
    accept_rollouts: frozenset[str] = frozenset()  # `name@version`s that may move more


_Client = TypeVar("_Client", VapiReader, VapiWriter)


class Progress(Protocol):
    """Told of a run as it goes (the CLI prints each org's result as soon as it is known).
    Called from the worker threads: an implementation serialises its own output. What it
    raises is logged and never fails an org."""

    def stage(self, name: str, total: int) -> None:
        """A stage over `total` orgs begins: "listing" and "planning" (plan), "applying"."""

    def org_done(self, outcome: OrgOutcome, *, final: bool) -> None:
        """An org is through the stage; `final`: its outcome is its result in this run (the
        checks across orgs at the end of an apply may still fail it: two orgs found sharing
        one Vapi account)."""


class _Interim:
    """apply --prune counts the run's deletes with a plan first: its orgs are not results."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress

    def stage(self, name: str, total: int) -> None:
        self.progress.stage(f"counting deletes ({name})", total)

    def org_done(self, outcome: OrgOutcome, *, final: bool) -> None:
        self.progress.org_done(outcome, final=False)


_VIEWS_KEPT = 100_000  # specs' facts remembered (`PlanController._spec_view`): ~300 B each


def pool_size(concurrency: int) -> int:
    """Postgres connections a controller needs: each org in flight holds its lock's connection
    and needs one more for its reads and writes; two spare for the run's own statements."""
    return 2 * concurrency + 2


@dataclass
class OrgOutcome:
    slug: str
    org_id: str
    plan: OrgPlan | None = None
    error: str | None = None
    skipped: str | None = None  # another reconciler holds the org: not a failure
    stalled: str | None = None  # with `error`: a reason retrying cannot help (spec must change)
    done: list[Action] | None = None  # apply only: the actions that took effect
    # the account's listing (raw: secrets in clear) until planned, then dropped
    live: list[dict[str, Any]] | None = field(default=None, repr=False)
    listed: bool = False  # the org's key listed its account in this run
    spec_digest: str = ""  # sha256 of its spec file ("" for an orphan)
    stamp: OrgStamp | None = None  # plan only: what its plan was computed from (`plan --out`)
    vapi_error: VapiError | None = None  # the account could not be listed
    deferred: int | None = None  # serve: deletes (or a retirement) left to the run's end
    created: dict[str, str] = field(default_factory=dict)  # apply: role -> new Vapi assistant id
    # the account's objects of the other kinds the org uses (raw), until planned, then dropped
    live_resources: dict[str, list[dict[str, Any]]] = field(default_factory=dict, repr=False)

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class _Look:
    """What an org's look without its lock saw, when its plan had something to do: the
    Postgres row it was planned from and the account's listing (raw, until planned under the
    lock), reused under the lock when nothing can have moved since (`reusable`)."""

    row: dict[str, Any] | None
    live: list[dict[str, Any]] | None = field(repr=False)
    live_resources: dict[str, list[dict[str, Any]]] = field(repr=False)
    asked: int
    vapi_error: VapiError | None
    listed: bool

    def reusable(self, row: dict[str, Any] | None) -> bool:
        """The listing still stands for the org under its lock. A listing that failed is not
        asked for again in this run (each account is asked once a run, as before the look;
        nothing is planned in Vapi without it). One that answered stands when Postgres shows
        the org exactly as before it, with no create in flight: every create of an org is
        made under its lock after its create-pending mark is committed, and every answered
        write changes the row, so no replica created anything in the account since the
        listing (a write whose answer was lost is at worst sent again: an update or a delete,
        never a create). Except for an org Postgres did not hold yet: a new org refused after
        its create was answered (`_forget_if_new`, a shared account) leaves no row, as before,
        while its assistant stays in Vapi; so a new org is always listed again."""
        if not self.listed:
            return True
        return self.row is not None and row == self.row and not _pending(row)


def _pending(row: dict[str, Any] | None) -> bool:
    """A create of the org whose outcome is not recorded yet (an assistant or an object of
    another kind marked create-pending)."""
    return any(
        o.get("pending_s") is not None
        for o in [*((row or {}).get("assistants") or ()), *((row or {}).get("resources") or ())]
    )


@dataclass
class RunReport:
    outcomes: list[OrgOutcome] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)  # the run's own troubles (e.g. not recorded)
    run_id: int | None = None  # its reconcile_runs row (apply only)
    warnings: list[str] = field(default_factory=list)  # the run's, not failures
    failing: list[str] = field(default_factory=list)  # slugs of known orgs whose file failed
    failed_ids: dict[Path, str] = field(default_factory=dict)  # org ids named by failed files
    rollouts: list[Decision] = field(default_factory=list)  # template rollouts in waves

    @property
    def failed(self) -> list[OrgOutcome]:
        return [o for o in self.outcomes if not o.ok]

    @property
    def skipped(self) -> list[OrgOutcome]:
        return [o for o in self.outcomes if o.ok and o.skipped]

    @property
    def failed_files(self) -> list[Path]:
        return sorted({p.path for p in self.problems})

    @property
    def ok(self) -> bool:
        return not self.failed and not self.problems and not self.notes

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


def _planned_deletes(outcomes: Iterable[OrgOutcome]) -> dict[str, int]:
    return {o.org_id: o.plan.deletes for o in outcomes if o.plan is not None}


def _deletes_or_retires(plan: OrgPlan) -> bool:
    return plan.deletes > 0 or any(isinstance(a, RetireOrg) for a in plan.actions)


def _deferred_text(n: int, retire: bool) -> str:
    deletes = f"{n} delete(s)"
    return f"{deletes} and retirement" if retire else deletes


def _changes(outcome: OrgOutcome) -> dict[str, int]:
    c: Counter[str] = Counter()
    for action in outcome.done or ():
        c[action.kind] += 1
    return {k: c[k] for k in ("create", "update", "delete", "adopt") if c[k]}


def _secrets(desired: DesiredOrg) -> list[str]:
    """The org's secret values, masked in any error answer that echoes one, on reads as on
    writes: its credentials and the secret leaves of the bodies it sends."""
    found = [
        value
        for cred in desired.credentials.values()
        for value in cred.config.reveal().values()
        if isinstance(value, str)
    ]
    bodies = [a.body for a in desired.assistants.values()]
    bodies += [r.body for objects in desired.resources.values() for r in objects.values()]
    return found + _secret_leaves(bodies)


def _secret_leaves(bodies: list[dict[str, Any]]) -> list[str]:
    """The values of assistant fields that are secrets (a key with a secret word, any header
    value): plan and apply show them as `(sensitive)`, so an error answer quoting one must too."""
    found: list[str] = []

    def keep(value: Any) -> Any:
        if isinstance(value, str):
            found.append(value)
        return value

    for body in bodies:
        mask_tree(body, keep)
    return found


def _message(exc: BaseException) -> str:
    if isinstance(exc, ReconcilerError):
        return printable(str(exc))
    return f"internal error: {type(exc).__name__}"  # never str(exc): it may hold anything


WEBHOOK_HALT_FAILED = 5
"""Failed webhooks of one org (and at least half of its webhooks) since its rollout wave
began, as this process saw them, that halt the rollout."""


def webhooks_failing(slug: str, since_s: float) -> str | None:
    """How the org's webhooks fail since `since_s` seconds ago (this process's window of
    `metrics.ORG_WEBHOOKS`), when they do enough to halt a rollout."""
    ok, failed = ORG_WEBHOOKS.counts(slug, since_s)
    if failed >= WEBHOOK_HALT_FAILED and failed * 2 >= ok + failed:
        return f"{failed} of {ok + failed} webhooks failed"
    return None


def _held_roles(spec: SpecFile, rollouts: Iterable[Decision]) -> dict[str, str]:
    """The org's templated assistants that a rollout keeps on their old version, and why."""
    org_id, slug = str(spec.org.metadata.id), spec.org.metadata.slug
    out: dict[str, str] = {}
    for decision in rollouts:
        if org_id in decision.held:
            for role, ref in spec.org.templates.items():
                if ref == decision.template:
                    out[role] = decision.held_note(slug)
    return out


def _template_moves(
    specs: Iterable[tuple[SpecFacts, tuple[tuple[str, str], ...]]], index: list[Any]
) -> tuple[TemplateMoveFact, ...]:
    """The specs' orgs (their facts and templates by role) whose assistants the specs now
    render from another template than the one Postgres records (an assistant not written yet
    is new, not moved)."""
    recorded = {row.org_id: row.templates for row in index}
    out: list[TemplateMoveFact] = []
    for facts, templates in specs:
        stored = recorded.get(facts.org_id, {})
        for role, ref in templates:
            if role in stored and stored[role] != ref:
                out.append(TemplateMoveFact(facts.org_id, facts.slug, ref))
    return tuple(out)


def _shared_message(others: dict[str, str]) -> str:
    listed = ", ".join(f"{slug} ({oid})" for oid, slug in sorted(others.items()))
    return (
        f"its Vapi account is also reached by the API key of {listed}: "
        "each org needs its own Vapi account"
    )


def _flat(by_kind: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return [obj for objects in by_kind.values() for obj in objects]


class SharedAccount(ReconcilerError):
    """The org's Vapi account turned out, mid-apply, to be reached by another org's key."""


class _Guard(WriteGuard):
    """Before each Vapi write: the org's lock still held and its account not shared; before a
    Twilio number is imported, that it is a number of the org's Twilio account."""

    def __init__(
        self,
        org: DesiredOrg,
        lock: OrgLock,
        accounts: AccountRegistry,
        vapi: VapiWriter | None,
        twilio: NumberLookup | None = None,
    ) -> None:
        self.org = org
        self.lock = lock
        self.accounts = accounts
        self.vapi = vapi
        self.twilio = twilio

    def vet(self, action: CreateResource) -> None:
        """A Twilio number is imported only when the org's Twilio account lists it: one read of
        Twilio (its IncomingPhoneNumbers filtered by the number), before anything is written.
        The account SID is a credential: never shown."""
        body = action.body
        if action.resource != PHONE_NUMBER.name or body.get("provider") != "twilio":
            return
        sid, token = body.get("twilioAccountSid"), body.get("twilioAuthToken")
        number, slug = body.get("number"), self.org.slug
        if not (isinstance(sid, str) and isinstance(token, str) and isinstance(number, str)):
            raise ReconcilerError(
                f"phone number {action.name}: {slug}'s Twilio credentials or the number are "
                "missing: nothing imported"
            )
        if self.twilio is None:
            raise ReconcilerError(
                f"phone number {number}: no Twilio endpoint to check that it is a number of "
                f"{slug}'s Twilio account: nothing imported"
            )
        try:
            owned = self.twilio.owned(sid, token, number)
        except TwilioUnavailable as exc:
            raise ReconcilerError(
                f"phone number {number}: could not check that it is a number of {slug}'s "
                f"Twilio account ({exc}): nothing imported; the next run tries again"
            ) from None
        except TwilioRefused as exc:
            raise ReconcilerError(
                f"phone number {number}: {slug}'s Twilio account refused the check that it is "
                f"one of its numbers ({exc}): nothing imported"
            ) from None
        if not owned:
            raise ReconcilerError(
                f"{number} is not a number of {slug}'s Twilio account {SENSITIVE}: nothing imported"
            )

    def before_write(self) -> None:
        self.lock.check()
        others = self.accounts.shared_with(self.org.org_id)
        if others:
            raise SharedAccount(f"stopped before writing: {_shared_message(others)}")

    @contextmanager
    def creating(self) -> Iterator[None]:
        with self.accounts.first_create(self.org.org_id) as stale:
            if stale and self.vapi is not None:  # did a create since our listing name it?
                asked = self.accounts.mark()
                found = account_ids(self.vapi.list_assistants())
                self.accounts.see(self.org.org_id, self.org.slug, found, asked_at=asked)
            try:
                yield
            finally:
                self.accounts.created()

    def answered(self, assistant: dict[str, Any]) -> None:
        account = assistant.get("orgId")
        if not isinstance(account, str):
            return
        self.accounts.see(self.org.org_id, self.org.slug, [account], asked_at=self.accounts.mark())
        others = self.accounts.shared_with(self.org.org_id)
        if others:
            tag = tag_of(assistant)
            role = tag[1] if tag else "?"
            raise SharedAccount(
                f"{_shared_message(others)}; stopped after creating its {role} assistant "
                f"{assistant.get('id')} there (once each org has its own key, the org that "
                "keeps this account deletes the other's assistants with `apply --prune`)"
            )


class _DeleteBudget:
    """What is left of `--max-deletes` in this run, shared by the orgs applied at once: the
    count made before the run bounds it, and this bounds it again in case the state moved."""

    def __init__(self, limit: int) -> None:
        self.left = limit
        self._lock = threading.Lock()

    def take(self, n: int) -> None:
        if n == 0:
            return
        with self._lock:
            if n > self.left:
                raise ReconcilerError(
                    f"would delete {n} assistant(s), number(s) or tool(s), past what is left of "
                    "--max-deletes "
                    f"({self.left}) in this run: nothing done for this org"
                )
            self.left -= n


class ControllerOptions(TypedDict, total=False):
    """`PlanController`'s keyword options (their defaults are its own), for `Controller`."""

    concurrency: int
    retry: RetryPolicy | None
    create_grace_s: float
    lock_wait_s: float
    secret_grace_s: float
    twilio_base_url: str


class PlanController:
    """Holds the long-lived parts (pool, HTTP client, key) and plans over specs. It holds a
    `StateReader` and makes Vapi readers only: `plan` cannot write by construction (the
    `Controller` below adds `apply`, and needs a `StateWriter` to be made at all)."""

    def __init__(
        self,
        state: StateReader,
        http: httpx.Client,
        key: Keys,
        *,
        concurrency: int = 16,
        retry: RetryPolicy | None = None,
        create_grace_s: float = CREATE_GRACE_S,
        lock_wait_s: float = 0.0,
        secret_grace_s: float = SECRET_GRACE_S,
        twilio_base_url: str = TWILIO_API,
    ) -> None:
        self.state = state
        self.http = http
        # a Twilio number is imported only once its account lists it (`_Guard.vet`)
        self.twilio = NumberLookup(http, twilio_base_url)
        self.key = as_ring(key)
        self.fingerprint = leaf_fingerprint(self.key)
        self.concurrency = concurrency
        self.retry = retry or RetryPolicy()
        self.create_grace_s = create_grace_s
        self.lock_wait_s = lock_wait_s
        self.secret_grace_s = secret_grace_s
        self.stopping = threading.Event()  # set: orgs not yet started are skipped
        # file digest -> its facts (all from the bytes): `serve` asks them of the fleet each batch
        self._spec_views: dict[str, tuple[SpecFacts, tuple[tuple[str, str], ...]]] = {}
        self._fleet_views: tuple[LoadResult, int, list[Any]] | None = None
        # id of a spec's org object -> (that object, its path, its desired state): `serve`
        # hands the same object each run while the file and its templates are unchanged
        self._desired_kept: dict[int, tuple[Organization, str, DesiredOrg]] = {}

    def master_key_refusal(self) -> str | None:
        """One line when this process's active master key is not the one Postgres records
        (`keys rotate`): it may write no credential. One indexed read."""
        record = self.state.credentials.master_key()
        if record is None:
            return None
        if record["key_id"] != self.key.active_id:
            refused = MasterKeyRefused.not_active(
                None, self.key.active_id, record["key_id"], self.key.ids
            )
            return str(refused)
        if record["key_check"] not in (None, self.key.check_value()):
            return str(MasterKeyRefused.wrong_key(None, self.key.active_id))
        return None

    # -- desired state ---------------------------------------------------------------------------

    def _facts(
        self,
        loaded: LoadResult,
        peers: LoadResult | None,
        options: Options,
        index: list[Any],
        saved: dict[str, OrgStamp] | None = None,
        *,
        held: set[str] | frozenset[str] = frozenset(),
    ) -> RunFacts:
        """What the run's rules are decided from, as plain values (a key as its digest);
        `held`: orgs a rollout's later wave keeps on their old version (they do not move)."""
        fleet = peers or loaded
        failed = {
            **{p.path: FailedFile(str(p.path), p.path.stem) for p in fleet.problems},
            **{
                path: FailedFile(str(path), path.stem, org_id)
                for path, org_id in fleet.failed_ids.items()
            },
        }
        views = self._views(fleet)
        return RunFacts(
            specs=tuple(self._spec_facts(s) for s in loaded.specs),
            known=tuple(KnownOrg(row.org_id, row.slug) for row in index),
            failed=tuple(failed.values()),
            peers=tuple(facts for facts, _ in views) if peers else None,
            whole_fleet=options.orphans,
            prune=options.prune,
            max_deletes=options.max_deletes,
            saved={k: v.slug for k, v in saved.items()} if saved is not None else None,
            moves=tuple(m for m in _template_moves(views, index) if m.org_id not in held),
            max_template_orgs=options.max_template_orgs,
            accept_rollouts=options.accept_rollouts,
        )

    def _rollouts(self, fleet: LoadResult, index: list[Any]) -> tuple[Decision, ...]:
        """Each template rollout in waves under way or wanted: its gate and step in this run
        (`engine.rollouts.decide`). A rollout is wanted when an org moves to a version whose
        template declares waves; Postgres is read only then."""
        declared = {
            ref: waves_of(rollout.model_dump())
            for ref, t in fleet.templates.usable.items()
            if (rollout := getattr(t.model, "rollout", None)) is not None
        }
        if not declared:
            return ()
        recorded = {row.org_id: row for row in index}
        movers: dict[str, list[Mover]] = {}
        for spec in fleet.all_specs:
            org_id = str(spec.org.metadata.id)
            row = recorded.get(org_id)
            if row is None:
                continue  # new: nothing to move
            on = [(role, ref) for role, ref in spec.org.templates.items() if ref in declared]
            for ref in sorted({ref for _, ref in on}):
                roles = [role for role, r in on if r == ref and role in row.templates]
                if roles:
                    moved = all(row.templates[role] == ref for role in roles)
                    movers.setdefault(ref, []).append(
                        Mover(org_id, spec.org.metadata.slug, moved, row.status)
                    )
        wanted = {ref for ref, ms in movers.items() if any(not m.moved for m in ms)}
        rows = self.state.rollouts.all() if movers else {}
        for ref, ms in movers.items():  # this process's webhooks of the orgs moved
            since = rows[ref].wave_started_s if ref in rows else 0.0
            movers[ref] = [
                replace(m, webhooks_failing=webhooks_failing(m.slug, since)) if m.moved else m
                for m in ms
            ]
        out: list[Decision] = []
        for ref in sorted(wanted | {r for r in rows if r in movers and not rows[r].done}):
            stored = rows.get(ref)
            row = (
                Row(stored.wave, stored.wave_ready_s, stored.halted_reason, stored.done)
                if stored is not None
                else None
            )
            out.append(decide(ref, declared[ref], movers[ref], row))
        return tuple(out)

    def _views(self, fleet: LoadResult) -> list[tuple[SpecFacts, tuple[tuple[str, str], ...]]]:
        """`_spec_view` of every spec of `fleet`, kept for the last fleet asked: a `serve` run
        hands each of its batches the same one."""
        last = self._fleet_views
        if last is not None and last[0] is fleet and last[1] == len(fleet.specs):
            return last[2]
        views = [self._spec_view(s) for s in fleet.specs]
        self._fleet_views = (fleet, len(fleet.specs), views)
        return views

    def _spec_facts(self, spec: SpecFile) -> SpecFacts:
        return self._spec_view(spec)[0]

    def _spec_view(self, spec: SpecFile) -> tuple[SpecFacts, tuple[tuple[str, str], ...]]:
        """A spec's facts and its templates by role, remembered by the file's digest: a
        `serve` run asks them of every spec of the fleet for each batch it claims (a keyed
        digest each), and again each run."""
        seen = self._spec_views
        known = seen.get(spec.digest) if spec.digest else None
        if known is not None:
            return known
        vapi = spec.org.spec.credentials.vapi
        digest = None
        if vapi is not None:
            digest = self.key.fingerprint({"vapiApiKey": vapi.api_key.get_secret_value()})
        view = (
            SpecFacts(str(spec.org.metadata.id), spec.org.metadata.slug, digest),
            tuple(sorted(spec.org.templates.items())),
        )
        if spec.digest:
            if len(seen) >= _VIEWS_KEPT:  # files changed many times: start again
                seen.clear()
            seen[spec.digest] = view
        return view

    def run_plan(
        self, loaded: LoadResult, *, peers: LoadResult | None = None, options: Options
    ) -> RunPlan:
        """The run's own rules (`engine.runplan`) for these specs: one Postgres read."""
        return plan_run(self._facts(loaded, peers, options, self.state.orgs.index()))

    def _desired(
        self,
        loaded: LoadResult,
        peers: LoadResult | None = None,
        options: Options | None = None,
        saved: dict[str, OrgStamp] | None = None,
        only: frozenset[str] | None = None,
    ) -> tuple[list[tuple[DesiredOrg | None, OrgOutcome]], AccountRegistry, RunPlan]:
        """The run's plan (`engine.runplan`), then each spec it runs as desired state (or its
        failure), the refused ones as failures, and the orphans when the specs are the whole
        fleet. `only`: these org ids and no other (the end of a serve run)."""
        options = options or Options()
        index = self.state.orgs.index()
        rollouts = self._rollouts(peers or loaded, index)
        held = {org_id for d in rollouts for org_id in d.held}
        run = plan_run(self._facts(loaded, peers, options, index, saved, held=held))
        run = replace(run, rollouts=rollouts)
        out: list[tuple[DesiredOrg | None, OrgOutcome]] = []
        fleet = len((peers or loaded).all_specs)
        for spec in loaded.specs:
            md = spec.org.metadata
            outcome = OrgOutcome(md.slug, str(md.id), spec_digest=spec.digest)
            refusal = run.refusal(str(md.id))
            if refusal is not None:
                outcome.error, outcome.stalled = refusal.reason, refusal.stalled
                out.append((None, outcome))
                continue
            try:
                desired = self._desired_org(spec, fleet=fleet)
            except Exception as exc:  # anything in one org's spec is that org's failure only
                outcome.error = _message(exc)
                outcome.stalled = "SpecInvalid"
                out.append((None, outcome))
                continue
            if str(md.id) in held:
                desired = replace(desired, held=_held_roles(spec, rollouts))
            out.append((desired, outcome))
        here = {s.org_id for s in run.run} | {o.org_id for _, o in out}
        for refusal in run.refused:  # a saved plan's org that is not here
            if refusal.org_id not in here:
                missing = OrgOutcome(refusal.slug, refusal.org_id)
                missing.error = refusal.reason
                out.append((None, missing))
        out += self._orphans(k for k in run.orphans if only is None or k.org_id in only)
        if only is not None:
            out = [item for item in out if item[1].org_id in only]
        # an orphan retired in this run gives its account up: a new org may take it
        retiring = {k.org_id for k in run.orphans} if run and run.retire_orphans else set()
        accounts = AccountRegistry(row for row in index if row.org_id not in retiring)
        return out, accounts, run

    def _desired_org(self, spec: SpecFile, *, fleet: int) -> DesiredOrg:
        """`desired_org` of the spec, kept for its org object: a function of that object, the
        path and this controller's key alone, and never changed once made (a plan copies what
        it fills in). A `serve` run asks it of every org each run; the spec cache hands the
        same object while the file and its templates are unchanged. At most twice the fleet
        is kept (files changed since start it again)."""
        kept, source = self._desired_kept, str(spec.path)
        known = kept.get(id(spec.org))
        if known is not None and known[0] is spec.org and known[1] == source:
            return known[2]
        desired = desired_org(spec.org, self.key, source=source, fingerprint=self.fingerprint)
        if len(kept) >= 2 * fleet + 16:
            kept.clear()
        kept[id(spec.org)] = (spec.org, source, desired)
        return desired

    def _orphans(self, rows: Iterable[KnownOrg]) -> list[tuple[DesiredOrg | None, OrgOutcome]]:
        """Orgs in Postgres without a spec: to retire, reached through their stored Vapi key."""
        rows = list(rows)
        if not rows:
            return []
        sealed = self.state.credentials.stored_vapi([row.org_id for row in rows])
        out: list[tuple[DesiredOrg | None, OrgOutcome]] = []
        for row in sorted(rows, key=lambda r: r.slug):
            outcome = OrgOutcome(row.slug, row.org_id)
            credentials: dict[str, DesiredCredential] = {}
            token = sealed.get(row.org_id)
            try:
                config = self.key.decrypt(token, aad=f"{row.org_id}:vapi") if token else None
            except UnknownKeyId as exc:
                outcome.error = str(MasterKeyRefused.missing(row.slug, "vapi", exc.key_id))
                out.append((None, outcome))
                continue
            except Exception as exc:
                outcome.error = _message(exc)
                out.append((None, outcome))
                continue
            if config is not None:
                credentials["vapi"] = DesiredCredential("vapi", "", Sensitive(config))
            api_key = config.get("apiKey") if config else None
            desired = DesiredOrg(
                org_id=row.org_id,
                slug=row.slug,
                name=row.slug,
                credentials=credentials,
                assistants={},
                vapi_api_key=Sensitive(api_key) if isinstance(api_key, str) else None,
                retire=ORPHANED,
                key_id=self.key.active_id,
                key_ids=self.key.ids,
                key_check=self.key.check_value(),
            )
            out.append((desired, outcome))
        return out

    # -- running over orgs -----------------------------------------------------------------------

    def _each(
        self,
        items: list[tuple[DesiredOrg | None, OrgOutcome]],
        work: Callable[[DesiredOrg, OrgOutcome], None],
        progress: Progress | None = None,
        *,
        final: bool = False,
    ) -> list[OrgOutcome]:
        def guarded(item: tuple[DesiredOrg | None, OrgOutcome]) -> OrgOutcome:
            desired, outcome = item
            if desired is None or outcome.error is not None:
                pass
            elif self.stopping.is_set():  # shutting down: no new org is started
                outcome.skipped = STOPPING
            else:
                try:
                    work(desired, outcome)
                except Exception as exc:  # one org's failure never stops the others
                    outcome.error = _message(exc)
                    if isinstance(exc, SharedAccount):
                        outcome.stalled = "SharedAccount"
                    if not isinstance(exc, ReconcilerError):
                        log.error("org %s: unexpected %s", outcome.slug, type(exc).__name__)
            if progress is not None:
                try:
                    progress.org_done(outcome, final=final)
                except Exception as exc:  # the display's trouble is never the org's
                    log.debug("progress: %s", type(exc).__name__)
            return outcome

        if not items:
            return []
        # each worker takes the next org until none is left: a future per worker, not per org
        done: list[OrgOutcome | None] = [None] * len(items)
        waiting = iter(enumerate(items))
        taking = threading.Lock()
        abandon = threading.Event()  # interrupted (Ctrl-C, or worse than an org's failure)

        def drain() -> None:
            while True:
                with taking:
                    taken = None if abandon.is_set() else next(waiting, None)
                if taken is None:
                    return
                try:
                    done[taken[0]] = guarded(taken[1])
                except BaseException:
                    abandon.set()  # no org is started after it, as no future ran after it
                    raise

        workers = min(self.concurrency, len(items))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            try:
                for started in [pool.submit(drain) for _ in range(workers)]:
                    started.result()
            except BaseException:
                abandon.set()  # the orgs under way finish; no other starts
                raise
        outcomes = [outcome for outcome in done if outcome is not None]
        assert len(outcomes) == len(items)  # every worker ended well: each org was taken
        return outcomes

    def _client(self, desired: DesiredOrg, kind: type[_Client]) -> _Client | None:
        key = desired.vapi_api_key
        if key is None:
            return None
        return kind(self.http, key.reveal(), retry=self.retry, secrets=partial(_secrets, desired))

    @staticmethod
    def _list_live(reader: VapiReader | None, outcome: OrgOutcome) -> list[dict[str, Any]] | None:
        if reader is None:
            return None  # no Vapi key: the account cannot be seen, so not planned
        try:
            outcome.live = reader.list_assistants()
        except VapiError as exc:
            outcome.vapi_error = exc
            return None
        outcome.listed = True
        return outcome.live

    @staticmethod
    def _kinds_used(desired: DesiredOrg, row: dict[str, Any] | None) -> list[ResourceKind]:
        """The kinds beyond assistants this org has in its spec or in Postgres: only those
        are listed (an org with assistants only costs one list call)."""
        used = set(desired.resources) | {r["kind"] for r in (row or {}).get("resources") or ()}
        return [kind for kind in KINDS if kind.name in used]

    def _list_kinds(
        self,
        reader: VapiReader | None,
        desired: DesiredOrg,
        row: dict[str, Any] | None,
        outcome: OrgOutcome,
    ) -> None:
        """Lists the account's objects of each kind the org uses (after its assistants)."""
        outcome.live_resources = {}
        if reader is None or not outcome.listed:
            return
        for kind in self._kinds_used(desired, row):
            try:
                outcome.live_resources[kind.name] = reader.list_objects(kind.path)
            except VapiError as exc:
                outcome.vapi_error = exc
                outcome.live_resources = {}
                return

    def _held_elsewhere(
        self, items: Iterable[DesiredOrg], rows: dict[str, dict[str, Any]]
    ) -> dict[str, dict[tuple[str, str], str]]:
        """org id -> (kind, name) -> slug of another live org Postgres gives that number to.
        Only numbers an org does not hold yet are asked about (one it holds is no other org's:
        a unique index), so a converged run asks nothing; else one query for all the orgs."""
        wanted: dict[str, list[str]] = {}
        for d in items:
            own = {
                r["name"]
                for r in (rows.get(d.org_id) or {}).get("resources") or ()
                if r["kind"] == PHONE_NUMBER.name
            }
            new = [n for n in d.resources.get(PHONE_NUMBER.name, {}) if n not in own]
            if new:
                wanted[d.org_id] = new
        names = sorted({n for ns in wanted.values() for n in ns})
        held = self.state.resources.held_by(PHONE_NUMBER.name, names) if names else {}
        out: dict[str, dict[tuple[str, str], str]] = {}
        for org_id, numbers in wanted.items():
            for name in numbers:
                owner = held.get(name)
                if owner is not None and owner[0] != org_id:
                    out.setdefault(org_id, {})[(PHONE_NUMBER.name, name)] = owner[1]
        return out

    def _foreign_mapped(self, live: list[dict[str, Any]] | None, org_id: str) -> frozenset[str]:
        """Assistants in the account tagged for other orgs that Postgres maps to an org."""
        foreign = [
            a["id"] for a in live or () if (tag := tag_of(a)) is not None and tag[0] != org_id
        ]
        return self.state.assistants.mapped_to_others(org_id, foreign) if foreign else frozenset()

    def _observed(
        self,
        row: dict[str, Any] | None,
        live: list[dict[str, Any]] | None,
        desired: DesiredOrg,
        accounts: AccountRegistry,
        outcome: OrgOutcome,
        held: dict[tuple[str, str], str] | None = None,
    ) -> ObservedOrg:
        observed = observed_from_rows(
            row,
            live,
            self.fingerprint,
            shared_with=accounts.shared_with(desired.org_id),
            mapped_elsewhere=self._foreign_mapped(live, desired.org_id),
            live_resources=outcome.live_resources if live is not None else None,
            held_elsewhere=held,
        )
        outcome.live_resources = {}  # planned from its masked copy: no live secret kept
        return observed

    def _plan(
        self, desired: DesiredOrg, observed: ObservedOrg, options: Options, run: RunPlan | None
    ) -> OrgPlan:
        """The planner, with this run's options and rules: an orphan is retired only when the
        run's plan allows it (never in a run where a spec file failed: it may be its spec)."""
        orphan = desired.retire == ORPHANED
        held_back = orphan and run is not None and options.prune and not run.retire_orphans
        plan = plan_org(
            desired,
            observed,
            prune=options.prune and not held_back,
            create_grace_s=self.create_grace_s,
            adopt_by_name=options.adopt_by_name,
            accept_account_change=desired.slug in options.accept_account_change,
        )
        if held_back and run is not None and run.held_back:
            plan = replace(plan, warnings=(*plan.warnings, run.held_back))
        return plan

    # -- plan --------------------------------------------------------------------------------

    def plan(
        self,
        loaded: LoadResult,
        *,
        prune: bool = False,
        options: Options | None = None,
        peers: LoadResult | None = None,
        progress: Progress | None = None,
    ) -> RunReport:
        """Read-only: Postgres reads and Vapi GETs, through reader objects only. Every account
        is listed first, so two orgs on one account are both caught whatever the order; then
        each org's plan is known, and `progress` told, as soon as it is made."""
        options = options or Options(prune=prune)
        started = time.monotonic()
        items, accounts, run = self._desired(loaded, peers, options)
        return self._plan_items(items, accounts, options, run, loaded, started, progress)

    def plan_retire(self, slug: str, *, max_deletes: int = MAX_DELETES) -> RunReport:
        """What `retire(slug)` would do, read-only (`org retire --dry-run`, and the count its
        question names): the org's tagged assistants to delete, and its retirement."""
        index = self.state.orgs.index()
        items = self._retiring(index, slug)
        options = Options(prune=True, orphans=True, max_deletes=max_deletes)
        return self._plan_items(
            items, AccountRegistry(index), options, None, LoadResult([], []), time.monotonic()
        )

    def _retiring(
        self, index: list[OrgIndexRow], slug: str
    ) -> list[tuple[DesiredOrg | None, OrgOutcome]]:
        """The org `slug` of `index` as an orphan to retire by name."""
        rows = [KnownOrg(row.org_id, row.slug) for row in index if row.slug == slug]
        if not rows:
            raise ReconcilerError(f"no live org has the slug {slug}")
        return [
            (replace(d, retire="retired by `reconciler org retire`") if d else None, o)
            for d, o in self._orphans(rows)
        ]

    def _plan_items(
        self,
        items: list[tuple[DesiredOrg | None, OrgOutcome]],
        accounts: AccountRegistry,
        options: Options,
        run: RunPlan | None,
        loaded: LoadResult,
        started: float,
        progress: Progress | None = None,
    ) -> RunReport:
        rows = self.state.orgs.observe(
            [d.org_id for d, o in items if d is not None and o.ok], many=True
        )
        if progress is not None:
            progress.stage("listing", len(items))

        held = self._held_elsewhere((d for d, o in items if d is not None and o.ok), rows)

        def look(desired: DesiredOrg, outcome: OrgOutcome) -> None:
            asked = accounts.mark()
            reader = self._client(desired, VapiReader)
            live = self._list_live(reader, outcome)
            self._list_kinds(reader, desired, rows.get(desired.org_id), outcome)
            if desired.retire != ORPHANED:  # an orphan claims no account (`_desired`)
                seen = account_ids([*(live or ()), *_flat(outcome.live_resources)])
                accounts.see(desired.org_id, desired.slug, seen, asked_at=asked)

        # orphans retired in this run go first (`apply`): what they hold is gone by the time
        # the other orgs list their accounts, so they are planned without it
        retiring = {k.org_id for k in run.orphans} if run and run.retire_orphans else set()

        def decide(desired: DesiredOrg, outcome: OrgOutcome) -> None:
            live = outcome.live
            if retiring and live is not None and desired.retire != ORPHANED:
                live = [a for a in live if (tag := tag_of(a)) is None or tag[0] not in retiring]
            observed = self._observed(
                rows.get(desired.org_id),
                live,
                desired,
                accounts,
                outcome,
                held.get(desired.org_id),
            )
            outcome.live = None  # planned from its masked copy: no live secret kept past here
            outcome.plan = self._plan(desired, observed, options, run)
            outcome.stamp = stamp(outcome.spec_digest, observed, outcome.plan)
            if outcome.vapi_error is not None:
                outcome.error = str(outcome.vapi_error)
            elif outcome.plan.blocked:  # apply would fail the org for the same reason
                outcome.error = "; ".join(outcome.plan.blocked)

        self._each(items, look, progress, final=False)
        if progress is not None:
            progress.stage("planning", len(items))
        outcomes = self._each(items, decide, progress, final=True)
        report = RunReport(outcomes, list(loaded.problems), time.monotonic() - started)
        report.failing = [k.slug for k in run.failing] if run else []
        report.rollouts = list(run.rollouts) if run else []
        if options.prune:
            bound = bound_deletes(_planned_deletes(outcomes), options.max_deletes)
            if not bound.allowed:
                report.warnings.append(f"apply would refuse every delete: {bound.note}")
        return report


class Controller(PlanController):
    """`PlanController` with the writes: `apply` and `retire`, over a `StateWriter` (the one
    thing it takes that a `PlanController` does not; the other options are the same)."""

    def __init__(
        self,
        state: StateWriter,
        http: httpx.Client,
        key: Keys,
        **options: Unpack[ControllerOptions],
    ) -> None:
        super().__init__(state, http, key, **options)
        self.writer = state

    def apply(
        self,
        loaded: LoadResult,
        *,
        prune: bool = False,
        command: str = "apply",
        revision: str | None = None,
        peers: LoadResult | None = None,
        options: Options | None = None,
        saved: dict[str, OrgStamp] | None = None,
        only: frozenset[str] | None = None,
        progress: Progress | None = None,
    ) -> RunReport:
        """Converge every org of `loaded` (`progress` told of each as it ends); `revision` (a
        git commit) is recorded as each org's last attempted revision, and as its last applied
        one when it converged. With
        `options.prune`, the deletes of the whole run are counted first (a read-only plan):
        more than `max_deletes` and none is made (`serve` counts them at the end of its run
        instead: `defer_deletes`). `saved` (`apply FILE`): the stamps of a saved plan, by org
        id; an org runs only when its spec, its observed state and so its plan are still what
        the saved plan was made from, and only the orgs in it run."""
        options = options or Options(prune=prune)
        notes: list[str] = []
        if options.prune and not options.defer_deletes:
            interim = _Interim(progress) if progress is not None else None
            counted = self.plan(loaded, options=options, peers=peers, progress=interim)
            bound = bound_deletes(_planned_deletes(counted.outcomes), options.max_deletes)
            if not bound.allowed:
                notes.append(bound.note)
                options = replace(options, prune=False)
        started = time.monotonic()
        # the run's first read of its orgs (`_apply_items`), asked for now: the database's
        # own time (tens of ms at 1,000 orgs, more across a network) passes while the desired
        # state is worked out, instead of after it
        first_read = self._read_ahead(loaded, only) if saved is None else None
        try:
            items, accounts, run = self._desired(loaded, peers, options, saved, only)
            self._record_rollouts(run.rollouts)
        except BaseException:
            if first_read is not None:
                first_read.cancel()  # not started yet: never is
            raise
        report = self._apply_items(
            items,
            accounts,
            options,
            run,
            loaded,
            command,
            revision,
            started,
            saved,
            progress,
            first_read,
        )
        report.notes[:0] = notes
        return report

    def _read_ahead(
        self, loaded: LoadResult, only: frozenset[str] | None
    ) -> Future[dict[str, dict[str, Any]]] | None:
        """`orgs.observe` of every org of `loaded` (of `only`, when given), in a thread of
        its own: a superset of the orgs `_apply_items` looks at (the refused are read and
        not used). Read before the run's rollouts and run row are written, which it does
        not return; an org it shows converged is one a replica could change just after
        either way, and any other is read again under its lock. None: read it then."""
        ids = [str(s.org.metadata.id) for s in loaded.specs]
        if only is not None:
            ids = [org_id for org_id in ids if org_id in only]
        if not ids:
            return None
        reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="first-read")
        try:
            return reader.submit(self.writer.orgs.observe, ids, many=True)
        except RuntimeError:  # no thread to be had: the read is made in its place
            return None
        finally:
            reader.shutdown(wait=False)  # the read goes on; its thread ends with it

    def _record_rollouts(self, rollouts: Iterable[Decision]) -> None:
        """Each rollout's step decided for this run, before any org of it runs (a step is
        conditional in SQL: two replicas deciding the same step record it once)."""
        book = self.writer.rollouts
        for d in rollouts:
            if d.step == "start":
                book.start(d.template, d.waves)
            elif d.step in ("ready", "unready"):
                book.ready(d.template, d.wave, d.step == "ready")
            elif d.step == "advance":
                book.advance(d.template, d.wave - 1)
            elif d.step == "halt":
                book.halt(d.template, d.reason)
            elif d.step == "finish":
                book.finish(d.template)

    def retire(self, slug: str, *, max_deletes: int = MAX_DELETES) -> RunReport:
        """`reconciler org retire SLUG`: as `apply --prune` does for an org whose spec is gone."""
        index = self.writer.orgs.index()
        options = Options(prune=True, orphans=True, max_deletes=max_deletes)
        empty = LoadResult([], [])
        items = self._retiring(index, slug)
        return self._apply_items(
            items,
            AccountRegistry(index),
            options,
            None,
            empty,
            "org retire",
            None,
            time.monotonic(),
        )

    def _apply_items(
        self,
        items: list[tuple[DesiredOrg | None, OrgOutcome]],
        accounts: AccountRegistry,
        options: Options,
        run: RunPlan | None,
        loaded: LoadResult,
        command: str,
        revision: str | None,
        started: float,
        saved: dict[str, OrgStamp] | None = None,
        progress: Progress | None = None,
        first_read: Future[dict[str, dict[str, Any]]] | None = None,
    ) -> RunReport:
        """Orphans first (an org taking a retired org's slug needs it freed), then the rest,
        concurrently; every status in one batch at the end. `first_read`: the read below,
        already asked for (`_read_ahead`)."""
        state = self.writer
        run_id = state.runs.start(command, len(items))
        budget = _DeleteBudget(options.max_deletes)
        # one read for every org: a converged org is known without its lock (`_look`)
        # (an org leaving, or one of a saved plan, is never looked at: read under its lock)
        looked_at = [d.org_id for d, o in items if d is not None and o.ok and not d.retire]
        looking, rows = saved is None and bool(looked_at), {}
        if looking:
            try:
                rows = (
                    first_read.result()
                    if first_read is not None
                    else state.orgs.observe(looked_at, many=True)
                )
            except StateError:  # each org meets the trouble on its own, under its lock
                looking = False

        def work(desired: DesiredOrg, outcome: OrgOutcome) -> None:
            looked = None
            row = rows.get(desired.org_id)
            # a new org (no row yet) always has something to do: straight to its lock
            if looking and not desired.retire and row is not None:
                looked = self._look(desired, outcome, row, options, run, accounts)
                if looked is None:
                    return  # converged: nothing to write, so no lock taken
            with state.orgs.lock(desired.org_id, wait_s=self.lock_wait_s) as lock:
                if not lock.held:
                    waited = f" (waited {self.lock_wait_s:g}s)" if self.lock_wait_s > 0 else ""
                    outcome.skipped = f"another reconciler is applying this org{waited}"
                    return
                self._apply_org(
                    state, desired, outcome, options, run, lock, accounts, budget, saved, looked
                )

        leaving = [item for item in items if item[0] is not None and item[0].retire]
        staying = [item for item in items if item[0] is None or not item[0].retire]
        if progress is not None:
            progress.stage("applying", len(items))
        outcomes = self._each(leaving, work, progress, final=True)
        outcomes += self._each(staying, work, progress, final=True)
        for outcome in outcomes:  # two orgs on one account: both refused, whatever the order
            others = accounts.shared_with(outcome.org_id)
            if outcome.ok and not outcome.skipped and others:
                outcome.error = _shared_message(others)
        report = RunReport(outcomes, list(loaded.problems), time.monotonic() - started)
        report.failed_ids = dict(loaded.failed_ids)
        report.run_id = run_id
        report.failing = [k.slug for k in run.failing] if run is not None else []
        report.rollouts = list(run.rollouts) if run is not None else []
        self._record_run(state, run_id, report, accounts, revision)
        return report

    def _look(
        self,
        desired: DesiredOrg,
        outcome: OrgOutcome,
        row: dict[str, Any] | None,
        options: Options,
        run: RunPlan | None,
        accounts: AccountRegistry,
    ) -> _Look | None:
        """The org planned from the run's first read of Postgres and a listing of its
        account, without its lock. None when that plan has nothing to do: the org is converged
        and done (no lock, no statement of its own). Else what was seen, for `_apply_org`, which
        plans again under the lock (the same listing when nothing can have moved since)."""
        asked = accounts.mark()
        reader = self._client(desired, VapiReader)
        live = self._list_live(reader, outcome)
        self._list_kinds(reader, desired, row, outcome)
        seen = account_ids([*(live or ()), *_flat(outcome.live_resources)])
        accounts.see(desired.org_id, desired.slug, seen, asked_at=asked)
        looked = _Look(row, live, outcome.live_resources, asked, outcome.vapi_error, outcome.listed)
        held = self._held_elsewhere([desired], {desired.org_id: row} if row else {})
        observed = self._observed(row, live, desired, accounts, outcome, held.get(desired.org_id))
        outcome.live = None
        plan = self._plan(desired, observed, options, run)
        if plan.actions or plan.blocked or outcome.vapi_error is not None:
            return looked
        outcome.plan, outcome.done = plan, []
        return None

    def _apply_org(
        self,
        state: StateWriter,
        desired: DesiredOrg,
        outcome: OrgOutcome,
        options: Options,
        run: RunPlan | None,
        lock: OrgLock,
        accounts: AccountRegistry,
        budget: _DeleteBudget,
        saved: dict[str, OrgStamp] | None = None,
        looked: _Look | None = None,
    ) -> None:
        writer = self._client(desired, VapiWriter)
        row = state.orgs.observe([desired.org_id]).get(desired.org_id)  # re-read under the lock
        left_alone = desired.retire == ORPHANED and not (run is not None and run.retire_orphans)
        if left_alone:  # an orphan not retired in this run: nothing to list its account for
            writer = None
        if looked is not None and looked.reusable(row):
            asked, live = looked.asked, looked.live
            outcome.live, outcome.listed = looked.live, looked.listed
            outcome.live_resources = looked.live_resources
            outcome.vapi_error = looked.vapi_error
        else:
            outcome.vapi_error, outcome.listed = None, False
            asked = accounts.mark()
            live = self._list_live(writer, outcome)
            self._list_kinds(writer, desired, row, outcome)
        if desired.retire != ORPHANED:  # an orphan claims no account (`_desired`)
            seen = account_ids([*(live or ()), *_flat(outcome.live_resources)])
            accounts.see(desired.org_id, desired.slug, seen, asked_at=asked)
        held = self._held_elsewhere([desired], {desired.org_id: row} if row else {}).get(
            desired.org_id
        )
        observed = self._observed(row, live, desired, accounts, outcome, held)
        outcome.live = None  # planned from its masked copy: no live secret kept past here
        plan = self._plan(desired, observed, options, run)
        if options.defer_deletes and options.prune and _deletes_or_retires(plan):
            # counted with the whole run at its end (serve); the rest of the org runs now
            outcome.deferred = plan.deletes
            plan = self._plan(desired, observed, replace(options, prune=False), run)
            plan = replace(
                plan,
                warnings=(
                    *plan.warnings,
                    f"its {_deferred_text(outcome.deferred, bool(desired.retire))} wait for "
                    f"the end of the run, where the run's deletes are counted against "
                    f"--max-deletes {options.max_deletes}",
                ),
            )
        outcome.plan = plan
        outcome.done = []
        if saved is not None:  # apply FILE: only the saved plan, and only if it still holds
            why = stale(saved[desired.org_id], stamp(outcome.spec_digest, observed, plan))
            if why is not None:
                outcome.plan = replace(plan, actions=())
                raise ReconcilerError(f"{why}: nothing done; make a new plan")
        if plan.blocked:
            outcome.stalled = "Blocked"
        budget.take(plan.deletes)  # the live state moved since the count: still bounded
        guard = _Guard(desired, lock, accounts, writer, self.twilio)
        applier = Applier(plan, writer, state, self.key, self.fingerprint, guard)
        try:
            applier.apply(outcome.done)
        except SharedAccount:
            self._forget_if_new(state, desired, outcome)
            raise
        finally:
            outcome.created = applier.created
        if outcome.vapi_error is not None:
            raise outcome.vapi_error

    @staticmethod
    def _forget_if_new(state: StateWriter, desired: DesiredOrg, outcome: OrgOutcome) -> None:
        """An org first written in this run and then refused for sharing its Vapi account
        keeps nothing in Postgres (its row, credentials and state go): it is refused as a
        whole. What it created in Vapi stays tagged, and is reported."""
        done = outcome.done or []
        if any(isinstance(a, UpsertOrg) and a.kind == "create" for a in done):
            state.orgs.forget(desired.org_id)
            outcome.done = [a for a in done if a.resource == "assistant"]

    def _record_run(
        self,
        state: StateWriter,
        run_id: int,
        report: RunReport,
        accounts: AccountRegistry,
        revision: str | None,
    ) -> None:
        """Every org's status in one batch, then the run row. A database that is down by now
        costs the record, never the report: the run's notes say what was not written."""
        statuses = [self._status(o, accounts, revision) for o in report.outcomes if not o.skipped]
        if report.problems:  # a file that failed: its org, when Postgres knows it, is Stalled
            reported = {s.org_id for s in statuses}
            by_slug = {r.slug: r.org_id for r in accounts.index if r.org_id not in reported}
            statuses += stalled_files(report.problems, by_slug, revision, report.failed_ids)
        errors = [{"org": o.slug, "error": o.error or ""} for o in report.failed]
        errors += [{"file": str(p.path), "error": str(p)} for p in report.problems]
        try:
            state.orgs.finish(statuses, run_id=run_id, secret_grace_s=self.secret_grace_s)
        except StateError as exc:
            report.notes.append(f"the status of {len(statuses)} org(s) was not recorded: {exc}")
        try:
            state.orgs.expire()  # mappings and retired secrets past the retention window
        except StateError as exc:
            report.notes.append(f"expired mappings were not removed: {exc}")
        try:
            state.runs.finish(
                run_id,
                orgs_failed=len(report.failed),
                files_failed=len(report.failed_files),
                orgs_skipped=len(report.skipped),
                changes=report.counts(),
                errors=errors,
            )
        except StateError as exc:
            report.notes.append(f"the run was not recorded: {exc}")

    @staticmethod
    def _status(outcome: OrgOutcome, accounts: AccountRegistry, revision: str | None) -> OrgStatus:
        verified: bool | None = None
        vapi_error = None
        if outcome.listed:
            verified = True
        elif isinstance(outcome.vapi_error, VapiAuthError):
            verified, vapi_error = False, str(outcome.vapi_error)
        account = None
        if outcome.ok and not accounts.shared_with(outcome.org_id):
            account = accounts.account(outcome.org_id)
        changes = _changes(outcome)
        plan = outcome.plan
        if any(isinstance(a, RetireOrg) for a in outcome.done or ()):
            conditions = status.retired(plan.orphaned if plan else "")
        elif outcome.error is None and plan is not None and plan.orphaned:
            conditions = status.stalled("Orphaned", plan.orphaned)
        elif outcome.error is None:
            warnings = plan.warnings if plan else ()
            conditions = status.ready(changes, warnings)
        elif outcome.stalled is not None:
            conditions = status.stalled(outcome.stalled, outcome.error)
        else:
            conditions = status.failed(outcome.error)
        return OrgStatus(
            outcome.org_id,
            status.summary(conditions),
            outcome.error,
            conditions,
            revision=revision,
            applied=outcome.ok,
            changes=changes,
            vapi_account_id=account,
            vapi_verified=verified,
            vapi_error=vapi_error,
        )
