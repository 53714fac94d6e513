"""Hostile spec files: each one stays a few one-line problems about that file, costs little, and
never stops the other files. The committed corpus is tests/fixtures/hostile/ (see its README);
files over 1 MiB, symlinks, FIFOs and file names with control characters are made here."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import threading
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.cli.main import main
from reconciler.errors import DecryptionError
from reconciler.secrets import sops
from reconciler.spec import loader
from reconciler.spec.loader import (
    MAX_DEPTH,
    MAX_PROBLEMS_PER_FILE,
    MAX_SPEC_BYTES,
    LoadResult,
    Problem,
    SpecFile,
    load_tree,
    parse_yaml,
    slugs_filter,
    validate_tree,
)
from tests.helpers import FIXTURES, SpecDir, org_doc

CORPUS = FIXTURES / "hostile"

# Each corpus file, and what its problems must say (every problem names that file).
EXPECTED: dict[str, str] = {
    "alias-bomb.yaml": "YAML aliases are not allowed in spec files (line 15)",
    "binary.yaml": "YAML type !!binary is not allowed in spec files (line 13)",
    "bool-key.yaml": "mapping keys must be strings",
    "comments-only.yaml": "expected a mapping at the top level",
    "complex-key.yaml": "mapping keys must be strings",
    "control-char.yaml": "character #x001b is not allowed",
    "date-key.yaml": "mapping keys must be strings",
    "deep-block-map.yaml": f"nested deeper than {MAX_DEPTH} levels (line 74)",
    "deep-in-assistant.yaml": f"nested deeper than {MAX_DEPTH} levels (line 13)",
    "deep-list.yaml": f"nested deeper than {MAX_DEPTH} levels (line 13)",
    "deep-map.yaml": f"nested deeper than {MAX_DEPTH} levels (line 13)",
    "duplicate-key-escape.yaml": "invalid YAML (line 15): duplicate key",
    "empty.yaml": "expected a mapping at the top level",
    "escape-in-field.yaml": "Extra inputs are not permitted",
    "huge-float.yaml": "not a finite number",
    "huge-int.yaml": "integer too long (line 13)",
    "invalid-utf8.yaml": "not valid UTF-8 (line 13)",
    "merge-inline.yaml": "YAML merge keys (<<) are not allowed in spec files (line 14)",
    "merge-key.yaml": "YAML aliases are not allowed in spec files (line 15)",
    "multi-document.yaml": "more than one YAML document",
    "non-finite.yaml": "not a finite number",
    "non-string-keys.yaml": "mapping keys must be strings: quote the key '1'",
    "null-document.yaml": "expected a mapping at the top level",
    "null-key.yaml": "mapping keys must be strings",
    "omap.yaml": "YAML type !!omap is not allowed",
    "plaintext-credential.yaml": "",  # checked in its own test
    "python-tag.yaml": "could not determine a constructor",
    "recursive-alias.yaml": "YAML aliases are not allowed in spec files (line 13)",
    "scalar-document.yaml": "expected a mapping at the top level",
    "set.yaml": "YAML type !!set is not allowed",
    "tabs.yaml": "found character '\\t' that cannot start any token",
    "top-level-list.yaml": "expected a mapping at the top level",
    "unclosed-flow.yaml": "invalid YAML (line 14)",
    "undefined-alias.yaml": "YAML aliases are not allowed in spec files (line 13)",
    "unknown-tag.yaml": "could not determine a constructor for the tag '!vault'",
    "utf16.yaml": "not valid UTF-8 (line 1)",
}


WATCHDOG_S = 30


@pytest.fixture(autouse=True)
def watchdog() -> Iterator[None]:
    """A hostile file that a missing bound lets through can cost hours (the alias bomb expands
    to 9^9 leaves): fail the test after WATCHDOG_S instead of hanging the suite."""

    def expire(_signum: int, _frame: object) -> None:
        pytest.fail(f"took over {WATCHDOG_S}s: a bound is missing")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, WATCHDOG_S)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def good_doc(slug: str = "good") -> dict[str, Any]:
    """Valid without sops: no credentials, no assistants."""
    doc = org_doc(slug)
    doc["spec"] = {}
    return doc


def write_good(folder: Path, slug: str = "good") -> Path:
    path = folder / f"{slug}.yaml"
    path.write_text(yaml.safe_dump(good_doc(slug), sort_keys=False))
    return path


def assert_one_line(problem: Problem) -> str:
    text = str(problem)
    assert text.isprintable(), repr(text)  # no newline, escape, bidi override, separator
    assert isinstance(problem.path, Path)
    return text


def problems_by_file(result: LoadResult) -> dict[str, list[Problem]]:
    out: dict[str, list[Problem]] = {}
    for p in result.problems:
        out.setdefault(p.path.name, []).append(p)
    return out


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - t0


def cpu_timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """The CPU time of `fn` in this process: what a bound on work means, whatever else the
    machine's cores are doing (a wall-clock bound fails under a loaded test run)."""
    t0 = time.process_time()
    result = fn()
    return result, time.process_time() - t0


