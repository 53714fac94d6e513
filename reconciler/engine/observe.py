"""Observed state from what the state store and the Vapi client return.

Live assistants are masked here, at the edge: each secret-bearing leaf becomes the same keyed
fingerprint as the desired value would (so drift in a secret is seen), or `MASKED_BY_VAPI`
when Vapi shows it masked. Nothing after this point holds a live secret.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from reconciler.engine.kinds import BY_NAME
from reconciler.engine.model import (
    MASKED_BY_VAPI,
    Fingerprint,
    MappingRow,
    ObservedOrg,
    StoredAssistant,
    StoredCredential,
    StoredOrg,
    StoredResource,
)
from reconciler.redact import looks_masked, mask_tree


def _live_leaf(fingerprint: Fingerprint) -> Callable[[Any], Any]:
    """A live secret leaf: `MASKED_BY_VAPI` where Vapi showed it masked, else its fingerprint."""
    return lambda v: MASKED_BY_VAPI if looks_masked(v) else fingerprint(v)


def masked_live(assistant: dict[str, Any], fingerprint: Fingerprint) -> dict[str, Any]:
    masked: dict[str, Any] = mask_tree(assistant, _live_leaf(fingerprint))
    return masked


def masked_object(kind: str, obj: dict[str, Any], fingerprint: Fingerprint) -> dict[str, Any]:
    """A live object of a `ResourceKind`, masked as its kind declares (and as `masked_live`)."""
    return BY_NAME[kind].masked(obj, _live_leaf(fingerprint))


def stored_resources(rows: list[dict[str, Any]]) -> dict[str, dict[str, StoredResource]]:
    out: dict[str, dict[str, StoredResource]] = {}
    for r in rows:
        out.setdefault(r["kind"], {})[r["name"]] = StoredResource(
            r["kind"],
            r["name"],
            r["vapi_id"],
            r["status"],
            r.get("desired_config"),
            r.get("applied_config"),
            r["pending_s"] if r["status"] == "creating" else None,
            r.get("last_patch"),
        )
    return out


def observed_from_rows(
    row: dict[str, Any] | None,
    live: list[dict[str, Any]] | None,
    fingerprint: Fingerprint,
    *,
    shared_with: dict[str, str] | None = None,
    mapped_elsewhere: frozenset[str] = frozenset(),
    live_resources: dict[str, list[dict[str, Any]]] | None = None,
    held_elsewhere: dict[tuple[str, str], str] | None = None,
) -> ObservedOrg:
    masked = None if live is None else [masked_live(a, fingerprint) for a in live]
    shared = dict(shared_with or {})
    objects = {
        kind: [masked_object(kind, o, fingerprint) for o in listed]
        for kind, listed in (live_resources or {}).items()
    }
    elsewhere = dict(held_elsewhere or {})
    if row is None:
        return ObservedOrg(
            live=masked,
            shared_with=shared,
            mapped_elsewhere=mapped_elsewhere,
            live_resources=objects,
            held_elsewhere=elsewhere,
        )
    return ObservedOrg(
        org=StoredOrg(
            row["slug"],
            row["name"],
            row.get("vapi_account_id"),
            row.get("forward_url"),
            row.get("outbound_number"),
        ),
        credentials={
            c["provider"]: StoredCredential(
                c["provider"], c["fingerprint"], c["is_active"], c.get("key_id")
            )
            for c in row["credentials"]
        },
        assistants={
            a["role"]: StoredAssistant(
                a["role"],
                a["vapi_assistant_id"],
                a["status"],
                a["applied_config"],
                a["pending_s"] if a["status"] == "creating" else None,
                a.get("desired_config"),
                a.get("last_patch"),
                a.get("template"),
            )
            for a in row["assistants"]
        },
        mappings={
            m["role"]: MappingRow(m["vapi_assistant_id"], m["role"], m["name"])
            for m in row["mappings"]
        },
        live=masked,
        shared_with=shared,
        mapped_elsewhere=mapped_elsewhere,
        master_key_id=row.get("master_key_id"),
        master_key_check=row.get("master_key_check"),
        resources=stored_resources(row.get("resources") or []),
        live_resources=objects,
        held_elsewhere=elsewhere,
    )
