"""The org's own provider keys reach its assistants (issue 16), end to end through the CLI, the
emulator and Postgres: an org's ElevenLabs key is given to each of its assistants as a Vapi
dynamic credential; a second apply writes nothing although Vapi never returns the key; a key
rotated in the spec shows as `(sensitive value changed)` on each assistant and is PATCHed into
all of them; the key is never printed, logged or stored in clear."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from psycopg import sql
from psycopg_pool import ConnectionPool

from reconciler.engine.diff import SENSITIVE_CHANGED
from reconciler.vapi.emulator import Emulator, create_app
from tests.helpers import (
    SpecDir,
    create_assistant,
    emulator_stats,
    key_of,
    live,
    org_doc,
    served,
    writes,
)

KEY = "el-KEY-ORIGINAL-c0ffee-7d1a"
ROTATED = "el-KEY-ROTATED-beef00-42aa"


@pytest.fixture
def vapi(emulator: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Emulator]]:
    """An emulator of this test's own, whose stored records the test can read (what Vapi was
    sent, secrets included); the `cli` fixture's commands go to it."""
    app = create_app()
    with served(app) as url:
        monkeypatch.setenv("VAPI_BASE_URL", url)
        yield url, app.state.emulator


def stored_credentials(emu: Emulator) -> list[Any]:
    """The `credentials` of every assistant the emulator holds, as it was sent."""
    return [
        a.get("credentials")
        for account in emu.state.unique_accounts()
        for a in account.records["assistants"].values()
    ]


def database_text(pool: ConnectionPool) -> str:
    """Every value of every column of every table, as text."""
    out: list[str] = []
    with pool.connection() as conn:
        columns = conn.execute(
            "SELECT c.table_name, c.column_name FROM information_schema.columns c"
            " JOIN information_schema.tables t"
            "   ON t.table_schema = c.table_schema AND t.table_name = c.table_name"
            " WHERE c.table_schema = current_schema() AND t.table_type = 'BASE TABLE'"
        ).fetchall()
        for table, column in columns:
            rows = conn.execute(
                sql.SQL("SELECT {}::text FROM {}").format(
                    sql.Identifier(column), sql.Identifier(table)
                )
            ).fetchall()
            out += [str(value) for (value,) in rows if value is not None]
    return "\n".join(out)


def test_the_orgs_elevenlabs_key_reaches_its_assistants_and_rotates(
    cli: Any,
    specs: SpecDir,
    vapi: tuple[str, Emulator],
    pool: ConnectionPool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    url, emu = vapi
    doc = org_doc("acme", extra_credentials={"elevenlabs": {"apiKey": KEY}})
    specs.write(doc)
    root = str(specs.root)
    printed: list[str] = []

    def run(*argv: str, code: int = 0) -> str:
        result = cli(*argv)
        printed.extend((result.out, result.err))
        assert result.code == code, result.out + result.err
        return str(result.out)

    def nowhere(*keys: str) -> None:
        """Never in clear: output, logs, any column of any table."""
        logged = "\n".join(
            f"{r.getMessage()} {r.exc_text or ''} {r.__dict__}" for r in caplog.records
        )
        dump = database_text(pool)
        assert "sha256-hmac:" in dump  # fingerprints were stored: the search saw the configs
        for key in keys:
            assert key not in dump
            assert not [p for p in printed if key in p]
            assert key not in logged

    run("apply", root)
    assert stored_credentials(emu) == [[{"provider": "11labs", "apiKey": KEY}]] * 2
    nowhere(KEY)
    shown = live(url, doc["spec"]["credentials"]["vapi"]["apiKey"])
    assert [a["credentials"] for a in shown] == [[{"provider": "11labs"}]] * 2  # not returned

    # converged, although Vapi never shows the key: no write, an empty plan
    before = writes(url)
    assert "does not keep" not in run("plan", root, "--detailed-exitcode")
    run("apply", root)
    assert writes(url) == before

    # the key rotated in git: a sensitive change on each assistant, PATCHed into both
    doc["spec"]["credentials"]["elevenlabs"]["apiKey"] = ROTATED
    specs.write(doc)
    text = run("plan", root, "--detailed-exitcode", code=2)
    changed = [ln for ln in text.splitlines() if "credentials[0].apiKey" in ln]
    assert len(changed) == 2 and all(SENSITIVE_CHANGED in ln for ln in changed), text
    document = json.loads(run("plan", root, "--format", "json"))
    assistants = [c for c in document["changes"] if c["resource"] == "assistant"]
    assert sorted(c["role"] for c in assistants) == ["inbound", "outbound"]
    for c in assistants:
        assert c["fields"] == [
            {
                "path": "credentials[0].apiKey",
                "before": "(sensitive)",
                "after": SENSITIVE_CHANGED,
                "drift": False,
                "sensitive": True,
                "cause": "org",  # the org's own key, not a template's
            }
        ]
    stats = emulator_stats(url)
    run("apply", root)
    after = emulator_stats(url)
    assert after["PATCH /assistant/{id}"] - stats["PATCH /assistant/{id}"] == 2
    assert after["POST /assistant"] == stats["POST /assistant"]
    assert stored_credentials(emu) == [[{"provider": "11labs", "apiKey": ROTATED}]] * 2

    # and then nothing more to do
    before = writes(url)
    run("plan", root, "--detailed-exitcode")
    run("apply", root)
    assert writes(url) == before

    nowhere(KEY, ROTATED)


def test_an_adopted_assistant_gets_the_key_patched_once(
    cli: Any, specs: SpecDir, vapi: tuple[str, Emulator]
) -> None:
    """Tagged in the account but unknown to Postgres: nothing says what it was given, so the
    key is sent once, then never again."""
    url, emu = vapi
    doc = org_doc("acme", extra_credentials={"elevenlabs": {"apiKey": KEY}})
    specs.write(doc)
    tag = {"managedBy": "reconciler", "orgId": doc["metadata"]["id"], "role": "inbound"}
    inbound = {**doc["spec"]["assistants"]["inbound"], "metadata": tag}
    create_assistant(url, key_of(doc), inbound)
    stats = emulator_stats(url)
    assert cli("apply", str(specs.root)).code == 0
    after = emulator_stats(url)
    assert after["POST /assistant"] - stats["POST /assistant"] == 1  # outbound only
    assert after["PATCH /assistant/{id}"] - stats["PATCH /assistant/{id}"] == 1  # the key
    assert stored_credentials(emu) == [[{"provider": "11labs", "apiKey": KEY}]] * 2
    before = writes(url)
    assert cli("apply", str(specs.root)).code == 0
    assert writes(url) == before
