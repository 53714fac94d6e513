"""Typed plan actions. A plan is a value: `plan` prints it, `apply` executes it, and each action
carries everything its execution needs (bodies with their secrets, held out of every repr), so
the applier reads nothing but the plan."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from reconciler.engine.diff import FieldChange
from reconciler.engine.model import Sensitive

Kind = Literal["create", "update", "delete", "adopt"]


@dataclass(frozen=True)
class UpsertOrg:
    kind: Kind
    slug: str
    name: str
    changes: tuple[FieldChange, ...] = ()
    resource: str = "organization"
    forward_url: str | None = None


@dataclass(frozen=True)
class StoreCredential:
    kind: Kind  # create | update
    provider: str
    config: Sensitive = field(default_factory=lambda: Sensitive({}), repr=False)
    fingerprint: str = ""
    resource: str = "credential"


@dataclass(frozen=True)
class DeactivateCredential:
    provider: str
    kind: Kind = "delete"
    resource: str = "credential"


@dataclass(frozen=True)
class CreateAssistant:
    role: str
    body: dict[str, Any] = field(repr=False)  # sent to Vapi: secrets in clear
    stored: dict[str, Any] = field(default_factory=dict)  # recorded: secrets fingerprinted
    changes: tuple[FieldChange, ...] = ()
    note: str = ""
    kind: Kind = "create"
    resource: str = "assistant"

    @property
    def name(self) -> str:
        return str(self.body.get("name", ""))


@dataclass(frozen=True)
class UpdateAssistant:
    role: str
    vapi_id: str
    patch: dict[str, Any] = field(repr=False)  # sent to Vapi: secrets in clear
    stored: dict[str, Any] = field(default_factory=dict)  # the whole desired config, masked
    changes: tuple[FieldChange, ...] = ()
    adopt: bool = False
    before: dict[str, Any] = field(default_factory=dict)  # live values it replaces, masked
    kind: Kind = "update"
    resource: str = "assistant"

    @property
    def name(self) -> str:
        return str(self.stored.get("name", ""))


@dataclass(frozen=True)
class AdoptAssistant:
    """Record in Postgres an assistant that already matches (found by tag or mapping stale)."""

    role: str
    vapi_id: str
    note: str = ""
    stored: dict[str, Any] = field(default_factory=dict)  # desired config, masked
    live: dict[str, Any] = field(default_factory=dict)  # what Vapi holds, masked
    kind: Kind = "adopt"
    resource: str = "assistant"

    @property
    def name(self) -> str:
        return str(self.stored.get("name", ""))


@dataclass(frozen=True)
class DeleteAssistant:
    role: str
    vapi_id: str | None
    note: str = ""
    stray: bool = False  # tagged for another org: delete in Vapi, no state of ours to forget
    kind: Kind = "delete"
    resource: str = "assistant"


@dataclass(frozen=True)
class LeaveAccount:
    """The org's Vapi key now reaches another account (accepted with
    `--accept-account-change`): its mappings go inactive (kept for late webhooks) and its
    assistant state is forgotten, so the new account is planned from scratch."""

    old_account: str
    new_account: str
    kind: Kind = "update"
    resource: str = "organization"


@dataclass(frozen=True)
class RetireOrg:
    """Last action of an org whose spec is gone (`--prune`) or retired by name: its row and
    history stay, its slug is freed, every credential is deactivated except the webhook
    secret, kept alone (the API key dropped) to verify late webhooks until the retention
    window ends."""

    webhook_secret: Sensitive | None = field(default=None, repr=False)
    reason: str = ""
    kind: Kind = "delete"
    resource: str = "organization"


Action = (
    UpsertOrg
    | StoreCredential
    | DeactivateCredential
    | CreateAssistant
    | UpdateAssistant
    | AdoptAssistant
    | DeleteAssistant
    | LeaveAccount
    | RetireOrg
)


@dataclass(frozen=True)
class Finding:
    """An assistant the plan leaves alone but the user should know of: a `duplicate` (a second
    assistant tagged for the same role, deleted only with `--prune`) or an `unmanaged` one
    (untagged, named like a desired one; adopted only when asked)."""

    action: Literal["duplicate", "unmanaged"]
    role: str
    vapi_id: str
    reason: str


@dataclass(frozen=True)
class Unknown:
    """What `diff --base` cannot know without the key or the account (a credential encrypted
    anew, an assistant that may be adopted instead of created): shown with why, counted as
    `unknown`, never as a create, update or delete. `plan` never has one."""

    resource: Literal["credential", "assistant"]
    name: str  # the provider or the role
    reason: str
    action: Literal["unknown"] = "unknown"


@dataclass(frozen=True)
class OrgPlan:
    """One org's plan. A blocked plan has no actions: nothing of it may run (not even the org
    row or its credentials), and the org fails with the reasons in `blocked`."""

    org_id: str
    slug: str
    actions: tuple[Action, ...]
    unchanged: tuple[str, ...] = ()  # roles already converged
    warnings: tuple[str, ...] = ()
    blocked: tuple[str, ...] = ()  # why the org cannot converge in this run
    notes: tuple[str, ...] = ()  # facts worth showing that need no action
    findings: tuple[Finding, ...] = ()
    orphaned: str = ""  # the org's spec is gone: why, and what `--prune` would do
    unknown: tuple[Unknown, ...] = ()  # offline only (`diff --base`): what it cannot know

    @property
    def deletes(self) -> int:
        """Assistants this plan deletes in Vapi (what `--max-deletes` bounds)."""
        return sum(1 for a in self.actions if isinstance(a, DeleteAssistant) and a.vapi_id)

    @property
    def has_changes(self) -> bool:
        """Something would change, or may (offline, unknown): `--detailed-exitcode` exits 2."""
        return bool(self.actions or self.unknown)

    def count(self, kind: Kind) -> int:
        return sum(1 for a in self.actions if a.kind == kind)
