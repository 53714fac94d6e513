"""The kinds of Vapi objects the engine manages: each declares its endpoints, ownership proof
(tag or natural key), secret fields and references (`ResourceKind`), in a module of its own;
the planner's order, the observation, the state and the applier follow the declarations.
Adding a kind is a module here."""

from reconciler.engine.kinds._assistant import ASSISTANT
from reconciler.engine.kinds._kind import (
    NaturalKey,
    Ownership,
    Reference,
    ResourceKind,
    plan_order,
)
from reconciler.engine.kinds._phone_number import PHONE_NUMBER, number_body, number_key
from reconciler.engine.kinds._tool import TOOL, tool_body, tool_key

KINDS: tuple[ResourceKind, ...] = plan_order((ASSISTANT, PHONE_NUMBER, TOOL))
"""Creation order (tools, assistants, phone numbers): releases and deletes run in reverse."""
BY_NAME: dict[str, ResourceKind] = {k.name: k for k in KINDS}
KEYED: dict[str, ResourceKind] = {k.name: k for k in KINDS if k.ownership == "naturalKey"}
"""The kinds owned by natural key, kept in `vapi_resources` (assistants have their tables)."""

__all__ = [
    "ASSISTANT",
    "BY_NAME",
    "KEYED",
    "KINDS",
    "PHONE_NUMBER",
    "TOOL",
    "NaturalKey",
    "Ownership",
    "Reference",
    "ResourceKind",
    "number_body",
    "number_key",
    "plan_order",
    "tool_body",
    "tool_key",
]
