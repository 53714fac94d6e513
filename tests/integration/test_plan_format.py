"""Drift in the plan (docs/plan-format.md): a field changed in the Vapi dashboard is marked apart
from one changed in git, in the text and in the JSON plan. The JSON contract itself is pinned by
tests/unit/test_plan_format.py."""

from __future__ import annotations

import io

from rich.console import Console

from reconciler.cli.render import render_text, report_json
from reconciler.controller.run import Controller
from reconciler.spec.loader import load_tree
from tests.helpers import SpecDir, edit_assistant, live, org_doc


def test_drift_is_marked_apart_from_a_change_in_git(
    controller: Controller, specs: SpecDir, emulator: str
) -> None:
    """A field changed in the Vapi dashboard is drift; one changed in the spec is not."""
    doc = org_doc("acme", api_key="key-drift-acme")
    specs.write(doc)
    assert controller.apply(load_tree(specs.root)).ok
    inbound = next(
        a for a in live(emulator, "key-drift-acme") if a["metadata"]["role"] == "inbound"
    )
    # someone edits the assistant in the dashboard
    edit_assistant(emulator, "key-drift-acme", inbound["id"], {"firstMessage": "Edited by hand"})
    doc["spec"]["assistants"]["outbound"]["voice"]["voiceId"] = "paula"  # and git changes one
    specs.write(doc)
    report = controller.plan(load_tree(specs.root))
    out = io.StringIO()
    render_text(report, Console(file=out, width=200, highlight=False, color_system=None))
    text = out.getvalue()
    assert 'firstMessage: "Edited by hand" -> "Hello!" (drift)' in text
    assert 'voice.voiceId: "burt" -> "paula"\n' in text
    fields = {f["path"]: f["drift"] for c in report_json(report)["changes"] for f in c["fields"]}
    assert fields["firstMessage"] is True and fields["voice.voiceId"] is False
