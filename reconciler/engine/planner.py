"""The planner: (desired, observed) -> ordered actions. Pure: no I/O, no clock, no randomness."""

from __future__ import annotations

from typing import Any

from reconciler.engine.actions import (
    Action,
    AdoptAssistant,
    CreateAssistant,
    DeactivateCredential,
    DeleteAssistant,
    OrgPlan,
    StoreCredential,
    UpdateAssistant,
    UpsertOrg,
)
from reconciler.engine.diff import (
    FieldChange,
    contains,
    field_changes,
    redact,
    strip_server_owned,
)
from reconciler.engine.model import DesiredAssistant, DesiredOrg, ObservedOrg, tag_of
from reconciler.spec.models import ROLES

CREATE_GRACE_S = 60.0


def plan_org(
    desired: DesiredOrg,
    observed: ObservedOrg,
    *,
    prune: bool = False,
    create_grace_s: float = CREATE_GRACE_S,
) -> OrgPlan:
    """`create_grace_s`: how long a create with an unknown outcome may still show up in the
    account (a slow commit) before the planner creates again."""
    actions: list[Action] = []
    warnings: list[str] = []
    unchanged: list[str] = []
    blocked: list[str] = []

    actions += _plan_org_row(desired, observed)
    actions += _plan_credentials(desired, observed)
    if observed.live is None:
        if desired.assistants or observed.assistants:
            warnings.append("assistants not planned: the Vapi account could not be listed")
        return OrgPlan(desired.org_id, desired.slug, tuple(actions), (), tuple(warnings))

    tags = [(a, tag_of(a)) for a in observed.live]
    mine = [a for a, tag in tags if tag is not None and tag[0] == desired.org_id]
    foreign = sorted({tag[0] for _, tag in tags if tag is not None and tag[0] != desired.org_id})
    if foreign:
        # Another org's assistants here: two specs (or a changed metadata.id) on one account.
        # Creating ours would put a second set in it, so the org stops until a person looks.
        blocked.append(
            f"this Vapi account holds assistants tagged for other orgs {foreign}: "
            "refusing to manage it (one Vapi account per org)"
        )
        return OrgPlan(
            desired.org_id, desired.slug, tuple(actions), (), tuple(warnings), tuple(blocked)
        )

    deletes: list[Action] = []
    for role in ROLES:
        tagged = sorted((a for a in mine if tag_of(a) == (desired.org_id, role)), key=_created)
        want = desired.assistants.get(role)
        if want is None:
            deletes += _plan_absent_role(role, observed, tagged, prune, warnings)
            continue
        if _create_outcome_pending(observed, role, tagged, create_grace_s):
            pending = observed.assistants[role].pending_s or 0.0
            blocked.append(
                f"{role}: an earlier create has an unknown outcome ({pending:.0f}s ago); "
                f"waiting up to {create_grace_s:.0f}s for it to appear before creating again"
            )
            continue
        role_actions, current_id = _plan_assistant(want, desired.org_id, observed, tagged)
        if not role_actions:
            unchanged.append(role)
        actions += role_actions
        extras = [a for a in tagged if a["id"] != current_id]
        if extras:
            ids = [a["id"] for a in extras]
            if prune:
                deletes += [DeleteAssistant(role, i, note="duplicate") for i in ids]
            else:
                warnings.append(
                    f"{role}: duplicate tagged assistants {ids} (use --prune to delete)"
                )
    return OrgPlan(
        org_id=desired.org_id,
        slug=desired.slug,
        actions=tuple(actions + deletes),
        unchanged=tuple(unchanged),
        warnings=tuple(warnings),
        blocked=tuple(blocked),
    )


def _create_outcome_pending(
    observed: ObservedOrg, role: str, tagged: list[dict[str, Any]], grace_s: float
) -> bool:
    stored = observed.assistants.get(role)
    return (
        stored is not None
        and stored.status == "creating"
        and stored.pending_s is not None
        and stored.pending_s < grace_s
        and not tagged
        and role not in observed.mappings
    )


def _created(assistant: dict[str, Any]) -> tuple[str, str]:
    return str(assistant.get("createdAt", "")), str(assistant["id"])