# -- the committed corpus ----------------------------------------------------------------------


def test_corpus_is_what_the_tests_expect() -> None:
    assert {p.name for p in CORPUS.glob("*.yaml")} == set(EXPECTED)
    assert all(p.stat().st_size < 16 * 1024 for p in CORPUS.glob("*.yaml"))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_hostile_file_is_reported_alone(name: str, tmp_path: Path) -> None:
    folder = tmp_path / "specs"
    folder.mkdir()
    hostile = folder / name
    shutil.copyfile(CORPUS / name, hostile)
    good = write_good(folder)

    result, took = timed(lambda: validate_tree(folder))

    assert [s.path for s in result.specs] == [good]
    assert result.problems
    assert {p.path for p in result.problems} == {hostile}
    assert result.failed_files == [hostile]
    assert len(result.problems) <= MAX_PROBLEMS_PER_FILE + 1
    for problem in result.problems:
        text = assert_one_line(problem)
        assert re.match(rf"{re.escape(str(hostile))}(?::\d+:\d+)?: ", text), text
    assert any(EXPECTED[name] in p.message for p in result.problems), [
        str(p) for p in result.problems
    ]
    assert took < 5, f"{name}: {took:.2f}s"  # a sanity bound, not a benchmark


def test_alias_bomb_costs_milliseconds(tmp_path: Path) -> None:
    shutil.copyfile(CORPUS / "alias-bomb.yaml", tmp_path / "alias-bomb.yaml")
    result, took = cpu_timed(lambda: validate_tree(tmp_path))
    assert [p.message for p in result.problems] == [
        "YAML aliases are not allowed in spec files (line 15)"
    ]
    assert took < 1.0, f"{took:.3f}s"
    # a much larger bomb (9 more levels, 9^18 leaves if expanded) costs the same
    levels = "".join(f"l{i + 1}: &l{i + 1} [{', '.join([f'*l{i}'] * 9)}]\n" for i in range(18))
    (tmp_path / "alias-bomb.yaml").write_text('l0: &l0 ["lol"]\n' + levels)
    result, took = cpu_timed(lambda: validate_tree(tmp_path))
    assert [p.message for p in result.problems] == [
        "YAML aliases are not allowed in spec files (line 2)"
    ]
    assert took < 1.0, f"{took:.3f}s"


def test_non_finite_numbers_name_their_fields(tmp_path: Path) -> None:
    shutil.copyfile(CORPUS / "non-finite.yaml", tmp_path / "non-finite.yaml")
    result = validate_tree(tmp_path)
    assert [(p.field, p.message) for p in result.problems] == [
        ("spec.assistants.inbound.metadata.weights[1]", "not a finite number"),
        ("spec.assistants.inbound.model.maxTokens", "not a finite number"),
        ("spec.assistants.inbound.model.temperature", "not a finite number"),
    ]


def test_escapes_in_keys_are_shown_escaped(tmp_path: Path) -> None:
    for name in ("escape-in-field.yaml", "duplicate-key-escape.yaml"):
        shutil.copyfile(CORPUS / name, tmp_path / name)
    result = validate_tree(tmp_path)
    by_file = problems_by_file(result)
    (field,) = by_file["escape-in-field.yaml"]
    assert "\x1b" in field.field  # the Problem keeps the real key...
    assert "\\x1b]0;owned\\x07\\x1b[2J\\x0afake.yaml: ok\\u2028\\u202e" in str(
        field
    )  # ...shown safe
    (dup,) = by_file["duplicate-key-escape.yaml"]
    assert "duplicate key 'x\\x1b[31m\\u202e'" in str(dup)


