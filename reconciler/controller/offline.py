"""`reconciler diff --base REF`: the specs at a git revision against the working tree, offline.
No age key, no database, no network: what a pull request from a fork can be shown.

It says what `plan` would say against a converged state (the base applied), with the same
options, and where it cannot know, it says so instead of guessing (docs/plan-format.md):

- Assistant fields are compared as the spec writes them (secret-looking leaves by a keyed
  digest made for this run only, so they show as "(sensitive value changed)", never as
  values).
- A credential is compared value by value through its SOPS ciphertext. sops keeps the
  ciphertext of a value it did not change (`sops edit`, `sops set`: same data key, same IV), so
  under the same data key a new ciphertext is a new value, and the same ciphertext always the
  same value. A file encrypted anew (`sops rotate`, or decrypted and encrypted again) has a new
  data key, and every ciphertext changes whether its value did or not: such a credential is
  `unknown` (counted apart), not an update.
- A new webhook secret is also a change of every assistant and tool that carries it
  (`server.url` set, no `x-vapi-secret` of its own), as `plan` sends it to Vapi as that
  header; new Twilio credentials a change of every Twilio number (`twilioAccountSid`,
  `twilioAuthToken`); an ElevenLabs key added, changed or removed a change of every
  assistant that carries it (`credentials`: the Vapi dynamic credentials of
  `engine.desired.DYNAMIC_CREDENTIALS`, unless the assistant names that provider itself). A
  file encrypted anew makes those `unknown` too.
- Tools and phone numbers are planned as `plan` plans them against the base applied: each
  object of the base is in the account under its natural key (a tool's type and function
  name, a number's provider and number), so a natural key stands for the Vapi id offline
  cannot know. An assistant's `model.toolIds` changes when the keys of its `tools` change
  (shown as `tools`, by name); a number's `assistantId` when its `assistant` role does (shown
  as `assistant`, by role). A tool renamed under the same key is the same object: adopted
  under its new name, the old name's state forgotten. `spec.outbound.phoneNumber` is a field
  of the org row (`outbound.phoneNumber`).
- Deletes follow `--prune` as `plan` does: without it a role or a tool removed from a spec is
  kept (a warning), a number too, released (an `update`: `assistant` -> null) when it was
  bound, and an org whose spec is gone is reported as orphaned, with nothing deleted; with
  it, the role's assistant, the tool or the number, and the orphan's numbers, assistants,
  tools, other credentials and org row, go.
- A new assistant of an org that adopts by name (`spec.adopt: byName`, `--adopt-by-name`) is
  `unknown`: whether the account has an untagged namesake to adopt instead of creating one is
  known only to `plan`. A new tool or number is a `create`: an object of that natural key made
  in the account outside git (which `plan` adopts instead) is drift, seen only by `plan`.

The result is a `RunReport` of typed actions, so it prints with the same renderers and exit
codes as `plan`.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from reconciler.controller.run import ORPHANED, OrgOutcome, RunReport
from reconciler.engine.actions import (
    Action,
    AdoptResource,
    CreateAssistant,
    CreateResource,
    DeactivateCredential,
    DeleteAssistant,
    DeleteResource,
    MoveTemplate,
    OrgPlan,
    RetireOrg,
    StoreCredential,
    TemplateMove,
    Unknown,
    UnknownResource,
    UpdateAssistant,
    UpdateResource,
    UpsertOrg,
)
from reconciler.engine.desired import DYNAMIC_CREDENTIALS
from reconciler.engine.diff import SENSITIVE_CHANGED, FieldChange, field_changes, shown_value
from reconciler.engine.kinds import (
    PHONE_NUMBER,
    TOOL,
    ResourceKind,
    number_body,
    number_key,
    tool_body,
    tool_key,
)
from reconciler.engine.model import FINGERPRINT_PREFIX, Sensitive
from reconciler.engine.runplan import FailedFile, KnownOrg, RunFacts, SpecFacts, plan_run
from reconciler.protocol import WEBHOOK_SECRET_HEADER
from reconciler.redact import SENSITIVE, mask_tree
from reconciler.spec.loader import LoadResult
from reconciler.spec.models import PROVIDERS, AssistantSpec, Organization, PhoneNumberSpec

Side = tuple[LoadResult, dict[Path, dict[str, Any]]]
Verdict = Literal["same", "changed", "unknown"]

REENCRYPTED = (
    "the file was encrypted anew (a new SOPS data key), so every ciphertext changed: whether "
    "its values did is known only with the key (`plan`)"
)
HEADER_UNKNOWN = (
    "carries the org's webhook secret, which may have changed (the file was encrypted anew): "
    "known only with the key (`plan`)"
)
ADOPT_UNKNOWN = (
    "created, or adopted if its Vapi account has an untagged assistant of that name "
    "(adoption by name): known only with the account (`plan`)"
)
PROVIDER_KEY_UNKNOWN = (
    "carries the org's {} key (a Vapi dynamic credential), which may have changed (the file "
    "was encrypted anew): known only with the key (`plan`)"
)
KEY_CHANGED = (
    "its Vapi API key changed: `plan` checks that it still reaches the same Vapi account "
    "(another one is refused until `--accept-account-change`)"
)


def _fingerprinter() -> Any:
    key = os.urandom(32)  # equality within this run is all a diff needs

    def fingerprint(value: Any) -> str:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        digest = hmac.new(key, repr(value).encode(), hashlib.sha256).hexdigest()
        return FINGERPRINT_PREFIX + digest[:32]

    return fingerprint


def _by_id(side: Side) -> dict[str, tuple[Organization, dict[str, Any]]]:
    loaded, documents = side
    return {str(s.org.metadata.id): (s.org, documents.get(s.path, {})) for s in loaded.specs}


# -- credentials, value by value through their ciphertext ----------------------------------


def _credentials(doc: dict[str, Any]) -> dict[str, Any]:
    """provider (Postgres name) -> its encrypted subtree, as committed."""
    spec = doc.get("spec")
    creds = spec.get("credentials") if isinstance(spec, dict) else None
    if not isinstance(creds, dict):
        return {}
    return {PROVIDERS[k]: v for k, v in creds.items() if k in PROVIDERS}


def _data_key_stanzas(doc: dict[str, Any]) -> set[str]:
    """The SOPS data key as wrapped for each recipient (`enc` of every key entry). Two files
    that share one share the data key: a wrapped key opens to one data key only."""
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "enc" and isinstance(v, str) and v:
                    found.add(v)
                else:
                    walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(doc.get("sops"))
    return found


def _leaves(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaves(v, f"{path}.{k}" if path else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _leaves(v, f"{path}[{i}]")
    else:
        yield path, node


def _encrypted(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("ENC[")


def _leaf_verdicts(before: Any, after: Any, same_key: bool) -> dict[str, Verdict]:
    """Per value of one credential: the same, changed, or not knowable offline."""
    was, now = dict(_leaves(before)), dict(_leaves(after))
    out: dict[str, Verdict] = {}
    for path in set(was) | set(now):
        a, b = was.get(path), now.get(path)
        if path not in was or path not in now:
            out[path] = "changed"
        elif a == b:
            out[path] = "same"  # one ciphertext opens to one value
        elif _encrypted(a) and _encrypted(b) and not same_key:
            out[path] = "unknown"
        else:
            out[path] = "changed"
    return out


def _verdict(verdicts: dict[str, Verdict]) -> Verdict:
    if "changed" in verdicts.values():
        return "changed"
    return "unknown" if "unknown" in verdicts.values() else "same"


def _credential_actions(
    old_doc: dict[str, Any], new_doc: dict[str, Any]
) -> tuple[list[Action], list[Unknown], dict[str, dict[str, Verdict]]]:
    """The credential actions, what is unknown, and the verdict on each value of each
    credential in both revisions, by provider (`vapi`: `apiKey`, `webhookSecret`)."""
    before, after = _credentials(old_doc), _credentials(new_doc)
    same_key = bool(_data_key_stanzas(old_doc) & _data_key_stanzas(new_doc))
    actions: list[Action] = []
    unknown: list[Unknown] = []
    found: dict[str, dict[str, Verdict]] = {}
    for provider in sorted(set(before) | set(after)):
        if provider not in after:
            actions.append(DeactivateCredential(provider))
        elif provider not in before:
            actions.append(StoreCredential("create", provider, Sensitive({})))
        else:
            verdicts = _leaf_verdicts(before[provider], after[provider], same_key)
            found[provider] = verdicts
            verdict = _verdict(verdicts)
            if verdict == "changed":
                actions.append(StoreCredential("update", provider, Sensitive({})))
            elif verdict == "unknown":
                unknown.append(Unknown("credential", provider, REENCRYPTED))
    return actions, unknown, found


# -- tools and phone numbers ---------------------------------------------------------------

# A Twilio number carries the org's Twilio credentials: its value -> the number's field
TWILIO_FIELDS = {"accountSid": "twilioAccountSid", "authToken": "twilioAuthToken"}
TWILIO_UNKNOWN = (
    "carries the org's Twilio credentials, which may have changed (the file was encrypted "
    "anew): known only with the key (`plan`)"
)
SECRETS_UNKNOWN = {TOOL.name: HEADER_UNKNOWN, PHONE_NUMBER.name: TWILIO_UNKNOWN}


@dataclass(frozen=True)
class _Object:
    """A tool or a number of one revision's spec, as offline sees it: its Vapi body without
    the values it takes from the org's credentials (secret leaves by keyed digest), its
    natural key, those values (field -> (provider, value name), compared through their
    ciphertext) and the role of the assistant it refers to (a number's `assistant`)."""

    body: dict[str, Any]
    key: str
    secrets: dict[str, tuple[str, str]]
    ref: str | None = None


def _tools(org: Organization | None, fingerprint: Any) -> dict[str, _Object]:
    out: dict[str, _Object] = {}
    for name, tool in (org.spec.tools if org else {}).items():
        body = tool_body(name, tool.vapi_fields())
        carried = (
            {HEADER_PATH: ("vapi", "webhookSecret")} if _server_carries(body.get("server")) else {}
        )
        out[name] = _Object(TOOL.masked(body, fingerprint), tool_key(body) or name, carried)
    return out


def _numbers(org: Organization | None, fingerprint: Any) -> dict[str, _Object]:
    out: dict[str, _Object] = {}
    for number in org.spec.phoneNumbers if org else ():
        out[number.key] = _number(number, fingerprint)
    return out


def _number(number: PhoneNumberSpec, fingerprint: Any) -> _Object:
    fields = number.model_dump(mode="json", by_alias=True, exclude_none=True)
    twilio = {"accountSid": "", "authToken": ""} if number.provider == "twilio" else None
    body = number_body(fields, twilio)  # the same body as `plan`'s, its secrets left out
    carried = {
        f: ("twilio", leaf) for leaf, f in TWILIO_FIELDS.items() if body.pop(f, None) is not None
    }
    body.pop("assistantId", None)  # the reference, compared by role
    key = number_key(body) or number.key
    return _Object(PHONE_NUMBER.masked(body, fingerprint), key, carried, number.assistant)


@dataclass
class _KindPart:
    """One kind's part of an org's offline plan (as `engine.resources.KindPlan`)."""

    actions: list[Action] = field(default_factory=list)  # creates, updates, adopts
    removals: list[Action] = field(default_factory=list)  # releases and deletes
    unchanged: list[str] = field(default_factory=list)
    unknown: list[Unknown] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _carried(
    was: _Object, now: _Object, verdicts: dict[str, dict[str, Verdict]]
) -> dict[str, Verdict]:
    """The verdict on each credential value both revisions of the object carry."""
    return {
        f: verdicts.get(provider, {}).get(leaf, "same")
        for f, (provider, leaf) in now.secrets.items()
        if was.secrets.get(f) == (provider, leaf)
    }


def _object_changes(
    was: _Object, now: _Object, verdicts: dict[str, dict[str, Verdict]], *, adopt: bool
) -> list[FieldChange]:
    changes = field_changes(was.body, now.body)
    if not adopt:  # a field removed from the spec since our last write is cleared
        gone = sorted(set(was.body) - set(now.body))
        changes += [FieldChange(k, shown_value(was.body[k]), None) for k in gone]
    if was.ref != now.ref:  # `plan` shows the assistants' ids in `assistantId`
        changes.append(FieldChange("assistant", was.ref, now.ref))
    carried = _carried(was, now, verdicts)
    changes += [_sensitive_change(f) for f, v in sorted(carried.items()) if v == "changed"]
    return changes


def _kind_actions(
    kind: ResourceKind,
    before: dict[str, _Object],
    after: dict[str, _Object],
    verdicts: dict[str, dict[str, Verdict]],
    *,
    prune: bool,
) -> _KindPart:
    """As `engine.resources.plan_kind` against the base applied: each object of the base is in
    the account under its natural key, with the base's body."""
    part = _KindPart()
    base_by_key = {obj.key: name for name, obj in before.items()}
    taken: set[str] = set()  # base objects a head object of another name takes (renamed)
    for name in sorted(after):
        now, was, adopt, note = after[name], before.get(name), False, ""
        if was is None or was.key != now.key:
            other = base_by_key.get(now.key)
            if other is None:
                shown = {**now.body, **({"assistant": now.ref} if now.ref else {})}
                created = tuple(field_changes({}, shown))
                part.actions.append(CreateResource(kind.name, name, now.body, now.body, created))
                continue
            was, adopt, note = before[other], True, "found by its natural key"
            taken.add(other)
        changes = _object_changes(was, now, verdicts, adopt=adopt)
        if changes:
            step = UpdateResource(
                kind.name, name, "", {}, now.body, tuple(changes), adopt=adopt, note=note
            )
            part.actions.append(step)
        elif adopt:
            part.actions.append(AdoptResource(kind.name, name, "", note, now.body))
        elif "unknown" in _carried(was, now, verdicts).values():
            resource = cast(UnknownResource, kind.name)
            part.unknown.append(Unknown(resource, name, SECRETS_UNKNOWN[kind.name]))
        else:
            part.unchanged.append(f"{kind.name}/{name}")
    for name in sorted(set(before) - set(after)):
        was = before[name]
        if name in taken:  # now another desired object's: its state only
            part.removals.append(DeleteResource(kind.name, name, None, note="forget state"))
        elif prune:
            part.removals.append(
                DeleteResource(kind.name, name, None, note="removed from the spec")
            )
        else:
            part.warnings.append(
                f"{kind.label} {name}: removed from the spec, kept (use --prune to delete it)"
            )
            # the one release a kind declares unbinds its reference (a number's assistant)
            if kind.on_removal is not None and was.ref is not None:
                release = UpdateResource(
                    kind.name,
                    name,
                    "",
                    dict(kind.on_removal),
                    {**was.body, **kind.on_removal},
                    (FieldChange("assistant", was.ref, None),),
                    note="removed from the spec: released (--prune deletes it)",
                )
                part.removals.append(release)
    return part


# -- assistants ------------------------------------------------------------------------------


def carries_webhook_secret(spec: AssistantSpec) -> bool:
    """`plan` sends the org's webhook secret as this assistant's `x-vapi-secret` header (see
    `engine.desired.assistant_body`)."""
    return _server_carries(spec.server)


def _server_carries(server: Any) -> bool:
    """A `server` (an assistant's, a tool's) that `plan` gives the org's webhook secret as its
    `x-vapi-secret` header (`engine.desired.with_secret_header`)."""
    if not isinstance(server, dict) or not server.get("url"):
        return False
    headers = server.get("headers") or {}
    return not any(str(h).lower() == WEBHOOK_SECRET_HEADER for h in headers)


HEADER_PATH = f"server.headers.{WEBHOOK_SECRET_HEADER}"


def _sensitive_change(path: str) -> FieldChange:
    return FieldChange(path, SENSITIVE, SENSITIVE_CHANGED, sensitive=True)


def _secret_header_change() -> FieldChange:
    return _sensitive_change(HEADER_PATH)


def _provider_keys(spec: AssistantSpec, providers: set[str]) -> set[str]:
    """The org's provider keys `plan` gives this assistant as Vapi dynamic credentials
    (`engine.desired.assistant_body`): those of `providers` (the org's credentials) whose Vapi
    provider the assistant's own `credentials` do not name."""
    written = {
        c.get("provider")
        for c in spec.vapi_fields().get("credentials") or []
        if isinstance(c, dict)
    }
    return {
        p
        for p, build in DYNAMIC_CREDENTIALS.items()
        if p in providers and build(defaultdict(str))["provider"] not in written
    }


def _tool_list(spec: AssistantSpec, tools: dict[str, _Object]) -> list[str]:
    """The natural keys of an assistant's tools, in order: the same keys, the same objects,
    so the same `model.toolIds` (a tool is adopted by its key, never created again)."""
    return [tools[name].key if name in tools else f"?{name}" for name in spec.tools or ()]


def _assistant_actions(
    old: Organization | None,
    new: Organization | None,
    fingerprint: Any,
    *,
    prune: bool,
    header: Verdict,
    adopt_by_name: bool,
    tools: tuple[dict[str, _Object], dict[str, _Object]] = ({}, {}),
    providers: tuple[set[str], set[str]] = (set(), set()),
    verdicts: dict[str, dict[str, Verdict]] | None = None,
) -> tuple[list[Action], list[str], list[Unknown], list[str]]:
    """Actions, unchanged roles, unknowns and warnings of one org's assistants. `tools`: the
    org's tools at the base and at the head, for each assistant's `tools` list; `providers`:
    the providers of the org's credentials at the base and at the head, and `verdicts` the
    verdict on each of their values, for the provider keys its assistants carry."""
    before = old.spec.assistants.by_role() if old else {}
    after = new.spec.assistants.by_role() if new else {}
    actions: list[Action] = []
    unchanged: list[str] = []
    unknown: list[Unknown] = []
    warnings: list[str] = []
    adopting = adopt_by_name or (new is not None and new.spec.adopt == "byName")
    for role in sorted(set(before) | set(after)):
        was: dict[str, Any] | None = None
        now: dict[str, Any] | None = None
        if role in before:
            was = mask_tree(before[role].vapi_fields(), fingerprint)
        if role in after:
            now = mask_tree(after[role].vapi_fields(), fingerprint)
        if now is not None and was is None:
            if adopting:
                unknown.append(Unknown("assistant", role, ADOPT_UNKNOWN))
            else:
                shown = {**now, **({"tools": after[role].tools} if after[role].tools else {})}
                actions.append(CreateAssistant(role, now, now, tuple(field_changes({}, shown))))
        elif now is None:
            if prune:
                actions.append(DeleteAssistant(role, None, note="removed from the spec"))
            else:
                warnings.append(f"{role}: removed from the spec, kept (use --prune)")
        elif was is not None:
            fields = field_changes(was, now)
            gone = sorted(set(was) - set(now))
            fields += [FieldChange(k, shown_value(was[k]), None) for k in gone]
            if _tool_list(before[role], tools[0]) != _tool_list(after[role], tools[1]):
                # `plan` shows the ids in `model.toolIds`; offline the tools by name
                fields.append(FieldChange("tools", before[role].tools, after[role].tools))
            carries = carries_webhook_secret(after[role])
            header_known = carries and carries_webhook_secret(before[role])
            if header_known and header == "changed":
                fields.append(_secret_header_change())
            why = [HEADER_UNKNOWN] if header_known and header == "unknown" else []
            had = _provider_keys(before[role], providers[0])
            has = _provider_keys(after[role], providers[1])
            kept = {p: _verdict((verdicts or {}).get(p, {})) for p in sorted(had & has)}
            if had != has or "changed" in kept.values():
                fields.append(_sensitive_change("credentials"))
            why += [PROVIDER_KEY_UNKNOWN.format(p) for p, v in kept.items() if v == "unknown"]
            made = (
                old.templates.get(role) if old else None,
                new.templates.get(role) if new else None,
            )
            if fields:
                actions.append(UpdateAssistant(role, "", {}, now, tuple(fields), template=made[1]))
            elif why:
                unknown.append(Unknown("assistant", role, "; ".join(why)))
            elif made[0] != made[1]:  # renders as before: only the record of the template
                actions.append(MoveTemplate(role, "", made[0], made[1]))
            else:
                unchanged.append(role)
    return actions, unchanged, unknown, warnings


def _template_moves(
    old: Organization | None, new: Organization | None, actions: list[Action]
) -> tuple[TemplateMove, ...]:
    """As `plan` shows them: each assistant of both revisions whose template changed."""
    if old is None or new is None:
        return ()
    changed = {a.role for a in actions if isinstance(a, UpdateAssistant)}
    before, after = old.templates, new.templates
    both = set(old.spec.assistants.by_role()) & set(new.spec.assistants.by_role())
    return tuple(
        TemplateMove(
            role,
            before.get(role),
            after.get(role),
            role in changed,
            new.overridden.get(role, frozenset()),
        )
        for role in sorted(both)
        if before.get(role) != after.get(role)
    )


# -- orgs ------------------------------------------------------------------------------------


def _org_changes(was: Organization, now: Organization) -> tuple[FieldChange, ...]:
    def forward(org: Organization) -> str | None:
        return org.spec.webhook.forward_url if org.spec.webhook else None

    def outbound(org: Organization) -> str | None:
        return org.spec.outbound.phone_number if org.spec.outbound else None

    return tuple(
        FieldChange(f, a, b)
        for f, a, b in (
            ("slug", was.metadata.slug, now.metadata.slug),
            ("name", was.metadata.name, now.metadata.name),
            ("webhook.forwardUrl", forward(was), forward(now)),
            ("outbound.phoneNumber", outbound(was), outbound(now)),
        )
        if a != b
    )


def _orphan_plan(
    org_id: str, was: Organization, was_doc: dict[str, Any], *, prune: bool, held_back: bool
) -> OrgPlan:
    """An org whose spec is gone, as `plan` has it against the converged base (its assistants,
    tools, numbers and credentials are the base spec's)."""
    slug = was.metadata.slug
    roles = sorted(was.spec.assistants.by_role())
    numbers = sorted(n.key for n in was.spec.phoneNumbers)
    tools = sorted(was.spec.tools)
    what = f"deletes its {len(roles)} tagged assistant(s), " if roles else ""
    if numbers or tools:
        what += f"its {len(numbers) + len(tools)} phone number(s) and tool(s), "
    if not prune or held_back:
        orphaned = f"{ORPHANED}: `--prune` {what}deactivates its credentials and retires it"
        warnings: tuple[str, ...] = ()
        if held_back:
            warnings = (
                "not retired in this run: a spec file failed to load, and it may be this org's",
            )
        return OrgPlan(org_id, slug, (), orphaned=orphaned, warnings=warnings)
    # numbers released first (a call must not reach an assistant being deleted), tools last
    deletes: list[Action] = [DeleteResource(PHONE_NUMBER.name, n, None, ORPHANED) for n in numbers]
    deletes += [DeleteAssistant(role, None, note=ORPHANED) for role in roles]
    deletes += [DeleteResource(TOOL.name, n, None, note=ORPHANED) for n in tools]
    others: list[Action] = [
        DeactivateCredential(p) for p in sorted(_credentials(was_doc)) if p != "vapi"
    ]
    return OrgPlan(org_id, slug, (*deletes, *others, RetireOrg(reason=ORPHANED)), orphaned=ORPHANED)


def _slug_taken(
    org_id: str,
    now: Organization | None,
    owners: dict[str, str],
    new: dict[str, Any],
    *,
    prune: bool,
    orphans: bool,
) -> str | None:
    """As `plan` refuses it: a slug the base gave to another org id is refused, unless that
    org's spec is gone and `--prune` retires it first (freeing the slug)."""
    if now is None:
        return None
    slug = now.metadata.slug
    owner = owners.get(slug)
    if owner is None or owner == org_id:
        return None
    orphan = orphans and owner not in new
    if orphan and prune:
        return None
    why = (
        "that org's spec is gone; `apply --prune` retires it and frees the slug"
        if orphan
        else "a new id for an existing slug is refused"
    )
    return f"slug {slug} belongs to org {owner} at the base revision, not to {org_id}: {why}"


def offline_diff(
    base: Side,
    head: Side,
    *,
    prune: bool = False,
    orphans: bool = True,
    adopt_by_name: bool = False,
) -> RunReport:
    """`orphans`: the specs are the whole fleet (a folder, no `--org`), so an org whose spec
    is gone is an orphan, as for `plan`; otherwise it is not shown at all."""
    started = time.monotonic()
    fingerprint = _fingerprinter()
    old, new = _by_id(base), _by_id(head)
    problems = list(head[0].problems)
    # an org whose head file fails to load is failing (its problem is listed), never gone:
    # the same rule as `plan` (engine.runplan)
    run = plan_run(
        RunFacts(
            specs=tuple(SpecFacts(oid, org.metadata.slug) for oid, (org, _) in new.items()),
            known=tuple(KnownOrg(oid, org.metadata.slug) for oid, (org, _) in old.items()),
            failed=tuple(
                FailedFile(str(p.path), p.path.stem, head[0].failed_ids.get(p.path))
                for p in problems
            ),
            whole_fleet=True,
        )
    )
    failing = {k.org_id for k in run.failing}
    outcomes: list[OrgOutcome] = []
    owners = {was.metadata.slug: oid for oid, (was, _) in old.items()}  # as applied: Postgres
    for org_id in sorted(
        set(old) | set(new), key=lambda i: (new.get(i) or old[i])[0].metadata.slug
    ):
        was, was_doc = old.get(org_id, (None, {}))
        now, now_doc = new.get(org_id, (None, {}))
        taken = _slug_taken(org_id, now, owners, new, prune=prune, orphans=orphans)
        if taken is not None:
            assert now is not None
            outcomes.append(OrgOutcome(now.metadata.slug, org_id, error=taken))
            continue
        if now is None:
            assert was is not None
            if orphans and org_id not in failing:
                plan = _orphan_plan(
                    org_id, was, was_doc, prune=prune, held_back=prune and bool(problems)
                )
                outcomes.append(OrgOutcome(was.metadata.slug, org_id, plan=plan))
            continue
        slug = now.metadata.slug
        actions: list[Action] = []
        notes: list[str] = []
        outbound = now.spec.outbound.phone_number if now.spec.outbound else None
        forward = now.spec.webhook.forward_url if now.spec.webhook else None
        if was is None:
            actions.append(
                UpsertOrg(
                    "create",
                    slug,
                    now.metadata.name,
                    forward_url=forward,
                    outbound_number=outbound,
                )
            )
        elif changes := _org_changes(was, now):
            actions.append(
                UpsertOrg(
                    "update",
                    slug,
                    now.metadata.name,
                    changes,
                    forward_url=forward,
                    outbound_number=outbound,
                )
            )
        credentials, unknown, verdicts = _credential_actions(was_doc, now_doc)
        actions += credentials
        vapi = verdicts.get("vapi", {})
        if vapi.get("apiKey") == "changed":
            notes.append(KEY_CHANGED)
        was_tools, now_tools = _tools(was, fingerprint), _tools(now, fingerprint)
        tools = _kind_actions(TOOL, was_tools, now_tools, verdicts, prune=prune)
        numbers = _kind_actions(
            PHONE_NUMBER,
            _numbers(was, fingerprint),
            _numbers(now, fingerprint),
            verdicts,
            prune=prune,
        )
        assistants, unchanged, unknown_roles, warnings = _assistant_actions(
            was,
            now,
            fingerprint,
            prune=prune,
            header=vapi.get("webhookSecret", "same"),
            adopt_by_name=adopt_by_name,
            tools=(was_tools, now_tools),
            providers=(set(_credentials(was_doc)), set(_credentials(now_doc))),
            verdicts=verdicts,
        )
        # in `plan`'s order: tools, assistants, numbers (by references), then the numbers'
        # releases and deletes, the assistants' deletes, the tools' deletes
        deletes = [a for a in assistants if isinstance(a, DeleteAssistant)]
        actions += tools.actions
        actions += [a for a in assistants if not isinstance(a, DeleteAssistant)]
        actions += [*numbers.actions, *numbers.removals, *deletes, *tools.removals]
        plan = OrgPlan(
            org_id,
            slug,
            tuple(actions),
            unchanged=(*tools.unchanged, *unchanged, *numbers.unchanged),
            warnings=(*tools.warnings, *warnings, *numbers.warnings),
            notes=tuple(notes),
            unknown=(*unknown, *tools.unknown, *unknown_roles, *numbers.unknown),
            templates=_template_moves(was, now, assistants),
        )
        outcomes.append(OrgOutcome(slug, org_id, plan=plan))
    return RunReport(outcomes, problems, time.monotonic() - started)
