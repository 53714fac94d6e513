"""What a kind of Vapi object declares, so that the engine is the same for every kind."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from reconciler.redact import mask_tree

NaturalKey = Callable[[Mapping[str, Any]], "str | None"]
Ownership = Literal["tag", "naturalKey"]


@dataclass(frozen=True)
class Reference:
    """A field whose value is the Vapi id of another object of the org: `kind` `name`'s id.
    `field` is a dotted path (`model.toolIds`); `many`: it holds a list of ids."""

    field: str
    kind: str
    many: bool = False


@dataclass(frozen=True)
class ResourceKind:
    """One kind of object in an org's Vapi account.

    Ownership, which decides what the reconciler may adopt, update and delete: `tag`, the
    object carries our tag in its `metadata` (assistants: org id and role), so it is ours
    wherever it is found; `naturalKey`, Vapi gives the kind no `metadata`, so an object of the
    org's own account whose `natural_key` equals a desired one's is that object. `secret_fields`
    are masked by keyed fingerprint like every secret-word leaf; `write_only` ones Vapi does not
    return, so they are compared with what we last asked, never with the live value.
    `immutable` fields make the key: never PATCHed. `references` order the plan (`plan_order`):
    a kind is created after the kinds it refers to and deleted before them. `on_removal`: the
    PATCH that releases an object removed from the spec without `--prune` (None: it is left as
    it is)."""

    name: str  # the state's `kind` and the plan's resource
    label: str  # in messages: "tool", "phone number"
    path: str  # the collection: POST and GET here, GET/PATCH/DELETE {path}/{id}
    ownership: Ownership
    natural_key: NaturalKey | None = None  # `naturalKey` ownership only
    immutable: frozenset[str] = frozenset()
    secret_fields: frozenset[str] = frozenset()
    write_only: frozenset[str] = frozenset()
    references: tuple[Reference, ...] = ()
    on_removal: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if (self.ownership == "naturalKey") != (self.natural_key is not None):
            raise ValueError(f"kind {self.name}: a natural key exactly when owned by one")

    def __str__(self) -> str:
        return self.label

    def key_of(self, obj: Mapping[str, Any]) -> str | None:
        """The natural key of a live object (None: it has none, or the kind is tagged)."""
        return self.natural_key(obj) if self.natural_key is not None else None

    def masked(self, body: Mapping[str, Any], replace: Callable[[Any], Any]) -> dict[str, Any]:
        """`body` with every secret leaf replaced: secret-word keys (`reconciler.redact`) and
        this kind's `secret_fields`."""
        out: dict[str, Any] = mask_tree(dict(body), replace)
        for name in self.secret_fields:
            if out.get(name) is not None and not isinstance(out[name], (dict, list)):
                out[name] = replace(body[name])
        return out


def plan_order(kinds: Iterable[ResourceKind]) -> tuple[ResourceKind, ...]:
    """The kinds in creation order: each after every kind it refers to, otherwise in the order
    given. A reference to an undeclared kind, or a cycle, is a programming error."""
    pending = list(kinds)
    names = {k.name for k in pending}
    for kind in pending:
        for ref in kind.references:
            if ref.kind not in names:
                raise ValueError(f"kind {kind.name}: {ref.field} refers to unknown kind {ref.kind}")
    ordered: list[ResourceKind] = []
    while pending:
        placed = {k.name for k in ordered}
        ready = next((k for k in pending if all(r.kind in placed for r in k.references)), None)
        if ready is None:
            raise ValueError(f"kinds refer to each other in a cycle: {[k.name for k in pending]}")
        ordered.append(ready)
        pending.remove(ready)
    return tuple(ordered)
