"""`reconciler diff --base REF`: the specs at a git revision against the working tree, with no
age key, no database and no network, in the same formats and exit codes as `plan`."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.helpers import SpecDir, git, org_doc
from tests.helpers.serve import base_env, run_cli


def reconciler(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI with no key, no usable database and no reachable Vapi: offline or fail."""
    env = base_env(
        RECONCILER_DATABASE_URL="postgresql://nobody@127.0.0.1:1/none",
        VAPI_BASE_URL="http://127.0.0.1:1",
        SOPS_AGE_KEY_FILE="/nonexistent/age.key",
    )
    return run_cli(env, *args, cwd=cwd, timeout_s=120)


@pytest.fixture
def repo(specs: SpecDir) -> Path:
    root = specs.root.parent
    git(root, "init", "-q", "-b", "main")
    return root


def test_diff_base_offline(repo: Path, specs: SpecDir) -> None:
    acme, bravo, delta = org_doc("acme"), org_doc("bravo"), org_doc("delta")
    for doc in (acme, bravo, delta):
        specs.write(doc)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "base")

    clean = reconciler(repo, "diff", "specs", "--base", "main", "--detailed-exitcode")
    assert clean.returncode == 0, clean.stderr
    assert "0 to create, 0 to update, 0 to delete" in clean.stdout

    acme["spec"]["assistants"]["inbound"]["firstMessage"] = "Welcome back"
    specs.write(acme)  # re-encrypted: its credential ciphertext changes too
    bravo_path = specs.root / "bravo.yaml"
    text = bravo_path.read_text()  # only the plaintext part of bravo changes: no re-encryption
    bravo_path.write_text(text.replace("firstMessage: Hello!", "firstMessage: Hi there"))
    bravo["spec"]["assistants"]["inbound"]["firstMessage"] = "Hi there"
    specs.write(org_doc("charlie"))
    (specs.root / "delta.yaml").unlink()

    run = reconciler(
        repo, "diff", "specs", "--base", "main", "--format", "json", "--detailed-exitcode"
    )
    assert run.returncode == 2, run.stderr
    doc = json.loads(run.stdout)
    actions = {(c["address"], c["action"]) for c in doc["changes"]}
    assert ("org/acme/assistant/inbound", "update") in actions
    assert ("org/acme/credential/vapi", "update") in actions  # re-encrypted by sops
    assert ("org/bravo/assistant/inbound", "update") in actions
    assert not any(a.startswith("org/bravo/credential") for a, _ in actions)
    assert ("org/charlie", "create") in actions
    assert ("org/charlie/assistant/outbound", "create") in actions
    assert ("org/delta", "delete") in actions
    change = next(c for c in doc["changes"] if c["address"] == "org/acme/assistant/inbound")
    assert change["before"] == {"firstMessage": "Hello!"}
    assert change["after"] == {"firstMessage": "Welcome back"}
    credential = next(c for c in doc["changes"] if c["address"] == "org/acme/credential/vapi")
    assert credential["reason"] == "sensitive value changed"
    for secret in (acme, bravo):
        vapi = secret["spec"]["credentials"]["vapi"]
        assert vapi["apiKey"] not in run.stdout and vapi["webhookSecret"] not in run.stdout

    text_run = reconciler(repo, "diff", "specs", "--base", "main")
    assert text_run.returncode == 0, text_run.stderr
    assert "credential vapi (sensitive value changed)" in text_run.stdout
    assert 'firstMessage: "Hello!" -> "Welcome back"' in text_run.stdout
    md = reconciler(repo, "diff", "specs", "--base", "main", "--format", "markdown")
    assert md.returncode == 0 and md.stdout.startswith("### Reconciler plan")


def test_diff_base_errors_are_one_line(repo: Path, specs: SpecDir) -> None:
    specs.write(org_doc("acme"))
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "base")
    bad = reconciler(repo, "diff", "specs", "--base", "no-such-ref")
    assert bad.returncode == 1
    assert bad.stderr.startswith("error: ") and len(bad.stderr.strip().splitlines()) == 1
    assert "Traceback" not in bad.stderr
    new_dir = reconciler(repo, "diff", "specs", "--base", "main", "--detailed-exitcode")
    assert new_dir.returncode == 0, new_dir.stderr


def test_specs_absent_at_base_are_all_new(repo: Path, specs: SpecDir) -> None:
    (repo / "README").write_text("x")
    git(repo, "add", "README")
    git(repo, "commit", "-qm", "before the specs")
    specs.write(org_doc("acme"))
    run = reconciler(repo, "diff", "specs", "--base", "main", "--format", "json")
    assert run.returncode == 0, run.stderr
    assert ("org/acme", "create") in {
        (c["address"], c["action"]) for c in json.loads(run.stdout)["changes"]
    }
