"""The run summary line of `serve`'s log (issue 15): counts as words, not a Python dict."""

from __future__ import annotations

import logging

import pytest

from reconciler.controller.loop import ReconcileLoop
from reconciler.controller.run import OrgOutcome, RunReport
from reconciler.engine.actions import CreateAssistant, OrgPlan, UpdateAssistant


def test_the_run_line_says_its_counts_in_words(caplog: pytest.LogCaptureFixture) -> None:
    done = [
        CreateAssistant("inbound", {}),
        CreateAssistant("outbound", {}),
        UpdateAssistant("inbound", "asst-1", {}),
    ]
    ok = OrgOutcome("acme", "org-1", plan=OrgPlan("org-1", "acme", tuple(done)), done=done)
    failed = OrgOutcome("beta", "org-2", error="boom")
    report = RunReport([ok, failed], run_id=42)
    with caplog.at_level(logging.INFO, logger="reconciler.controller.loop"):
        ReconcileLoop._count(report)
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("run 42")]
    assert line == "run 42: 2 org(s), 1 failed, 0 file(s) failing, created 2, updated 1"
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="reconciler.controller.loop"):
        ReconcileLoop._count(RunReport([], run_id=43))
    assert [r.getMessage() for r in caplog.records] == [
        "run 43: 0 org(s), 0 failed, 0 file(s) failing"
    ]
