"""The planner: (desired, observed) -> ordered actions. Pure: no I/O, no clock, no randomness.

Assistant configs on both sides have their secret leaves fingerprinted (see `engine.model`),
so a secret changed in the spec or drifted in Vapi is seen and repaired without being shown.
Per top-level field, an assistant is PATCHed when the spec changed it since our last write, or
when the live value no longer holds the desired one (drift) - unless Vapi's own answer to our
last write already lacked it and nothing moved since: Vapi does not keep that value, and
sending it again on every run would change nothing, so it is reported instead.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from reconciler.engine.actions import (
    Action,
    AdoptAssistant,
    CreateAssistant,
    DeactivateCredential,
    DeleteAssistant,
    DeleteResource,
    Finding,
    LeaveAccount,
    MoveTemplate,
    OrgPlan,
    Pending,
    RetireOrg,
    StoreCredential,
    TemplateMove,
    UpdateAssistant,
    UpsertOrg,
    known_after_apply,
)
from reconciler.engine.diff import (
    FieldChange,
    field_changes,
    same,
    strip_server_owned,
)
from reconciler.engine.fields import compare_fields
from reconciler.engine.kinds import ASSISTANT, KINDS, PHONE_NUMBER, TOOL, ResourceKind
from reconciler.engine.model import (
    FINGERPRINT_PREFIX,
    DesiredAssistant,
    DesiredOrg,
    ObservedOrg,
    Sensitive,
    account_ids,
    leaf_key_ids,
    tag_of,
)
from reconciler.engine.resources import Ids, KindPlan, Parts, plan_kind
from reconciler.errors import MasterKeyRefused
from reconciler.spec.models import ROLES

CREATE_GRACE_S = 60.0


def plan_org(
    desired: DesiredOrg,
    observed: ObservedOrg,
    *,
    prune: bool = False,
    create_grace_s: float = CREATE_GRACE_S,
    adopt_by_name: bool = False,
    accept_account_change: bool = False,
) -> OrgPlan:
    """`create_grace_s`: how long a create with an unknown outcome may still show up in the
    account (a slow commit) before the planner creates again. `adopt_by_name`: adopt untagged
    assistants named like desired ones (also `spec.adopt: byName`). `accept_account_change`:
    the org's key may now reach another Vapi account than the one recorded."""
    refused = master_key_refusals(desired, observed)
    if refused:  # before anything: no write of this org, not even its row
        return OrgPlan(desired.org_id, desired.slug, (), blocked=tuple(refused))
    if desired.retire:
        return plan_retire(desired, observed, prune=prune)
    actions: list[Action] = []
    warnings: list[str] = []
    notes: list[str] = []
    unchanged: list[str] = []
    blocked: list[str] = []
    findings: list[Finding] = []

    def result() -> OrgPlan:
        return OrgPlan(
            org_id=desired.org_id,
            slug=desired.slug,
            actions=() if blocked else tuple(actions),
            unchanged=tuple(unchanged),
            warnings=tuple(warnings),
            blocked=tuple(blocked),
            notes=tuple(notes),
            findings=tuple(findings),
        )

    def take(part: KindPlan) -> None:
        """What a kind's plan says besides its actions (placed by the caller, in order)."""
        unchanged.extend(part.named_unchanged)
        warnings.extend(part.warnings)
        blocked.extend(part.blocked)
        notes.extend(part.notes)
        findings.extend(part.findings)

    if observed.shared_with:
        others = ", ".join(f"{slug} ({oid})" for oid, slug in sorted(observed.shared_with.items()))
        blocked.append(
            f"its Vapi account is also reached by the API key of {others}: "
            "each org needs its own Vapi account"
        )
        return result()

    actions += _plan_org_row(desired, observed)
    actions += _plan_credentials(desired, observed)
    if observed.live is None:
        if desired.assistants or observed.assistants:
            warnings.append("assistants not planned: the Vapi account could not be listed")
        return result()

    moved = _account_change(desired, observed)
    if moved is not None:
        old, new = moved
        where = (
            f"Vapi account {new}"
            if new
            else "an empty Vapi account (its key changed and none of its assistants is there)"
        )
        if not accept_account_change:
            blocked.append(
                f"its Vapi key now reaches {where}, not Vapi account {old} as before; "
                f"refusing until `apply --accept-account-change {desired.slug}` (the old "
                "account's assistants are then left as they are and new ones created)"
            )
            return result()
        actions.append(LeaveAccount(old, new))
        observed = replace(observed, assistants={}, mappings={}, resources={})

    tags = [(a, tag_of(a)) for a in observed.live or []]
    mine = [a for a, tag in tags if tag is not None and tag[0] == desired.org_id]
    strays, refused = _plan_foreign(tags, desired.org_id, observed, prune)
    blocked += refused
    if blocked:
        return result()
    # every kind in creation order (tools, assistants, numbers: `engine.kinds.KINDS`), each
    # seeing the ids the earlier ones found; their releases and deletes run in the reverse
    # order, after every create and update
    ids: dict[tuple[str, str], str | None] = {}
    parts: list[KindPlan] = []
    for kind in KINDS:
        if kind.ownership == "tag":
            part = _plan_assistants(
                desired,
                observed,
                mine,
                ids,
                strays=strays,
                prune=prune,
                create_grace_s=create_grace_s,
                adopt_by_name=adopt_by_name or desired.adopt_by_name,
            )
        else:
            part = plan_kind(
                kind,
                desired.resources.get(kind.name, {}),
                observed,
                ids,
                prune=prune,
                create_grace_s=create_grace_s,
            )
        ids.update({(kind.name, name): vapi_id for name, vapi_id in part.ids.items()})
        actions += part.actions
        take(part)
        parts.append(part)
    for part in reversed(parts):
        actions += part.removals
    moves = template_moves(desired, observed, actions)
    return replace(result(), templates=moves) if moves and not blocked else result()


