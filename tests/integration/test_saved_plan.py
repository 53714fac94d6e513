"""`plan --out FILE` and `apply FILE`: the saved plan holds no secret, runs exactly as saved,
and an org whose spec or live state moved since is refused by name (the others run)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.helpers import (
    SpecDir,
    assert_no_traceback,
    edit_assistant,
    emulator_stats,
    key_of,
    live,
    org_doc,
    writes,
)


def test_a_saved_plan_holds_no_secret_and_applies_exactly(
    specs: SpecDir, cli: Any, emulator: str, tmp_path: Path
) -> None:
    acme = org_doc("acme", secret="whsec-acme-CANARY-1")
    specs.write(acme)
    out = tmp_path / "plan.json"
    plan = cli("plan", str(specs.root), "--out", str(out))
    assert plan.code == 0 and out.exists() and "apply" in plan.err
    raw = out.read_text()
    for secret in (key_of(acme), "whsec-acme-CANARY-1"):
        assert secret not in raw
    doc = json.loads(raw)
    assert doc["format"] == "reconciler-plan" and acme["metadata"]["id"] in doc["stamps"]
    created = [c for c in doc["plan"]["changes"] if c["action"] == "create"]
    assert sorted(c["address"] for c in created if c["resource"] == "assistant") == [
        "org/acme/assistant/inbound",
        "org/acme/assistant/outbound",
    ]
    assert writes(emulator) == 0  # planning wrote nothing

    done = cli("apply", str(out))
    assert done.code == 0, done.out + done.err
    assert emulator_stats(emulator)["POST /assistant"] == 2
    assert cli("plan", str(specs.root), "--detailed-exitcode").code == 0
    again = cli("apply", str(out))  # the same plan twice: what it was made from is gone
    assert again.code == 1 and "changed since the plan was made" in again.out
    assert emulator_stats(emulator)["POST /assistant"] == 2
    assert_no_traceback(again)


def test_an_org_whose_spec_changed_is_refused_and_the_others_run(
    specs: SpecDir, cli: Any, emulator: str, tmp_path: Path
) -> None:
    acme, globex = org_doc("acme"), org_doc("globex")
    specs.write(acme)
    specs.write(globex)
    out = tmp_path / "plan.json"
    assert cli("plan", str(specs.root), "--out", str(out)).code == 0
    acme["spec"]["assistants"]["inbound"]["firstMessage"] = "Changed after the plan"
    specs.write(acme)
    run = cli("apply", str(out))
    assert run.code == 1
    assert "acme" in run.out and "its spec changed since the plan was made" in run.out
    assert live(emulator, key_of(acme)) == []  # nothing of it ran
    assert len(live(emulator, key_of(globex))) == 2


def test_an_org_whose_live_state_moved_is_refused(
    specs: SpecDir, cli: Any, emulator: str, tmp_path: Path
) -> None:
    acme = org_doc("acme")
    specs.write(acme)
    assert cli("apply", str(specs.root)).code == 0
    acme["spec"]["assistants"]["inbound"]["firstMessage"] = "New greeting"
    specs.write(acme)
    out = tmp_path / "plan.json"
    assert cli("plan", str(specs.root), "--out", str(out)).code == 0
    [inbound] = [a for a in live(emulator, key_of(acme)) if a["metadata"]["role"] == "inbound"]
    # someone edits it in the dashboard meanwhile
    edit_assistant(emulator, key_of(acme), inbound["id"], {"firstMessage": "Dashboard edit"})
    patches = emulator_stats(emulator)["PATCH /assistant/{id}"]
    run = cli("apply", str(out))
    assert run.code == 1 and f"object(s) {inbound['id']}" in run.out
    assert emulator_stats(emulator)["PATCH /assistant/{id}"] == patches  # nothing sent


def test_orgs_added_or_removed_since_the_plan(
    specs: SpecDir, cli: Any, emulator: str, tmp_path: Path
) -> None:
    acme, globex = org_doc("acme"), org_doc("globex")
    specs.write(acme)
    path = specs.write(globex)
    out = tmp_path / "plan.json"
    assert cli("plan", str(specs.root), "--out", str(out)).code == 0
    path.unlink()
    newcomer = org_doc("initech")
    specs.write(newcomer)
    run = cli("apply", str(out))
    assert run.code == 1
    assert "globex" in run.out and "its spec is gone" in run.out
    assert "initech" in run.out and "not in the saved plan" in run.out
    assert live(emulator, key_of(newcomer)) == []
    assert len(live(emulator, key_of(acme))) == 2


def test_a_saved_prune_plan_carries_its_options(
    specs: SpecDir, cli: Any, emulator: str, tmp_path: Path
) -> None:
    acme = org_doc("acme")
    specs.write(acme)
    assert cli("apply", str(specs.root)).code == 0
    del acme["spec"]["assistants"]["outbound"]
    specs.write(acme)
    out = tmp_path / "plan.json"
    assert cli("plan", str(specs.root), "--prune", "--out", str(out)).code == 0
    assert cli("apply", str(out)).code == 0
    assert emulator_stats(emulator)["DELETE /assistant/{id}"] == 1


def test_bad_saved_plans_and_flags_are_one_line_errors(
    specs: SpecDir, cli: Any, tmp_path: Path
) -> None:
    specs.write(org_doc("acme"))
    out = tmp_path / "plan.json"
    assert cli("plan", str(specs.root), "--out", str(out)).code == 0
    mixed = cli("apply", str(out), "--prune")
    assert mixed.code == 1 and "--prune" in mixed.err and "plan --out" in mixed.err
    doc = json.loads(out.read_text())
    cases = {
        "version": {**doc, "version": 99},
        "stamps": {**doc, "stamps": {"x": {"spec_digest": 1}}},
        "options": {**doc, "options": {"prune": "yes"}},
    }
    for name, broken in cases.items():
        bad = tmp_path / f"{name}.json"
        bad.write_text(json.dumps(broken))
        run = cli("apply", str(bad))
        assert run.code == 1 and str(bad) in run.err, (name, run.err)
        assert len(run.err.strip().splitlines()) == 1
        assert_no_traceback(run)
    truncated = tmp_path / "cut.json"
    truncated.write_text(out.read_text()[:200])
    run = cli("apply", str(truncated))
    assert run.code == 1 and "not valid JSON" in run.err
    offline = cli("diff", str(specs.root), "--base", "HEAD", "--out", str(out))
    assert offline.code == 1 and "--out" in offline.err
