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
class Pending:
    """A reference to an object this run creates first: its id is known only after apply.
    The body holds `known_after_apply(kind, name)` at `path` until the applier fills it in."""

    path: tuple[str | int, ...]
    kind: str  # "tool", "assistant", ...
    name: str  # the tool's name, the assistant's role


def known_after_apply(kind: str, name: str) -> str:
    return f"(known after apply: the id of {kind} {name})"


@dataclass(frozen=True)
class UpsertOrg:
    kind: Kind
    slug: str
    name: str
    changes: tuple[FieldChange, ...] = ()
    resource: str = "organization"
    forward_url: str | None = None
    outbound_number: str | None = None


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
    pending: tuple[Pending, ...] = ()  # ids of objects created earlier in the run
    template: str | None = None  # `name@version` it is rendered from, recorded with it

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
    pending: tuple[Pending, ...] = ()  # ids of objects created earlier in the run
    template: str | None = None  # `name@version` it is rendered from, recorded with it

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
    template: str | None = None  # `name@version` it is rendered from, recorded with it

    @property
    def name(self) -> str:
        return str(self.stored.get("name", ""))


@dataclass(frozen=True)
class MoveTemplate:
    """The role's assistant is now made from template `after` (it was `before`), and renders
    as it was for this org: only Postgres records the move; nothing is sent to Vapi."""

    role: str
    vapi_id: str
    before: str | None
    after: str | None
    kind: Kind = "update"
    resource: str = "assistant"


@dataclass(frozen=True)
class TemplateMove:
    """One assistant of the org moving from one template (`name@version`) to another (None:
    written in full in the org file); `changes`: its fields change in Vapi too."""

    role: str
    before: str | None
    after: str | None
    changes: bool
    overridden: frozenset[str] = frozenset()  # paths the org's overrides set (cause: org)

    def cause(self, path: str, *, drift: bool = False) -> str:
        """Why a field of this assistant changes: `drift` (Vapi moved away), `org` (a value
        the org's overrides set), else `template` (the move to `after`)."""
        if drift:
            return "drift"
        for mine in self.overridden:
            if mine == path or mine.startswith((f"{path}.", f"{path}[")):
                return "org"
            if path.startswith((f"{mine}.", f"{mine}[")):
                return "org"
        return "template"


@dataclass(frozen=True)
class DeleteAssistant:
    role: str
    vapi_id: str | None
    note: str = ""
    stray: bool = False  # tagged for another org: delete in Vapi, no state of ours to forget
    kind: Kind = "delete"
    resource: str = "assistant"


@dataclass(frozen=True)
class CreateResource:
    """POST an object of a `ResourceKind` (`resource` is the kind's name), after a committed
    create-pending row; an unknown outcome is resolved by the natural key, never a second
    POST."""

    resource: str
    name: str
    body: dict[str, Any] = field(repr=False)  # sent to Vapi: secrets in clear
    stored: dict[str, Any] = field(default_factory=dict)  # recorded: secrets fingerprinted
    changes: tuple[FieldChange, ...] = ()
    note: str = ""
    pending: tuple[Pending, ...] = ()
    kind: Kind = "create"


@dataclass(frozen=True)
class UpdateResource:
    """PATCH the fields of an object that changed (or, for one removed from the spec, the
    fields that release it: a number's assistant). `adopt`: it becomes ours in Postgres too."""

    resource: str
    name: str
    vapi_id: str
    patch: dict[str, Any] = field(repr=False)  # sent to Vapi: secrets in clear
    stored: dict[str, Any] = field(default_factory=dict)  # the whole desired config, masked
    changes: tuple[FieldChange, ...] = ()
    adopt: bool = False
    before: dict[str, Any] = field(default_factory=dict)  # live values it replaces, masked
    note: str = ""
    pending: tuple[Pending, ...] = ()
    kind: Kind = "update"


@dataclass(frozen=True)
class AdoptResource:
    """Record in Postgres an object that already matches (found by its natural key)."""

    resource: str
    name: str
    vapi_id: str
    note: str = ""
    stored: dict[str, Any] = field(default_factory=dict)
    live: dict[str, Any] = field(default_factory=dict)
    kind: Kind = "adopt"


@dataclass(frozen=True)
class DeleteResource:
    """DELETE the object `vapi_id` (None: only its state is forgotten). `forget`: its state
    row and mapping go too (not for a duplicate, which has none)."""

    resource: str
    name: str
    vapi_id: str | None
    note: str = ""
    forget: bool = True
    kind: Kind = "delete"


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
    | MoveTemplate
    | DeleteAssistant
    | CreateResource
    | UpdateResource
    | AdoptResource
    | DeleteResource
    | LeaveAccount
    | RetireOrg
)
RESOURCE_ACTIONS = (CreateResource, UpdateResource, AdoptResource, DeleteResource)


@dataclass(frozen=True)
class Finding:
    """An assistant the plan leaves alone but the user should know of: a `duplicate` (a second
    assistant tagged for the same role, deleted only with `--prune`) or an `unmanaged` one
    (untagged, named like a desired one; adopted only when asked)."""

    action: Literal["duplicate", "unmanaged"]
    role: str  # the assistant's role, or the object's name
    vapi_id: str
    reason: str
    resource: str = "assistant"


UnknownResource = Literal["credential", "assistant", "tool", "phoneNumber"]


@dataclass(frozen=True)
class Unknown:
    """What `diff --base` cannot know without the key or the account (a credential encrypted
    anew, an assistant that may be adopted instead of created): shown with why, counted as
    `unknown`, never as a create, update or delete. `plan` never has one."""

    resource: UnknownResource
    name: str  # the provider, the role, or the tool's name or the number
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
    templates: tuple[TemplateMove, ...] = ()  # assistants moving to another template

    @property
    def deletes(self) -> int:
        """Objects of every kind this plan deletes in Vapi (what `--max-deletes` bounds)."""
        return sum(
            1 for a in self.actions if isinstance(a, DeleteAssistant | DeleteResource) and a.vapi_id
        )

    @property
    def has_changes(self) -> bool:
        """Something would change, or may (offline, unknown): `--detailed-exitcode` exits 2."""
        return bool(self.actions or self.unknown)

    def count(self, kind: Kind) -> int:
        return sum(1 for a in self.actions if a.kind == kind)