def template_moves(
    desired: DesiredOrg, observed: ObservedOrg, actions: list[Action]
) -> tuple[TemplateMove, ...]:
    """The org's assistants that Postgres records as written from another template (or none)
    than the spec now renders them from: what a template change moves. An assistant not
    written yet is not moved (it is new); `changes`: its fields change in Vapi too."""
    changed = {
        a.role for a in actions if isinstance(a, CreateAssistant | UpdateAssistant | AdoptAssistant)
    }
    out: list[TemplateMove] = []
    for role, want in sorted(desired.assistants.items()):
        if role in desired.held:
            continue  # a later wave: not moving in this run
        stored = observed.assistants.get(role)
        if stored is None or stored.status != "ready" or stored.template == want.template:
            continue
        out.append(
            TemplateMove(role, stored.template, want.template, role in changed, want.overridden)
        )
    return tuple(out)


def _plan_assistants(
    desired: DesiredOrg,
    observed: ObservedOrg,
    mine: list[dict[str, Any]],
    ids: Ids,
    *,
    strays: list[Action],
    prune: bool,
    create_grace_s: float,
    adopt_by_name: bool,
) -> KindPlan:
    """The assistants' part of the plan, by role: each role's tagged assistant converged
    (adopted, updated, created), duplicates and roles gone from the spec deleted with `--prune`
    (after `strays`, other orgs' assistants that `--prune` deletes), and each role's id for
    the phone numbers that refer to it."""
    p = Parts(ASSISTANT.name, removals=list(strays))
    by_name = _untagged_by_name(observed.live or [], desired)
    for role in _roles(desired, observed, mine):
        tagged = sorted((a for a in mine if tag_of(a) == (desired.org_id, role)), key=_created)
        want = desired.assistants.get(role)
        if want is None:
            gone, said = _plan_absent_role(role, observed, tagged, prune)
            p.removals += gone
            p.warnings += said
            continue
        if role in desired.held and (kept_id := _known_id(observed, role, tagged)) is not None:
            # a later wave of a template rollout: left exactly as it is in this run
            p.ids[role] = kept_id
            p.notes.append(f"{role}: {desired.held[role]}")
            p.unchanged.append(role)
            continue
        if _create_outcome_pending(observed, role, tagged, create_grace_s):
            pending = observed.assistants[role].pending_s or 0.0
            p.blocked.append(
                f"{role}: an earlier create has an unknown outcome ({pending:.0f}s ago); "
                f"waiting up to {create_grace_s:.0f}s for it to appear before creating again"
            )
            continue
        namesakes = by_name.get(want.name, [])
        adoptable = None
        if (
            namesakes
            and adopt_by_name
            and not tagged
            and not _known_live(observed, desired.org_id, role)
        ):
            if len(namesakes) > 1:
                listed = ", ".join(a["id"] for a in namesakes)
                p.blocked.append(
                    f"{role}: {len(namesakes)} untagged assistants are named "
                    f"{want.name!r} ({listed}); adopting by name needs exactly one"
                )
                continue
            adoptable = namesakes[0]
            by_name[want.name] = []  # one assistant is adopted for one role only
        want, refs = with_tools(want, desired.tool_refs.get(role, ()), ids)
        kept, current_id = _plan_assistant(want, desired.org_id, observed, tagged, adoptable, refs)
        p.ids[role] = current_id
        if current_id is None or current_id not in {a["id"] for a in namesakes}:
            p.findings += [
                Finding(
                    "unmanaged",
                    role,
                    a["id"],
                    f"untagged assistant named {want.name!r}: left alone (`spec.adopt: "
                    "byName` or `apply --adopt-by-name` adopts it instead of creating one)",
                )
                for a in namesakes
            ]
        p.warnings += kept.warnings
        p.notes += kept.notes
        if not kept.actions:
            p.unchanged.append(role)
        p.actions += kept.actions
        extras = [a for a in tagged if a["id"] != current_id]
        if extras:
            extra_ids = [a["id"] for a in extras]
            if prune:
                p.removals += [DeleteAssistant(role, i, note="duplicate") for i in extra_ids]
            else:
                p.warnings.append(
                    f"{role}: duplicate tagged assistants {extra_ids} (use --prune to delete)"
                )
                p.findings += [
                    Finding("duplicate", role, i, "a second assistant tagged for this role")
                    for i in extra_ids
                ]
    return p.plan()


