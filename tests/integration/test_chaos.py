"""The chaos suite (`bench/chaos.py`), bounded: a few rounds of random spec changes to orgs
with tools, assistants and phone numbers, Vapi faults on the routes of all three kinds,
concurrent and SIGKILLed `reconciler apply` processes, then a clean apply; and proof that its
checks do fail on a duplicate, an untracked object, a wrong mapping or a wrong reference."""

from __future__ import annotations

import random
import re
import uuid
from typing import Any

import httpx
import psycopg
from psycopg import sql

from bench import chaos

# Its 3 rounds add two orgs (three of the five accounts already hold a tool or number made by
# hand: adopted by natural key), rotate a webhook secret and change a tool list; they inject
# faults of 5 kinds on /assistant, /tool and /phone-number, among them POSTs of all three kinds
# whose answer is lost after the commit and POSTs of a tool and a number that commit after the
# client gave up (adopted by a later run), and plan 3 SIGKILLs.
SEED, ROUNDS = 302, 3
LAST_LINE = re.compile(r"rounds=(\d+) faults=(\d+) kills=(\d+) violations=(\d+) seed=(-?\d+)")


def test_chaos_rounds_keep_every_invariant(server_url: str) -> None:
    lines: list[str] = []
    result = chaos.run(ROUNDS, SEED, server_url, say=lines.append)
    chaos.report(result, say=lines.append)
    assert not result.violations, "\n".join(v.describe(SEED) for v in result.violations)
    match = LAST_LINE.fullmatch(lines[-1])
    assert match, lines[-1]
    assert match.groups() == (
        str(ROUNDS),
        str(result.faults),
        str(result.kills),
        "0",
        str(SEED),
    )
    assert result.faults > 0
    injected = {tuple(label.split(" ")) for label in result.fault_routes}
    assert {path for *_, path in injected} == set(chaos.COLLECTIONS)
    modes = {"error", "error_after_commit", "delay", "late_commit"}
    assert {kind for kind, *_ in injected} >= modes
    assert result.handmade > 0
    assert sum(line.startswith("round ") for line in lines) == ROUNDS
    assert any(line.startswith("final ") and line.endswith("| ok") for line in lines), lines


# Seed 925's 3 rounds put two assistants on the `chaos-desk` template (one in the round that
# adds an org) and then roll the template to version 2, while POSTs of tools and PATCHes of
# assistants lose their answers after the commit; the final check also holds Postgres's record
# of each assistant's template to its spec (`chaos.template_problems`).
TEMPLATE_SEED = 925


def test_chaos_with_template_changes_keeps_every_invariant(server_url: str) -> None:
    lines: list[str] = []
    result = chaos.run(ROUNDS, TEMPLATE_SEED, server_url, say=lines.append)
    assert not result.violations, "\n".join(v.describe(TEMPLATE_SEED) for v in result.violations)
    rounds = [line for line in lines if line.startswith("round ")]
    assert any(".template@1" in line for line in rounds[:-1]), rounds
    assert "~chaos-desk@2" in rounds[-1]  # the rollout, under faults
    assert " error_after_commit " in rounds[-1]
    assert any(line.startswith("final ") and line.endswith("| ok") for line in lines), lines


def test_a_wrong_template_record_is_a_violation() -> None:
    org = _org()
    org.templated = {"inbound": 2}
    assert chaos.template_problems(org, {"inbound": "chaos-desk@2", "outbound": None}) == []
    assert chaos.template_problems(org, {"inbound": "chaos-desk@1", "outbound": None}) == [
        "org-0.inbound: Postgres records template 'chaos-desk@1', spec uses 'chaos-desk@2'"
    ]
    assert chaos.template_problems(org, {"inbound": "chaos-desk@2"}) == []  # outbound: None
    org.templated = {}
    assert chaos.template_problems(org, {"inbound": "chaos-desk@2", "outbound": None}) == [
        "org-0.inbound: Postgres records template 'chaos-desk@2', spec uses None"
    ]


def _org() -> chaos.Org:
    org = chaos.Org(0, str(uuid.uuid4()), f"chaos-{uuid.uuid4().hex[:8]}", "whsec-x", {})
    org.assistants["inbound"] = {
        "name": "in",
        "firstMessage": "Hi",
        "model": {"provider": "openai", "model": "gpt-4o-mini", "temperature": 0.5},
        "server": {"url": chaos.HOOK_URL},
    }
    return org


def _create(emulator: str, org: chaos.Org, role: str) -> dict[str, Any]:
    body = {
        **org.assistants[role],
        "server": {"url": chaos.HOOK_URL, "headers": {"x-vapi-secret": org.secret}},
        "metadata": {"managedBy": "reconciler", "orgId": org.org_id, "role": role},
    }
    resp = httpx.post(
        f"{emulator}/assistant", json=body, headers={"Authorization": f"Bearer {org.api_key}"}
    )
    resp.raise_for_status()
    created: dict[str, Any] = resp.json()
    return created


