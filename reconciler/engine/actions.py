"""Typed plan actions. A plan is data: `plan` prints it, `apply` executes it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from reconciler.engine.diff import FieldChange

Kind = Literal["create", "update", "delete", "adopt"]


@dataclass(frozen=True)
class UpsertOrg:
    kind: Kind
    slug: str
    name: str
    changes: tuple[FieldChange, ...] = ()
    resource: str = "organization"


@dataclass(frozen=True)
class StoreCredential:
    kind: Kind  # create | update
    provider: str
    resource: str = "credential"


@dataclass(frozen=True)
class DeactivateCredential:
    provider: str
    kind: Kind = "delete"
    resource: str = "credential"


@dataclass(frozen=True)
class CreateAssistant:
    role: str
    body: dict[str, Any] = field(repr=False)
    changes: tuple[FieldChange, ...] = ()
    note: str = ""
    kind: Kind = "create"
    resource: str = "assistant"


@dataclass(frozen=True)
class UpdateAssistant:
    role: str
    vapi_id: str
    patch: dict[str, Any] = field(repr=False)
    changes: tuple[FieldChange, ...] = ()
    adopt: bool = False
    kind: Kind = "update"
    resource: str = "assistant"


@dataclass(frozen=True)
class AdoptAssistant:
    """Record in Postgres an assistant that already matches (found by tag or mapping stale)."""

    role: str
    vapi_id: str
    note: str = ""
    kind: Kind = "adopt"
    resource: str = "assistant"


@dataclass(frozen=True)
class DeleteAssistant:
    role: str
    vapi_id: str | None
    note: str = ""
    kind: Kind = "delete"
    resource: str = "assistant"


Action = (
    UpsertOrg
    | StoreCredential
    | DeactivateCredential
    | CreateAssistant
    | UpdateAssistant
    | AdoptAssistant
    | DeleteAssistant
)


@dataclass(frozen=True)
class OrgPlan:
    org_id: str
    slug: str
    actions: tuple[Action, ...]
    unchanged: tuple[str, ...] = ()  # roles already converged
    warnings: tuple[str, ...] = ()
    blocked: tuple[str, ...] = ()  # why a role cannot converge in this run (org fails)

    @property
    def has_changes(self) -> bool:
        return bool(self.actions)

    def count(self, kind: Kind) -> int:
        return sum(1 for a in self.actions if a.kind == kind)
