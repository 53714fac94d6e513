"""The bad-input corpus (tests/fixtures/bad/, see its README; issue 8).

Each case alone: `reconciler validate` exits 1, every problem is one line naming the file (and
the field), no traceback, in bounded time and memory. All cases at once beside two good orgs:
`apply` converges the good orgs, reports every bad file in one line each, and writes nothing of
the broken ones to Postgres or to Vapi, run after run.
"""

from __future__ import annotations

import os
import re
import runpy
import shutil
import signal
import time
import tracemalloc
import types
import uuid
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from psycopg_pool import ConnectionPool

from reconciler.spec import loader
from reconciler.spec.loader import MAX_PROBLEMS_PER_FILE, MAX_SPEC_BYTES, validate_tree
from tests.helpers import (
    FIXTURES,
    Run,
    SpecDir,
    accounts,
    assert_no_traceback,
    org_doc,
    tagged,
    writes,
)

CORPUS = FIXTURES / "bad"
MANIFEST: dict[str, dict[str, Any]] = yaml.safe_load(
    (CORPUS / "expected.yaml").read_text(encoding="utf-8")
)
NOT_CASES = frozenset({"README.md", "make_corpus.py", "expected.yaml"})
MIN_CASES = 40

# Bounds for one case alone, with what was measured (warm, in-process):
# - Time: most cases take 3-10 ms; the slowest, `deep-nesting-flow` (1,000 `[` on one line),
#   ~0.13 s, because PyYAML's scanner looks up to 1,024 characters ahead for a possible simple
#   key before the depth bound can refuse: capped by that window (400,000 `[` cost the same).
#   2 s is 15x that, yet far below what a missing bound costs (the alias bomb expands to 9^9
#   leaves: minutes and gigabytes).
CASE_SECONDS = 2.0
# - Memory: the Python heap's peak above its start (tracemalloc) during one `validate`. Most
#   cases ~0.1-0.3 MiB, the 10 MB file ~0.11 MiB (refused by fstat, never read), the most
#   `deep-nesting-flow` ~0.95 MiB (the scanner's look-ahead tokens). 8 MiB is 8x that, and
#   still below what holding the 10 MB file even once would cost (10 MiB of bytes; decoded and
#   parsed, several times that), so reading it instead of refusing it by size fails here.
PEAK_BYTES = 8 * 1024 * 1024
TEN_MB = 10 * 1024 * 1024
# The apply over every case at once (90 bad files, two good orgs created in the emulator):
# measured ~0.35 s each run; 30 s only catches a hang or a per-file cost gone wrong.
APPLY_SECONDS = 30.0
WATCHDOG_S = 60


@cache
def corpus_script() -> dict[str, Any]:
    """make_corpus.py's globals (its `base`, `uid`, `control`, `outputs`), without running it."""
    return runpy.run_path(str(CORPUS / "make_corpus.py"), run_name="make_corpus")


@pytest.fixture(autouse=True)
def watchdog() -> Iterator[None]:
    """A bound that went missing (an alias bomb expanded, a FIFO opened for reading) would hang
    the suite: fail the test after WATCHDOG_S instead."""

    def expire(_signum: int, _frame: object) -> None:
        pytest.fail(f"took over {WATCHDOG_S}s: a bound is missing")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, WATCHDOG_S)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# -- the generated cases -----------------------------------------------------------------------