def test_plaintext_credentials_are_named_never_shown(tmp_path: Path) -> None:
    shutil.copyfile(CORPUS / "plaintext-credential.yaml", tmp_path / "plaintext-credential.yaml")
    result = validate_tree(tmp_path)
    assert sorted((p.field, p.message) for p in result.problems) == [
        ("sops", "credentials are present but the file is not SOPS-encrypted"),
        ("spec.credentials.vapi.apiKey", "plaintext secret: encrypt this file with sops"),
        ("spec.credentials.vapi.webhookSecret", "plaintext secret: encrypt this file with sops"),
    ]
    assert "PLAINTEXT" not in "\n".join(str(p) for p in result.problems)
    assert result.failed_files == [tmp_path / "plaintext-credential.yaml"]
    assert len(result.bad_paths) == 1


def test_load_tree_on_the_corpus(specs: SpecDir, monkeypatch: pytest.MonkeyPatch) -> None:
    for hostile in CORPUS.glob("*.yaml"):
        shutil.copyfile(hostile, specs.root / hostile.name)
    api_key = "sk-corpus-5d1f0e77"
    good = specs.write(org_doc("good-org", api_key=api_key))
    decrypted: list[Path] = []
    real = sops.decrypt_bytes

    def spy(path: Path, data: bytes) -> bytes:
        decrypted.append(path)
        return real(path, data)

    result = load_tree(specs.root, decrypt=spy)

    assert decrypted == [good]  # no hostile file ever reaches sops
    assert [s.path for s in result.specs] == [good]
    vapi = result.specs[0].org.spec.credentials.vapi
    assert vapi is not None
    assert vapi.api_key.get_secret_value() == api_key
    assert {p.path.name for p in result.problems} == set(EXPECTED)
    for problem in result.problems:
        assert_one_line(problem)


def test_cli_validate_on_the_corpus(capsys: pytest.CaptureFixture[str]) -> None:
    expected = [str(p) for p in validate_tree(CORPUS).problems]
    code = main(["validate", str(CORPUS)])
    out, err = capsys.readouterr()
    assert code == 1
    assert "Traceback" not in out + err
    assert out.splitlines() == expected
    assert len(expected) >= len(EXPECTED)
    assert all(line.isprintable() for line in out.splitlines())
    assert err.strip() and all(line.isprintable() for line in err.splitlines())


# -- generated: too large, too many, too long --------------------------------------------------