def _roles(desired: DesiredOrg, observed: ObservedOrg, mine: list[dict[str, Any]]) -> list[str]:
    """Every assistant role or name to plan: `inbound`, `outbound`, then the others by name,
    whether the spec, Postgres or a tag in the account knows it (so one removed from the spec
    is seen, kept or, with --prune, deleted)."""
    known = set(desired.assistants) | set(observed.assistants) | set(observed.mappings)
    known |= {tag[1] for a in mine if (tag := tag_of(a)) is not None}
    return [*ROLES, *sorted(known - set(ROLES))]


def with_tools(
    want: DesiredAssistant, names: tuple[str, ...], ids: Ids
) -> tuple[DesiredAssistant, tuple[Pending, ...]]:
    """`want` with the ids of its tools appended to `model.toolIds` (after any written there);
    a tool created in this run is a placeholder the applier fills in (`Pending`)."""
    if not names:
        return want, ()
    given = list((want.body.get("model") or {}).get("toolIds") or [])
    pending: list[Pending] = []
    filled: list[Any] = list(given)
    for name in names:
        known = ids.get((TOOL.name, name))
        if known is None:
            pending.append(Pending(("model", "toolIds", len(filled)), TOOL.name, name))
            filled.append(known_after_apply(TOOL.name, name))
        else:
            filled.append(known)
    body = {**want.body, "model": {**(want.body.get("model") or {}), "toolIds": filled}}
    stored = {**want.stored, "model": {**(want.stored.get("model") or {}), "toolIds": filled}}
    return replace(want, body=body, stored=stored), tuple(pending)


def _account_change(desired: DesiredOrg, observed: ObservedOrg) -> tuple[str, str] | None:
    """(recorded account, the one now reached) when the org's key reaches another Vapi account
    than the one recorded: its listing shows another `orgId`, or, for an account that shows
    none (empty), the key changed and none of the org's assistants is there any more."""
    recorded = observed.org.vapi_account_id if observed.org else None
    if recorded is None or observed.live is None:
        return None
    now = account_ids(observed.live)
    if len(now) == 1 and recorded not in now:
        return recorded, next(iter(now))
    stored, wanted = observed.credentials.get("vapi"), desired.credentials.get("vapi")
    key_changed = (
        stored is not None and wanted is not None and stored.fingerprint != wanted.fingerprint
    )
    had = observed.mappings or any(a.vapi_assistant_id for a in observed.assistants.values())
    if not now and key_changed and had:
        return recorded, ""  # not known until something is created there
    return None


def _known_id(observed: ObservedOrg, role: str, tagged: list[dict[str, Any]]) -> str | None:
    """The role's assistant in the account, as Postgres or its tag knows it."""
    live = {str(a["id"]) for a in observed.live or []}
    mapping, stored = observed.mappings.get(role), observed.assistants.get(role)
    for known in (
        mapping.vapi_assistant_id if mapping else None,
        stored.vapi_assistant_id if stored else None,
    ):
        if known and known in live:
            return known
    return str(tagged[0]["id"]) if tagged else None