def _plan_org_row(desired: DesiredOrg, observed: ObservedOrg) -> list[Action]:
    if observed.org is None:
        return [UpsertOrg("create", desired.slug, desired.name)]
    changes = tuple(
        FieldChange(f, old, new)
        for f, old, new in (
            ("slug", observed.org.slug, desired.slug),
            ("name", observed.org.name, desired.name),
        )
        if old != new
    )
    return [UpsertOrg("update", desired.slug, desired.name, changes)] if changes else []


def _plan_credentials(desired: DesiredOrg, observed: ObservedOrg) -> list[Action]:
    out: list[Action] = []
    for provider, cred in sorted(desired.credentials.items()):
        stored = observed.credentials.get(provider)
        if stored is None:
            out.append(StoreCredential("create", provider))
        elif stored.fingerprint != cred.fingerprint or not stored.is_active:
            out.append(StoreCredential("update", provider))
    for provider, stored in sorted(observed.credentials.items()):
        if provider not in desired.credentials and stored.is_active:
            out.append(DeactivateCredential(provider))
    return out


def _plan_assistant(
    want: DesiredAssistant, org_id: str, observed: ObservedOrg, tagged: list[dict[str, Any]]
) -> tuple[list[Action], str | None]:
    role = want.role
    stored = observed.assistants.get(role)
    mapping = observed.mappings.get(role)
    live_by_id = {a["id"]: a for a in observed.live or []}
    known_id = (mapping.vapi_assistant_id if mapping else None) or (
        stored.vapi_assistant_id if stored else None
    )

    current = live_by_id.get(known_id) if known_id else None
    if current is not None and tag_of(current) not in (None, (org_id, role)):
        current = None  # a stale row pointing at an assistant that is not this role's
    note = ""
    if current is None and tagged:
        current = tagged[0]
        note = "found by ownership tag"
    if current is None:
        if known_id:
            note = f"{known_id} is gone from the Vapi account"
        elif stored is not None and stored.status == "creating":
            note = "an earlier create did not finish and left no assistant"
        changes = tuple(field_changes({}, want.body))
        return [CreateAssistant(role, want.body, changes, note)], None

    vapi_id = current["id"]
    live = strip_server_owned(current)
    applied = stored.applied_config if stored and stored.vapi_assistant_id == vapi_id else None
    patch: dict[str, Any] = {}
    for key, value in want.body.items():
        edited = applied is not None and applied.get(key) != want.stored.get(key)
        # secret leaves compare as "(sensitive)": Vapi may hide them when read back; a changed
        # secret shows in `edited` (fingerprints), so no perpetual diff either way
        if edited or not contains(redact(live.get(key)), redact(value)):
            patch[key] = value
    for key in applied or {}:  # removed from the spec since last apply: clear it
        if key not in want.body and live.get(key) is not None:
            patch[key] = None

    in_sync = (
        mapping is not None
        and mapping.vapi_assistant_id == vapi_id
        and mapping.name == want.name
        and stored is not None
        and stored.status == "ready"
        and applied == want.stored
    )
    if patch:
        changes = tuple(field_changes(live, patch))
        adopt = mapping is None or mapping.vapi_assistant_id != vapi_id
        return [UpdateAssistant(role, vapi_id, patch, changes, adopt=adopt)], vapi_id
    if not in_sync:
        return [AdoptAssistant(role, vapi_id, note or "record in Postgres")], vapi_id
    return [], vapi_id


def _plan_absent_role(
    role: str,
    observed: ObservedOrg,
    tagged: list[dict[str, Any]],
    prune: bool,
    warnings: list[str],
) -> list[Action]:
    mapping = observed.mappings.get(role)
    stored = observed.assistants.get(role)
    ids = [a["id"] for a in tagged]
    for known in (
        mapping.vapi_assistant_id if mapping else None,
        stored.vapi_assistant_id if stored else None,
    ):
        if known and known not in ids:
            ids.append(known)
    if not ids and stored is None and mapping is None:
        return []
    if not prune:
        warnings.append(
            f"{role}: removed from the spec, kept {ids or '(state only)'} (use --prune)"
        )
        return []
    return [DeleteAssistant(role, i, note="removed from the spec") for i in ids] or [
        DeleteAssistant(role, None, note="forget state")
    ]
