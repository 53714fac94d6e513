"""`reconciler diff --base REF`: the specs at a git revision against the working tree, offline.
No age key, no database, no network: what a pull request from a fork can be shown.

Assistant fields are compared as the spec writes them (secret-looking leaves by a keyed digest
made for this run only, so they show as "(sensitive value changed)", never as values). A
credential is compared by its SOPS ciphertext, per provider: sops encrypts each value with a
fresh IV, so different ciphertext means the file's value was re-encrypted (changed, or
re-encrypted unchanged), reported as "(sensitive value changed)". The result is a `RunReport`
of typed actions, so it prints with the same renderers and exit codes as `plan`.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from pathlib import Path
from typing import Any

from reconciler.controller.run import OrgOutcome, RunReport
from reconciler.engine.actions import (
    Action,
    CreateAssistant,
    DeactivateCredential,
    DeleteAssistant,
    OrgPlan,
    StoreCredential,
    UpdateAssistant,
    UpsertOrg,
)
from reconciler.engine.diff import FieldChange, field_changes, shown_value
from reconciler.engine.model import FINGERPRINT_PREFIX, Sensitive
from reconciler.redact import mask_tree
from reconciler.spec.loader import LoadResult
from reconciler.spec.models import PROVIDERS, Organization

Side = tuple[LoadResult, dict[Path, dict[str, Any]]]


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


def _credentials(doc: dict[str, Any]) -> dict[str, Any]:
    """provider (Postgres name) -> its encrypted subtree, as committed."""
    spec = doc.get("spec")
    creds = spec.get("credentials") if isinstance(spec, dict) else None
    if not isinstance(creds, dict):
        return {}
    return {PROVIDERS[k]: v for k, v in creds.items() if k in PROVIDERS}


def _assistant_actions(
    old: Organization | None, new: Organization | None, fingerprint: Any
) -> tuple[list[Action], list[str]]:
    before = old.spec.assistants.by_role() if old else {}
    after = new.spec.assistants.by_role() if new else {}
    actions: list[Action] = []
    unchanged: list[str] = []
    for role in sorted(set(before) | set(after)):
        was: dict[str, Any] | None = None
        now: dict[str, Any] | None = None
        if role in before:
            was = mask_tree(before[role].vapi_fields(), fingerprint)
        if role in after:
            now = mask_tree(after[role].vapi_fields(), fingerprint)
        if now is not None and was is None:
            actions.append(CreateAssistant(role, now, now, tuple(field_changes({}, now))))
        elif now is None:
            actions.append(DeleteAssistant(role, None, note="removed from the spec"))
        elif was is not None:
            fields = field_changes(was, now)
            gone = sorted(set(was) - set(now))
            fields += [FieldChange(k, shown_value(was[k]), None) for k in gone]
            if fields:
                actions.append(UpdateAssistant(role, "", {}, now, tuple(fields)))
            else:
                unchanged.append(role)
    return actions, unchanged


def _credential_actions(old_doc: dict[str, Any], new_doc: dict[str, Any]) -> list[Action]:
    before, after = _credentials(old_doc), _credentials(new_doc)
    actions: list[Action] = []
    for provider in sorted(set(before) | set(after)):
        if provider not in after:
            actions.append(DeactivateCredential(provider))
        elif provider not in before:
            actions.append(StoreCredential("create", provider, Sensitive({})))
        elif before[provider] != after[provider]:
            actions.append(StoreCredential("update", provider, Sensitive({})))
    return actions


def offline_diff(base: Side, head: Side) -> RunReport:
    started = time.monotonic()
    fingerprint = _fingerprinter()
    old, new = _by_id(base), _by_id(head)
    outcomes: list[OrgOutcome] = []
    for org_id in sorted(
        set(old) | set(new), key=lambda i: (new.get(i) or old[i])[0].metadata.slug
    ):
        was, was_doc = old.get(org_id, (None, {}))
        now, now_doc = new.get(org_id, (None, {}))
        org = now or was
        assert org is not None
        slug = org.metadata.slug
        actions: list[Action] = []
        if was is None and now is not None:
            actions.append(UpsertOrg("create", slug, now.metadata.name))
        elif now is None and was is not None:
            actions.append(UpsertOrg("delete", slug, was.metadata.name))
        elif was is not None and now is not None:
            changes = tuple(
                FieldChange(f, a, b)
                for f, a, b in (
                    ("slug", was.metadata.slug, now.metadata.slug),
                    ("name", was.metadata.name, now.metadata.name),
                )
                if a != b
            )
            if changes:
                actions.append(UpsertOrg("update", slug, now.metadata.name, changes))
        actions += _credential_actions(was_doc, now_doc)
        assistants, unchanged = _assistant_actions(was, now, fingerprint)
        actions += assistants
        plan = OrgPlan(org_id, slug, tuple(actions), unchanged=tuple(unchanged))
        outcomes.append(OrgOutcome(slug, org_id, plan=plan))
    problems = list(head[0].problems)
    return RunReport(outcomes, problems, time.monotonic() - started)