def _known_live(observed: ObservedOrg, org_id: str, role: str) -> bool:
    """Postgres knows the role's assistant and it is still in the account (as `_plan_assistant`
    finds it): nothing to adopt by name."""
    mapping, stored = observed.mappings.get(role), observed.assistants.get(role)
    known = (mapping.vapi_assistant_id if mapping else None) or (
        stored.vapi_assistant_id if stored else None
    )
    return any(
        a["id"] == known and tag_of(a) in (None, (org_id, role)) for a in observed.live or []
    )


def _untagged_by_name(
    live: list[dict[str, Any]], desired: DesiredOrg
) -> dict[str, list[dict[str, Any]]]:
    """Untagged assistants named like a desired one, by name (oldest first)."""
    names = {want.name for want in desired.assistants.values()}
    out: dict[str, list[dict[str, Any]]] = {}
    for a in sorted(live, key=_created):
        if tag_of(a) is None and a.get("name") in names:
            out.setdefault(str(a["name"]), []).append(a)
    return out


def plan_retire(desired: DesiredOrg, observed: ObservedOrg, *, prune: bool) -> OrgPlan:
    """An org whose spec is gone (or retired by name). Without `prune` nothing happens and the
    plan says what would. With it: its tagged assistants deleted, its credentials deactivated,
    the org retired. Untagged assistants are never touched; an account that cannot be listed
    blocks the retirement (its assistants would be left running)."""
    org = desired.org_id
    tagged = sorted(
        (a for a in observed.live or [] if (t := tag_of(a)) is not None and t[0] == org),
        key=_created,
    )
    deletes: list[Action] = [
        DeleteAssistant(tag[1], a["id"], note=desired.retire)
        for a in tagged
        if (tag := tag_of(a)) is not None
    ]
    live_ids = {a["id"] for a in observed.live or []}
    known = {m.role for m in observed.mappings.values()} | set(observed.assistants)
    deletes += [  # state of assistants already gone from the account: forgotten
        DeleteAssistant(role, None, note="forget state")
        for role in sorted(known)
        if not any(isinstance(d, DeleteAssistant) and d.role == role for d in deletes)
        and not _live_mapped(observed, role, live_ids)
    ]
    numbers, tools = (_retire_kind(k, observed, desired.retire) for k in (PHONE_NUMBER, TOOL))
    objects = sum(1 for a in (*numbers, *tools) if isinstance(a, DeleteResource) and a.vapi_id)
    what = f"deletes its {len(tagged)} tagged assistant(s), " if tagged else ""
    if objects:
        what += f"its {objects} phone number(s) and tool(s), "
    orphaned = (
        f"{desired.retire}: `--prune` {what}deactivates its credentials and retires it"
        if not prune
        else desired.retire
    )
    if not prune:
        return OrgPlan(org, desired.slug, (), orphaned=orphaned)
    unlisted = [
        k for k, rows in observed.resources.items() if rows and k not in observed.live_resources
    ]
    if (observed.live is None or unlisted) and desired.vapi_api_key is not None:
        return OrgPlan(
            org,
            desired.slug,
            (),
            orphaned=orphaned,
            blocked=(
                "its Vapi account could not be listed, so its assistants cannot be deleted: "
                "not retired in this run",
            ),
        )
    vapi = desired.credentials.get("vapi")
    secret = vapi.config.reveal().get("webhookSecret") if vapi else None
    credentials: list[Action] = [
        DeactivateCredential(p)
        for p, c in sorted(observed.credentials.items())
        if c.is_active and p != "vapi"
    ]
    retire = RetireOrg(Sensitive(secret) if secret else None, reason=desired.retire)
    # numbers released first (a call must not reach an assistant being deleted), tools last
    steps = (*numbers, *deletes, *tools, *credentials, retire)
    return OrgPlan(org, desired.slug, steps, orphaned=orphaned)


def _retire_kind(kind: ResourceKind, observed: ObservedOrg, reason: str) -> list[Action]:
    """The org's objects of `kind` that Postgres knows: deleted when still in the account,
    their state forgotten either way. Objects it never recorded are not its to delete."""
    listed = {str(o.get("id")) for o in observed.live_resources.get(kind.name, ())}
    return [
        DeleteResource(kind.name, name, row.vapi_id, note=reason)
        if row.vapi_id and row.vapi_id in listed
        else DeleteResource(kind.name, name, None, note="forget state")
        for name, row in sorted(observed.resources.get(kind.name, {}).items())
    ]


