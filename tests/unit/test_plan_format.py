"""The JSON plan is a contract (docs/plan-format.md): this golden file pins it. A change to it
is a change to the contract: bump `FORMAT_VERSION` when it is incompatible, then regenerate
with `RECONCILER_UPDATE_GOLDEN=1 pytest tests/unit/test_plan_format.py` and review the diff."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

from reconciler.cli.render import FORMAT_VERSION, report_json
from reconciler.controller.run import OrgOutcome, RunReport
from reconciler.engine.actions import (
    AdoptAssistant,
    CreateAssistant,
    CreateResource,
    DeactivateCredential,
    DeleteAssistant,
    Finding,
    LeaveAccount,
    MoveTemplate,
    OrgPlan,
    Pending,
    RetireOrg,
    StoreCredential,
    TemplateMove,
    Unknown,
    UpdateAssistant,
    UpdateResource,
    UpsertOrg,
    known_after_apply,
)
from reconciler.engine.diff import FieldChange
from reconciler.engine.model import Sensitive
from reconciler.redact import SENSITIVE
from reconciler.spec.loader import Problem
from tests.helpers import ROOT

GOLDEN = ROOT / "tests" / "golden" / "plan-v3.json"
ACME = "3f1c2d8e-6b0a-4a53-9d2e-1b7c9a0e4f11"
GLOBEX = "9b2e4c71-0d3a-4f5e-8a6b-2c1d0e9f8a7b"
DENTAL = "4c0b7e1a-2d3f-4a5b-8c6d-7e8f9a0b1c2d"
SMILES = "6e1d2c3b-4a5f-4e6d-9c8b-0a1f2e3d4c5b"
SHARED = "5d7a1e20-8c4b-4b9d-a3f2-6e0c1b2d3f40"
GONE = "7a0b1c2d-3e4f-4a5b-8c6d-9e0f1a2b3c4d"
LEFT = "1c2d3e4f-5a6b-4c7d-8e9f-0a1b2c3d4e5f"
MOVED = "2d3e4f5a-6b7c-4d8e-9f0a-1b2c3d4e5f6a"
OFFLINE = "3e4f5a6b-7c8d-4e9f-8a1b-2c3d4e5f6a7b"


def sample() -> RunReport:
    acme = OrgPlan(
        ACME,
        "acme",
        (
            UpsertOrg("update", "acme", "Acme", (FieldChange("name", "Acme Co", "Acme"),)),
            StoreCredential("update", "vapi", Sensitive({"apiKey": "sk-live-NEVER"}), "fp"),
            DeactivateCredential("resend"),
            UpdateAssistant(
                "inbound",
                "asst-in",
                {"model": {"temperature": 0.2}},
                changes=(
                    FieldChange("model.temperature", 0.7, 0.2, drift=True),
                    FieldChange("server.headers.x-vapi-secret", SENSITIVE, SENSITIVE, True),
                ),
            ),
            DeleteAssistant("outbound", "asst-dup", note="tagged duplicate"),
        ),
        unchanged=(),
        warnings=("inbound: Vapi does not keep this value: maxDurationSeconds",),
        findings=(
            Finding("duplicate", "inbound", "asst-dup2", "a second assistant tagged for this role"),
            Finding("unmanaged", "outbound", "asst-legacy", "untagged assistant named 'Out'"),
        ),
    )
    globex = OrgPlan(
        GLOBEX,
        "globex",
        (
            UpsertOrg("create", "globex", "Globex"),
            StoreCredential("create", "vapi", Sensitive({"apiKey": "sk-NEVER"}), "fp"),
            CreateAssistant(
                "inbound",
                {"name": "Globex in", "firstMessage": "Hi"},
                changes=(
                    FieldChange("name", None, "Globex in"),
                    FieldChange("firstMessage", None, "Hi"),
                ),
            ),
            AdoptAssistant("outbound", "asst-out", note="found by its ownership tag"),
            CreateResource(
                "tool",
                "book",
                {"type": "function", "function": {"name": "book"}},
                changes=(FieldChange("type", None, "function"),),
            ),
            UpdateResource(
                "phoneNumber",
                "+14155550123",
                "pn-1",
                {"assistantId": known_after_apply("assistant", "inbound")},
                changes=(
                    FieldChange("assistantId", None, known_after_apply("assistant", "inbound")),
                    FieldChange("twilioAuthToken", SENSITIVE, SENSITIVE, True),
                ),
                pending=(Pending(("assistantId",), "assistant", "inbound"),),
            ),
        ),
        notes=("outbound: the live value of voice.apiKey is masked by Vapi",),
    )
    shared = OrgPlan(
        SHARED,
        "shared",
        (),
        unchanged=("inbound", "tool/end_call"),
        blocked=("this Vapi account holds assistants of other orgs",),
    )
    gone = OrgPlan(
        GONE,
        "gone",
        (
            DeleteAssistant("inbound", "asst-gone", note="its spec is gone from the specs"),
            DeactivateCredential("twilio"),
            RetireOrg(Sensitive("whsec-NEVER"), reason="its spec is gone from the specs"),
        ),
        orphaned="its spec is gone from the specs",
    )
    left = OrgPlan(LEFT, "left", (), orphaned="its spec is gone: `--prune` retires it")
    # two orgs moved from dental-receptionist@3 to @4: one changes (the template's greeting;
    # its own override of the prompt changes too), one renders as before
    dental = OrgPlan(
        DENTAL,
        "dental",
        (
            UpdateAssistant(
                "inbound",
                "asst-dental",
                {"firstMessage": "Hello!", "model": {"messages": []}},
                changes=(
                    FieldChange("firstMessage", "Hi", "Hello!"),
                    FieldChange("model.messages[0].content", "Be kind.", "Be brief."),
                    FieldChange("voice.voiceId", "burt", "sarah", drift=True),
                ),
                template="dental-receptionist@4",
            ),
        ),
        templates=(
            TemplateMove(
                "inbound",
                "dental-receptionist@3",
                "dental-receptionist@4",
                True,
                frozenset({"model.messages[0].content"}),
            ),
        ),
    )
    smiles = OrgPlan(
        SMILES,
        "smiles",
        (MoveTemplate("inbound", "asst-smiles", "dental-receptionist@3", "dental-receptionist@4"),),
        templates=(
            TemplateMove("inbound", "dental-receptionist@3", "dental-receptionist@4", False),
        ),
    )
    moved = OrgPlan(MOVED, "moved", (LeaveAccount("acct-old", "acct-new"),))
    offline = OrgPlan(  # as `diff --base` has it: what it cannot know offline
        OFFLINE,
        "offline",
        (),
        unknown=(
            Unknown("credential", "vapi", "the file was encrypted anew (a new data key)"),
            Unknown("assistant", "outbound", "created, or adopted by name"),
        ),
    )
    outcomes = [
        OrgOutcome("acme", ACME, plan=acme),
        OrgOutcome("gone", GONE, plan=gone),
        OrgOutcome("left", LEFT, plan=left),
        OrgOutcome("moved", MOVED, plan=moved),
        OrgOutcome("dental", DENTAL, plan=dental),
        OrgOutcome("smiles", SMILES, plan=smiles),
        OrgOutcome("offline", OFFLINE, plan=offline),
        OrgOutcome("globex", GLOBEX, plan=globex),
        OrgOutcome("shared", SHARED, plan=shared, error="this Vapi account holds ..."),
        OrgOutcome("held", "0e7c9a8b-1d2f-4e3a-9b8c-7d6e5f4a3b2c", skipped="another reconciler"),
    ]
    problems = [Problem(Path("specs/broken.yaml"), "spec", "invalid YAML (line 2)")]
    return RunReport(outcomes, problems)


def test_json_plan_matches_the_golden_file() -> None:
    produced = json.dumps(report_json(sample()), indent=2, sort_keys=True) + "\n"
    if os.environ.get("RECONCILER_UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(produced)
    assert GOLDEN.is_file(), f"{GOLDEN} is missing: see this module's docstring to regenerate it"
    assert produced == GOLDEN.read_text(), "the JSON plan changed: see this module's docstring"


def test_contract_basics() -> None:
    doc = report_json(sample())
    assert doc["format_version"] == FORMAT_VERSION == "3"
    text = json.dumps(doc)
    assert "NEVER" not in text  # credentials are never in a plan
    actions = {c["address"]: c["action"] for c in doc["changes"]}
    assert actions["org/acme/credential/vapi"] == "update"
    assert actions["org/acme/credential/resend"] == "delete"
    assert actions["org/shared"] == "blocked"
    assert actions["org/shared/assistant/inbound"] == "noop"
    drift = next(c for c in doc["changes"] if c["address"] == "org/acme/assistant/inbound")
    assert drift["drift"] is True
    assert drift["before"]["model.temperature"] == 0.7
    assert drift["after"]["model.temperature"] == 0.2
    allowed = {"create", "update", "delete", "adopt", "noop", "duplicate", "unmanaged", "blocked"}
    allowed.add("unknown")  # `diff --base` only: what it cannot know offline
    assert {c["action"] for c in doc["changes"]} <= allowed
    assert actions["org/offline/credential/vapi"] == "unknown"
    assert doc["summary"]["unknown"] == 2
    assert doc["summary"]["blocked"] == 1 and doc["summary"]["orgs_skipped"] == 1


def test_the_blast_radius_of_a_template_change_and_each_fields_cause() -> None:
    doc = report_json(sample())
    assert doc["templates"] == [
        {
            "from": "dental-receptionist@3",
            "to": "dental-receptionist@4",
            "orgs": 2,
            "change": 1,
            "unchanged": 1,
            "org_slugs": ["dental", "smiles"],
        }
    ]
    dental = next(c for c in doc["changes"] if c["address"] == "org/dental/assistant/inbound")
    assert dental["template"] == {"from": "dental-receptionist@3", "to": "dental-receptionist@4"}
    causes = {f["path"]: f["cause"] for f in dental["fields"]}
    assert causes == {
        "firstMessage": "template",
        "model.messages[0].content": "org",
        "voice.voiceId": "drift",
    }
    smiles = next(c for c in doc["changes"] if c["address"] == "org/smiles/assistant/inbound")
    assert smiles["action"] == "update" and smiles["fields"] == []
    acme = next(c for c in doc["changes"] if c["address"] == "org/acme/assistant/inbound")
    assert acme["template"] is None
    assert {f["cause"] for f in acme["fields"]} == {"drift", "org"}


def test_text_and_markdown_plans_start_with_the_blast_radius() -> None:
    import io

    from rich.console import Console

    from reconciler.cli.markdown import render_markdown
    from reconciler.cli.render import render_text

    buffer = io.StringIO()
    render_text(sample(), Console(file=buffer, width=300, color_system=None))
    text = buffer.getvalue().splitlines()
    line = "template dental-receptionist 3 → 4: 2 orgs, 1 change, 1 unchanged through overrides"
    assert text[0] == line
    assert '      firstMessage: "Hi" -> "Hello!" (from template dental-receptionist@4)' in text
    assert (
        '      model.messages[0].content: "Be kind." -> "Be brief." (from the org\'s overrides)'
        in text
    )
    assert any(
        "assistant inbound (asst-smiles): template dental-receptionist@3 ->" in t for t in text
    )
    markdown = render_markdown(sample())
    assert f"- **{line}**" in markdown.splitlines()[:4]


def test_a_piped_text_plan_is_what_rich_would_print() -> None:
    """To a pipe or a file the text plan skips rich's styled text: the same characters. Names
    and values are text whatever their brackets (never read as markup)."""
    import io

    from rich.console import Console

    from reconciler.cli.render import render_text

    report = sample()
    odd = UpdateAssistant(
        role="inbound",
        vapi_id="asst-odd",
        patch={},
        changes=(FieldChange("metadata.x[/", "a", "]b"), FieldChange("y", "[/red]", "[red]")),
    )
    outcome = report.outcomes[0]
    assert outcome.plan is not None
    outcome.plan = replace(outcome.plan, actions=(*outcome.plan.actions, odd))
    outcome.error = "boom [bold]not a tag[/bold] \\[x] trailing \\"
    piped, styled = io.StringIO(), io.StringIO()
    render_text(report, Console(file=piped, color_system=None, soft_wrap=True))
    render_text(
        report, Console(file=styled, color_system=None, force_terminal=True, soft_wrap=True)
    )
    assert piped.getvalue() == styled.getvalue()
    text = piped.getvalue()
    assert "x error: boom [bold]not a tag[/bold] \\[x] trailing \\" in text
    assert '      metadata.x[/: "a" -> "]b"' in text
    assert '      y: "[/red]" -> "[red]"' in text
