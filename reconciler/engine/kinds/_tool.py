"""Tools: `POST /tool`, `GET /tool`, `PATCH`/`DELETE /tool/{id}`. No `metadata`: a tool is the
org's by `type` and, for function tools, `function.name` (other types: one per org)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from reconciler.engine.kinds._kind import ResourceKind


def tool_key(tool: Mapping[str, Any]) -> str | None:
    kind = tool.get("type")
    if not isinstance(kind, str):
        return None
    if kind != "function":
        return kind
    function = tool.get("function")
    name = function.get("name") if isinstance(function, Mapping) else None
    return f"function:{name}" if isinstance(name, str) else None


TOOL = ResourceKind(
    name="tool",
    label="tool",
    path="/tool",
    ownership="naturalKey",
    natural_key=tool_key,
    immutable=frozenset({"type"}),
)


def tool_body(name: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    """The Vapi body of the spec's tool `name`: a function tool's `function.name` is its name."""
    body = dict(fields)
    if body.get("type") == "function":
        function = body.get("function")
        body["function"] = {**(function if isinstance(function, Mapping) else {}), "name": name}
    return body
