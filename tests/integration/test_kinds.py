"""The whole tenant against the emulator: tools, assistants and phone numbers bound to each
other in one apply, every id in Postgres, a second apply writing nothing, and the rules of
every kind (natural-key adoption, one org per number, release on removal, prune)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import httpx
import pytest

from reconciler.controller.run import Controller
from reconciler.engine.desired import desired_org
from reconciler.spec.cache import SpecCache
from reconciler.spec.loader import Cache, LoadResult, load_tree
from reconciler.state.store import StateWriter
from tests.helpers import SpecDir, emulator_stats, fault, key_of, live, org_doc, twilio_number

TWILIO = {"accountSid": "AC" + "0" * 32, "authToken": "twilio-token-NEVER-SHOWN"}
BOOK_URL = "https://hooks.example.com/vapi"
ELEVENLABS = "el-key-NEVER-SHOWN"


@pytest.fixture(autouse=True)
def twilio_numbers(emulator: str) -> None:
    """The tenants' numbers are their Twilio account's: it lists them before they are imported."""
    for number in ("+14155550100", "+14155550101", "+14155550177"):
        twilio_number(emulator, TWILIO["accountSid"], number)


def tenant(slug: str, *, numbers: tuple[str, str] = ("+14155550100", "+14155550101")) -> dict:
    doc = org_doc(
        slug,
        extra_credentials={"twilio": dict(TWILIO), "elevenlabs": {"apiKey": ELEVENLABS}},
    )
    spec = doc["spec"]
    spec["tools"] = {
        "book_appointment": {
            "type": "function",
            "function": {
                "description": "Book an appointment",
                "parameters": {"type": "object", "properties": {"when": {"type": "string"}}},
            },
            "server": {"url": BOOK_URL},
        },
        "end_call": {"type": "endCall"},
        "transfer": {
            "type": "transferCall",
            "destinations": [{"type": "number", "number": "+14155550199"}],
        },
    }
    inbound = spec["assistants"]["inbound"]
    inbound["model"] = {"provider": "openai", "model": "gpt-4o"}
    inbound["tools"] = ["book_appointment", "end_call", "transfer"]
    outbound = spec["assistants"]["outbound"]
    outbound["model"] = {"provider": "openai", "model": "gpt-4o"}
    outbound["tools"] = ["end_call"]
    spec["phoneNumbers"] = [
        {"provider": "twilio", "number": numbers[0], "name": "Main line", "assistant": "inbound"},
        {"provider": "twilio", "number": numbers[1], "assistant": "outbound"},
    ]
    spec["outbound"] = {"phoneNumber": numbers[1]}
    return doc


def listed(emulator: str, doc: dict, path: str) -> list[dict[str, Any]]:
    answer = httpx.get(
        f"{emulator}{path}", headers={"Authorization": f"Bearer {key_of(doc)}"}, timeout=5
    )
    answer.raise_for_status()
    objects: list[dict[str, Any]] = answer.json()
    return objects


def kind_writes(emulator: str) -> int:
    """POST, PATCH and DELETE requests on every kind since the last reset."""
    return sum(
        n
        for route, n in emulator_stats(emulator).items()
        if route.split(" ")[0] in ("POST", "PATCH", "DELETE") and not route.startswith("POST /_")
    )


def rows(state: StateWriter, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with state.pool.connection() as conn:
        return conn.execute(sql, args).fetchall()


def apply(controller: Controller, specs: SpecDir, **kwargs: Any) -> Any:
    return apply_loaded(controller, load_tree(specs.root), **kwargs)


def apply_loaded(controller: Controller, fleet: LoadResult, **kwargs: Any) -> Any:
    report = controller.apply(fleet, **kwargs)
    assert report.ok, [o.error for o in report.failed]
    return report


def test_one_apply_brings_a_tenant_live(
    specs: SpecDir, controller: Controller, emulator: str, state: StateWriter
) -> None:
    doc = tenant("acme")
    specs.write(doc)
    report = apply(controller, specs)
    (outcome,) = report.outcomes
    assert outcome.plan is not None
    order = [(a.resource, a.kind) for a in outcome.plan.actions]
    kinds = [r for r, _ in order if r in ("tool", "assistant", "phoneNumber")]
    assert kinds == ["tool"] * 3 + ["assistant"] * 2 + ["phoneNumber"] * 2  # by references

    tools = {
        t.get("function", {}).get("name") or t["type"]: t for t in listed(emulator, doc, "/tool")
    }
    assert sorted(tools) == ["book_appointment", "endCall", "transferCall"]
    book = tools["book_appointment"]
    assert book["server"]["url"] == BOOK_URL
    assert book["server"]["headers"]["x-vapi-secret"] == "whsec-acme"  # verified as the org's
    assistants = {a["metadata"]["role"]: a for a in live(emulator, key_of(doc))}
    assert assistants["inbound"]["model"]["toolIds"] == [
        book["id"],
        tools["endCall"]["id"],
        tools["transferCall"]["id"],
    ]
    assert assistants["outbound"]["model"]["toolIds"] == [tools["endCall"]["id"]]
    numbers = {n["number"]: n for n in listed(emulator, doc, "/phone-number")}
    assert numbers["+14155550100"]["assistantId"] == assistants["inbound"]["id"]
    assert numbers["+14155550101"]["assistantId"] == assistants["outbound"]["id"]
    assert numbers["+14155550100"]["name"] == "Main line"
    assert numbers["+14155550100"]["smsEnabled"] is False  # the org's SMS webhook is left alone

    org_id = doc["metadata"]["id"]
    stored = rows(
        state,
        "SELECT kind, name, vapi_id, status FROM vapi_resources WHERE org_id = %s ORDER BY 1, 2",
        org_id,
    )
    assert stored == [
        ("phoneNumber", "+14155550100", numbers["+14155550100"]["id"], "ready"),
        ("phoneNumber", "+14155550101", numbers["+14155550101"]["id"], "ready"),
        ("tool", "book_appointment", book["id"], "ready"),
        ("tool", "end_call", tools["endCall"]["id"], "ready"),
        ("tool", "transfer", tools["transferCall"]["id"], "ready"),
    ]
    mapped = rows(
        state,
        "SELECT vapi_id, kind FROM resource_org_mapping WHERE org_id = %s AND inactive_at IS NULL",
        org_id,
    )
    assert {vid for vid, _ in mapped} == {vid for *_, vid, _ in stored}
    dump = " ".join(str(r) for r in rows(state, "SELECT * FROM vapi_resources"))
    dump += " ".join(str(r) for r in rows(state, "SELECT * FROM assistants"))
    assert TWILIO["authToken"] not in dump and TWILIO["accountSid"] not in dump
    assert ELEVENLABS not in dump
    # the org's own ElevenLabs key rides on each of its assistants (Vapi does not show it back)
    for assistant in assistants.values():
        assert [c["provider"] for c in assistant["credentials"]] == ["11labs"]

    before = emulator_stats(emulator)
    writes_before = kind_writes(emulator)
    again = apply(controller, specs)
    assert not again.has_changes
    assert kind_writes(emulator) == writes_before  # nothing written, of any kind
    after = emulator_stats(emulator)
    for route in ("GET /assistant", "GET /tool", "GET /phone-number"):
        assert after[route] - before[route] == 1, route  # one list call per kind


def test_an_org_with_assistants_only_lists_one_kind(
    specs: SpecDir, controller: Controller, emulator: str
) -> None:
    specs.write(org_doc("plain"))
    apply(controller, specs)
    before = emulator_stats(emulator)
    apply(controller, specs)
    after = emulator_stats(emulator)
    gets = {r: after[r] - before.get(r, 0) for r in after if r.startswith("GET ")}
    assert {r: n for r, n in gets.items() if n} == {"GET /assistant": 1}


def test_a_tool_change_is_an_update_of_the_tool_only(
    specs: SpecDir, controller: Controller, emulator: str
) -> None:
    doc = tenant("acme")
    specs.write(doc)
    apply(controller, specs)
    doc["spec"]["tools"]["book_appointment"]["function"]["description"] = "Book a visit"
    specs.write(doc)
    before = emulator_stats(emulator)
    report = apply(controller, specs)
    after = emulator_stats(emulator)
    changed = {r: after[r] - before.get(r, 0) for r in after if not r.startswith("GET")}
    assert {r: n for r, n in changed.items() if n} == {"PATCH /tool/{id}": 1}
    (outcome,) = report.outcomes
    assert outcome.plan is not None
    (update,) = [a for a in outcome.plan.actions if a.resource == "tool"]
    assert update.kind == "update" and update.patch["function"]["description"] == "Book a visit"


def test_a_new_tool_reaches_the_assistant_in_the_same_run(
    specs: SpecDir, controller: Controller, emulator: str
) -> None:
    doc = tenant("acme")
    specs.write(doc)
    apply(controller, specs)
    doc["spec"]["tools"]["voicemail"] = {"type": "voicemail"}
    doc["spec"]["assistants"]["outbound"]["tools"].append("voicemail")
    specs.write(doc)
    plan = controller.plan(load_tree(specs.root))
    (outcome,) = plan.outcomes
    assert outcome.plan is not None
    (update,) = [a for a in outcome.plan.actions if a.resource == "assistant"]
    assert update.patch["model"]["toolIds"][-1] == "(known after apply: the id of tool voicemail)"
    apply(controller, specs)
    tool = next(t for t in listed(emulator, doc, "/tool") if t["type"] == "voicemail")
    outbound = next(a for a in live(emulator, key_of(doc)) if a["metadata"]["role"] == "outbound")
    assert outbound["model"]["toolIds"][-1] == tool["id"]
    assert not controller.plan(load_tree(specs.root)).has_changes


def test_existing_objects_are_adopted_by_natural_key_not_duplicated(
    specs: SpecDir, controller: Controller, emulator: str
) -> None:
    doc = tenant("acme")
    headers = {"Authorization": f"Bearer {key_of(doc)}"}
    made = httpx.post(
        f"{emulator}/phone-number",
        json={
            "provider": "twilio",
            "number": "+14155550100",
            **{"twilioAccountSid": TWILIO["accountSid"], "twilioAuthToken": TWILIO["authToken"]},
        },
        headers=headers,
        timeout=5,
    ).json()
    tool = httpx.post(f"{emulator}/tool", json={"type": "endCall"}, headers=headers, timeout=5)
    specs.write(doc)
    apply(controller, specs)
    numbers = listed(emulator, doc, "/phone-number")
    assert len(numbers) == 2 and made["id"] in {n["id"] for n in numbers}
    tools = listed(emulator, doc, "/tool")
    assert len(tools) == 3 and tool.json()["id"] in {t["id"] for t in tools}


def test_a_create_with_an_unknown_outcome_is_adopted_never_sent_twice(
    specs: SpecDir, controller: Controller, emulator: str
) -> None:
    doc = tenant("acme")
    specs.write(doc)
    # the number is committed, then the answer is lost (a 502)
    fault(emulator, method="POST", path="/phone-number", mode="error_after_commit", status=502)
    apply(controller, specs)
    numbers = listed(emulator, doc, "/phone-number")
    assert sorted(n["number"] for n in numbers) == ["+14155550100", "+14155550101"]
    assert emulator_stats(emulator)["POST /phone-number"] == 2  # one each: no second POST
    assert not controller.plan(load_tree(specs.root)).has_changes


def test_a_number_removed_from_the_spec_is_released_not_deleted(
    specs: SpecDir, controller: Controller, emulator: str
) -> None:
    doc = tenant("acme")
    specs.write(doc)
    apply(controller, specs)
    smaller = copy.deepcopy(doc)
    smaller["spec"]["phoneNumbers"] = smaller["spec"]["phoneNumbers"][1:]
    specs.write(smaller)
    report = apply(controller, specs)
    (outcome,) = report.outcomes
    assert outcome.plan is not None
    assert any("removed from the spec, kept" in w for w in outcome.plan.warnings)
    gone = next(n for n in listed(emulator, doc, "/phone-number") if n["number"] == "+14155550100")
    assert gone.get("assistantId") is None  # unbound: calls no longer reach the assistant
    assert emulator_stats(emulator)["DELETE /phone-number/{id}"] == 0
    again = controller.plan(load_tree(specs.root))
    assert not again.has_changes  # released once, not every run

    pruned = apply(controller, specs, prune=True)
    assert pruned.counts()["delete"] == 1
    assert [n["number"] for n in listed(emulator, doc, "/phone-number")] == ["+14155550101"]


def test_one_org_per_number(
    specs: SpecDir, controller: Controller, emulator: str, age_identity: tuple[Path, str]
) -> None:
    first = tenant("acme")
    specs.write(first)
    apply(controller, specs)
    second = tenant("globex", numbers=("+14155550100", "+14155550177"))  # acme's main line
    # in one tree, `validate` refuses both files (neither may take the other's number)
    path = specs.write(second)
    both = load_tree(specs.root)
    assert sorted(p.path.name for p in both.problems) == ["acme.yaml", "globex.yaml"]
    assert any("+14155550100 is already used by" in str(p) for p in both.problems)
    path.unlink()
    # alone (another tree, another replica's specs), Postgres refuses it: nothing imported
    other = SpecDir(specs.root.parent / "other", age_identity[1])
    other.write(second)
    report = controller.apply(load_tree(other.root))
    failed = {o.slug: o.error for o in report.failed}
    assert list(failed) == ["globex"]
    assert "phone number +14155550100: Postgres gives it to org acme" in (failed["globex"] or "")
    assert listed(emulator, second, "/phone-number") == []


def test_retire_releases_numbers_before_assistants_then_tools(
    specs: SpecDir, controller: Controller, emulator: str
) -> None:
    doc = tenant("acme")
    specs.write(doc)
    apply(controller, specs)
    report = controller.retire("acme", max_deletes=10)
    assert report.ok, [o.error for o in report.failed]
    (outcome,) = report.outcomes
    assert outcome.plan is not None
    deleted = [
        a.resource
        for a in outcome.plan.actions
        if a.kind == "delete" and a.resource != "credential"
    ]
    assert deleted == ["phoneNumber"] * 2 + ["assistant"] * 2 + ["tool"] * 3 + ["organization"]
    assert listed(emulator, doc, "/phone-number") == []
    assert listed(emulator, doc, "/tool") == []
    assert live(emulator, key_of(doc)) == []


def test_more_assistants_by_name_are_mapped_bound_and_pruned(
    specs: SpecDir, controller: Controller, emulator: str, state: StateWriter
) -> None:
    doc = tenant("acme")
    doc["spec"]["assistants"]["afterHours"] = {
        "name": "Acme after hours",
        "firstMessage": "We are closed; leave a message.",
    }
    doc["spec"]["phoneNumbers"][1]["assistant"] = "afterHours"
    doc["spec"]["phoneNumbers"][1]["name"] = "Night line"
    specs.write(doc)
    apply(controller, specs)
    by_role = {a["metadata"]["role"]: a for a in live(emulator, key_of(doc))}
    assert sorted(by_role) == ["afterHours", "inbound", "outbound"]
    night = next(n for n in listed(emulator, doc, "/phone-number") if n["name"] == "Night line")
    assert night["assistantId"] == by_role["afterHours"]["id"]
    mapped = rows(
        state,
        "SELECT assistant_role FROM assistant_org_mapping WHERE vapi_assistant_id = %s"
        " AND inactive_at IS NULL",
        by_role["afterHours"]["id"],
    )
    assert mapped == [("afterHours",)]
    assert not controller.plan(load_tree(specs.root)).has_changes

    del doc["spec"]["assistants"]["afterHours"]
    doc["spec"]["phoneNumbers"][1]["assistant"] = "outbound"
    specs.write(doc)
    kept = apply(controller, specs)
    (outcome,) = kept.outcomes
    assert outcome.plan is not None
    assert any("afterHours: removed from the spec, kept" in w for w in outcome.plan.warnings)
    assert len(live(emulator, key_of(doc))) == 3  # kept without --prune
    apply(controller, specs, prune=True)
    assert sorted(a["metadata"]["role"] for a in live(emulator, key_of(doc))) == [
        "inbound",
        "outbound",
    ]


def test_a_misspelt_role_is_refused_not_taken_for_a_new_assistant(specs: SpecDir) -> None:
    doc = org_doc("acme")
    doc["spec"]["assistants"]["inboud"] = doc["spec"]["assistants"].pop("inbound")
    specs.write(doc)
    (problem,) = load_tree(specs.root).problems
    assert "looks like a misspelt 'inbound'" in str(problem)


def test_the_desired_state_kept_between_runs_is_never_changed_by_them(
    specs: SpecDir, controller: Controller, emulator: str
) -> None:
    """`serve` plans each run from the desired state made for the spec object its cache hands
    again (`PlanController._desired_org`): a run that fills ids into what it sends (the
    tools' ids into the assistants, an assistant's id into a number) must fill copies, or the
    next run would plan from what the last one wrote."""
    doc = tenant("kept")
    specs.write(doc)
    cache: Cache = SpecCache()
    fleet = load_tree(specs.root, cache=cache)
    (spec,) = fleet.specs
    apply_loaded(controller, fleet)  # everything created, ids filled in as they come
    kept = controller._desired_kept[id(spec.org)][2]
    again = load_tree(specs.root, cache=cache)
    assert again.specs[0].org is spec.org  # the file unchanged: the same object, kept state
    before = kind_writes(emulator)
    apply_loaded(controller, again)
    assert kind_writes(emulator) == before
    assert controller._desired_kept[id(spec.org)][2] is kept
    fresh = desired_org(
        spec.org, controller.key, source=str(spec.path), fingerprint=controller.fingerprint
    )
    assert kept == fresh


def test_a_changed_spec_is_planned_from_its_new_content_not_the_state_kept(
    specs: SpecDir, controller: Controller, emulator: str
) -> None:
    doc = tenant("kept")
    path = specs.write(doc)
    cache: Cache = SpecCache()
    apply_loaded(controller, load_tree(specs.root, cache=cache))
    doc["spec"]["tools"]["book_appointment"]["function"]["description"] = "Book a visit"
    doc["spec"]["assistants"]["inbound"]["firstMessage"] = "Welcome back!"
    assert specs.write(doc) == path  # the same file, new content
    apply_loaded(controller, load_tree(specs.root, cache=cache))
    inbound = next(a for a in live(emulator, key_of(doc)) if a["metadata"]["role"] == "inbound")
    assert inbound["firstMessage"] == "Welcome back!"
    book = next(t for t in listed(emulator, doc, "/tool") if t["type"] == "function")
    assert book["function"]["description"] == "Book a visit"
