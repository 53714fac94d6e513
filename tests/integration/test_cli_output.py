"""What `plan`, `apply` and `status` print (issue 15): each org's result as soon as it is known,
`--quiet`, a long prompt changed shown as a diff, a closed pipe, `status` headers and the Vapi
id of each created assistant."""

from __future__ import annotations

import fcntl
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from reconciler.cli.progress import OrgProgress
from reconciler.controller.run import Controller, OrgOutcome
from reconciler.secrets.crypto import MasterKey
from reconciler.spec.loader import load_tree
from reconciler.state.store import StateWriter
from reconciler.vapi.client import http_client
from tests.helpers import FAST_RETRY, ROOT, SpecDir, live, org_doc
from tests.helpers.serve import session_env

SLUGS = ("acme", "beta", "gamma")
F_SETPIPE_SZ = 1031  # Linux: the pipe's buffer size


def headers(out: str) -> list[int]:
    """Where each org's section of the plan begins (`slug (uuid)`)."""
    lines = out.splitlines()
    return [i for i, ln in enumerate(lines) if re.match(r"^[a-z]+ \([0-9a-f-]{36}\)$", ln)]


def test_a_piped_plan_prints_a_line_per_org_before_the_plan(cli: Any, specs: SpecDir) -> None:
    for slug in SLUGS:
        specs.write(org_doc(slug))
    (specs.root / "broken.yaml").write_text("kind: [unclosed\n")
    run = cli("plan", str(specs.root))
    assert run.code == 1, run.out + run.err
    lines = run.lines
    first_section = headers(run.out)[0]
    progress = lines[:first_section]
    assert sorted(progress) == [f"{slug}: 4 to create" for slug in SLUGS], run.out
    assert "\x1b" not in run.out  # piped: plain lines, no control code
    assert lines[-2] == "Plan: 12 to create, 0 to update, 0 to delete."  # the plan as before
    assert lines[-1].startswith("Failed: 1 file(s)")

    json_run = cli("plan", str(specs.root), "--format", "json")
    assert json.loads(json_run.out)["summary"]["orgs"] == 3  # stdout holds the document only


def test_each_org_is_told_as_soon_as_it_is_known(
    state: StateWriter, emulator: str, master_key: MasterKey, specs: SpecDir
) -> None:
    """One org at a time: an org's line comes before the next org is planned (or applied),
    not all at the end of the run."""
    for slug in SLUGS:
        specs.write(org_doc(slug))
    events: list[tuple[str, str]] = []

    class Recorder:
        def stage(self, name: str, total: int) -> None:
            events.append(("stage", f"{name} {total}"))

        def org_done(self, outcome: OrgOutcome, *, final: bool) -> None:
            if final:
                events.append(("done", outcome.slug))

    with http_client(emulator, timeout_s=5) as http:
        controller = Controller(state, http, master_key, concurrency=1, retry=FAST_RETRY)
        planned, applied = controller._plan, controller._apply_org

        def plan(desired: Any, *args: Any) -> Any:
            events.append(("work", desired.slug))
            return planned(desired, *args)

        def apply_org(state: Any, desired: Any, *args: Any) -> None:
            events.append(("work", desired.slug))
            applied(state, desired, *args)

        controller._plan = plan  # type: ignore[method-assign]
        expected = [("stage", "planning 3")]
        for slug in sorted(SLUGS):
            expected += [("work", slug), ("done", slug)]
        controller.plan(load_tree(specs.root), progress=Recorder())
        assert events == [("stage", "listing 3"), *expected]
        events.clear()
        controller._plan = planned  # type: ignore[method-assign]
        controller._apply_org = apply_org  # type: ignore[method-assign]
        assert controller.apply(load_tree(specs.root), progress=Recorder()).ok
        assert events[0] == ("stage", "applying 3")
        assert events[1:] == expected[1:]


def test_quiet_prints_only_the_summary_and_problems(cli: Any, specs: SpecDir) -> None:
    for slug in SLUGS:
        specs.write(org_doc(slug))
    (specs.root / "broken.yaml").write_text("kind: [unclosed\n")
    run = cli("plan", str(specs.root), "--quiet")
    assert run.code == 1
    assert not any(slug in run.out for slug in SLUGS), run.out
    assert "broken.yaml" in run.out
    assert run.lines[-2:] == [
        "Plan: 12 to create, 0 to update, 0 to delete.",
        "Failed: 1 file(s) (" + str(specs.root / "broken.yaml") + ")",
    ]
    (specs.root / "broken.yaml").unlink()
    applied = cli("apply", str(specs.root), "-q")
    assert applied.code == 0, applied.err
    assert applied.lines == ["Applied: 12 to create, 0 to update, 0 to delete."]


