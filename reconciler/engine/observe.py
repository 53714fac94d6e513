"""Observed state from what the state store and the Vapi client return."""

from __future__ import annotations

from typing import Any

from reconciler.engine.model import (
    MappingRow,
    ObservedOrg,
    StoredAssistant,
    StoredCredential,
    StoredOrg,
)


def observed_from_rows(
    row: dict[str, Any] | None, live: list[dict[str, Any]] | None
) -> ObservedOrg:
    if row is None:
        return ObservedOrg(live=live)
    return ObservedOrg(
        org=StoredOrg(row["slug"], row["name"]),
        credentials={
            c["provider"]: StoredCredential(c["provider"], c["fingerprint"], c["is_active"])
            for c in row["credentials"]
        },
        assistants={
            a["role"]: StoredAssistant(
                a["role"],
                a["vapi_assistant_id"],
                a["status"],
                a["applied_config"],
                a["pending_s"] if a["status"] == "creating" else None,
            )
            for a in row["assistants"]
        },
        mappings={
            m["role"]: MappingRow(m["vapi_assistant_id"], m["role"], m["name"])
            for m in row["mappings"]
        },
        live=live,
    )