def test_file_over_the_size_limit_is_refused(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_bytes(yaml.safe_dump(good_doc("big")).encode() + b"#" * MAX_SPEC_BYTES)
    write_good(tmp_path)
    result, took = cpu_timed(lambda: validate_tree(tmp_path))
    assert [str(p) for p in result.problems] == [f"{big}: larger than 1 MiB: refused"]
    assert [s.path.name for s in result.specs] == ["good.yaml"]
    assert took < 2


def test_sparse_huge_file_is_refused_by_its_size(tmp_path: Path) -> None:
    huge = tmp_path / "huge.yaml"
    with huge.open("wb") as f:
        f.truncate(64 * 1024**3)  # 64 GiB, sparse: reading it would take minutes
    result, took = cpu_timed(lambda: validate_tree(tmp_path))
    assert [p.message for p in result.problems] == ["larger than 1 MiB: refused"]
    assert took < 1


def test_a_file_growing_past_its_stat_size_is_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fstat said small, the content is not: at most MAX_SPEC_BYTES + 1 bytes are read."""
    grown = tmp_path / "grown.yaml"
    grown.write_bytes(b"#" * (3 * MAX_SPEC_BYTES))
    reads: list[int] = []

    def fstat(fd: int) -> os.stat_result:
        st = os.fstat(fd)
        fields = list(st)
        fields[stat.ST_SIZE] = 10
        return os.stat_result(fields)

    def read(fd: int, n: int) -> bytes:
        reads.append(n)
        return os.read(fd, n)

    fake_os = types.SimpleNamespace(**{**vars(os), "fstat": fstat, "read": read})
    monkeypatch.setattr(loader, "os", fake_os)
    result = validate_tree(tmp_path)
    assert [p.message for p in result.problems] == ["larger than 1 MiB: refused"]
    assert sum(reads) == MAX_SPEC_BYTES + 1


def test_file_of_exactly_the_limit_is_read(tmp_path: Path) -> None:
    text = yaml.safe_dump(good_doc("edge")).encode()
    (tmp_path / "edge.yaml").write_bytes(
        text + b"\n" + b"#" * (MAX_SPEC_BYTES - len(text) - 2) + b"\n"
    )
    assert (tmp_path / "edge.yaml").stat().st_size == MAX_SPEC_BYTES
    result = validate_tree(tmp_path)
    assert result.problems == []
    assert [s.path.name for s in result.specs] == ["edge.yaml"]


def test_ten_thousand_keys(tmp_path: Path, specs: SpecDir) -> None:
    # at the top level: 10,000 unknown fields, listed up to the cap, then one more line
    doc = good_doc("many")
    doc.update({f"k{i}": i for i in range(10_000)})
    (tmp_path / "many.yaml").write_text(yaml.safe_dump(doc))
    result, took = cpu_timed(lambda: validate_tree(tmp_path))
    assert len(result.problems) == MAX_PROBLEMS_PER_FILE + 1
    assert result.problems[-1].message == (
        f"... and {10_000 - MAX_PROBLEMS_PER_FILE} more problem(s) in this file"
    )
    assert result.failed_files == [tmp_path / "many.yaml"]
    assert took < 5

    # inside an assistant's metadata they are just data: valid, and it decrypts
    valid = org_doc("wide")
    valid["spec"]["assistants"]["inbound"]["metadata"] = {f"k{i}": i for i in range(10_000)}
    specs.write(valid)
    loaded = load_tree(specs.root)
    assert loaded.problems == []
    inbound = loaded.specs[0].org.spec.assistants.inbound
    assert inbound is not None
    assert len(json.dumps(inbound.vapi_fields(), sort_keys=True)) > 100_000


def test_very_long_line(tmp_path: Path) -> None:
    doc = good_doc("long")
    doc["metadata"]["name"] = "n" * 900_000
    (tmp_path / "long.yaml").write_text(yaml.safe_dump(doc, width=2**31))
    result, took = cpu_timed(lambda: validate_tree(tmp_path))
    assert [p.field for p in result.problems] == ["metadata.name"]
    assert "200 characters" in result.problems[0].message
    assert took < 5


def test_long_keys_are_cut_in_problem_lines(tmp_path: Path) -> None:
    doc = good_doc("longkey")
    doc["spec"] = {"x" * 1000: 1}
    (tmp_path / "longkey.yaml").write_text(yaml.safe_dump(doc, width=2**31))
    (problem,) = validate_tree(tmp_path).problems
    assert problem.field == "spec." + "x" * 1000
    assert len(str(problem)) < len(str(tmp_path)) + 400


# -- depth: the bound itself -------------------------------------------------------------------


def test_depth_bound_is_exact() -> None:
    at_limit = "a: " + "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1) + "\n"
    doc, problems = parse_yaml(Path("x.yaml"), at_limit)
    assert problems == []
    assert doc is not None

    over = "a: " + "[" * MAX_DEPTH + "]" * MAX_DEPTH + "\n"
    doc, problems = parse_yaml(Path("x.yaml"), over)
    assert doc is None
    assert [p.message for p in problems] == [f"nested deeper than {MAX_DEPTH} levels (line 1)"]


@pytest.mark.parametrize("depth", [200, 1_000, 100_000])
def test_any_depth_is_one_problem(depth: int) -> None:
    for text in ("k: " + "[" * depth + "]" * depth, "k: " + "{a: " * depth + "1" + "}" * depth):
        (result, took) = cpu_timed(lambda t=text: parse_yaml(Path("x.yaml"), t))
        doc, problems = result
        assert doc is None
        assert [p.message for p in problems] == [f"nested deeper than {MAX_DEPTH} levels (line 1)"]
        assert took < 1  # about 0.3 s of CPU at any depth: the nesting is cut, not walked


# -- values that must round-trip through JSON --------------------------------------------------


def test_json_values_round_trip(specs: SpecDir) -> None:
    """Dates stay the text written, YAML 1.1's `on`/`yes` keys stay strings (as sops reads
    them), and the result dumps with sort_keys. Edited by hand after encryption, as
    mac_only_encrypted allows."""
    doc = org_doc("dates")
    inbound = doc["spec"]["assistants"]["inbound"]
    inbound["metadata"] = {"launched": "DATE", "review": "STAMP"}
    inbound["hooks"] = [{"on": "call.ending", "do": [{"type": "say", "exact": "Bye"}]}]
    path = specs.write(doc)
    text = path.read_text()
    for old, new in (("DATE", "2024-01-31"), ("STAMP", "2024-01-31 10:00:00"), ('"on"', "on")):
        assert old in text
        text = text.replace(old, new)
    path.write_text(text)

    for result in (validate_tree(specs.root), load_tree(specs.root)):
        assert result.problems == []
        (spec,) = result.specs
        assert spec.org.spec.assistants.inbound is not None
        fields = spec.org.spec.assistants.inbound.vapi_fields()
        assert fields["metadata"] == {"launched": "2024-01-31", "review": "2024-01-31 10:00:00"}
        assert fields["hooks"][0]["on"] == "call.ending"
        json.dumps(fields, sort_keys=True, allow_nan=False)


def test_non_finite_credential_after_decryption(specs: SpecDir) -> None:
    """sops keeps a value's type: a `.nan` credential decrypts to a float, refused by field."""
    bad = specs.write(org_doc("nan-key", api_key=float("nan")))  # type: ignore[arg-type]
    good = specs.write(org_doc("fine"))
    assert "type:float" in bad.read_text()
    result = load_tree(specs.root)
    assert [s.path for s in result.specs] == [good]
    assert [(p.path, p.field, p.message) for p in result.problems] == [
        (bad, "spec.credentials.vapi.apiKey", "not a finite number")
    ]


