"""What a saved plan was computed from, as digests: `plan --out` records them, `apply FILE`
recomputes them under each org's lock and runs the org only when all three still match (the
spec, the observed state, and so the plan itself). Pure; no secret goes into a digest (secret
leaves are already keyed fingerprints here, bodies and configs are left out)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, replace
from typing import Any

from reconciler.engine.actions import OrgPlan
from reconciler.engine.model import ObservedOrg


@dataclass(frozen=True)
class OrgStamp:
    spec_digest: str  # sha256 of the spec file's bytes ("" for an org whose spec is gone)
    observed_digest: str  # Postgres rows and the account's listing, as the planner saw them
    plan_digest: str  # the plan's actions, secrets left out
    versions: dict[str, str]  # assistant id -> updatedAt, for saying what moved
    slug: str = ""  # for naming the org (not compared)

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> OrgStamp:
        if not isinstance(data, dict):
            raise ValueError("an org stamp must be an object")
        versions = data.get("versions")
        fields = ("spec_digest", "observed_digest", "plan_digest")
        if not all(isinstance(data.get(f), str) for f in fields) or not isinstance(versions, dict):
            raise ValueError(
                "an org stamp needs spec_digest, observed_digest, plan_digest, versions"
            )
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in versions.items()):
            raise ValueError("versions must map assistant ids to timestamps")
        slug = data.get("slug", "")
        return cls(
            data["spec_digest"],
            data["observed_digest"],
            data["plan_digest"],
            versions,
            slug if isinstance(slug, str) else "",
        )


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, ensure_ascii=True, default=_plain)
    return hashlib.sha256(text.encode()).hexdigest()


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _shown(value)
    if isinstance(value, frozenset | set):
        return sorted(value)
    raise TypeError(f"cannot stamp {type(value).__name__}")


def _shown(value: Any) -> dict[str, Any]:
    """A dataclass's fields that its repr shows: the ones holding secrets in clear (bodies,
    patches, configs) are `repr=False` and so never reach a digest."""
    out = {f.name: getattr(value, f.name) for f in dataclasses.fields(value) if f.repr}
    out["type"] = type(value).__name__
    return out


def observed_digest(observed: ObservedOrg) -> str:
    """Order-free (the listing sorted by id) and time-free (a pending create's age left out:
    its `creating` status is in)."""
    live = sorted(observed.live or [], key=lambda a: str(a.get("id")))
    assistants = {r: replace(a, pending_s=None) for r, a in observed.assistants.items()}
    resources = {
        kind: {name: replace(row, pending_s=None) for name, row in rows.items()}
        for kind, rows in observed.resources.items()
    }
    objects = {
        kind: sorted(listed, key=lambda o: str(o.get("id")))
        for kind, listed in observed.live_resources.items()
    }
    held = sorted(f"{kind}/{name}={slug}" for (kind, name), slug in observed.held_elsewhere.items())
    rows = replace(
        observed,
        live=None,
        assistants=assistants,
        resources=resources,
        live_resources={},
        held_elsewhere={},
    )
    return _digest(
        {
            "rows": _shown(rows),
            "live": live,
            "listed": observed.live is not None,
            "objects": objects,
            "held": held,
        }
    )


def plan_digest(plan: OrgPlan) -> str:
    """The actions only: a blocked plan runs nothing and fails with its own reason."""
    return _digest({"actions": list(plan.actions)})


def versions(observed: ObservedOrg) -> dict[str, str]:
    """Vapi id -> updatedAt of every listed object (assistants and the other kinds)."""
    listed = [*(observed.live or []), *(o for v in observed.live_resources.values() for o in v)]
    return {str(a["id"]): str(a.get("updatedAt", "")) for a in listed}


def stamp(spec_digest: str, observed: ObservedOrg, plan: OrgPlan) -> OrgStamp:
    return OrgStamp(
        spec_digest, observed_digest(observed), plan_digest(plan), versions(observed), plan.slug
    )


def stale(saved: OrgStamp, now: OrgStamp) -> str | None:
    """Why the saved stamp no longer holds (one line), or None."""
    if saved.spec_digest != now.spec_digest:
        return "its spec changed since the plan was made"
    if saved.observed_digest != now.observed_digest:
        moved = sorted(
            vid
            for vid in saved.versions.keys() | now.versions.keys()
            if saved.versions.get(vid) != now.versions.get(vid)
        )
        where = f"object(s) {', '.join(moved[:5])} in its Vapi account" if moved else "Postgres"
        return f"its live state changed since the plan was made ({where})"
    if saved.plan_digest != now.plan_digest:
        return "the plan computed now differs from the saved one"
    return None
