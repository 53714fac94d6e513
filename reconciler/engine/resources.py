"""The planner for the kinds owned by natural key (`engine.kinds.KEYED`): pure, one kind at a time.

Each function returns a value (`KindPlan`) instead of appending to lists it is handed. The
rules are the assistants' rules with a natural key in place of the ownership tag: an object
of the org's own account whose natural key equals a desired one's is that object (adopted,
never created again); a create whose outcome is unknown blocks another for the grace period;
an object removed from the spec is released (`ResourceKind.on_removal`) or kept, and deleted
only with `--prune`; duplicates of a key are reported, and deleted only with `--prune`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from reconciler.engine.actions import (
    Action,
    AdoptResource,
    CreateResource,
    DeleteResource,
    Finding,
    Pending,
    UpdateResource,
    known_after_apply,
)
from reconciler.engine.diff import (
    SERVER_OWNED,
    contains,
    field_changes,
)
from reconciler.engine.fields import compare_fields
from reconciler.engine.kinds import KEYED, ResourceKind
from reconciler.engine.model import DesiredResource, ObservedOrg, StoredResource

# Fields Vapi owns on these kinds, besides those of every object.
_SERVER_OWNED = SERVER_OWNED | {"status"}

Ids = Mapping[tuple[str, str], "str | None"]
"""(kind, name) -> the Vapi id of an object of the org; None: created in this run."""


@dataclass(frozen=True)
class KindPlan:
    """One kind's part of an org's plan. `ids`: each desired object's Vapi id (None: created
    in this run), for the objects that refer to it."""

    kind: str
    actions: tuple[Action, ...] = ()  # creates, updates, adopts: in creation order
    removals: tuple[Action, ...] = ()  # releases and deletes: run after the later kinds'
    unchanged: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    blocked: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    findings: tuple[Finding, ...] = ()
    ids: dict[str, str | None] = field(default_factory=dict)

    @property
    def named_unchanged(self) -> list[str]:
        """Unchanged objects as the org plan lists them (`tool/book`, `phoneNumber/+1...`);
        assistants are listed by role alone."""
        if self.kind not in KEYED:
            return list(self.unchanged)
        return [f"{self.kind}/{name}" for name in self.unchanged]


@dataclass
class Parts:
    """A `KindPlan` while a sub-planner builds it."""

    kind: str
    actions: list[Action] = field(default_factory=list)
    removals: list[Action] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    ids: dict[str, str | None] = field(default_factory=dict)

    def plan(self) -> KindPlan:
        return KindPlan(
            self.kind,
            tuple(self.actions),
            tuple(self.removals),
            tuple(self.unchanged),
            tuple(self.warnings),
            tuple(self.blocked),
            tuple(self.notes),
            tuple(self.findings),
            dict(self.ids),
        )


def strip_owned(live: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in live.items() if k not in _SERVER_OWNED}


def with_refs(want: DesiredResource, ids: Ids) -> tuple[DesiredResource, tuple[Pending, ...]]:
    """`want` with its references filled in: a known id, or the placeholder of an object
    created earlier in the same run (then a `Pending` the applier fills in)."""
    body, stored = dict(want.body), dict(want.stored)
    pending: list[Pending] = []
    for name, kind, target in want.refs:
        known = ids.get((kind, target))
        value = known if known is not None else known_after_apply(kind, target)
        body[name] = stored[name] = value
        if known is None:
            pending.append(Pending((name,), kind, target))
    return replace(want, body=body, stored=stored), tuple(pending)


def _created(obj: Mapping[str, Any]) -> tuple[str, str]:
    return str(obj.get("createdAt", "")), str(obj.get("id", ""))


def plan_kind(
    kind: ResourceKind,
    desired: Mapping[str, DesiredResource],
    observed: ObservedOrg,
    ids: Ids,
    *,
    prune: bool,
    create_grace_s: float,
) -> KindPlan:
    """The actions that make the account's objects of `kind` what `desired` says."""
    rows = observed.resources.get(kind.name, {})
    live = observed.live_resources.get(kind.name)
    if live is None:
        if desired or rows:
            why = f"{kind.label}s not planned: the Vapi account could not be listed"
            return KindPlan(kind.name, warnings=(why,))
        return KindPlan(kind.name)
    by_id = {str(o["id"]): o for o in live if isinstance(o.get("id"), str)}
    by_key: dict[str, list[dict[str, Any]]] = {}
    for obj in sorted(by_id.values(), key=_created):
        key = kind.key_of(obj)
        if key is not None:
            by_key.setdefault(key, []).append(obj)

    p = Parts(kind.name)
    claimed: set[str] = set()

    for name in sorted(desired):
        want, pending = with_refs(desired[name], ids)
        where = f"{kind.label} {name}"
        elsewhere = observed.held_elsewhere.get((kind.name, name))
        if elsewhere is not None:
            p.blocked.append(
                f"{where}: Postgres gives it to org {elsewhere}; one org per {kind.label} "
                f"(remove it from that org's spec and apply with --prune there first)"
            )
            continue
        row = rows.get(name)
        current = by_id.get(row.vapi_id) if row is not None and row.vapi_id else None
        if current is not None and kind.key_of(current) != want.key:
            # its key changed (a number's provider, a tool's type): a new object would leave
            # the old one in the account, recorded nowhere
            p.blocked.append(
                f"{where}: its {', '.join(sorted(kind.immutable))} changed, which Vapi cannot "
                f"update: remove it from the spec and apply with --prune (deleting "
                f"{current['id']}), then add it back"
            )
            continue
        namesakes = by_key.get(want.key, [])
        note = ""
        if current is None and namesakes:
            current = namesakes[0]
            note = "found by its natural key"
        if current is None:
            if _pending(row, create_grace_s):
                ago = row.pending_s if row is not None and row.pending_s is not None else 0.0
                p.blocked.append(
                    f"{where}: an earlier create has an unknown outcome ({ago:.0f}s ago); "
                    f"waiting up to {create_grace_s:.0f}s for it to appear before creating again"
                )
                continue
            if row is not None and row.vapi_id:
                note = f"{row.vapi_id} is gone from the Vapi account"
            elif row is not None:
                note = "an earlier create did not finish and left nothing"
            changes = tuple(field_changes({}, want.stored))
            p.actions.append(
                CreateResource(kind.name, name, want.body, want.stored, changes, note, pending)
            )
            p.ids[name] = None
            continue
        vapi_id = str(current["id"])
        claimed.add(vapi_id)
        p.ids[name] = vapi_id
        step, said, heard = _converge(kind, want, pending, row, current, note)
        p.warnings += said
        p.notes += heard
        if step is None:
            p.unchanged.append(name)
        else:
            p.actions.append(step)
        for extra in namesakes:
            if extra["id"] == vapi_id:
                continue
            if prune:
                p.removals.append(
                    DeleteResource(kind.name, name, extra["id"], note="duplicate", forget=False)
                )
            else:
                p.warnings.append(
                    f"{where}: duplicate {extra['id']} in the account (use --prune to delete)"
                )
                p.findings.append(
                    Finding(
                        "duplicate",
                        name,
                        extra["id"],
                        f"a second {kind.label} with the same natural key",
                        kind.name,
                    )
                )

    for name in sorted(set(rows) - set(desired)):
        row = rows[name]
        step, said = _removed(kind, row, by_id, claimed, prune)
        p.warnings += said
        if step is not None:
            p.removals.append(step)
    return p.plan()


