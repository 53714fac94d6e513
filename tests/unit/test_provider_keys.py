"""The org's own provider keys on its assistants (issue 16): `engine.desired` puts the org's
ElevenLabs key in every assistant's dynamic `credentials`; the planner compares that write-only
field with what it last asked for (fingerprints), never with the live value, which lacks the
key. Pure: no Postgres, no Vapi."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from typing import Any

from reconciler.engine.actions import AdoptAssistant, CreateAssistant, UpdateAssistant
from reconciler.engine.desired import assistant_body, desired_org
from reconciler.engine.diff import SENSITIVE_CHANGED, FieldChange
from reconciler.engine.model import (
    DesiredAssistant,
    DesiredOrg,
    ObservedOrg,
    StoredAssistant,
)
from reconciler.engine.planner import plan_org
from reconciler.redact import SENSITIVE, mask_tree
from reconciler.secrets.crypto import KeyRing, MasterKey
from reconciler.spec.models import Organization
from reconciler.vapi.emulator import DYNAMIC_CREDENTIAL_SECRETS
from tests.helpers import org_doc
from tests.unit.test_planner import ORG, converged, desired, fp, live_copy

KEY = "el-key-ORIGINAL-5c1f0a"
ROTATED = "el-key-ROTATED-9e77b2"


def with_keys(d: DesiredOrg, key: str | None) -> DesiredOrg:
    """`d` with the org's ElevenLabs key (None: without one) on every assistant."""
    keys = [{"provider": "11labs", "apiKey": key}] if key else []
    assistants = {}
    for role, w in d.assistants.items():
        fields = {k: v for k, v in w.body.items() if k not in ("metadata", "credentials")}
        body = assistant_body(copy.deepcopy(fields), ORG, role, None, keys)
        assistants[role] = DesiredAssistant(role, body, mask_tree(body, fp))
    return replace(d, assistants=assistants)


def as_vapi_shows(observed: ObservedOrg) -> ObservedOrg:
    """The live assistants as Vapi lists them: dynamic credentials without their secrets."""
    live = []
    for a in observed.live or []:
        a = copy.deepcopy(a)
        if isinstance(a.get("credentials"), list):
            a["credentials"] = [
                {k: v for k, v in c.items() if k not in DYNAMIC_CREDENTIAL_SECRETS}
                for c in a["credentials"]
            ]
        live.append(a)
    return replace(observed, live=live)


def converged_with(d: DesiredOrg) -> ObservedOrg:
    """Right after an apply of `d`, the live side as Vapi shows it (answer included)."""
    observed = as_vapi_shows(converged(d))
    answers = {
        (a.get("metadata") or {}).get("role"): {
            k: v for k, v in a.items() if k not in ("id", "orgId", "createdAt", "updatedAt")
        }
        for a in observed.live or []
    }
    return replace(
        observed,
        assistants={
            r: replace(s, applied_config=answers[r]) for r, s in observed.assistants.items()
        },
    )


# -- engine.desired --------------------------------------------------------------------------


def organization(elevenlabs: str | None, assistants: dict[str, Any] | None = None) -> Organization:
    extra = {"elevenlabs": {"apiKey": elevenlabs}} if elevenlabs else {}
    doc = org_doc("acme", org_id=ORG, extra_credentials=extra, assistants=assistants)
    return Organization.model_validate(doc)


def test_every_assistant_gets_the_orgs_elevenlabs_key_whatever_its_voice() -> None:
    org = organization(KEY)  # org_doc: inbound has no voice, outbound speaks with 11labs
    d = desired_org(org, MasterKey.generate())
    assert set(d.assistants) == {"inbound", "outbound"}
    for want in d.assistants.values():
        assert want.body["credentials"] == [{"provider": "11labs", "apiKey": KEY}]
        stored = want.stored["credentials"]
        assert len(stored) == 1 and set(stored[0]) == {"provider", "apiKey"}
        assert KEY not in json.dumps(want.stored)  # fingerprinted where it is kept
        assert KEY not in repr(want)


