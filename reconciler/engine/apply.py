"""Executing an org's plan, and nothing but the plan: every action carries what it needs.

Every Vapi write is followed by the Postgres write that records it, with Vapi's answer as the
applied state; a create is preceded by a committed create-pending row and, when its outcome
is unknown, resolved by looking for our ownership tag, never by a blind second POST. A create
that Vapi refused outright (a definite 4xx) clears its pending row, so the next run creates
at once. Every create is vetted by the controller's guard before the org's first write
(`WriteGuard.vet`: a Twilio number must be one of the org's Twilio account's): one refused,
and nothing of the org is written in Vapi in that run.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from reconciler.engine.actions import (
    Action,
    AdoptAssistant,
    AdoptResource,
    CreateAssistant,
    CreateResource,
    DeactivateCredential,
    DeleteAssistant,
    DeleteResource,
    LeaveAccount,
    MoveTemplate,
    OrgPlan,
    Pending,
    RetireOrg,
    StoreCredential,
    UpdateAssistant,
    UpdateResource,
    UpsertOrg,
)
from reconciler.engine.diff import strip_server_owned
from reconciler.engine.kinds import KEYED
from reconciler.engine.model import Fingerprint, tag_of
from reconciler.engine.observe import masked_live, masked_object
from reconciler.engine.resources import strip_owned
from reconciler.errors import ReconcilerError
from reconciler.secrets.crypto import Keys, as_ring
from reconciler.state.store import StateWriter
from reconciler.vapi.client import VapiAmbiguousWrite, VapiError, VapiRejected, VapiWriter

# Actions that write Postgres only (the org's row, its credentials): they come first in a plan.
_STATE_ONLY = (UpsertOrg, StoreCredential, DeactivateCredential)


class WriteGuard:
    """What the controller checks around the applier's Vapi writes; the default checks nothing.

    `vet` raises to refuse a create before anything of it is written (no create-pending row,
    no POST): an imported Twilio number must be one of the org's Twilio account's, a read the
    controller makes (the engine makes no I/O of its own). `before_write` raises to stop the
    org before a write (its lock lost, its account found shared); `creating` wraps a create
    (to serialise first creates into accounts whose identity is not known yet); `answered`
    learns from a create's answer (which account it landed in) and raises when that account
    turns out to be another org's too.
    """

    def vet(self, action: CreateResource) -> None:
        return None

    def before_write(self) -> None:
        return None

    @contextmanager
    def creating(self) -> Iterator[None]:
        yield

    def answered(self, assistant: dict[str, Any]) -> None:
        return None


class Applier:
    def __init__(
        self,
        plan: OrgPlan,
        vapi: VapiWriter | None,
        state: StateWriter,
        key: Keys,
        fingerprint: Fingerprint,
        guard: WriteGuard | None = None,
    ) -> None:
        self.plan = plan
        self.vapi = vapi
        self.state = state
        self.key = as_ring(key)
        self.key_check = self.key.check_value()
        self.fingerprint = fingerprint
        self.guard = guard or WriteGuard()
        # what this run created: an assistant's role, or `kind/name` -> its new Vapi id
        self.created: dict[str, str] = {}
        # (kind, name) -> Vapi id of what this run created, for the actions that refer to it
        self.ids: dict[tuple[str, str], str] = {}

    def apply(self, done: list[Action]) -> None:
        """Runs the actions in order, appending each to `done` once it took effect (so a
        report after a failure says what really happened); the first failure stops this org
        (not the others). A blocked plan runs nothing at all."""
        if self.plan.blocked:
            raise ReconcilerError("; ".join(self.plan.blocked))
        vetted = False
        for action in self.plan.actions:
            if not vetted and not isinstance(action, _STATE_ONLY):
                # every create vetted before the org's first Vapi write (its row and
                # credentials, written first, record the failure in its status)
                for create in self.plan.actions:
                    if isinstance(create, CreateResource):
                        self.guard.vet(create)
                vetted = True
            self._run(action)
            done.append(action)

    def _writer(self) -> VapiWriter:
        if self.vapi is None:
            raise AssertionError("assistant actions need the org's Vapi credentials")
        self.guard.before_write()
        return self.vapi

    def _run(self, action: Action) -> None:
        org_id, org_slug = self.plan.org_id, self.plan.slug
        match action:
            case UpsertOrg(slug=slug, name=name, forward_url=forward_url):
                self.state.orgs.upsert(org_id, slug, name, forward_url, action.outbound_number)
            case StoreCredential(provider=provider, config=config, fingerprint=fingerprint):
                sealed = self.key.encrypt(config.reveal(), aad=f"{org_id}:{provider}")
                self.state.credentials.store(
                    org_id,
                    provider,
                    sealed,
                    fingerprint,
                    key_ids=self.key.ids,
                    slug=org_slug,
                    key_check=self.key_check,
                )
            case DeactivateCredential(provider=provider):
                self.state.credentials.deactivate(org_id, provider)
            case CreateAssistant():
                self._create(self._filled_create(action))
            case UpdateAssistant(role=role, vapi_id=vapi_id):
                patch = self._fill(action.patch, action.pending)
                stored = self._fill(action.stored, action.pending)
                answer = self._writer().update_assistant(vapi_id, patch)
                sent = {
                    key: {"sent": stored.get(key), "before": action.before.get(key)}
                    for key, value in patch.items()
                    if value is not None
                }
                answer_masked = self._masked(answer)
                self._record(
                    role, vapi_id, action.name, stored, answer_masked, sent, action.template
                )
            case AdoptAssistant(role=role, vapi_id=vapi_id, stored=stored, live=live):
                self._record(role, vapi_id, action.name, stored, live, template=action.template)
            case MoveTemplate(role=role, vapi_id=vapi_id, after=after):
                self.state.assistants.set_template(org_id, role, vapi_id, after)
            case DeleteAssistant(role=role, vapi_id=vapi_id, stray=stray):
                if vapi_id is not None:
                    self._writer().delete_assistant(vapi_id)
                if not stray:
                    self.state.assistants.forget(org_id, role, vapi_id)
            case CreateResource():
                self._create_resource(action)
            case UpdateResource(resource=kind, name=name, vapi_id=vapi_id):
                patch = self._fill(action.patch, action.pending)
                stored = self._fill(action.stored, action.pending)
                answer = self._writer().update_object(KEYED[kind].path, vapi_id, patch)
                sent = {
                    key: {"sent": stored.get(key), "before": action.before.get(key)}
                    for key, value in patch.items()
                    if value is not None
                }
                applied = self._masked_object(kind, answer)
                self.state.resources.record(org_id, kind, name, vapi_id, stored, applied, sent)
            case AdoptResource(resource=kind, name=name, vapi_id=vapi_id, stored=stored):
                self.state.resources.record(org_id, kind, name, vapi_id, stored, action.live)
            case DeleteResource(resource=kind, name=name, vapi_id=vapi_id, forget=forget):
                if vapi_id is not None:
                    self._writer().delete_object(KEYED[kind].path, vapi_id)
                if forget:
                    self.state.resources.forget(org_id, kind, name, vapi_id)
            case LeaveAccount():
                self.state.accounts.leave(org_id)
            case RetireOrg(webhook_secret=secret):
                webhook_only = None
                if secret is not None:
                    kept = {"webhookSecret": secret.reveal()}
                    webhook_only = self.key.encrypt(kept, aad=f"{org_id}:vapi")
                self.state.orgs.retire(
                    org_id,
                    webhook_only,
                    action.reason,
                    key_ids=self.key.ids,
                    slug=org_slug,
                    key_check=self.key_check,
                )

    def _fill(self, value: dict[str, Any], pending: tuple[Pending, ...]) -> dict[str, Any]:
        """`value` with each reference to an object created earlier in this run replaced by
        its id (the plan holds a placeholder there). One not created is a bug of the plan's
        order: refused rather than sent."""
        if not pending:
            return value
        out = copy.deepcopy(value)
        for ref in pending:
            made = self.ids.get((ref.kind, ref.name))
            if made is None:
                raise ReconcilerError(
                    f"{ref.kind} {ref.name} was not created before what refers to it: nothing sent"
                )
            *parents, last = ref.path
            node: Any = out
            for step in parents:
                node = node[int(step)] if isinstance(node, list) else node.get(step)
            if node is None:  # not part of this value (a PATCH without that field)
                continue
            node[last] = made
        return out

    def _filled_create(self, action: CreateAssistant) -> CreateAssistant:
        if not action.pending:
            return action
        body = self._fill(action.body, action.pending)
        stored = self._fill(action.stored, action.pending)
        return replace(action, body=body, stored=stored, pending=())

    def _masked_object(self, kind: str, answer: dict[str, Any]) -> dict[str, Any]:
        return masked_object(kind, strip_owned(answer), self.fingerprint)

    def _create_resource(self, action: CreateResource) -> None:
        """As `_create`, for any kind: a create-pending row first; an unknown outcome is
        looked for by the natural key, never POSTed twice in a run."""
        kind, name, org_id = KEYED[action.resource], action.name, self.plan.org_id
        body = self._fill(action.body, action.pending)
        stored = self._fill(action.stored, action.pending)
        key = kind.key_of(body)
        where = f"{kind.label} {name}"
        with self.guard.creating():
            vapi = self._writer()
            self.state.resources.begin_create(org_id, kind.name, name, stored)
            try:
                created = vapi.create_object(kind.path, kind.label, body)
            except VapiRejected as exc:
                self.state.resources.abort_create(org_id, kind.name, name)
                said = "" if exc.nothing_created else "; nothing was created"
                raise ReconcilerError(f"{where}: {exc}{said}; the next run tries again") from None
            except VapiAmbiguousWrite as exc:
                try:
                    found = [o for o in vapi.list_objects(kind.path) if kind.key_of(o) == key]
                except VapiError as look:
                    raise ReconcilerError(
                        f"{where}: {exc}; and the account could not be listed to look for it: "
                        f"{look}"
                    ) from None
                if not found or key is None:
                    then = "" if exc.says_next_run else "; the next run looks for it first"
                    raise ReconcilerError(f"{where}: {exc}{then}") from None
                created = min(found, key=lambda o: (str(o.get("createdAt", "")), str(o["id"])))
            vapi_id = str(created["id"])
            applied = self._masked_object(kind.name, created)
            self.state.resources.record(org_id, kind.name, name, vapi_id, stored, applied)
            self.created[f"{kind.name}/{name}"] = vapi_id
            self.ids[(kind.name, name)] = vapi_id
            self.guard.answered(created)

    def _masked(self, answer: dict[str, Any]) -> dict[str, Any]:
        return masked_live(strip_server_owned(answer), self.fingerprint)

    def _record(
        self,
        role: str,
        vapi_id: str,
        name: str,
        stored: dict[str, Any],
        applied: dict[str, Any],
        last_patch: dict[str, Any] | None = None,
        template: str | None = None,
    ) -> None:
        self.state.assistants.record(
            self.plan.org_id, role, vapi_id, name, stored, applied, last_patch, template
        )

    def _create(self, action: CreateAssistant) -> None:
        role, org_id = action.role, self.plan.org_id
        with self.guard.creating():
            vapi = self._writer()
            self.state.assistants.begin_create(org_id, role, action.stored)
            try:
                created = vapi.create_assistant(action.body)
            except VapiRejected as exc:  # a definite refusal: nothing exists, nothing to wait for
                self.state.assistants.abort_create(org_id, role)
                said = "" if exc.nothing_created else "; nothing was created"
                raise ReconcilerError(f"{role}: {exc}{said}; the next run tries again") from None
            except VapiAmbiguousWrite as exc:
                # Never a second POST in this run: a slow backend may still commit the first.
                # The `creating` row stays; later runs adopt it, or create after a grace period.
                try:
                    found = self._find_tagged(role)
                except VapiError as look:  # keep the create's own story, then why no look
                    raise ReconcilerError(
                        f"{role}: {exc}; and the account could not be listed to look for it: {look}"
                    ) from None
                if found is None:
                    then = "" if exc.says_next_run else "; the next run looks for it first"
                    raise ReconcilerError(f"{role}: {exc}{then}") from None
                created = found
            self._record(
                role,
                created["id"],
                action.name,
                action.stored,
                self._masked(created),
                template=action.template,
            )
            self.created[role] = str(created["id"])
            self.ids[("assistant", role)] = str(created["id"])
            self.guard.answered(created)

    def _find_tagged(self, role: str) -> dict[str, Any] | None:
        tagged = [
            a for a in self._writer().list_assistants() if tag_of(a) == (self.plan.org_id, role)
        ]
        return min(tagged, key=lambda a: (a.get("createdAt", ""), a["id"])) if tagged else None
