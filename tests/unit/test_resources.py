"""The planner of the kinds beyond assistants, pure: (desired, observed) -> a KindPlan value."""

from __future__ import annotations

import hashlib
import itertools
from typing import Any

import pytest

from reconciler.engine.actions import (
    AdoptResource,
    CreateResource,
    DeleteResource,
    Pending,
    UpdateResource,
    known_after_apply,
)
from reconciler.engine.kinds import (
    ASSISTANT,
    KEYED,
    KINDS,
    PHONE_NUMBER,
    TOOL,
    Reference,
    ResourceKind,
    number_key,
    plan_order,
    tool_key,
)
from reconciler.engine.model import DesiredResource, ObservedOrg, StoredResource
from reconciler.engine.resources import plan_kind

NUMBER = "+14155550100"


def fp(value: Any) -> str:
    """A keyed fingerprint as the engine's: a digest, never the value."""
    return "sha256-hmac:" + hashlib.sha256(repr(value).encode()).hexdigest()[:32]


def number(assistant: str | None = "inbound", token: str = "tok-1") -> DesiredResource:  # noqa: S107
    body = {
        "provider": "twilio",
        "number": NUMBER,
        "twilioAccountSid": "AC1",
        "twilioAuthToken": token,
        "smsEnabled": False,
        "assistantId": None,
    }
    refs = (("assistantId", "assistant", assistant),) if assistant else ()
    return DesiredResource(
        PHONE_NUMBER.name,
        NUMBER,
        number_key(body) or "",
        body,
        PHONE_NUMBER.masked(body, fp),
        refs,
    )


def tool(description: str = "Book") -> DesiredResource:
    body = {"type": "function", "function": {"name": "book", "description": description}}
    return DesiredResource(TOOL.name, "book", tool_key(body) or "", body, dict(body))


def live_number(vid: str = "pn-1", assistant: str | None = "as-1", at: str = "t1") -> dict:
    return {
        "id": vid,
        "createdAt": at,
        "provider": "twilio",
        "number": NUMBER,
        "twilioAccountSid": fp("AC1"),
        "smsEnabled": False,
        "assistantId": assistant,
    }


def row(vid: str | None, stored: dict[str, Any], status: str = "ready") -> StoredResource:
    """A row as the applier leaves it: what we asked, and Vapi's answer (no auth token)."""
    answer = {k: v for k, v in stored.items() if k not in PHONE_NUMBER.write_only}
    return StoredResource(
        PHONE_NUMBER.name,
        NUMBER,
        vid,
        status,
        stored,
        answer,
        pending_s=5.0 if status == "creating" else None,
    )


def observed(live: list[dict], rows: dict[str, StoredResource] | None = None) -> ObservedOrg:
    return ObservedOrg(
        resources={PHONE_NUMBER.name: rows or {}},
        live_resources={PHONE_NUMBER.name: live},
    )


IDS = {("assistant", "inbound"): "as-1"}


def plan(desired: dict[str, DesiredResource], seen: ObservedOrg, prune: bool = False) -> Any:
    kind = PHONE_NUMBER if PHONE_NUMBER.name in seen.live_resources else TOOL
    return plan_kind(kind, desired, seen, IDS, prune=prune, create_grace_s=60)


def test_a_new_number_is_created_bound_to_its_assistant() -> None:
    result = plan({NUMBER: number()}, observed([]))
    (create,) = result.actions
    assert isinstance(create, CreateResource)
    assert create.body["assistantId"] == "as-1"
    assert create.body["twilioAuthToken"] == "tok-1"  # sent in clear, stored as a fingerprint
    assert create.stored["twilioAuthToken"] == fp("tok-1")
    assert create.stored["twilioAccountSid"] == fp("AC1")  # a kind's own secret field
    assert result.ids == {NUMBER: None}


def test_an_assistant_created_in_the_same_run_is_a_pending_reference() -> None:
    result = plan_kind(
        PHONE_NUMBER,
        {NUMBER: number()},
        observed([]),
        {("assistant", "inbound"): None},
        prune=False,
        create_grace_s=60,
    )
    (create,) = result.actions
    assert isinstance(create, CreateResource)
    assert create.body["assistantId"] == known_after_apply("assistant", "inbound")
    assert create.pending == (Pending(("assistantId",), "assistant", "inbound"),)


def test_a_number_in_the_account_is_adopted_by_its_natural_key_never_created() -> None:
    result = plan({NUMBER: number()}, observed([live_number()]))
    (step,) = result.actions
    # not ours yet: the auth token (write-only: Vapi does not return it) is sent once
    assert isinstance(step, UpdateResource) and step.adopt
    assert set(step.patch) == {"twilioAuthToken"}
    assert result.ids == {NUMBER: "pn-1"}