def test_without_an_elevenlabs_key_no_credentials_are_added() -> None:
    d = desired_org(organization(None), MasterKey.generate())
    assert all("credentials" not in w.body for w in d.assistants.values())


def test_the_users_own_entry_for_the_provider_wins_and_others_are_kept() -> None:
    mine = {"provider": "11labs", "apiKey": "the-users-own", "name": "own"}
    other = {"provider": "deepgram", "apiKey": "dg-key"}
    assistants = {
        "inbound": {"name": "acme inbound", "credentials": [mine]},
        "outbound": {"name": "acme outbound", "credentials": [other]},
    }
    d = desired_org(organization(KEY, assistants), MasterKey.generate())
    assert d.assistants["inbound"].body["credentials"] == [mine]  # not duplicated
    assert d.assistants["outbound"].body["credentials"] == [
        other,
        {"provider": "11labs", "apiKey": KEY},
    ]


def test_a_rotated_key_changes_the_fingerprint_only() -> None:
    key = MasterKey.generate()
    before = desired_org(organization(KEY), key).assistants["inbound"].stored
    after = desired_org(organization(ROTATED), key).assistants["inbound"].stored
    assert before["credentials"][0]["provider"] == after["credentials"][0]["provider"]
    assert before["credentials"][0]["apiKey"] != after["credentials"][0]["apiKey"]
    assert {k: v for k, v in before.items() if k != "credentials"} == {
        k: v for k, v in after.items() if k != "credentials"
    }


# -- the planner -----------------------------------------------------------------------------


def test_converged_org_with_a_key_vapi_does_not_return_plans_nothing() -> None:
    d = with_keys(desired(), KEY)
    observed = converged_with(d)
    assert all("apiKey" not in a["credentials"][0] for a in observed.live or [])
    plan = plan_org(d, observed)
    assert plan.actions == ()
    assert set(plan.unchanged) == {"inbound", "outbound"}
    assert plan.warnings == ()  # not "Vapi does not keep this value": it is write-only


def test_a_rotated_key_patches_every_assistant_as_a_sensitive_change() -> None:
    observed = converged_with(with_keys(desired(), KEY))
    plan = plan_org(with_keys(desired(), ROTATED), observed)
    updates = [a for a in plan.actions if isinstance(a, UpdateAssistant)]
    assert sorted(u.role for u in updates) == ["inbound", "outbound"]
    for u in updates:
        assert set(u.patch) == {"credentials"}  # nothing else
        assert u.patch["credentials"] == [{"provider": "11labs", "apiKey": ROTATED}]
        assert u.changes == (
            FieldChange("credentials[0].apiKey", SENSITIVE, SENSITIVE_CHANGED, sensitive=True),
        )
        assert ROTATED not in repr(u) and KEY not in repr(u)
    # recorded after that PATCH, the next plan is empty
    after = with_keys(desired(), ROTATED)
    assert plan_org(after, converged_with(after)).actions == ()


def test_a_key_added_to_the_org_reaches_assistants_created_before() -> None:
    observed = converged_with(desired())
    plan = plan_org(with_keys(desired(), KEY), observed)
    updates = [a for a in plan.actions if isinstance(a, UpdateAssistant)]
    assert len(updates) == 2 and all(set(u.patch) == {"credentials"} for u in updates)


def test_a_key_removed_from_the_org_is_cleared_even_if_vapi_shows_nothing() -> None:
    observed = converged_with(with_keys(desired(), KEY))
    hidden = replace(  # a Vapi that omits the field in its answers altogether
        observed,
        live=[{k: v for k, v in a.items() if k != "credentials"} for a in observed.live or []],
    )
    for obs in (observed, hidden):
        plan = plan_org(desired(), obs)
        updates = [a for a in plan.actions if isinstance(a, UpdateAssistant)]
        assert len(updates) == 2
        assert all(u.patch == {"credentials": None} for u in updates)