# -- discovery ---------------------------------------------------------------------------------


def test_yml_and_any_case(tmp_path: Path) -> None:
    write_good(tmp_path, "plain")
    (tmp_path / "short.yml").write_text(yaml.safe_dump(good_doc("short")))
    (tmp_path / "upper.YAML").write_text(yaml.safe_dump(good_doc("upper")))
    (tmp_path / "mixed.Yml").write_text(yaml.safe_dump(good_doc("mixed")))
    (tmp_path / ".sops.yml").write_text("creation_rules: []\n")
    (tmp_path / ".SOPS.YAML").write_text("creation_rules: []\n")
    (tmp_path / "notes.yaml.bak").write_text("not: a spec\n")
    (tmp_path / "README.md").write_text("# specs\n")
    result = validate_tree(tmp_path)
    assert result.problems == []
    assert sorted(s.path.name for s in result.specs) == [
        "mixed.Yml",
        "plain.yaml",
        "short.yml",
        "upper.YAML",
    ]
    assert sorted(s.org.metadata.slug for s in result.specs) == ["mixed", "plain", "short", "upper"]


def test_no_spec_files_message(tmp_path: Path) -> None:
    (tmp_path / ".sops.yml").write_text("creation_rules: []\n")
    (problem,) = validate_tree(tmp_path).problems
    assert problem.message == "no spec files found (*.yaml, *.yml)"


def test_file_names_with_control_characters(tmp_path: Path) -> None:
    name = "evil\x1b[31m\n\u202e\u2028.yaml"
    (tmp_path / name).write_text(yaml.safe_dump(good_doc("evil")))
    (tmp_path / "dup\x07.yaml").write_text(yaml.safe_dump(good_doc("dup")))
    result = validate_tree(tmp_path)
    assert result.specs == []
    assert {p.path.name for p in result.problems} == {name, "dup\x07.yaml"}
    for problem in result.problems:
        text = assert_one_line(problem)
        assert "\\x1b[31m\\x0a\\u202e\\u2028" in text or "dup\\x07" in text


def test_symlink_to_a_file_outside_is_refused_unopened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "leak.yaml"
    secret.write_text(yaml.safe_dump(good_doc("leak")))
    root = tmp_path / "specs"
    root.mkdir()
    write_good(root)
    (root / "leak.yaml").symlink_to(secret)
    (root / "README").symlink_to(outside / "leak.yaml")  # not a spec name: ignored

    opened: list[str] = []
    real_open = os.open

    def spy_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        opened.append(str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(loader, "os", types.SimpleNamespace(**{**vars(os), "open": spy_open}))
    result = validate_tree(root)
    assert [str(p) for p in result.problems] == [
        f"{root / 'leak.yaml'}: symlink to outside the specs directory: refused"
    ]
    assert [s.path.name for s in result.specs] == ["good.yaml"]
    assert str(secret) not in opened
    assert opened == [str(root.resolve() / "good.yaml")]


def test_symlink_to_a_folder_outside_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "other.yaml").write_text(yaml.safe_dump(good_doc("other")))
    root = tmp_path / "specs"
    root.mkdir()
    write_good(root)
    (root / "shared").symlink_to(outside, target_is_directory=True)
    (root / "etc").symlink_to("/etc", target_is_directory=True)
    result = validate_tree(root)
    assert sorted((p.path.name, p.message) for p in result.problems) == [
        ("etc", "symlink to outside the specs directory: refused"),
        ("shared", "symlink to outside the specs directory: refused"),
    ]
    assert [s.path.name for s in result.specs] == ["good.yaml"]


