""".pre-commit-hooks.yaml, run by the real `pre-commit` against a scratch repository of specs.

The hooks come from a scratch git repository holding this work tree's `.pre-commit-hooks.yaml`
(committed there, so uncommitted edits are what is tested), referenced by path and commit as
a user references this repository by URL and tag. pre-commit clones it with git from the
local path into a private PRE_COMMIT_HOME under tmp_path. `language: python` would make
pre-commit build a virtualenv and pip-install this project into it (a download of every
dependency): the scratch config overrides the language to `system` instead (the manifest's
entry, args, files, types and pass_filenames are used as they are), with this test's
`reconciler` and `python` first on PATH. Proxies pointing nowhere and git limited to the
`file` protocol make any network access fail the test instead of passing slowly.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import ROOT

EXAMPLES = ROOT / "specs" / "examples"
HOOK_IDS = ("reconciler-validate", "reconciler-no-plaintext")
TIMEOUT_S = 180


def _env(tmp_path: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("GIT_", "PRE_COMMIT", "SOPS_", "RECONCILER_"))
    }
    venv_bin = str(Path(sys.executable).parent)
    env.update(
        PATH=f"{venv_bin}{os.pathsep}{env.get('PATH', '')}",
        PRE_COMMIT_HOME=str(tmp_path / "pre-commit-home"),  # never the user's cache
        HOME=str(tmp_path / "home"),  # no global git or pre-commit settings of the user's
        GIT_CONFIG_NOSYSTEM="1",
        GIT_ALLOW_PROTOCOL="file",
        GIT_AUTHOR_NAME="test",
        GIT_AUTHOR_EMAIL="test@example.invalid",
        GIT_COMMITTER_NAME="test",
        GIT_COMMITTER_EMAIL="test@example.invalid",
        http_proxy="http://127.0.0.1:9",
        https_proxy="http://127.0.0.1:9",
        HTTP_PROXY="http://127.0.0.1:9",
        HTTPS_PROXY="http://127.0.0.1:9",
        PIP_NO_INDEX="1",
    )
    (tmp_path / "home").mkdir(exist_ok=True)
    return env


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S, check=False
    )


def _git(cwd: Path, env: dict[str, str], *args: str) -> str:
    run = _run(["git", *args], cwd, env)
    assert run.returncode == 0, run.stderr
    return run.stdout.strip()


def _pre_commit(cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return _run(
        [sys.executable, "-m", "pre_commit", "run", "--all-files", "--color", "never"], cwd, env
    )


@pytest.fixture
def specs_repo(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A repository of encrypted specs whose .pre-commit-config.yaml uses this repository's
    hooks (from a scratch clone of its hook manifest)."""
    if shutil.which("git") is None:
        pytest.skip("git is not on PATH")
    env = _env(tmp_path)
    hooks = tmp_path / "hooks-repo"
    hooks.mkdir()
    _git(hooks, env, "init", "--quiet", "--initial-branch", "main")
    shutil.copy(ROOT / ".pre-commit-hooks.yaml", hooks / ".pre-commit-hooks.yaml")
    _git(hooks, env, "add", ".pre-commit-hooks.yaml")
    _git(hooks, env, "commit", "--quiet", "--message", "hooks")
    rev = _git(hooks, env, "rev-parse", "HEAD")

    repo = tmp_path / "specs-repo"
    (repo / "specs").mkdir(parents=True)
    _git(repo, env, "init", "--quiet", "--initial-branch", "main")
    for name in (".sops.yaml", "acme-dental.yaml", "bright-smiles.yaml"):
        shutil.copy(EXAMPLES / name, repo / "specs" / name)
    shutil.copytree(EXAMPLES / "templates", repo / "specs" / "templates")  # acme's and bright's
    config = {
        "repos": [
            {
                "repo": str(hooks),
                "rev": rev,
                "hooks": [{"id": hook, "language": "system"} for hook in HOOK_IDS],
            }
        ]
    }
    (repo / ".pre-commit-config.yaml").write_text(yaml.safe_dump(config))
    _git(repo, env, "add", ".")
    return repo, env


def _plaintext_copy(source: Path, target: Path) -> None:
    """`source` decrypted by hand, as a careless commit would hold it: no sops metadata and a
    plaintext value under credentials (the others kept as they are)."""
    doc = yaml.safe_load(source.read_text())
    doc.pop("sops")
    doc["spec"]["credentials"]["vapi"]["apiKey"] = "not-a-real-key-but-plaintext"
    target.write_text(yaml.safe_dump(doc, sort_keys=False))


def test_the_manifest_is_valid() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "pre_commit", "validate-manifest", ".pre-commit-hooks.yaml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    ids = [hook["id"] for hook in yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())]
    assert tuple(ids) == HOOK_IDS


def test_encrypted_specs_pass(specs_repo: tuple[Path, dict[str, str]]) -> None:
    repo, env = specs_repo
    run = _pre_commit(repo, env)
    assert run.returncode == 0, run.stdout + run.stderr
    for name in ("reconciler validate", "no plaintext credentials"):
        assert any(
            line.startswith(name) and line.endswith("Passed") for line in run.stdout.splitlines()
        ), run.stdout
    # the cache is where the test put it
    assert any((Path(env["PRE_COMMIT_HOME"])).iterdir())


def test_a_plaintext_spec_fails_both_hooks_naming_the_file(
    specs_repo: tuple[Path, dict[str, str]],
) -> None:
    repo, env = specs_repo
    _plaintext_copy(EXAMPLES / "acme-dental.yaml", repo / "specs" / "acme-dental.yaml")
    _git(repo, env, "add", ".")
    run = _pre_commit(repo, env)
    assert run.returncode == 1, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    for name in ("reconciler validate", "no plaintext credentials"):
        assert any(line.startswith(name) and line.endswith("Failed") for line in lines), name
    assert "specs/acme-dental.yaml: spec.credentials.vapi.apiKey: plaintext secret" in run.stdout
    assert "not SOPS-encrypted" in run.stdout
    assert "not-a-real-key-but-plaintext" not in run.stdout + run.stderr, "never the value"
    assert "bright-smiles" not in run.stdout, "only the bad file is named"


def test_a_decrypted_spec_outside_the_specs_folder_is_refused(
    specs_repo: tuple[Path, dict[str, str]],
) -> None:
    """`validate specs` does not see it; the no-plaintext hook does."""
    repo, env = specs_repo
    (repo / "backup").mkdir()
    _plaintext_copy(EXAMPLES / "bright-smiles.yaml", repo / "backup" / "bright-smiles.yaml")
    _git(repo, env, "add", ".")
    run = _pre_commit(repo, env)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "backup/bright-smiles.yaml: spec.credentials.vapi.apiKey: plaintext secret" in (
        run.stdout
    )
    (validate,) = [line for line in run.stdout.splitlines() if line.startswith("reconciler")]
    assert validate.endswith("Passed")


def test_an_age_identity_is_refused(specs_repo: tuple[Path, dict[str, str]]) -> None:
    repo, env = specs_repo
    shutil.copy(EXAMPLES / "demo.agekey", repo / "age.key")
    _git(repo, env, "add", ".")
    run = _pre_commit(repo, env)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "age.key: an age identity" in run.stdout
    (key,) = [
        line for line in (EXAMPLES / "demo.agekey").read_text().splitlines() if "SECRET" in line
    ]
    assert key not in run.stdout + run.stderr, "the key itself is never printed"