def valid_outside(path: Path, slug: str, n: int) -> None:
    """A spec valid without sops (no credentials, no assistants), out of the spec folder: it
    would become an org if a symlink to it were followed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "apiVersion": "reconciler/v1",
        "kind": "Organization",
        "metadata": {"id": corpus_script()["uid"](n), "slug": slug, "name": "Outside"},
        "spec": {},
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def make_10mb(folder: Path, _outside: Path) -> None:
    head = corpus_script()["base"]("file-10mb", 900).encode()
    line = b"#" * 99 + b"\n"
    (folder / "file-10mb.yaml").write_bytes(head + line * ((TEN_MB - len(head)) // 100 + 1))


def make_symlink_loop(folder: Path, _outside: Path) -> None:
    (folder / "symlink-loop-a.yaml").symlink_to("symlink-loop-b.yaml")
    (folder / "symlink-loop-b.yaml").symlink_to("symlink-loop-a.yaml")


def make_symlink_self(folder: Path, _outside: Path) -> None:
    (folder / "symlink-self.yaml").symlink_to("symlink-self.yaml")


def make_symlink_dangling(folder: Path, _outside: Path) -> None:
    (folder / "symlink-dangling.yaml").symlink_to("nowhere-at-all.yaml")


def make_symlink_outside(folder: Path, outside: Path) -> None:
    target = outside / "symlink-outside.yaml"
    valid_outside(target, "symlink-outside", 901)
    (folder / "symlink-outside.yaml").symlink_to(target)


def make_symlink_dir_outside(folder: Path, outside: Path) -> None:
    target = outside / "shared-specs"
    valid_outside(target / "shared-org.yaml", "shared-org", 902)
    (folder / "shared").symlink_to(target, target_is_directory=True)


def make_fifo(folder: Path, _outside: Path) -> None:
    os.mkfifo(folder / "fifo.yaml")


GENERATORS: dict[str, Callable[[Path, Path], None]] = {
    "file-10mb": make_10mb,
    "symlink-loop": make_symlink_loop,
    "symlink-self": make_symlink_self,
    "symlink-dangling": make_symlink_dangling,
    "symlink-outside": make_symlink_outside,
    "symlink-dir-outside": make_symlink_dir_outside,
    "fifo": make_fifo,
}


def place(name: str, folder: Path, outside: Path) -> list[Path]:
    """Puts case `name` in the spec folder `folder`; the paths it shows in problems."""
    case = MANIFEST[name]
    if case.get("generated"):
        GENERATORS[name](folder, outside)
    else:
        for f in case["files"]:
            dest = folder / f["name"]
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(CORPUS / f["fixture"], dest)
    return [folder / f["name"] for f in case["files"]]


def expected_prefix(folder: Path, f: dict[str, Any]) -> str:
    """How the problem line about file `f` starts, as a regex: `PATH:LINE:COL: FIELD: ` (the
    position when the file has the field, or a key above it) or `PATH: `."""
    field = f"{re.escape(f['field'])}: " if f["field"] is not None else ""
    return f"{re.escape(str(folder / f['name']))}{AT}: {field}"


AT = r"(?::\d+:\d+)?"
# Problems about a field that name no position: the file has no key for it (a top-level field
# missing, `sops` absent).
UNPLACED = {("api-version-missing", "apiVersion"), ("plaintext-credentials", "sops")}
POSITIONED = re.compile(r"^(?P<path>.+?):(?P<line>\d+):(?P<col>\d+): (?P<field>[^ ]+): ")


def assert_points_at_its_field(line: str) -> None:
    """A problem line's `LINE:COL` is in its file where a key of its field path is written
    (the field's own key, or the nearest above it that the file has)."""
    found = POSITIONED.match(line)
    if found is None:
        return
    text = Path(found["path"]).read_text(encoding="utf-8").splitlines()
    at = text[int(found["line"]) - 1][int(found["col"]) - 1 :]
    keys = re.findall(r"[^.\[\]]+", found["field"])
    assert any(at.startswith((k, f'"{k}"', f"'{k}'")) for k in keys), (line, at)


def timed(fn: Callable[[], Run]) -> tuple[Run, float]:
    """`fn()` and the CPU time this process spent on it: the bound is on work, whatever else
    the machine's cores do (a wall-clock bound failed once, 2.3 s, under a loaded run)."""
    t0 = time.process_time()
    run = fn()
    return run, time.process_time() - t0


def wall_timed(fn: Callable[[], Run]) -> tuple[Run, float]:
    """`fn()` and the seconds it took: for a bound that catches a hang, far above the work."""
    t0 = time.perf_counter()
    run = fn()
    return run, time.perf_counter() - t0


def traced_peak(fn: Callable[[], Run]) -> tuple[Run, int]:
    """`fn()` and the peak size of the Python heap above where it started (tracemalloc)."""
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        start, _ = tracemalloc.get_traced_memory()
        run = fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        if not was_tracing:
            tracemalloc.stop()
    return run, peak - start


# -- the corpus itself -------------------------------------------------------------------------


def test_the_manifest_lists_exactly_the_files_present() -> None:
    static = {n: c for n, c in MANIFEST.items() if not c.get("generated")}
    generated = {n for n, c in MANIFEST.items() if c.get("generated")}
    assert len(MANIFEST) >= MIN_CASES
    assert len(static) >= MIN_CASES
    listed = [f["fixture"] for c in static.values() for f in c["files"]]
    present = {p.name for p in CORPUS.iterdir()} - NOT_CASES
    assert len(listed) == len(set(listed)), "a fixture listed twice"
    assert sorted(present - set(listed)) == [], "files in the corpus that no case lists"
    assert sorted(set(listed) - present) == [], "files the manifest lists that are missing"
    assert generated == set(GENERATORS)
    for name, case in MANIFEST.items():
        assert case["kind"] and case["description"], name
        assert case["files"], name
        for f in case["files"]:
            assert set(f) <= {"fixture", "name", "message", "field"}, name
            assert f["message"], name
            assert ("fixture" in f) != bool(case.get("generated")), name
    for path in CORPUS.iterdir():
        if path.name not in NOT_CASES:
            assert path.is_file() and not path.is_symlink(), path.name
            assert path.stat().st_size < 16 * 1024, path.name  # small, committed files


def test_the_committed_corpus_is_what_make_corpus_writes() -> None:
    outputs: dict[str, bytes] = corpus_script()["outputs"]()
    assert set(outputs) == {p.name for p in CORPUS.iterdir()} - {"README.md", "make_corpus.py"}
    for name, data in outputs.items():
        assert (CORPUS / name).read_bytes() == data, f"{name}: run make_corpus.py again"


def test_the_base_of_the_cases_is_valid(tmp_path: Path) -> None:
    """Each case breaks one thing of this spec; this spec itself validates."""
    (tmp_path / "control.yaml").write_text(corpus_script()["control"]())
    result = validate_tree(tmp_path)
    assert result.problems == []
    assert [s.org.metadata.slug for s in result.specs] == ["control"]


# -- each case alone ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_validate_refuses_the_case(
    name: str, cli: Any, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    case = MANIFEST[name]
    folder = tmp_path / "specs"
    folder.mkdir()
    paths = place(name, folder, tmp_path / "outside")

    # Warm: the first `validate` of a process imports the loader and pydantic's models.
    warm = tmp_path / "warm"
    warm.mkdir()
    (warm / "control.yaml").write_text(corpus_script()["control"]())
    assert cli("validate", str(warm)).code == 0

    run, took = timed(lambda: cli("validate", str(folder)))
    again, peak = traced_peak(lambda: cli("validate", str(folder)))
    request.node.user_properties += [("seconds", round(took, 4)), ("peak_bytes", peak)]

    assert run.code == 1, run.out + run.err
    assert_no_traceback(run)
    assert (again.code, again.out, again.err) == (run.code, run.out, run.err)
    lines = run.lines
    assert lines, run.err
    for line in lines:  # one line per problem, each about a file of this case
        assert line.isprintable(), repr(line)
        assert any(re.match(f"{re.escape(str(p))}{AT}: ", line) for p in paths), line
        assert_points_at_its_field(line)
    for path in paths:
        at_path = f"{re.escape(str(path))}{AT}: "
        assert sum(bool(re.match(at_path, line)) for line in lines) <= MAX_PROBLEMS_PER_FILE + 1
    for f in case["files"]:
        prefix = expected_prefix(folder, f)
        hits = [line for line in lines if re.match(prefix, line) and f["message"] in line]
        assert hits, f"no line starts {prefix!r} and contains {f['message']!r}: {lines}"
        if f["field"] is not None and (name, f["field"]) not in UNPLACED:
            assert all(POSITIONED.match(line) for line in hits), hits  # FILE:LINE:COL
    problems = len(lines)
    assert run.err.splitlines() == [f"{len(paths)} file(s) failed ({problems} problem(s))"]
    if case.get("secret"):
        assert case["secret"] not in run.out + run.err
    assert took < CASE_SECONDS, f"{name}: {took:.3f}s"
    assert peak < PEAK_BYTES, f"{name}: peak {peak / 2**20:.1f} MiB"


def test_the_10mb_case_is_10mb_and_never_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_10mb(tmp_path, tmp_path)
    size = (tmp_path / "file-10mb.yaml").stat().st_size
    assert size >= TEN_MB > MAX_SPEC_BYTES
    read: list[int] = []

    def counting_read(fd: int, n: int) -> bytes:
        data = os.read(fd, n)
        read.append(len(data))
        return data

    monkeypatch.setattr(loader, "os", types.SimpleNamespace(**{**vars(os), "read": counting_read}))
    (problem,) = validate_tree(tmp_path).problems
    assert problem.message == "larger than 1 MiB: refused"
    assert sum(read) == 0  # refused by fstat, before a byte is read


# -- every case at once, beside two good orgs --------------------------------------------------


def org_ids_in(pool: ConnectionPool) -> dict[str, set[str]]:
    """The org ids of every table that holds rows per org."""
    found: dict[str, set[str]] = {}
    with pool.connection() as conn:
        for table in (
            "organizations",
            "org_credentials",
            "assistants",
            "assistant_org_mapping",
            "org_runs",
            "org_schedule",
        ):
            column = "id" if table == "organizations" else "org_id"
            rows = conn.execute(f"SELECT DISTINCT {column}::text FROM {table}").fetchall()
            found[table] = {r[0] for r in rows}
    return found


def bad_identities(folder: Path, outside: Path) -> tuple[set[str], set[str]]:
    """Every org id and slug written in a bad file (the outside targets of symlinks
    included), and every bad file's stem: none may reach Postgres."""
    ids: set[str] = set()
    slugs: set[str] = set()
    uuid_re = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
    slug_re = re.compile(rb"slug: *([^\s#]+)")
    sources = [
        CORPUS / f["fixture"] for c in MANIFEST.values() for f in c["files"] if "fixture" in f
    ]
    sources += [p for p in outside.rglob("*.yaml") if p.is_file()]
    for path in sources:
        data = path.read_bytes()
        ids |= {m.decode() for m in uuid_re.findall(data)}
        slugs |= {m.decode("utf-8", "replace") for m in slug_re.findall(data)}
    for case in MANIFEST.values():
        slugs |= {Path(f["name"]).stem for f in case["files"]}
    return ids, slugs


def test_apply_over_every_case_converges_the_good_orgs(
    cli: Any,
    specs: SpecDir,
    emulator: str,
    pool: ConnectionPool,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    outside = tmp_path / "outside"
    bad_paths: list[Path] = []
    for name in sorted(MANIFEST):
        bad_paths += place(name, specs.root, outside)
    good = [
        org_doc("good-corpus-alpha", api_key=f"sk-alpha-{uuid.uuid4().hex[:8]}"),
        org_doc("good-corpus-beta", api_key=f"sk-beta-{uuid.uuid4().hex[:8]}"),
    ]
    for doc in good:
        specs.write(doc)
    good_ids = {d["metadata"]["id"] for d in good}
    good_slugs = {d["metadata"]["slug"] for d in good}
    bad_ids, bad_slugs = bad_identities(specs.root, outside)
    assert not (good_ids & bad_ids) and not (good_slugs & bad_slugs)
    assert len(bad_paths) == sum(len(c["files"]) for c in MANIFEST.values())
    expected_problems = [str(p) for p in validate_tree(specs.root).problems]
    assert {p.path for p in validate_tree(specs.root).problems} == set(bad_paths)

    def converged() -> None:
        ids = org_ids_in(pool)
        with pool.connection() as conn:
            rows = set(conn.execute("SELECT id::text, slug FROM organizations").fetchall())
        assert rows == {(d["metadata"]["id"], d["metadata"]["slug"]) for d in good}
        for table, found in ids.items():
            assert found <= good_ids, f"{table}: rows of orgs that are not the good ones"
            assert not (found & bad_ids), table
        assert not ({slug for _, slug in rows} & bad_slugs)
        for doc in good:  # both assistants of each good org, in its own account
            names = sorted(a["name"] for a in tagged(emulator, doc))
            assert names == sorted(a["name"] for a in doc["spec"]["assistants"].values())
        live = accounts(emulator)  # the only Vapi accounts ever touched are the good ones
        assert len(live) == len(good)
        assert sum(acc["assistants"] for acc in live.values()) == 2 * len(good)
        plan = cli(
            "plan",
            str(specs.root),
            *(arg for s in sorted(good_slugs) for arg in ("--org", s)),
            "--detailed-exitcode",
        )
        assert plan.code == 0, plan.out + plan.err  # no change left for the good orgs
        assert_no_traceback(plan)

    first, took = wall_timed(lambda: cli("apply", str(specs.root)))
    request.node.user_properties.append(("apply_seconds", round(took, 3)))
    assert first.code == 1, first.out + first.err  # files failed
    assert_no_traceback(first)
    assert took < APPLY_SECONDS, f"apply took {took:.1f}s"
    converged()
    after_first = writes(emulator)

    second, took2 = wall_timed(lambda: cli("apply", str(specs.root)))
    request.node.user_properties.append(("second_apply_seconds", round(took2, 3)))
    assert second.code == 1, second.out + second.err
    assert_no_traceback(second)
    converged()
    assert writes(emulator) == after_first  # the second run changed nothing in Vapi
    assert "Applied: 0 to create, 0 to update, 0 to delete." in second.lines

    # Each bad file reported, one line per problem, exactly as `validate` says it: checked last,
    # so a rendering fault shows apart from the convergence above.
    for run in (first, second):
        failed = [line for line in run.lines if line.startswith("x ")]
        for line in run.lines:
            assert line.isprintable(), repr(line)
        missing = [p for p in expected_problems if f"x {p}" not in failed]
        extra = [line for line in failed if line[2:] not in expected_problems]
        assert not missing and not extra, (
            f"apply's problem lines differ from validate's: missing {missing}, shown {extra}"
        )
        for path in bad_paths:
            assert any(re.match(f"x {re.escape(str(path))}{AT}: ", line) for line in failed), path
        assert f"Failed: {len(bad_paths)} file(s) (" in run.out
        assert "org(s)" not in run.out.split("Failed:", 1)[1]  # no good org failed