def test_a_long_prompt_changed_is_shown_as_a_diff(cli: Any, specs: SpecDir) -> None:
    doc = org_doc("acme")
    sentences = [f"Rule {i}: be kind to caller number {i} and confirm twice." for i in range(90)]
    doc["spec"]["assistants"]["inbound"]["firstMessage"] = " ".join(sentences)
    specs.write(doc)
    assert cli("apply", str(specs.root)).code == 0
    sentences[45] = "Rule 45: on Saturdays we open at nine."
    doc["spec"]["assistants"]["inbound"]["firstMessage"] = " ".join(sentences)
    specs.write(doc)
    run = cli("plan", str(specs.root), "--detailed-exitcode")
    assert run.code == 2, run.out + run.err
    assert "{+on Saturdays we open at nine.+}" in run.out
    assert "Rule 2:" not in run.out and "Rule 88:" not in run.out
    assert len(run.out) < 1_000


def test_apply_prints_the_vapi_id_of_each_created_assistant(
    cli: Any, specs: SpecDir, emulator: str
) -> None:
    doc = org_doc("acme", api_key="key-created-ids")
    specs.write(doc)
    run = cli("apply", str(specs.root))
    assert run.code == 0, run.out + run.err
    ids = {a["metadata"]["role"]: a["id"] for a in live(emulator, "key-created-ids")}
    for role in ("inbound", "outbound"):
        assert f'  + assistant {role} "acme {role}" created: {ids[role]}' in run.lines, run.out
    assert "acme: created 4" in run.lines  # the org's line, as soon as it was done


def test_status_has_column_headers(cli: Any, specs: SpecDir) -> None:
    for slug in ("acme", "beta"):
        specs.write(org_doc(slug))
    assert cli("apply", str(specs.root)).code == 0
    out = cli("status").lines
    assert out[0].split() == ["SLUG", "STATUS", "LAST", "RECONCILED", "REVISION", "MESSAGE"]
    rows = {ln.split()[0]: ln for ln in out[1:]}
    assert rows.keys() >= {"acme", "beta"}
    # the columns line up under their headers
    assert rows["acme"].index("Ready") == out[0].index("STATUS")
    detail = cli("status", "--org", "acme").lines
    assert detail[0].split()[0] == "SLUG" and detail[1].startswith("acme ")


def test_a_closed_pipe_ends_quietly(
    specs: SpecDir,
    database_url: str,
    master_key: MasterKey,
    emulator: str,
    age_identity: tuple[Path, str],
    tmp_path: Path,
    pool: Any,
) -> None:
    """`reconciler plan | head -1`: the reader goes after one line; no traceback, no
    "BrokenPipeError", exit 141 (as a shell reports a program ended by SIGPIPE)."""
    prompt = "\n".join(f"Line {i} of a long prompt, long enough to fill a pipe." for i in range(60))
    for slug in SLUGS:
        doc = org_doc(slug)
        doc["spec"]["assistants"]["inbound"]["firstMessage"] = prompt
        specs.write(doc)
    env = session_env(
        database_url, master_key.to_b64(), emulator, age_identity[0], tmp_path / "data"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "plan", str(specs.root)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    fcntl.fcntl(proc.stdout.fileno(), F_SETPIPE_SZ, 4096)  # less than the plan: it must block
    first = proc.stdout.readline()
    proc.stdout.close()  # as `head -1` does
    err = proc.stderr.read().decode()
    code = proc.wait(timeout=60)
    assert first.decode().rstrip() in {f"{slug}: 4 to create" for slug in SLUGS}
    assert "Traceback" not in err and "BrokenPipe" not in err and "Exception" not in err, err
    assert err == ""
    assert code == 141


@pytest.mark.parametrize("terminal", [True, False])
def test_a_terminal_gets_a_live_line_a_pipe_plain_lines(terminal: bool) -> None:
    import io

    from rich.console import Console

    out = io.StringIO()
    console = Console(file=out, force_terminal=terminal, width=100, highlight=False)
    with OrgProgress(console, applied=False, lines=True, live=console.is_terminal) as progress:
        progress.stage("planning", 2)
        progress.org_done(OrgOutcome("acme", "1", error="boom"), final=True)
        progress.org_done(OrgOutcome("beta", "2"), final=True)
    text = out.getvalue()
    assert "acme: failed: boom" in text and "beta: no changes" in text
    if terminal:
        assert "\x1b" in text and "orgs, 1 failed" in text
    else:
        assert text == "acme: failed: boom\nbeta: no changes\n"


def test_a_failing_progress_never_fails_an_org(controller: Controller, specs: SpecDir) -> None:
    """What the display raises (a closed pipe, a bug) is the display's trouble, not the org's."""
    for slug in SLUGS:
        specs.write(org_doc(slug))

    class Broken:
        def stage(self, name: str, total: int) -> None:
            pass

        def org_done(self, outcome: OrgOutcome, *, final: bool) -> None:
            raise BrokenPipeError(32, "gone")

    assert controller.plan(load_tree(specs.root), progress=Broken()).ok
    report = controller.apply(load_tree(specs.root), progress=Broken())
    assert report.ok and report.counts()["create"] == 12
