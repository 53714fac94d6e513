"""`apply PATH` records the git revision of the working tree holding PATH, as `serve --git-url`
records the commit it fetched: `git rev-parse HEAD`, plus `-dirty` when the specs differ from
it (modified, staged or untracked); nothing outside a git work tree."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from reconciler.spec.git import worktree_revision
from tests.helpers import SpecDir, git, org_doc
from tests.helpers.serve import edit_spec, orgs_by_slug


def _revisions(database_url: str, slug: str) -> tuple[Any, Any]:
    row = orgs_by_slug(database_url)[slug]
    return row["last_attempted_revision"], row["last_applied_revision"]


def test_apply_records_the_work_trees_commit_and_marks_it_dirty(
    cli: Any,
    tmp_path: Path,
    age_identity: tuple[Path, str],
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SOPS_AGE_KEY_FILE", str(age_identity[0]))
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "--quiet", "--initial-branch", "main")
    specs = SpecDir(repo / "specs", age_identity[1])
    path = specs.write(org_doc("acme"))
    (repo / "README").write_text("not a spec\n")
    git(repo, "add", "specs")
    git(repo, "commit", "--quiet", "-m", "acme")
    head = git(repo, "rev-parse", "HEAD")

    # a change outside the specs folder does not make the specs dirty
    assert cli("apply", str(specs.root)).code == 0
    assert _revisions(database_url, "acme") == (head, head)

    edit_spec(path, "Hello!", "Hello, uncommitted")
    assert worktree_revision(specs.root) == f"{head}-dirty"
    assert worktree_revision(path) == f"{head}-dirty"  # one file given: that file
    assert cli("apply", str(specs.root)).code == 0
    assert _revisions(database_url, "acme") == (f"{head}-dirty", f"{head}-dirty")

    git(repo, "commit", "--quiet", "-am", "greets differently")
    second = git(repo, "rev-parse", "HEAD")
    specs.write(org_doc("beta"))  # untracked: dirty again
    assert worktree_revision(specs.root) == f"{second}-dirty"
    git(repo, "add", "specs")
    git(repo, "commit", "--quiet", "-m", "beta")
    third = git(repo, "rev-parse", "HEAD")
    assert cli("apply", str(specs.root)).code == 0
    assert _revisions(database_url, "acme") == (third, third)
    assert _revisions(database_url, "beta") == (third, third)
    status = cli("status", "--org", "acme")
    assert third[:7] in status.out, status.out


def test_outside_a_work_tree_no_revision_is_recorded(
    cli: Any, specs: SpecDir, database_url: str
) -> None:
    specs.write(org_doc("acme"))
    assert worktree_revision(specs.root) is None
    assert cli("apply", str(specs.root)).code == 0
    assert _revisions(database_url, "acme") == (None, None)


def test_a_work_tree_without_a_commit_records_none(tmp_path: Path) -> None:
    git(tmp_path, "init", "--quiet")
    (tmp_path / "acme.yaml").write_text("x: 1\n")
    assert worktree_revision(tmp_path) is None
