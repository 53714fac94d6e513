"""Status conditions, the spec cache (sops with a throwaway age key) and the git source (a local
repository), without a database. Status writes and the shared schedule in Postgres:
tests/integration/test_status_schedule.py."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from reconciler.cli.main import interval
from reconciler.controller import status
from reconciler.errors import DecryptionError
from reconciler.secrets import sops
from reconciler.spec.cache import SpecCache
from reconciler.spec.git import GitError, GitSource, shown_url
from reconciler.spec.loader import Outcome, Problem, load_tree
from tests.helpers import SpecDir, git, org_doc

# -- conditions ----------------------------------------------------------------------------------


def test_conditions_summaries() -> None:
    assert status.summary(status.ready({"update": 1})) == "Ready"
    assert status.ready({"update": 1})[0]["reason"] == "Applied"
    assert status.ready({}, ["Vapi does not keep x"])[0]["reason"] == "UpToDateWithWarnings"
    assert status.summary(status.failed("x")) == "Failed"
    assert status.summary(status.stalled("SpecInvalid", "x")) == "Stalled"
    long = status.failed("x" * 5000)
    assert len(long[0]["message"]) == status.MESSAGE_LIMIT


def test_stalled_files_name_known_orgs_only() -> None:
    problems = [
        Problem(Path("specs/acme.yaml"), "", "cannot decrypt: no age key can decrypt it"),
        Problem(Path("specs/acme.yaml"), "spec", "second problem"),
        Problem(Path("specs/newco.yaml"), "metadata.id", "not a uuid"),
    ]
    (only,) = status.stalled_files(problems, {"acme": "id-1"}, "rev")
    assert only.org_id == "id-1" and only.status == "Stalled" and only.revision == "rev"
    assert only.conditions[2]["reason"] == "DecryptionFailed"
    assert "specs/acme.yaml" in (only.message or "")


# -- spec cache ------------------------------------------------------------------------------


def test_cache_decrypts_a_file_once_per_content(specs: SpecDir) -> None:
    specs.write(org_doc("acme"))
    specs.write(org_doc("bravo"))
    calls: list[Path] = []

    def decrypt(path: Path, data: bytes) -> bytes:
        calls.append(path)
        return sops.decrypt_bytes(path, data)

    cache: SpecCache[Outcome] = SpecCache()
    first = load_tree(specs.root, decrypt, cache=cache)
    assert len(first.specs) == 2 and len(calls) == 2
    again = load_tree(specs.root, decrypt, cache=cache)
    assert len(calls) == 2  # unchanged: no sops
    assert [s.org for s in again.specs] == [s.org for s in first.specs]
    specs.write(org_doc("bravo"))  # new content
    load_tree(specs.root, decrypt, cache=cache)
    assert len(calls) == 3


def test_cache_keeps_failures_until_forgotten(specs: SpecDir, tmp_path: Path) -> None:
    specs.write(org_doc("acme"))
    calls = [0]

    def broken(path: Path, data: bytes) -> bytes:
        calls[0] += 1
        raise DecryptionError(f"{path}: cannot decrypt: no age key can decrypt it")

    cache: SpecCache[Outcome] = SpecCache()
    for _ in range(3):
        loaded = load_tree(specs.root, broken, cache=cache)
        assert not loaded.specs and loaded.problems
    assert calls[0] == 1
    assert cache.forget(lambda outcome: outcome[0] is not None) == 1
    load_tree(specs.root, broken, cache=cache)
    assert calls[0] == 2


def test_cache_is_bounded() -> None:
    cache: SpecCache[int] = SpecCache(max_entries=3)
    for i in range(10):
        cache.get_or_compute(Path(f"{i}"), "d", "s", lambda i=i: i)  # type: ignore[misc]
    assert len(cache) == 3
    assert cache.get_or_compute(Path("9"), "d", "s", lambda: -1) == 9


# -- git source ----------------------------------------------------------------------------------


def test_git_source_fetches_the_ref_and_follows_new_commits(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "specs").mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    (repo / "specs" / "a.yaml").write_text("one\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "one")
    source = GitSource(str(repo), "main", tmp_path / "data")
    first = source.fetch()
    assert first.commit == git(repo, "rev-parse", "HEAD")
    assert (first.root / "specs" / "a.yaml").read_text() == "one\n"
    (first.root / "specs" / "stray.yaml").write_text("left behind")
    (repo / "specs" / "a.yaml").write_text("two\n")
    git(repo, "commit", "-qam", "two")
    second = source.fetch()
    assert second.commit == git(repo, "rev-parse", "HEAD") != first.commit
    assert (second.root / "specs" / "a.yaml").read_text() == "two\n"
    assert not (second.root / "specs" / "stray.yaml").exists()  # exactly the commit's tree


def test_git_errors_are_one_line_without_the_password(tmp_path: Path) -> None:
    url = "https://user:s3cr3t-token@127.0.0.1:9/acme/specs.git"
    source = GitSource(url, "main", tmp_path / "data")
    with pytest.raises(GitError) as info:
        source.fetch()
    message = str(info.value)
    assert "s3cr3t-token" not in message
    assert "\n" not in message
    assert "user:***@127.0.0.1:9" in message
    assert shown_url("https://127.0.0.1/x.git") == "https://127.0.0.1/x.git"
    assert shown_url("https://ghp_T0KEN@github.com/o/r.git") == "https://***@github.com/o/r.git"
    with pytest.raises(GitError) as token_only:
        GitSource("https://ghp_T0KEN@127.0.0.1:9/o/r.git", "main", tmp_path / "d2").fetch()
    assert "ghp_T0KEN" not in str(token_only.value)
    with pytest.raises(GitError):
        GitSource("--upload-pack=evil", "main", tmp_path)


def test_serve_interval_is_at_least_a_second() -> None:
    assert interval("90s") == 90 and interval("1m") == 60
    for bad in ("0", "500ms", "soon"):
        with pytest.raises(argparse.ArgumentTypeError, match=r"shorter than 1s|not a duration"):
            interval(bad)