def test_an_adopted_assistant_gets_the_key_once() -> None:
    d = with_keys(desired(), KEY)
    observed = converged_with(d)
    adopted = replace(observed, assistants={}, mappings={})  # tagged, unknown to Postgres
    plan = plan_org(d, adopted)
    updates = [a for a in plan.actions if isinstance(a, UpdateAssistant)]
    assert len(updates) == 2
    assert all(u.adopt and set(u.patch) == {"credentials"} for u in updates)
    assert not [a for a in plan.actions if isinstance(a, CreateAssistant | AdoptAssistant)]


def test_live_credentials_are_never_compared_with_the_desired_ones() -> None:
    """The live value lacks the key and may even show another one: only what we asked for
    counts (drift of a secret Vapi does not return cannot be seen)."""
    d = with_keys(desired(), KEY)
    observed = converged_with(d)
    other = [{"provider": fp("11labs"), "apiKey": fp("someone else's")}]
    swapped = replace(observed, live=[{**a, "credentials": other} for a in observed.live or []])
    assert plan_org(d, swapped).actions == ()


def test_credentials_cleared_by_hand_are_restored() -> None:
    """The answer to our last write showed the field and it is gone: sent again."""
    d = with_keys(desired(), KEY)
    observed = converged_with(d)
    cleared = replace(
        observed,
        live=[{k: v for k, v in a.items() if k != "credentials"} for a in observed.live or []],
    )
    updates = [a for a in plan_org(d, cleared).actions if isinstance(a, UpdateAssistant)]
    assert len(updates) == 2 and all(set(u.patch) == {"credentials"} for u in updates)
    assert all(c.drift for u in updates for c in u.changes)


def test_an_old_row_without_desired_config_sends_the_key_once() -> None:
    d = with_keys(desired(), KEY)
    observed = converged_with(d)
    old_rows = {
        r: StoredAssistant(r, s.vapi_assistant_id, "ready", s.applied_config)
        for r, s in observed.assistants.items()
    }
    plan = plan_org(d, replace(observed, assistants=old_rows))
    updates = [a for a in plan.actions if isinstance(a, UpdateAssistant)]
    assert len(updates) == 2 and all("credentials" in u.patch for u in updates)


def test_live_copy_helper_masks_the_key() -> None:  # the factories above hide nothing real
    d = with_keys(desired(), KEY)
    assert KEY not in json.dumps(live_copy(d.assistants["inbound"].body, "x"))


def test_a_master_key_rotation_alone_is_no_reason_to_send_the_key_again() -> None:
    """Asked for under a master key rotated out since: compared under that key (the ring
    still holds it), so only a real change of the provider key is sent."""
    old, new = MasterKey.generate(), MasterKey.generate()
    ring = KeyRing((("k2", new), ("default", old)))
    observed = converged_with(desired_org(organization(KEY), old))
    same_key = plan_org(desired_org(organization(KEY), ring), observed)
    assert [a for a in same_key.actions if a.resource == "assistant"] == []

    plan = plan_org(desired_org(organization(ROTATED), ring), observed)
    updates = [a for a in plan.actions if isinstance(a, UpdateAssistant)]
    assert len(updates) == 2 and all(set(u.patch) == {"credentials"} for u in updates)
    assert all(
        u.changes
        == (FieldChange("credentials[0].apiKey", SENSITIVE, SENSITIVE_CHANGED, sensitive=True),)
        for u in updates
    )

    # a ring without the key it was asked under cannot compare: sent once
    alone = KeyRing((("k2", new),))
    updates = [
        a
        for a in plan_org(desired_org(organization(KEY), alone), observed).actions
        if isinstance(a, UpdateAssistant)
    ]
    assert len(updates) == 2 and all(set(u.patch) == {"credentials"} for u in updates)
