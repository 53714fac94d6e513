"""The chaos suite (`bench/chaos.py`), bounded: a few rounds of random spec changes, Vapi
faults, concurrent and SIGKILLed `reconciler apply` processes, then a clean apply; and proof
that its checks do fail on a duplicate, an untracked assistant or a wrong mapping."""

from __future__ import annotations

import re
import uuid
from typing import Any

import httpx
import psycopg
from psycopg import sql

from bench import chaos

SEED = 3  # its 4 rounds remove and re-add an org, inject faults of 4 kinds, kill processes
LAST_LINE = re.compile(r"rounds=(\d+) faults=(\d+) kills=(\d+) violations=(\d+) seed=(-?\d+)")


def test_chaos_rounds_keep_every_invariant(server_url: str) -> None:
    lines: list[str] = []
    result = chaos.run(4, SEED, server_url, say=lines.append)
    chaos.report(result, say=lines.append)
    assert not result.violations, "\n".join(v.describe(SEED) for v in result.violations)
    match = LAST_LINE.fullmatch(lines[-1])
    assert match, lines[-1]
    assert match.groups() == (
        "4",
        str(result.faults),
        str(result.kills),
        "0",
        str(SEED),
    )
    assert result.faults > 0
    assert sum(line.startswith("round ") for line in lines) == 4
    assert any(line.startswith("final ") and line.endswith("| ok") for line in lines), lines


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
