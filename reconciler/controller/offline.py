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
- A new webhook secret is also a change of every assistant that carries it (`server.url` set,
  no `x-vapi-secret` of its own), as `plan` sends it to Vapi as that header.
- Deletes follow `--prune` as `plan` does: without it a role removed from a spec is kept (a
  warning) and an org whose spec is gone is reported as orphaned, with nothing deleted; with
  it, the role's assistant, and the orphan's assistants, other credentials and org row, go.
- A new assistant of an org that adopts by name (`spec.adopt: byName`, `--adopt-by-name`) is
  `unknown`: whether the account has an untagged namesake to adopt instead of creating one is
  known only to `plan`.

The result is a `RunReport` of typed actions, so it prints with the same renderers and exit
codes as `plan`.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from reconciler.controller.run import ORPHANED, OrgOutcome, RunReport
from reconciler.engine.actions import (
    Action,
    CreateAssistant,
    DeactivateCredential,
    DeleteAssistant,
    OrgPlan,
    RetireOrg,
    StoreCredential,
    Unknown,
    UpdateAssistant,
    UpsertOrg,
)
from reconciler.engine.diff import SENSITIVE_CHANGED, FieldChange, field_changes, shown_value
from reconciler.engine.model import FINGERPRINT_PREFIX, Sensitive
from reconciler.engine.runplan import FailedFile, KnownOrg, RunFacts, SpecFacts, plan_run
from reconciler.protocol import WEBHOOK_SECRET_HEADER
from reconciler.redact import SENSITIVE, mask_tree
from reconciler.spec.loader import LoadResult
from reconciler.spec.models import PROVIDERS, AssistantSpec, Organization

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
) -> tuple[list[Action], list[Unknown], dict[str, Verdict]]:
    """The credential actions, what is unknown, and the verdict on each Vapi value (`apiKey`,
    `webhookSecret`) of a Vapi credential in both revisions."""
    before, after = _credentials(old_doc), _credentials(new_doc)
    same_key = bool(_data_key_stanzas(old_doc) & _data_key_stanzas(new_doc))
    actions: list[Action] = []
    unknown: list[Unknown] = []
    vapi: dict[str, Verdict] = {}
    for provider in sorted(set(before) | set(after)):
        if provider not in after:
            actions.append(DeactivateCredential(provider))
        elif provider not in before:
            actions.append(StoreCredential("create", provider, Sensitive({})))
        else:
            verdicts = _leaf_verdicts(before[provider], after[provider], same_key)
            if provider == "vapi":
                vapi = verdicts
            verdict = _verdict(verdicts)
            if verdict == "changed":
                actions.append(StoreCredential("update", provider, Sensitive({})))
            elif verdict == "unknown":
                unknown.append(Unknown("credential", provider, REENCRYPTED))
    return actions, unknown, vapi


# -- assistants ------------------------------------------------------------------------------


def carries_webhook_secret(spec: AssistantSpec) -> bool:
    """`plan` sends the org's webhook secret as this assistant's `x-vapi-secret` header (see
    `engine.desired.assistant_body`)."""
    server = spec.server
    if not isinstance(server, dict) or not server.get("url"):
        return False
    headers = server.get("headers") or {}
    return not any(str(h).lower() == WEBHOOK_SECRET_HEADER for h in headers)


def _secret_header_change() -> FieldChange:
    path = f"server.headers.{WEBHOOK_SECRET_HEADER}"
    return FieldChange(path, SENSITIVE, SENSITIVE_CHANGED, sensitive=True)


def _assistant_actions(
    old: Organization | None,
    new: Organization | None,
    fingerprint: Any,
    *,
    prune: bool,
    header: Verdict,
    adopt_by_name: bool,
) -> tuple[list[Action], list[str], list[Unknown], list[str]]:
    """Actions, unchanged roles, unknowns and warnings of one org's assistants."""
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
                actions.append(CreateAssistant(role, now, now, tuple(field_changes({}, now))))
        elif now is None:
            if prune:
                actions.append(DeleteAssistant(role, None, note="removed from the spec"))
            else:
                warnings.append(f"{role}: removed from the spec, kept (use --prune)")
        elif was is not None:
            fields = field_changes(was, now)
            gone = sorted(set(was) - set(now))
            fields += [FieldChange(k, shown_value(was[k]), None) for k in gone]
            carries = carries_webhook_secret(after[role])
            header_known = carries and carries_webhook_secret(before[role])
            if header_known and header == "changed":
                fields.append(_secret_header_change())
            if fields:
                actions.append(UpdateAssistant(role, "", {}, now, tuple(fields)))
            elif header_known and header == "unknown":
                unknown.append(Unknown("assistant", role, HEADER_UNKNOWN))
            else:
                unchanged.append(role)
    return actions, unchanged, unknown, warnings


# -- orgs ------------------------------------------------------------------------------------


def _org_changes(was: Organization, now: Organization) -> tuple[FieldChange, ...]:
    def forward(org: Organization) -> str | None:
        return org.spec.webhook.forward_url if org.spec.webhook else None

    return tuple(
        FieldChange(f, a, b)
        for f, a, b in (
            ("slug", was.metadata.slug, now.metadata.slug),
            ("name", was.metadata.name, now.metadata.name),
            ("webhook.forwardUrl", forward(was), forward(now)),
        )
        if a != b
    )


def _orphan_plan(
    org_id: str, was: Organization, was_doc: dict[str, Any], *, prune: bool, held_back: bool
) -> OrgPlan:
    """An org whose spec is gone, as `plan` has it against the converged base (its assistants
    are the base spec's, its credentials the base spec's)."""
    slug = was.metadata.slug
    roles = sorted(was.spec.assistants.by_role())
    what = f"deletes its {len(roles)} tagged assistant(s), " if roles else ""
    if not prune or held_back:
        orphaned = f"{ORPHANED}: `--prune` {what}deactivates its credentials and retires it"
        warnings: tuple[str, ...] = ()
        if held_back:
            warnings = (
                "not retired in this run: a spec file failed to load, and it may be this org's",
            )
        return OrgPlan(org_id, slug, (), orphaned=orphaned, warnings=warnings)
    deletes: list[Action] = [DeleteAssistant(role, None, note=ORPHANED) for role in roles]
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
        if was is None:
            actions.append(UpsertOrg("create", slug, now.metadata.name))
        elif changes := _org_changes(was, now):
            actions.append(UpsertOrg("update", slug, now.metadata.name, changes))
        credentials, unknown, vapi = _credential_actions(was_doc, now_doc)
        actions += credentials
        if vapi.get("apiKey") == "changed":
            notes.append(KEY_CHANGED)
        assistants, unchanged, unknown_roles, warnings = _assistant_actions(
            was,
            now,
            fingerprint,
            prune=prune,
            header=vapi.get("webhookSecret", "same"),
            adopt_by_name=adopt_by_name,
        )
        actions += assistants
        plan = OrgPlan(
            org_id,
            slug,
            tuple(actions),
            unchanged=tuple(unchanged),
            warnings=tuple(warnings),
            notes=tuple(notes),
            unknown=(*unknown, *unknown_roles),
        )
        outcomes.append(OrgOutcome(slug, org_id, plan=plan))
    return RunReport(outcomes, problems, time.monotonic() - started)
