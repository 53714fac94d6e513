"""What a kind of Vapi object declares, so that the engine is the same for every kind."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from reconciler.redact import mask_tree

NaturalKey = Callable[[Mapping[str, Any]], "str | None"]


@dataclass(frozen=True)
class Reference:
    """A field whose value is the Vapi id of another object of the org: `kind` `name`'s id.
    `many`: the field is a list of ids (an assistant's `model.toolIds`)."""

    field: str
    kind: str
    many: bool = False


@dataclass(frozen=True)
class ResourceKind:
    """One kind of object in an org's Vapi account.

    Ownership: Vapi gives these kinds no `metadata` to tag, so an object is the org's by its
    natural key (`natural_key` of a live object equals the key of a desired one) in the org's
    own account. `secret_fields` are masked by keyed fingerprint like every secret-word leaf;
    `write_only` ones Vapi does not return, so they are compared with what we last asked,
    never with the live value. `immutable` fields make the key: never PATCHed. `rank` orders
    the plan: lower ranks are created first and deleted last. `on_removal`: the PATCH that
    releases an object removed from the spec without `--prune` (None: it is left as it is)."""

    name: str  # the state's `kind` and the plan's resource
    label: str  # in messages: "tool", "phone number"
    path: str  # the collection: POST and GET here, GET/PATCH/DELETE {path}/{id}
    natural_key: NaturalKey
    rank: int
    immutable: frozenset[str] = frozenset()
    secret_fields: frozenset[str] = frozenset()
    write_only: frozenset[str] = frozenset()
    references: tuple[Reference, ...] = ()
    on_removal: Mapping[str, Any] | None = None

    def __str__(self) -> str:
        return self.label

    def masked(self, body: Mapping[str, Any], replace: Callable[[Any], Any]) -> dict[str, Any]:
        """`body` with every secret leaf replaced: secret-word keys (`reconciler.redact`) and
        this kind's `secret_fields`."""
        out: dict[str, Any] = mask_tree(dict(body), replace)
        for name in self.secret_fields:
            if out.get(name) is not None and not isinstance(out[name], (dict, list)):
                out[name] = replace(body[name])
        return out