def test_symlink_loops_and_dangling_links(tmp_path: Path) -> None:
    write_good(tmp_path)
    (tmp_path / "a.yaml").symlink_to(tmp_path / "b.yaml")
    (tmp_path / "b.yaml").symlink_to(tmp_path / "a.yaml")
    (tmp_path / "gone.yaml").symlink_to(tmp_path / "nowhere.yaml")
    (tmp_path / "self").symlink_to("self")
    result, took = cpu_timed(lambda: validate_tree(tmp_path))
    messages = {p.path.name: p.message for p in result.problems}
    assert set(messages) == {"a.yaml", "b.yaml", "gone.yaml", "self"}
    assert messages["gone.yaml"] == "dangling symlink: refused"
    assert messages["a.yaml"] == messages["b.yaml"] == "symlink loop: refused"
    assert messages["self"] == "symlink loop: refused"
    assert len(result.problems) == 4
    assert [s.path.name for s in result.specs] == ["good.yaml"]
    assert took < 1


def test_a_folder_reached_twice_is_walked_once(tmp_path: Path) -> None:
    (tmp_path / "eu").mkdir()
    write_good(tmp_path / "eu", "acme")
    (tmp_path / "europe").symlink_to(tmp_path / "eu", target_is_directory=True)
    (tmp_path / "eu" / "again").symlink_to(tmp_path / "eu", target_is_directory=True)
    (tmp_path / "eu" / "up").symlink_to("..", target_is_directory=True)
    (tmp_path / "inside.yaml").symlink_to(tmp_path / "eu" / "acme.yaml")  # read as a copy
    result = validate_tree(tmp_path)
    # eu/acme.yaml and inside.yaml (slug mismatch); nothing under europe/ or again/ or up/
    assert {p.path.relative_to(tmp_path).as_posix() for p in result.problems} == {"inside.yaml"}
    assert [s.path.relative_to(tmp_path).as_posix() for s in result.specs] == ["eu/acme.yaml"]


def test_root_may_be_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    write_good(real)
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    result = validate_tree(tmp_path / "link")
    assert result.problems == []
    assert [s.path for s in result.specs] == [tmp_path / "link" / "good.yaml"]
    # and a single file given as the root
    assert [s.path for s in validate_tree(real / "good.yaml").specs] == [real / "good.yaml"]


def test_fifo_named_like_a_spec_does_not_block(tmp_path: Path) -> None:
    write_good(tmp_path)
    os.mkfifo(tmp_path / "x.yaml")
    os.mkfifo(tmp_path / "notes")  # not a spec name: ignored
    outcome: list[LoadResult] = []
    worker = threading.Thread(target=lambda: outcome.append(validate_tree(tmp_path)), daemon=True)
    worker.start()
    worker.join(timeout=10)
    if worker.is_alive():  # unblock it before failing
        with open(os.open(tmp_path / "x.yaml", os.O_WRONLY | os.O_NONBLOCK), "wb"):
            pass
        pytest.fail("validate_tree blocked on a FIFO")
    (result,) = outcome
    assert [(p.path.name, p.message) for p in result.problems] == [
        ("x.yaml", "not a regular file: refused")
    ]
    assert [s.path.name for s in result.specs] == ["good.yaml"]