def _live_mapped(observed: ObservedOrg, role: str, live_ids: set[str]) -> bool:
    """The role's mapped assistant is still in the account, untagged: left alone (never
    deleted), yet its mapping is not forgotten by a delete either."""
    mapping = observed.mappings.get(role)
    return mapping is not None and mapping.vapi_assistant_id in live_ids


def _plan_foreign(
    tags: list[tuple[dict[str, Any], tuple[str, str] | None]],
    org_id: str,
    observed: ObservedOrg,
    prune: bool,
) -> tuple[list[Action], list[str]]:
    """Assistants tagged for other orgs. Not ours to manage: the account is refused, unless
    `--prune` is given, which deletes them as strays (e.g. one created through a key that was
    set to the wrong account before the reconciler caught it). One that Postgres maps to its
    org is that org's, never a stray."""
    foreign = sorted(
        ((a["id"], tag) for a, tag in tags if tag is not None and tag[0] != org_id),
        key=lambda item: (item[1][0], item[1][1], item[0]),
    )
    if not foreign:
        return [], []
    owned = [(vid, tag) for vid, tag in foreign if vid in observed.mapped_elsewhere]
    if owned:
        listed = ", ".join(f"{vid} (org {other}, {role})" for vid, (other, role) in owned)
        return [], [
            f"this Vapi account holds assistants of other orgs: {listed}; refusing to manage "
            "it (one Vapi account per org)"
        ]
    if not prune:
        listed = ", ".join(f"{vid} (org {other}, {role})" for vid, (other, role) in foreign)
        return [], [
            f"this Vapi account holds assistants tagged for other orgs: {listed}; "
            "refusing to manage it (one Vapi account per org); if they are strays, "
            "`apply --prune` deletes them"
        ]
    strays: list[Action] = [
        DeleteAssistant(role, vid, note=f"stray of org {other}", stray=True)
        for vid, (other, role) in foreign
    ]
    return strays, []


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
        return [
            UpsertOrg(
                "create",
                desired.slug,
                desired.name,
                forward_url=desired.forward_url,
                outbound_number=desired.outbound_number,
            )
        ]
    changes = tuple(
        FieldChange(f, old, new)
        for f, old, new in (
            ("slug", observed.org.slug, desired.slug),
            ("name", observed.org.name, desired.name),
            ("webhook.forwardUrl", observed.org.forward_url, desired.forward_url),
            ("outbound.phoneNumber", observed.org.outbound_number, desired.outbound_number),
        )
        if old != new
    )
    if not changes:
        return []
    return [
        UpsertOrg(
            "update",
            desired.slug,
            desired.name,
            changes,
            forward_url=desired.forward_url,
            outbound_number=desired.outbound_number,
        )
    ]


def master_key_refusals(desired: DesiredOrg, observed: ObservedOrg) -> list[str]:
    """Why this process may write none of the org's credentials (issue 14: a rotation is never
    undone): a stored credential it would compare or replace is under a master key id it
    lacks (so it cannot tell whether it changed: not "sensitive value changed"), or its
    active key is not the one `keys rotate` made active (Postgres's record: its id, and the
    check value that tells a wrong key under that id)."""
    held = desired.key_ids or (desired.key_id,)
    out = [
        str(MasterKeyRefused.missing(desired.slug, provider, stored.key_id))
        for provider, stored in sorted(observed.credentials.items())
        if provider in desired.credentials
        and stored.key_id is not None
        and stored.key_id not in held
    ]
    recorded = observed.master_key_id
    if not out and recorded is not None and recorded != desired.key_id:
        out.append(str(MasterKeyRefused.not_active(desired.slug, desired.key_id, recorded, held)))
    check = observed.master_key_check
    if not out and check is not None and desired.key_check not in (None, check):
        out.append(str(MasterKeyRefused.wrong_key(desired.slug, desired.key_id)))
    return out


def _plan_credentials(desired: DesiredOrg, observed: ObservedOrg) -> list[Action]:
    out: list[Action] = []
    for provider, cred in sorted(desired.credentials.items()):
        stored = observed.credentials.get(provider)
        if stored is None:
            out.append(StoreCredential("create", provider, cred.config, cred.fingerprint))
        elif not cred.matches(stored.fingerprint) or not stored.is_active:
            out.append(StoreCredential("update", provider, cred.config, cred.fingerprint))
    for provider, stored in sorted(observed.credentials.items()):
        if provider not in desired.credentials and stored.is_active:
            out.append(DeactivateCredential(provider))
    return out


