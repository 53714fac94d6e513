"""Assistants: `POST /assistant`, paged `GET /assistant`, `PATCH`/`DELETE /assistant/{id}`.
Owned by tag: each carries `metadata: {managedBy, orgId, role}` (`engine.model.ownership_tag`),
so it is the org's role wherever it is found, and an assistant tagged for another org blocks
the account. Planned by role (`engine.planner`): `inbound`, `outbound`, then others by name."""

from __future__ import annotations

from reconciler.engine.kinds._kind import Reference, ResourceKind

ASSISTANT = ResourceKind(
    name="assistant",
    label="assistant",
    path="/assistant",
    ownership="tag",
    # the org's own provider keys (dynamic credentials): "apiKey: This is not returned in the
    # API", so compared with what we asked for at our last write, never with the live value
    write_only=frozenset({"credentials"}),
    references=(Reference("model.toolIds", "tool", many=True),),
)