def _pending(row: StoredResource | None, grace_s: float) -> bool:
    return (
        row is not None
        and row.status == "creating"
        and row.pending_s is not None
        and row.pending_s < grace_s
    )


def _converge(
    kind: ResourceKind,
    want: DesiredResource,
    pending: tuple[Pending, ...],
    row: StoredResource | None,
    current: dict[str, Any],
    note: str,
) -> tuple[Action | None, list[str], list[str]]:
    """Update, adopt, or nothing, for an object that exists."""
    vapi_id = str(current["id"])
    live = strip_owned(current)
    ours = row is not None and row.vapi_id == vapi_id and row.status == "ready"
    asked = row.desired_config if ours and row is not None else None
    answer = row.applied_config if ours and row is not None else None
    last_patch = (row.last_patch or {}) if ours and row is not None else {}
    fields = compare_fields(
        f"{kind.label} {want.name}",
        want.body,
        want.stored,
        live,
        asked,
        answer,
        last_patch,
        write_only=kind.write_only,
        immutable=kind.immutable,
    )
    patch, warnings, notes = fields.patch, list(fields.warnings), list(fields.notes)
    in_sync = ours and fields.asked_same
    if patch:
        return (
            UpdateResource(
                kind.name,
                want.name,
                vapi_id,
                patch,
                want.stored,
                fields.changes,
                adopt=not ours,
                before=fields.before,
                note=note,
                pending=pending,
            ),
            warnings,
            notes,
        )
    if not in_sync:
        adopt = AdoptResource(
            kind.name, want.name, vapi_id, note or "record in Postgres", want.stored, live
        )
        return adopt, warnings, notes
    return None, warnings, notes


def _removed(
    kind: ResourceKind,
    row: StoredResource,
    by_id: Mapping[str, dict[str, Any]],
    claimed: set[str],
    prune: bool,
) -> tuple[Action | None, list[str]]:
    """A row whose object the spec no longer has."""
    where = f"{kind.label} {row.name}"
    vapi_id = row.vapi_id
    current = by_id.get(vapi_id) if vapi_id else None
    if current is None or (vapi_id is not None and vapi_id in claimed):
        # gone from the account, or now another desired object's (renamed): state only
        return DeleteResource(kind.name, row.name, None, note="forget state"), []
    assert vapi_id is not None
    if prune:
        return DeleteResource(kind.name, row.name, vapi_id, note="removed from the spec"), []
    kept = f"{where}: removed from the spec, kept {vapi_id} (use --prune to delete it)"
    release = kind.on_removal
    if release is None or contains(strip_owned(current), dict(release)):
        return None, [kept]
    stored = {**(row.desired_config or {}), **release}
    live = strip_owned(current)
    changes = tuple(
        change
        for key, value in release.items()
        for change in field_changes(live.get(key), value, key)
    )
    unbind = UpdateResource(
        kind.name,
        row.name,
        vapi_id,
        dict(release),
        stored,
        changes,
        before={k: live.get(k) for k in release},
        note="removed from the spec: released (--prune deletes it)",
    )
    return unbind, [kept]