def test_a_converged_number_plans_nothing_and_a_rotated_token_is_sent() -> None:
    want = number()
    converged = observed(
        [live_number()], {NUMBER: row("pn-1", {**want.stored, "assistantId": "as-1"})}
    )
    quiet = plan({NUMBER: want}, converged)
    # nothing to do, and no "Vapi does not keep this value": the token is write-only
    assert (quiet.actions, quiet.warnings) == ((), ())
    rotated = plan({NUMBER: number(token="ROTATED-TOKEN-9")}, converged)
    (update,) = rotated.actions
    assert isinstance(update, UpdateResource) and set(update.patch) == {"twilioAuthToken"}
    (change,) = update.changes
    assert change.sensitive and "ROTATED-TOKEN-9" not in repr(update)


def test_a_create_with_an_unknown_outcome_blocks_another_until_the_grace_ends() -> None:
    pending = observed([], {NUMBER: row(None, number().stored, status="creating")})
    result = plan({NUMBER: number()}, pending)
    assert result.actions == () and "unknown outcome" in result.blocked[0]


def test_duplicates_are_reported_and_deleted_only_with_prune() -> None:
    two = observed([live_number("pn-1", at="t1"), live_number("pn-2", at="t2")])
    kept = plan({NUMBER: number()}, two)
    assert [f.vapi_id for f in kept.findings] == ["pn-2"]  # the older one is the number
    assert kept.removals == ()
    pruned = plan({NUMBER: number()}, two, prune=True)
    (delete,) = pruned.removals
    assert isinstance(delete, DeleteResource) and delete.vapi_id == "pn-2" and not delete.forget


def test_a_removed_number_is_released_then_kept_and_deleted_only_with_prune() -> None:
    stored = {**number().stored, "assistantId": "as-1"}
    bound = observed([live_number()], {NUMBER: row("pn-1", stored)})
    (release,) = plan({}, bound).removals
    assert isinstance(release, UpdateResource) and release.patch == {"assistantId": None}
    unbound = observed([live_number(assistant=None)], {NUMBER: row("pn-1", stored)})
    released = plan({}, unbound)
    assert released.removals == () and "removed from the spec, kept pn-1" in released.warnings[0]
    (delete,) = plan({}, bound, prune=True).removals
    assert isinstance(delete, DeleteResource) and delete.vapi_id == "pn-1"


def test_a_changed_provider_is_refused_rather_than_leaving_the_old_import() -> None:
    stored = number().stored
    moved = {**live_number(), "provider": "vonage"}
    result = plan({NUMBER: number()}, observed([moved], {NUMBER: row("pn-1", stored)}))
    assert result.actions == () and "cannot update" in result.blocked[0]


def test_a_tool_is_adopted_and_a_changed_description_is_one_patch() -> None:
    live = {"id": "t-1", "createdAt": "t", **tool().body}
    seen = ObservedOrg(resources={TOOL.name: {}}, live_resources={TOOL.name: [live]})
    (adopt,) = plan_kind(TOOL, {"book": tool()}, seen, {}, prune=False, create_grace_s=60).actions
    assert isinstance(adopt, AdoptResource)
    ours = StoredResource(TOOL.name, "book", "t-1", "ready", tool().body, tool().body)
    seen = ObservedOrg(resources={TOOL.name: {"book": ours}}, live_resources={TOOL.name: [live]})
    changed = plan_kind(TOOL, {"book": tool("Visit")}, seen, {}, prune=False, create_grace_s=60)
    (update,) = changed.actions
    assert isinstance(update, UpdateResource)
    assert update.patch == {"function": {"name": "book", "description": "Visit"}}


# -- the kinds' declarations -------------------------------------------------------------------


def test_the_plan_order_follows_the_declared_references() -> None:
    """Tools before assistants (an assistant's `model.toolIds`), assistants before numbers (a
    number's `assistantId`), whatever order the kinds are declared in."""
    assert [k.name for k in KINDS] == ["tool", "assistant", "phoneNumber"]
    for order in itertools.permutations((ASSISTANT, PHONE_NUMBER, TOOL)):
        assert plan_order(order) == KINDS
    a = ResourceKind("a", "a", "/a", "naturalKey", tool_key)
    b = ResourceKind("b", "b", "/b", "naturalKey", tool_key, references=(Reference("x", "a"),))
    assert plan_order((b, a)) == (a, b)
    assert plan_order((a, b)) == (a, b)  # otherwise the order given


def test_a_cycle_or_an_unknown_reference_is_refused_at_declaration() -> None:
    a = ResourceKind("a", "a", "/a", "naturalKey", tool_key, references=(Reference("x", "b"),))
    b = ResourceKind("b", "b", "/b", "naturalKey", tool_key, references=(Reference("y", "a"),))
    with pytest.raises(ValueError, match="cycle"):
        plan_order((a, b))
    with pytest.raises(ValueError, match="unknown kind b"):
        plan_order((a,))


def test_ownership_is_a_tag_or_a_natural_key_never_both_or_neither() -> None:
    assert ASSISTANT.ownership == "tag" and ASSISTANT.key_of({"name": "x"}) is None
    assert {k.name for k in KINDS if k.ownership == "naturalKey"} == set(KEYED)
    with pytest.raises(ValueError, match="natural key"):
        ResourceKind("a", "a", "/a", "tag", tool_key)
    with pytest.raises(ValueError, match="natural key"):
        ResourceKind("a", "a", "/a", "naturalKey")