def test_checks_fail_on_a_duplicate_and_an_untracked_assistant(emulator: str) -> None:
    org = _org()
    first = _create(emulator, org, "inbound")
    with httpx.Client(base_url=emulator) as http:
        live = chaos.list_account(http, org.api_key)
        credential = {"apiKey": org.api_key, "webhookSecret": org.secret}
        mapped = {"inbound": [first["id"]]}
        assert chaos.duplicate_problems(org, live) == []
        assert chaos.final_org_problems(org, live, mapped, credential) == []

        second = _create(emulator, org, "inbound")
        live = chaos.list_account(http, org.api_key)
    [dup] = chaos.duplicate_problems(org, live)
    assert "duplicate inbound" in dup and second["id"] in dup
    problems = chaos.final_org_problems(org, live, mapped, credential)
    assert any("not mapped" in p and second["id"] in p for p in problems), problems
    assert any("active mapping" in p for p in problems), problems

    org.secret = "whsec-rotated"  # the assistants and the stored credential are behind now
    problems = chaos.final_org_problems(org, live[:1], {"inbound": [live[0]["id"]]}, credential)
    assert any("webhook secret" in p for p in problems), problems
    assert any("credential" in p for p in problems), problems


def _post(emulator: str, org: chaos.Org, path: str, body: dict[str, Any]) -> str:
    resp = httpx.post(
        f"{emulator}{path}", json=body, headers={"Authorization": f"Bearer {org.api_key}"}
    )
    resp.raise_for_status()
    return str(resp.json()["id"])


def test_checks_fail_on_a_duplicate_an_orphan_and_a_wrong_reference(emulator: str) -> None:
    org = _org()
    org.tools = {"lookup": chaos.lookup_tool(random.Random(0)), "end_call": {"type": "endCall"}}
    (number, other) = org.all_numbers()
    org.numbers = {number: "inbound"}
    lookup = chaos.lookup_tool(random.Random(0))
    lookup["function"]["name"] = "lookup"
    lookup["server"]["headers"] = {"x-vapi-secret": org.secret}
    tool_ids = [
        _post(emulator, org, "/tool", lookup),
        _post(emulator, org, "/tool", {"type": "endCall"}),
    ]
    org.assistants["inbound"]["model"]["toolIds"] = tool_ids  # as the engine fills them in
    assistant = _create(emulator, org, "inbound")
    del org.assistants["inbound"]["model"]["toolIds"]
    org.assistants["inbound"]["tools"] = ["lookup", "end_call"]  # the spec's (not a Vapi field)
    twilio = {"twilioAccountSid": chaos.TWILIO["accountSid"], "twilioAuthToken": "t"}
    line = {"provider": "twilio", "number": number, **twilio}
    number_id = _post(emulator, org, "/phone-number", {**line, "assistantId": assistant["id"]})
    mapped = [
        ("phoneNumber", number, number_id),
        ("tool", "end_call", tool_ids[1]),
        ("tool", "lookup", tool_ids[0]),
    ]
    rows = {(kind, name): (vapi_id, "ready") for kind, name, vapi_id in mapped}
    with httpx.Client(base_url=emulator) as http:
        assistants = chaos.list_account(http, org.api_key)

        def problems() -> list[str]:
            live = chaos.list_resources(http, org.api_key)
            return chaos.final_resource_problems(org, assistants, live, mapped, rows)

        assert problems() == []

        twin = _post(emulator, org, "/tool", {"type": "endCall"})  # a second POST's object
        found = problems()
        assert any("duplicate tool endCall" in p and twin in p for p in found), found
        assert any("not in Postgres" in p and twin in p for p in found), found
        httpx.delete(
            f"{emulator}/tool/{twin}", headers={"Authorization": f"Bearer {org.api_key}"}
        ).raise_for_status()
        assert problems() == []

        org.numbers[other] = None  # desired, never recorded, nowhere in the account
        found = problems()
        assert any("active mapping" in p for p in found), found
        assert any("vapi_resources" in p for p in found), found
        del org.numbers[other]

        mapped.append(("phoneNumber", other, "gone"))  # a row at an object not there
        assert any("not in the account" in p for p in problems())
        mapped.pop()

        org.assistants["inbound"]["tools"] = ["end_call", "lookup"]  # toolIds in another order
        assert any("model.toolIds" in p for p in problems())
        org.assistants["inbound"]["tools"] = ["lookup", "end_call"]

        org.numbers[number] = None  # the number should be unbound
        assert any(f"{number} assistantId" in p for p in problems())
        org.numbers[number] = "inbound"

        org.secret = "whsec-rotated"
        assert any("tool lookup's server.headers" in p for p in problems())


def test_active_mappings_before_and_after_inactive_at(database_url: str) -> None:
    """The mapping query works on a table without `inactive_at` and, once it exists, reads
    only the active rows."""
    schema = f"chaos_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        try:
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
            conn.execute(
                "CREATE TABLE assistant_org_mapping (org_id uuid, assistant_role text,"
                " vapi_assistant_id text)"
            )
            org = str(uuid.uuid4())
            conn.execute(
                "INSERT INTO assistant_org_mapping VALUES (%s, 'inbound', 'a1'),"
                " (%s, 'inbound', 'a0')",
                (org, org),
            )
            both = chaos.active_mappings(conn)
            assert sorted(both[org]["inbound"]) == ["a0", "a1"]
            conn.execute("ALTER TABLE assistant_org_mapping ADD COLUMN inactive_at timestamptz")
            conn.execute(
                "UPDATE assistant_org_mapping SET inactive_at = now()"
                " WHERE vapi_assistant_id = 'a0'"
            )
            assert chaos.active_mappings(conn) == {org: {"inbound": ["a1"]}}
        finally:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
