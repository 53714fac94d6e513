"""CLI pieces that need no database: the master key file is created only by a command that
writes, and the JSON plan carries notes and skipped orgs. The CLI under hostile conditions
(read-only roles, a database that goes away, ...): tests/integration/test_cli_hardening.py."""

from __future__ import annotations

from pathlib import Path

from reconciler.cli.render import report_json
from reconciler.config import Settings
from reconciler.controller.run import OrgOutcome, RunReport
from reconciler.engine.actions import OrgPlan
from reconciler.state.connect import master_key


def test_a_command_that_writes_nothing_creates_no_key_file(tmp_path: Path) -> None:
    settings = Settings(RECONCILER_DATA_DIR=tmp_path / "data")
    master_key(settings, create=False)
    assert not (tmp_path / "data" / "master.key").exists()
    master_key(settings)
    assert (tmp_path / "data" / "master.key").exists()


def test_plan_json_carries_notes_and_skipped_orgs() -> None:
    plan = OrgPlan("id-1", "acme", (), notes=("inbound: server.headers.x: cannot be checked",))
    report = RunReport(
        [OrgOutcome("acme", "id-1", plan=plan), OrgOutcome("beta", "id-2", skipped="held")]
    )
    out = report_json(report)
    assert out["notes"] == [{"org": "acme", "message": plan.notes[0]}]
    assert out["skipped"] == [{"org": "beta", "message": "held"}]
    assert out["summary"]["orgs_skipped"] == 1 and out["summary"]["errors"] == 0