def test_unreadable_file_and_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_good(tmp_path)
    write_good(tmp_path, "locked")
    (tmp_path / "sealed").mkdir()
    write_good(tmp_path / "sealed", "inner")
    real_open, real_scandir = os.open, os.scandir

    def deny_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if Path(path).name == "locked.yaml":
            raise PermissionError(13, "Permission denied")
        return real_open(path, flags, *args, **kwargs)

    def deny_scandir(path: Any) -> Any:
        if Path(path).name == "sealed":
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)

    fake = types.SimpleNamespace(**{**vars(os), "open": deny_open, "scandir": deny_scandir})
    monkeypatch.setattr(loader, "os", fake)
    result = validate_tree(tmp_path)
    assert sorted(str(p) for p in result.problems) == [
        f"{tmp_path / 'locked.yaml'}: cannot read: Permission denied",
        f"{tmp_path / 'sealed'}: cannot read directory: Permission denied",
    ]
    assert [s.path.name for s in result.specs] == ["good.yaml"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a mode-000 file anyway")
def test_mode_000_file(tmp_path: Path) -> None:
    locked = write_good(tmp_path, "locked")
    locked.chmod(0)
    (problem,) = validate_tree(tmp_path).problems
    assert problem.message == "cannot read: Permission denied"


def test_a_file_swapped_after_the_walk_is_refused(tmp_path: Path) -> None:
    path = write_good(tmp_path)
    (found,), _ = loader._walk(tmp_path)
    replacement = tmp_path / "replacement"
    replacement.write_text(yaml.safe_dump(good_doc("good")))
    os.replace(replacement, path)
    data, problems = loader._read_spec(found.path, found.real, found.ident)
    assert data is None
    assert [p.message for p in problems] == ["the file changed while it was read: refused"]


# -- decryption --------------------------------------------------------------------------------


def test_sops_decrypts_the_validated_bytes_not_the_path(specs: SpecDir) -> None:
    api_key = "sk-validated-41c9e2"
    path = specs.write(org_doc("acme", api_key=api_key))
    validated = path.read_bytes()
    swapped = org_doc("acme", api_key="sk-swapped-in-0000")
    swapped["spec"]["assistants"]["inbound"]["firstMessage"] = "Swapped!"
    real = sops.decrypt_bytes

    def swap_then_decrypt(p: Path, data: bytes) -> bytes:
        assert data == validated
        specs.write(swapped)  # the file changes between validation and decryption
        return real(p, data)

    result = load_tree(specs.root, decrypt=swap_then_decrypt)
    assert result.problems == []
    org = result.specs[0].org
    assert org.spec.credentials.vapi is not None
    assert org.spec.credentials.vapi.api_key.get_secret_value() == api_key
    assert org.spec.assistants.inbound is not None
    assert org.spec.assistants.inbound.firstMessage == "Hello!"


def test_decrypt_bytes_reads_stdin_and_keeps_one_line_errors(specs: SpecDir) -> None:
    path = specs.write(org_doc("acme", api_key="sk-stdin-77aa"))
    data = path.read_bytes()
    nowhere = specs.root / "not-there.yaml"
    plain = yaml.safe_load(sops.decrypt_bytes(nowhere, data))
    assert plain["spec"]["credentials"]["vapi"]["apiKey"] == "sk-stdin-77aa"
    assert yaml.safe_load(sops.decrypt_file(path)) == plain  # the old entry point still works

    cases = {
        b"foo: bar\n": "it is not SOPS-encrypted (no sops metadata)",
        b"foo: [\n": "it is not valid YAML",
    }
    for payload, reason in cases.items():
        with pytest.raises(DecryptionError) as caught:
            sops.decrypt_bytes(nowhere, payload)
        assert str(caught.value) == f"{nowhere}: cannot decrypt: {reason}"


def test_sops_output_is_bounded(specs: SpecDir, monkeypatch: pytest.MonkeyPatch) -> None:
    specs.write(org_doc("acme"))
    monkeypatch.setattr(sops, "MAX_OUTPUT_BYTES", 100)
    result = load_tree(specs.root)
    assert result.specs == []
    assert [p.message for p in result.problems] == [
        "sops's output is larger than 100 bytes: refused"
    ]


def test_sops_timeout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "slow-sops"
    fake.write_text("#!/bin/sh\nexec sleep 30\n")
    fake.chmod(0o755)
    monkeypatch.setattr(sops, "sops_binary", lambda: str(fake))
    monkeypatch.setattr(sops, "_TIMEOUT_S", 0.5)
    with pytest.raises(DecryptionError) as caught:
        timed(lambda: sops.decrypt_bytes(Path("acme.yaml"), b"x: 1\n" * 100_000))
    assert str(caught.value) == "acme.yaml: sops timed out after 0.5s"


def test_endless_sops_output_is_cut(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "chatty-sops"
    fake.write_text("#!/bin/sh\nexec yes 'a: 1'\n")
    fake.chmod(0o755)
    monkeypatch.setattr(sops, "sops_binary", lambda: str(fake))
    t0 = time.perf_counter()
    with pytest.raises(DecryptionError) as caught:
        sops.decrypt_bytes(Path("a.yaml"), b"")
    took = time.perf_counter() - t0
    assert str(caught.value) == "a.yaml: sops's output is larger than 4194304 bytes: refused"
    assert took < 10


@pytest.mark.parametrize(
    ("output", "message"),
    [
        (b"spec: " + b"[" * 5000 + b"]" * 5000, f"nested deeper than {MAX_DEPTH} levels (line 1)"),
        (b"a: &a [1]\nb: *a\n", "YAML aliases are not allowed in spec files (line 2)"),
        (b"spec: {credentials: \xff}\n", "not valid UTF-8 (line 1)"),
        (b"a: 1\n---\nb: 2\n", "invalid YAML (line 2): more than one YAML document in the file"),
        (b"apiVersion: reconciler/v1\n", "missing from sops's output"),
    ],
)
def test_hostile_sops_output_is_one_problem(specs: SpecDir, output: bytes, message: str) -> None:
    bad = specs.write(org_doc("acme"))
    result = load_tree(specs.root, decrypt=lambda _p, _d: output)
    assert result.specs == []
    assert [p.path for p in result.problems] == [bad]
    assert result.problems[0].message == message


@pytest.mark.parametrize("error", [RecursionError, MemoryError, ValueError, OverflowError])
def test_errors_while_checking_one_file_stay_its_problem(
    specs: SpecDir, error: type[BaseException]
) -> None:
    bad = specs.write(org_doc("acme"))
    good = specs.write(org_doc("globex"))
    real = sops.decrypt_bytes

    def decrypt(path: Path, data: bytes) -> bytes:
        if path == bad:
            raise error("boom sk-secret-in-message")
        return real(path, data)

    result = load_tree(specs.root, decrypt=decrypt)
    assert [s.path for s in result.specs] == [good]
    (problem,) = result.problems
    assert problem.path == bad
    assert "sk-secret" not in str(problem)
    assert_one_line(problem)


@pytest.mark.parametrize("error", [RecursionError, MemoryError, ValueError, OverflowError])
def test_errors_while_validating_one_file_stay_its_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: type[BaseException]
) -> None:
    bad = write_good(tmp_path, "bad")
    good = write_good(tmp_path)
    real = loader._parse_typed  # the parse `validate` makes of each file

    def parse(path: Path, text: str | bytes) -> Any:
        if path == bad:
            raise error("boom")
        return real(path, text)

    monkeypatch.setattr(loader, "_parse_typed", parse)
    result = validate_tree(tmp_path)
    assert [s.path for s in result.specs] == [good]
    (problem,) = result.problems
    assert problem.path == bad
    assert_one_line(problem)


def test_a_utf8_bom_is_fine(specs: SpecDir) -> None:
    path = specs.write(org_doc("bom", api_key="sk-bom-3f2a"))
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    for result in (validate_tree(specs.root), load_tree(specs.root)):
        assert result.problems == []
        assert [s.path for s in result.specs] == [path]
    vapi = result.specs[0].org.spec.credentials.vapi
    assert vapi is not None
    assert vapi.api_key.get_secret_value() == "sk-bom-3f2a"


# -- the summary and --org ---------------------------------------------------------------------


def test_failed_files_counts_each_file_once(tmp_path: Path) -> None:
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    result = LoadResult([], [Problem(b, "x", "1"), Problem(a, "y", "2"), Problem(b, "z", "3")])
    assert result.failed_files == [a, b]
    assert result.bad_paths == {a, b}


def test_slugs_filter() -> None:
    org = {slug: loader.Organization.model_validate(good_doc(slug)) for slug in ("acme", "globex")}
    loaded = LoadResult(
        [SpecFile(Path(f"/s/{slug}.yaml"), o) for slug, o in org.items()],
        [Problem(Path("/s/broken.yaml"), "", "bad"), Problem(Path("/s/other.yaml"), "", "bad")],
    )
    assert slugs_filter(loaded, []) is loaded
    only = slugs_filter(loaded, ["acme", "broken", "nope"])
    assert [s.path.name for s in only.specs] == ["acme.yaml"]
    assert [(str(p.path), p.message) for p in only.problems] == [
        ("/s/broken.yaml", "bad"),
        ("nope", "no spec with this slug"),
    ]


def test_problem_str_is_one_safe_line() -> None:
    problem = Problem(Path("a\x1b[2J\n.yaml"), "spec.\u202ex\r", "key 'x\x1b[31m'\u2028done")
    assert str(problem) == "a\\x1b[2J\\x0a.yaml: spec.\\u202ex\\x0d: key 'x\\x1b[31m'\\u2028done"
    assert problem.path == Path("a\x1b[2J\n.yaml")