class _Kept:
    """One role's actions, with what the planner wants said about it."""

    def __init__(self, actions: list[Action], warnings: list[str], notes: list[str]) -> None:
        self.actions = actions
        self.warnings = warnings
        self.notes = notes


def _plan_assistant(
    want: DesiredAssistant,
    org_id: str,
    observed: ObservedOrg,
    tagged: list[dict[str, Any]],
    adoptable: dict[str, Any] | None = None,
    pending: tuple[Pending, ...] = (),
) -> tuple[_Kept, str | None]:
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
    if current is None and adoptable is not None:
        current = adoptable
        note = "adopted by name (untagged until now)"
    if current is None:
        if known_id:
            note = f"{known_id} is gone from the Vapi account"
        elif stored is not None and stored.status == "creating":
            note = "an earlier create did not finish and left no assistant"
        create = CreateAssistant(
            role,
            want.body,
            want.stored,
            tuple(field_changes({}, want.stored)),
            note,
            pending=pending,
            template=want.template,
        )
        return _Kept([create], [], []), None

    vapi_id = current["id"]
    live = strip_server_owned(current)
    ours = stored is not None and stored.vapi_assistant_id == vapi_id and stored.status == "ready"
    asked = stored.asked if ours and stored else None
    answer = stored.applied_config if ours and stored else None
    last_patch = (stored.last_patch or {}) if ours and stored else {}
    fields = compare_fields(
        role,
        want.body,
        want.stored,
        live,
        asked,
        answer,
        last_patch,
        write_only=ASSISTANT.write_only,
        under=want.write_only_by_key,
    )
    patch, before, changes = fields.patch, fields.before, fields.changes
    warnings, notes = list(fields.warnings), list(fields.notes)
    in_sync = (
        mapping is not None
        and mapping.vapi_assistant_id == vapi_id
        and mapping.name == want.name
        and ours
        and (fields.asked_same or _rekeyed_only(asked, want.stored))
    )
    if patch:
        adopt = mapping is None or mapping.vapi_assistant_id != vapi_id
        update = UpdateAssistant(
            role,
            vapi_id,
            patch,
            want.stored,
            tuple(changes),
            adopt=adopt,
            before=before,
            pending=pending,
            template=want.template,
        )
        return _Kept([update], warnings, notes), vapi_id
    if not in_sync:
        adopt_action = AdoptAssistant(
            role,
            vapi_id,
            note or "record in Postgres",
            stored=want.stored,
            live=live,
            template=want.template,
        )
        return _Kept([adopt_action], warnings, notes), vapi_id
    if stored is not None and stored.template != want.template:
        # the new version renders this org's assistant as it was: only the record moves
        move = MoveTemplate(role, vapi_id, stored.template, want.template)
        return _Kept([move], warnings, notes), vapi_id
    return _Kept([], warnings, notes), vapi_id


def _rekeyed_only(asked: dict[str, Any] | None, wanted: dict[str, Any]) -> bool:
    """Recorded under a master key rotated out since, and otherwise the same."""
    return bool(leaf_key_ids(asked) - leaf_key_ids(wanted)) and same(_blind(asked), _blind(wanted))


def _blind(value: Any) -> Any:
    """`value` with every secret-leaf fingerprint alike: the same config recorded under
    another master key compares equal (a rotation alone is no reason to write)."""
    if isinstance(value, str) and value.startswith(FINGERPRINT_PREFIX):
        return FINGERPRINT_PREFIX
    if isinstance(value, dict):
        return {k: _blind(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_blind(v) for v in value]
    return value


def _plan_absent_role(
    role: str,
    observed: ObservedOrg,
    tagged: list[dict[str, Any]],
    prune: bool,
) -> tuple[list[Action], list[str]]:
    """A role the spec no longer has: its deletes (with --prune), or why it is kept."""
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
        return [], []
    if not prune:
        return [], [f"{role}: removed from the spec, kept {ids or '(state only)'} (use --prune)"]
    deletes: list[Action] = [
        DeleteAssistant(role, i, note="removed from the spec") for i in ids
    ] or [DeleteAssistant(role, None, note="forget state")]
    return deletes, []
