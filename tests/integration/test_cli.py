"""The CLI end to end through `main([...])`: real Postgres, the Vapi emulator over HTTP and specs
encrypted with the real sops binary."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

import pytest
import yaml
from psycopg_pool import ConnectionPool

from reconciler.vapi.emulator import fingerprint
from tests.helpers import (
    TABLES,
    SpecDir,
    accounts,
    add_key,
    assert_no_traceback,
    emulator_stats,
    live,
    org_doc,
    writes,
)

# 1 organization row + 1 vapi credential + 2 assistants (org_doc's default)
CHANGES_PER_ORG = 4


def plan_line(create: int, update: int = 0, delete: int = 0) -> str:
    return f"Plan: {create} to create, {update} to update, {delete} to delete."


def table_counts(pool: ConnectionPool) -> dict[str, int]:
    counts: dict[str, int] = {}
    with pool.connection() as conn:
        for table in (t.strip() for t in TABLES.split(",")):
            row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
            assert row is not None
            counts[table] = row[0]
    return counts


# -- plan exit codes ---------------------------------------------------------------------------


def test_plan_fresh_specs_detailed_exitcode(cli: Any, specs: SpecDir) -> None:
    specs.write(org_doc("acme"))
    specs.write(org_doc("globex"))
    run = cli("plan", str(specs.root), "--detailed-exitcode")
    assert run.code == 2, run.out + run.err
    assert run.last_line == plan_line(2 * CHANGES_PER_ORG)
    assert "acme" in run.out
    assert "globex" in run.out
    assert '+ assistant inbound "acme inbound"' in run.out
    assert "+ credential vapi (sensitive)" in run.out
    assert "+ organization acme" in run.out


def test_plan_without_flag_exits_0_on_changes(cli: Any, specs: SpecDir) -> None:
    specs.write(org_doc("acme"))
    run = cli("plan", str(specs.root))
    assert run.code == 0, run.out + run.err
    assert run.last_line == plan_line(CHANGES_PER_ORG)


def test_diff_is_an_alias_of_plan(cli: Any, specs: SpecDir) -> None:
    specs.write(org_doc("acme"))
    run = cli("diff", str(specs.root), "--detailed-exitcode")
    assert run.code == 2
    assert run.last_line == plan_line(CHANGES_PER_ORG)


def test_plan_counts_extra_credentials(cli: Any, specs: SpecDir) -> None:
    doc = org_doc(
        "acme",
        assistants={"inbound": {"name": "Acme inbound"}},
        extra_credentials={"resend": {"apiKey": "re_extra_5b1c"}},
    )
    specs.write(doc)
    run = cli("plan", str(specs.root), "--detailed-exitcode")
    assert run.code == 2
    # org + vapi + resend + inbound
    assert run.last_line == plan_line(4)


def test_apply_then_plan_is_a_no_op(cli: Any, specs: SpecDir) -> None:
    specs.write(org_doc("acme"))
    specs.write(org_doc("globex"))
    applied = cli("apply", str(specs.root))
    assert applied.code == 0, applied.out + applied.err
    assert f"Applied: {2 * CHANGES_PER_ORG} to create, 0 to update, 0 to delete." in applied.out

    run = cli("plan", str(specs.root), "--detailed-exitcode")
    assert run.code == 0, run.out + run.err
    assert run.last_line == plan_line(0)
    assert "= assistant inbound unchanged" in run.out
    assert "= assistant outbound unchanged" in run.out


def test_plan_shows_a_changed_first_message(cli: Any, specs: SpecDir) -> None:
    doc = org_doc("acme")
    doc["spec"]["assistants"]["inbound"]["firstMessage"] = "old"
    specs.write(doc)
    assert cli("apply", str(specs.root)).code == 0

    doc["spec"]["assistants"]["inbound"]["firstMessage"] = "new"
    specs.write(doc)
    run = cli("plan", str(specs.root), "--detailed-exitcode")
    assert run.code == 2, run.out + run.err
    assert run.last_line == plan_line(0, 1)
    assert any(ln.strip().startswith("~ assistant inbound (") for ln in run.lines), run.out
    assert 'firstMessage: "old" -> "new"' in run.out
    assert "= assistant outbound unchanged" in run.out

    assert cli("apply", str(specs.root)).code == 0
    assert cli("plan", str(specs.root), "--detailed-exitcode").code == 0


def test_removed_field_is_cleared(cli: Any, specs: SpecDir, emulator: str) -> None:
    key = f"acme-{uuid.uuid4().hex[:8]}"
    doc = org_doc("acme", api_key=key)
    specs.write(doc)
    assert cli("apply", str(specs.root)).code == 0

    del doc["spec"]["assistants"]["inbound"]["firstMessage"]
    specs.write(doc)
    run = cli("plan", str(specs.root), "--detailed-exitcode")
    assert run.code == 2, run.out + run.err
    assert 'firstMessage: "Hello!" -> null' in run.out
    assert cli("apply", str(specs.root)).code == 0
    inbound = next(a for a in live(emulator, key) if a["name"] == "acme inbound")
    assert inbound.get("firstMessage") is None
    again = cli("plan", str(specs.root), "--detailed-exitcode")
    assert again.code == 0, again.out


def test_plan_with_a_broken_spec_exits_1(cli: Any, specs: SpecDir) -> None:
    specs.write(org_doc("acme"))
    specs.write(org_doc("globex"))
    broken = org_doc("broken")
    broken["spec"]["assistants"]["inbound"]["name"] = "z" * 41
    specs.write(broken)

    run = cli("plan", str(specs.root), "--detailed-exitcode")
    assert run.code == 1, run.out + run.err
    assert "acme" in run.out
    assert "globex" in run.out
    assert '+ assistant inbound "acme inbound"' in run.out
    assert '+ assistant inbound "globex inbound"' in run.out
    assert plan_line(2 * CHANGES_PER_ORG) in run.out
    at = r"broken\.yaml:\d+:\d+: spec\.assistants\.inbound\.name"
    assert any(re.search(at, ln) for ln in run.lines), run.out
    assert "Failed: 1" in run.out
    assert_no_traceback(run)


# -- plan --format json ------------------------------------------------------------------------


def test_plan_json(cli: Any, specs: SpecDir) -> None:
    specs.write(org_doc("acme"))
    specs.write(org_doc("globex"))
    run = cli("plan", str(specs.root), "--format", "json", "--detailed-exitcode")
    assert run.code == 2
    report = json.loads(run.out)
    assert report["format_version"] == "3"
    changes = report["changes"]
    assert len(changes) == 2 * CHANGES_PER_ORG
    for change in changes:
        assert {"address", "action", "resource", "org", "before", "after", "drift"} <= set(change)
        assert change["action"] == "create"
        assert change["org"] in {"acme", "globex"}
        assert change["address"].startswith(f"org/{change['org']}")
        assert change["before"] is None
    by_org = {org: [c for c in changes if c["org"] == org] for org in ("acme", "globex")}
    for org_changes in by_org.values():
        assert len(org_changes) == CHANGES_PER_ORG
        roles = sorted(c["role"] for c in org_changes if c["role"] is not None)
        assert roles == ["inbound", "outbound"]

    summary = report["summary"]
    assert summary["create"] == 2 * CHANGES_PER_ORG
    assert (summary["update"], summary["delete"]) == (0, 0)
    assert summary["orgs"] == 2
    assert summary["errors"] == 0
    assert summary["no_op"] is False
    assert report["errors"] == []

    text = cli("plan", str(specs.root))
    assert text.last_line == plan_line(summary["create"], summary["update"], summary["delete"])


def test_plan_json_after_apply_is_a_no_op(cli: Any, specs: SpecDir) -> None:
    specs.write(org_doc("acme"))
    assert cli("apply", str(specs.root)).code == 0
    run = cli("plan", str(specs.root), "--format", "json", "--detailed-exitcode")
    assert run.code == 0
    report = json.loads(run.out)
    assert [(c["address"], c["action"]) for c in report["changes"]] == [
        ("org/acme/assistant/inbound", "noop"),
        ("org/acme/assistant/outbound", "noop"),
    ]
    assert report["summary"]["no_op"] is True
    assert report["summary"]["unchanged"] == report["summary"]["noop"] == 2


def test_plan_json_with_a_broken_spec(cli: Any, specs: SpecDir) -> None:
    specs.write(org_doc("acme"))
    (specs.root / "broken.yaml").write_text("kind: [\n")
    run = cli("plan", str(specs.root), "--format", "json")
    assert run.code == 1
    report = json.loads(run.out)  # still one JSON document on stdout
    assert report["summary"]["create"] == CHANGES_PER_ORG
    assert report["summary"]["errors"] == 1
    assert report["errors"][0]["file"].endswith("broken.yaml")
    assert "line" not in report["errors"][0]  # a YAML syntax error: the message says where


def test_plan_json_names_where_a_field_problem_is(cli: Any, specs: SpecDir) -> None:
    doc = org_doc("acme")
    doc["spec"]["assistants"]["inbound"]["firstMesage"] = "Hi"
    specs.write(doc)
    run = cli("plan", str(specs.root), "--format", "json")
    assert run.code == 1
    (error,) = json.loads(run.out)["errors"]
    lines = (specs.root / "acme.yaml").read_text().splitlines()
    assert lines[error["line"] - 1][error["column"] - 1 :].startswith("firstMesage:")
    assert error["message"].endswith("did you mean 'firstMessage'?")


# -- plan never writes -------------------------------------------------------------------------


def test_plan_sends_no_write(cli: Any, specs: SpecDir, emulator: str, pool: ConnectionPool) -> None:
    specs.write(org_doc("acme"))
    specs.write(org_doc("globex"))
    for fmt in ("text", "json"):
        run = cli("plan", str(specs.root), "--format", fmt)
        assert run.code == 0, run.out + run.err

    assert writes(emulator) == 0
    stats = emulator_stats(emulator)
    assert stats["GET /assistant"] >= 2  # it did look at both accounts
    assert set(table_counts(pool).values()) == {0}
    with pool.connection() as conn:
        row = conn.execute("SELECT count(*) FROM schema_migrations").fetchone()
    assert row is not None
    assert row[0] >= 1


# -- apply -------------------------------------------------------------------------------------


def test_apply_converges(cli: Any, specs: SpecDir, emulator: str, pool: ConnectionPool) -> None:
    key = f"acme-key-{uuid.uuid4().hex[:8]}"
    specs.write(org_doc("acme", api_key=key))
    run = cli("apply", str(specs.root))
    assert run.code == 0, run.out + run.err
    assert sorted(a["name"] for a in live(emulator, key)) == ["acme inbound", "acme outbound"]
    counts = table_counts(pool)
    assert counts["organizations"] == 1
    assert counts["org_credentials"] == 1
    assert counts["assistants"] == 2
    assert counts["assistant_org_mapping"] == 2
    assert counts["reconcile_runs"] == 1

    again = cli("apply", str(specs.root))
    assert again.code == 0
    assert "Applied: 0 to create, 0 to update, 0 to delete." in again.out
    assert len(live(emulator, key)) == 2


def test_apply_with_a_rejected_key(
    cli: Any, specs: SpecDir, emulator: str, pool: ConnectionPool
) -> None:
    good_key = f"good-key-{uuid.uuid4().hex[:8]}"
    bad_key = f"invalid-key-{uuid.uuid4().hex[:8]}"
    specs.write(org_doc("acme", api_key=good_key))
    specs.write(org_doc("badco", api_key=bad_key))

    run = cli("apply", str(specs.root))
    assert run.code == 1, run.out + run.err
    # the good org converged anyway
    assert sorted(a["name"] for a in live(emulator, good_key)) == [
        "acme inbound",
        "acme outbound",
    ]
    by_key = accounts(emulator)
    assert by_key[fingerprint(good_key)]["assistants"] == 2
    assert fingerprint(bad_key) not in by_key
    # the failure names the org and the reason
    bad_lines = [ln for ln in run.lines if "rejected the API key" in ln]
    assert bad_lines, run.out
    assert "Failed: 1 org(s) (badco)" in run.out
    start = run.out.index("badco")
    assert "rejected the API key (401)" in run.out[start:]
    assert bad_key not in run.out + run.err
    assert_no_traceback(run)

    with pool.connection() as conn:
        status = dict(conn.execute("SELECT slug, status FROM organizations").fetchall())
    assert status == {"acme": "Ready", "badco": "Failed"}

    plan = cli("plan", str(specs.root), "--detailed-exitcode")
    assert plan.code == 1
    assert bad_key not in plan.out + plan.err
    assert_no_traceback(plan)


def test_slug_reused_by_a_new_org_id_is_a_clear_error(
    cli: Any, specs: SpecDir, pool: ConnectionPool
) -> None:
    old_id, new_id = str(uuid.uuid4()), str(uuid.uuid4())
    specs.write(org_doc("acme", org_id=old_id))
    assert cli("apply", str(specs.root)).code == 0
    specs.write(org_doc("acme", org_id=new_id))  # the old org's spec is gone, a new one came

    run = cli("apply", str(specs.root))
    assert run.code == 1
    assert_no_traceback(run)
    assert "slug" in run.out


# -- --org -------------------------------------------------------------------------------------


def test_org_limits_to_one_org(cli: Any, specs: SpecDir, emulator: str) -> None:
    acme_key = f"acme-{uuid.uuid4().hex[:8]}"
    globex_key = f"globex-{uuid.uuid4().hex[:8]}"
    specs.write(org_doc("acme", api_key=acme_key))
    specs.write(org_doc("globex", api_key=globex_key))

    plan = cli("plan", str(specs.root), "--org", "acme", "--detailed-exitcode")
    assert plan.code == 2
    assert plan.last_line == plan_line(CHANGES_PER_ORG)
    assert "globex" not in plan.out

    applied = cli("apply", str(specs.root), "--org", "acme")
    assert applied.code == 0, applied.out + applied.err
    assert len(live(emulator, acme_key)) == 2
    assert live(emulator, globex_key) == []

    both = cli("plan", str(specs.root), "--org", "acme", "--org", "globex", "--format", "json")
    changed = {c["org"] for c in json.loads(both.out)["changes"] if c["action"] != "noop"}
    assert changed == {"globex"}


def test_org_unknown_slug(cli: Any, specs: SpecDir, emulator: str) -> None:
    specs.write(org_doc("acme"))
    for command in ("plan", "apply"):
        run = cli(command, str(specs.root), "--org", "nope")
        assert run.code == 1, run.out + run.err
        assert "nope" in run.out + run.err
        assert "no spec with this slug" in run.out + run.err
        assert "acme" not in run.out
        assert_no_traceback(run)
    assert writes(emulator) == 0


# -- resolve -----------------------------------------------------------------------------------


def test_resolve_after_apply(cli: Any, specs: SpecDir, emulator: str) -> None:
    org_id = str(uuid.uuid4())
    key = f"acme-{uuid.uuid4().hex[:8]}"
    specs.write(org_doc("acme", org_id=org_id, api_key=key))
    assert cli("apply", str(specs.root)).code == 0
    by_name = {a["name"]: a["id"] for a in live(emulator, key)}

    run = cli("resolve", by_name["acme inbound"])
    assert run.code == 0, run.out + run.err
    assert run.lines == [f"{org_id} acme (inbound)"]
    assert cli("resolve", by_name["acme outbound"]).lines == [f"{org_id} acme (outbound)"]


def test_resolve_says_the_org_is_retired(cli: Any, specs: SpecDir, emulator: str) -> None:
    org_id = str(uuid.uuid4())
    key = f"globex-{uuid.uuid4().hex[:8]}"
    path = specs.write(org_doc("globex", org_id=org_id, api_key=key))
    specs.write(org_doc("acme"))  # the folder is not empty: the orphan can be pruned
    assert cli("apply", str(specs.root)).code == 0
    inbound = {a["name"]: a["id"] for a in live(emulator, key)}["globex inbound"]
    assert cli("resolve", inbound).lines == [f"{org_id} globex (inbound)"]

    path.unlink()
    retired = cli("apply", str(specs.root), "--prune")
    assert retired.code == 0, retired.out + retired.err
    run = cli("resolve", inbound)
    assert run.code == 0, run.out + run.err
    [line] = run.lines
    assert line.startswith(f"{org_id} globex (inbound) retired: the org was retired at 20"), line
    assert line.endswith("Z")


def test_resolve_unknown_id(cli: Any) -> None:
    unknown = str(uuid.uuid4())
    run = cli("resolve", unknown)
    assert run.code == 1
    assert run.out == ""
    assert run.err.splitlines() == [f"error: assistant {unknown} belongs to no known org"]
    assert_no_traceback(run)


# -- db migrate --------------------------------------------------------------------------------


def test_db_migrate_is_up_to_date(cli: Any) -> None:
    run = cli("db", "migrate")
    assert run.code == 0, run.err
    assert run.lines == ["database is up to date"]


# -- secrets never printed ---------------------------------------------------------------------


def _server_doc(slug: str, org_id: str, api_key: str, secret: str) -> dict[str, Any]:
    doc = org_doc(slug, org_id=org_id, api_key=api_key, secret=secret)
    # the webhook secret travels to Vapi as the x-vapi-secret header of `server`
    doc["spec"]["assistants"]["inbound"]["server"] = {"url": "https://hooks.example.com/vapi"}
    return doc


def test_secrets_never_printed(
    cli: Any,
    specs: SpecDir,
    emulator: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    api_key = f"sk-DISTINCT-{uuid.uuid4().hex}"
    secret = f"whsec-DISTINCT-{uuid.uuid4().hex}"
    org_id = str(uuid.uuid4())
    specs.write(_server_doc("acme", org_id, api_key, secret))

    runs = [
        cli("validate", str(specs.root)),
        cli("plan", str(specs.root)),
        cli("plan", str(specs.root), "--format", "json"),
        cli("apply", str(specs.root)),
    ]
    assert [r.code for r in runs] == [0, 0, 0, 0], [r.out + r.err for r in runs]
    # the secret did reach Vapi (so the test means something)
    inbound = next(a for a in live(emulator, api_key) if a["name"] == "acme inbound")
    assert inbound["server"]["headers"]["x-vapi-secret"] == secret

    # rotate both: plan and apply show the change without either value
    new_key = f"sk-ROTATED-{uuid.uuid4().hex}"
    new_secret = f"whsec-ROTATED-{uuid.uuid4().hex}"
    add_key(emulator, api_key, new_key)  # a second key of the same account
    specs.write(_server_doc("acme", org_id, new_key, new_secret))
    rotated = [
        cli("plan", str(specs.root), "--detailed-exitcode"),
        cli("plan", str(specs.root), "--format", "json"),
    ]
    assert rotated[0].code == 2
    assert "credential vapi (sensitive value changed)" in rotated[0].out
    runs += rotated
    runs.append(cli("apply", str(specs.root)))
    assert runs[-1].code == 0, runs[-1].out + runs[-1].err
    runs.append(cli("plan", str(specs.root), "--detailed-exitcode"))
    assert runs[-1].code == 0, runs[-1].out
    inbound = next(a for a in live(emulator, new_key) if a["name"] == "acme inbound")
    assert inbound["server"]["headers"]["x-vapi-secret"] == new_secret

    for run in runs:
        text = run.out + run.err
        for value in (api_key, secret, new_key, new_secret):
            assert value not in text, text
        assert_no_traceback(run)
    for value in (api_key, secret, new_key, new_secret):
        assert value not in caplog.text


# -- no traceback ------------------------------------------------------------------------------


def test_missing_master_key_is_one_line(
    cli: Any, specs: SpecDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    specs.write(org_doc("acme"))
    monkeypatch.delenv("RECONCILER_MASTER_KEY")
    run = cli("plan", str(specs.root))
    assert run.code == 1
    assert run.err.splitlines() == [
        "error: RECONCILER_MASTER_KEY (or RECONCILER_MASTER_KEYS) is required with "
        "RECONCILER_DATABASE_URL"
    ]
    assert_no_traceback(run)


def test_undecryptable_spec_is_reported_and_others_apply(
    cli: Any, specs: SpecDir, emulator: str
) -> None:
    key = f"acme-{uuid.uuid4().hex[:8]}"
    specs.write(org_doc("acme", api_key=key))
    bad = specs.write(org_doc("globex"))
    doc = yaml.safe_load(bad.read_text())
    doc["sops"]["age"][0]["enc"] = doc["sops"]["age"][0]["enc"].replace("Y", "Z", 3)
    bad.write_text(yaml.safe_dump(doc, sort_keys=False))

    run = cli("apply", str(specs.root))
    assert run.code == 1
    assert len(live(emulator, key)) == 2
    assert any("globex.yaml: cannot decrypt" in ln for ln in run.lines), run.out
    assert_no_traceback(run)
