"""The kinds of Vapi objects the engine manages besides assistants: each declares its
endpoints, ownership proof, secret fields and references (`ResourceKind`); the engine, the
state and the applier are the same for every kind. Adding a kind is a module here."""

from reconciler.engine.kinds._kind import NaturalKey, Reference, ResourceKind
from reconciler.engine.kinds._phone_number import PHONE_NUMBER, number_body, number_key
from reconciler.engine.kinds._tool import TOOL, tool_body, tool_key

KINDS: tuple[ResourceKind, ...] = (TOOL, PHONE_NUMBER)
BY_NAME: dict[str, ResourceKind] = {k.name: k for k in KINDS}
# Assistants are managed by roles (engine.planner) and rank between tools and numbers.
ASSISTANT_RANK = 1

__all__ = [
    "ASSISTANT_RANK",
    "BY_NAME",
    "KINDS",
    "PHONE_NUMBER",
    "TOOL",
    "NaturalKey",
    "Reference",
    "ResourceKind",
    "number_body",
    "number_key",
    "tool_body",
    "tool_key",
]
