"""Executing an org's plan. Every Vapi write is followed by the Postgres write that records
it; a create is preceded by a committed create-pending row and, when its outcome is unknown,
resolved by looking for our ownership tag, never by a blind second POST."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from reconciler.engine.actions import (
    Action,
    AdoptAssistant,
    CreateAssistant,
    DeactivateCredential,
    DeleteAssistant,
    OrgPlan,
    StoreCredential,
    UpdateAssistant,
    UpsertOrg,
)
from reconciler.engine.model import DesiredOrg, tag_of
from reconciler.errors import ReconcilerError
from reconciler.secrets.crypto import MasterKey
from reconciler.state.store import StateWriter
from reconciler.vapi.client import VapiAmbiguousWrite, VapiWriter


class Applier:
    def __init__(
        self,
        desired: DesiredOrg,
        vapi: VapiWriter | None,
        state: StateWriter,
        key: MasterKey,
        still_locked: Callable[[], None] = lambda: None,
    ) -> None:
        """`still_locked` raises when this replica no longer holds the org's lock; it runs
        before every Vapi write, so a replica that lost its lock cannot write."""
        self.still_locked = still_locked
        self.desired = desired
        self.vapi = vapi
        self.state = state
        self.key = key

    def apply(self, plan: OrgPlan, done: list[Action]) -> None:
        """Runs the actions in order, appending each to `done` once it took effect (so a
        report after a failure says what really happened); the first failure stops this org
        (not the others)."""
        for action in plan.actions:
            self._run(action)
            done.append(action)
        if plan.blocked:
            raise ReconcilerError("; ".join(plan.blocked))

    def _writer(self) -> VapiWriter:
        if self.vapi is None:
            raise AssertionError("assistant actions need the org's Vapi credentials")
        self.still_locked()
        return self.vapi

    def _run(self, action: Action) -> None:
        d, org_id = self.desired, self.desired.org_id
        match action:
            case UpsertOrg():
                self.state.upsert_org(org_id, d.slug, d.name)
            case StoreCredential(provider=provider):
                cred = d.credentials[provider]
                aad = f"{org_id}:{provider}"
                sealed = self.key.encrypt(cred.config.reveal(), aad=aad)
                self.state.store_credential(org_id, provider, sealed, cred.fingerprint)
            case DeactivateCredential(provider=provider):
                self.state.deactivate_credential(org_id, provider)
            case CreateAssistant(role=role):
                self._create(role)
            case UpdateAssistant(role=role, vapi_id=vapi_id, patch=patch):
                self._writer().update_assistant(vapi_id, patch)
                self._record(role, vapi_id)
            case AdoptAssistant(role=role, vapi_id=vapi_id):
                self._record(role, vapi_id)
            case DeleteAssistant(role=role, vapi_id=vapi_id):
                if vapi_id is not None:
                    self._writer().delete_assistant(vapi_id)
                self.state.forget_assistant(org_id, role, vapi_id)

    def _record(self, role: str, vapi_id: str) -> None:
        want = self.desired.assistants[role]
        self.state.record_assistant(self.desired.org_id, role, vapi_id, want.name, want.stored)

    def _create(self, role: str) -> None:
        want = self.desired.assistants[role]
        vapi = self._writer()
        self.state.begin_create(self.desired.org_id, role, want.stored)
        try:
            created = vapi.create_assistant(want.body)
        except VapiAmbiguousWrite as exc:
            # Never a second POST in this run: a slow backend may still commit the first.
            # The `creating` row stays; later runs adopt it, or create after a grace period.
            found = self._find_tagged(role)
            if found is None:
                raise ReconcilerError(
                    f"{role}: {exc}; the next run looks for it again before creating"
                ) from None
            created = found
        self._record(role, created["id"])

    def _find_tagged(self, role: str) -> dict[str, Any] | None:
        tagged = [
            a for a in self._writer().list_assistants() if tag_of(a) == (self.desired.org_id, role)
        ]
        return min(tagged, key=lambda a: (a.get("createdAt", ""), a["id"])) if tagged else None
