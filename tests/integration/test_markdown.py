"""`plan --format markdown`: a summary table and one collapsible section per org that has
something to do, escaped for GitHub, no secret, cut with a note before 65,000 characters."""

from __future__ import annotations

import re
from typing import Any

from reconciler.cli.markdown import LIMIT, render_markdown
from reconciler.controller.run import Controller
from reconciler.spec.loader import load_tree
from tests.helpers import SpecDir, org_doc


def test_table_sections_and_no_secret(controller: Controller, specs: SpecDir) -> None:
    acme = org_doc("acme", api_key="key-SECRET-acme", secret="whsec-SECRET-acme")
    quiet = org_doc("quiet", api_key="key-SECRET-quiet")
    specs.write(acme)
    specs.write(quiet)
    assert controller.apply(load_tree(specs.root)).ok
    acme["spec"]["assistants"]["inbound"]["firstMessage"] = "Hi | <b>there</b> ``` `x`"
    specs.write(acme)
    (specs.root / "broken.yaml").write_text("kind: [unclosed\n")
    text = render_markdown(controller.plan(load_tree(specs.root)))
    assert "SECRET" not in text
    assert "| acme | 0 | 1 | 0 | 0 | - |" in text
    assert "1 other org(s): no changes." in text  # quiet is counted, not listed
    assert "<summary>acme: ~1 update</summary>" in text
    assert "broken.yaml" in text and "**Spec files that failed:**" in text
    # the diff sits in a fence longer than any backtick run inside it
    block = re.search(r"\n(`{4,})diff\n(.*?)\n\1\n", text, re.S)
    assert block is not None
    assert 'firstMessage: "Hello!" -> "Hi | <b>there</b> ``` `x`"' in block.group(2)
    assert "<b>" not in text.replace(block.group(0), "")  # only inside the code block


def test_a_huge_plan_is_cut_with_a_note(controller: Controller, specs: SpecDir) -> None:
    for i in range(12):
        specs.write(org_doc(f"org-{i:02d}"))
    report = controller.plan(load_tree(specs.root))
    whole = render_markdown(report)
    assert "Cut here" not in whole and whole.count("<details>") == 12
    cut = render_markdown(report, limit=len(whole) // 2)
    assert len(cut) <= len(whole) // 2
    assert "Cut here" in cut and "more org sections not shown" in cut
    assert cut.count("<details>") == cut.count("</details>") < 12
    tiny = render_markdown(report, limit=700)
    assert len(tiny) <= 700 and "the summary table" in tiny
    assert LIMIT < 65_536


def test_plan_format_markdown_on_the_command_line(cli: Any, specs: SpecDir) -> None:
    specs.write(org_doc("acme"))
    run = cli("plan", str(specs.root), "--format", "markdown", "--detailed-exitcode")
    assert run.code == 2, run.err
    assert run.out.startswith("### Reconciler plan")
    assert "| acme | 4 | 0 | 0 | 0 | - |" in run.out  # the org, its credential, 2 assistants
    assert "<summary>acme: +" in run.out
