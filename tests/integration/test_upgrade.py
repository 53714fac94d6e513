"""Upgrade without harm (issue 16): a database and Vapi accounts reconciled by the previous
release, then migrated by this checkout, give a no-op plan and a no-op apply: nothing
re-created, nothing orphaned or retired, no Vapi write, every `assistant_org_mapping` row (the
platform reads it) kept as it was.

The previous release is real code, not a simulation: the `reconciler` package of the commit
`PREVIOUS_RELEASE`, exported with `git archive` and run as a child process that asserts it
imported that copy. This checkout runs as a child process too (same interpreter, same
dependencies), on a database of its own and the session's emulator.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row

from reconciler.secrets.crypto import MasterKey
from reconciler.spec.loader import load_tree
from reconciler.state.migrate import _migrations
from tests.helpers import (
    ROOT,
    SpecDir,
    accounts,
    clear_faults,
    emulator_stats,
    fault,
    live,
    org_doc,
    tagged,
)
from tests.helpers.serve import session_env, wait_until

# The main tip before the redesign of issue 16: the release whose databases must upgrade.
PREVIOUS_RELEASE = "99d9a72bf780fc7415b9b47cc38e762febf189dd"
# Its last migration: the previous release's schema stops here.
PREVIOUS_LAST_MIGRATION = "0010_orphaned_status"
EXAMPLES = ROOT / "specs" / "examples"
DEMO_AGE_KEY = EXAMPLES / "demo.agekey"
# the demo key's recipient, read from the key file (its "# public key:" line)
DEMO_RECIPIENT = next(
    line.split(":", 1)[1].strip()
    for line in DEMO_AGE_KEY.read_text().splitlines()
    if line.startswith("# public key:")
)

# Runs `reconciler.cli.main:main` from the code root given as the first argument, after checking
# that the package really was imported from there (not from the test's editable install).
_BOOT = """\
import sys
from pathlib import Path
root = Path(sys.argv.pop(1)).resolve()
sys.path.insert(0, str(root))
import reconciler
origin = Path(reconciler.__file__).resolve()
if not origin.is_relative_to(root):
    sys.exit(f"reconciler was imported from {origin}, not from {root}")
print(f"reconciler-from: {origin.parent}", file=sys.stderr)
from reconciler.cli.main import main
sys.exit(main())
"""


# -- the previous release, exported once per session (per xdist worker) ---------------------


def _git(*args: str) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, check=False)
    except FileNotFoundError:
        pytest.fail(
            "git is not installed: the upgrade test exports the previous release "
            f"({PREVIOUS_RELEASE[:12]}) from the repository's history with `git archive`",
            pytrace=False,
        )


# Both tests in one pytest-xdist worker: the previous release is unpacked once.
pytestmark = pytest.mark.xdist_group("upgrade")


@pytest.fixture(scope="session")
def previous_release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The previous release's `reconciler` package, from `git archive` (a folder holding it).
    A checkout without that commit (a tarball, a shallow clone) fails the test, saying so:
    the upgrade must not go untested quietly."""
    found = _git("cat-file", "-e", f"{PREVIOUS_RELEASE}^{{commit}}")
    if found.returncode != 0:
        pytest.fail(
            f"the previous release {PREVIOUS_RELEASE[:12]} is not in the git history of {ROOT}"
            f" ({found.stderr.decode(errors='replace').strip() or 'not a git repository'}): the"
            " upgrade test needs it; run the tests in a full clone (`git fetch --unshallow`)",
            pytrace=False,
        )
    # tmp_path_factory's base folder is per xdist worker: no two processes share this folder
    target = tmp_path_factory.mktemp("previous-release")
    # its package, and the example specs as it shipped them (what it reconciled)
    archive = _git("archive", "--format=tar", PREVIOUS_RELEASE, "reconciler", "specs/examples")
    assert archive.returncode == 0, archive.stderr.decode(errors="replace")
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    assert (target / "reconciler" / "cli" / "main.py").is_file()
    return target


# -- a database of its own, and the two releases as child processes --------------------------


@pytest.fixture
def fresh_database(server_url: str) -> Iterator[str]:
    """An empty database (no schema: the previous release migrates it), dropped at the end."""
    name = f"reconciler_upgrade_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    info = psycopg.conninfo.conninfo_to_dict(server_url)
    info["dbname"] = name
    yield psycopg.conninfo.make_conninfo("", **info)
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


class Release:
    """`reconciler ARGS` of one code root, as a child process on the test's database,
    emulator and the demo age key."""

    def __init__(self, code_root: Path, env: dict[str, str], cwd: Path) -> None:
        self.code_root = code_root.resolve()
        self.env = env
        self.cwd = cwd

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-c", _BOOT, str(self.code_root), *args],
            env=self.env,
            cwd=self.cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def finish(self, proc: subprocess.Popen[str]) -> subprocess.CompletedProcess[str]:
        try:
            out, err = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"a reconciler child ran over 120 s:\n{out}\n{err}")
        # the child ran this code root's package, not another copy
        assert f"reconciler-from: {self.code_root / 'reconciler'}" in err, err
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.finish(self.start(*args))


def _ok(done: subprocess.CompletedProcess[str], code: int = 0) -> str:
    assert done.returncode == code, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    assert "Traceback" not in done.stdout + done.stderr
    return done.stdout


@pytest.fixture
def releases(
    previous_release: Path,
    fresh_database: str,
    master_key: MasterKey,
    emulator: str,
    tmp_path: Path,
) -> tuple[Release, Release]:
    """(previous release, this checkout), sharing one database, emulator and master key."""
    env = session_env(fresh_database, master_key.to_b64(), emulator, DEMO_AGE_KEY, tmp_path / "d")
    cwd = tmp_path / "cwd"  # not the repository: `python -c` puts the cwd on sys.path
    cwd.mkdir()
    return Release(previous_release, env, cwd), Release(ROOT, env, cwd)


# -- the specs: the examples and one org with every other credential and a forward URL --------


def _spec_folder(tmp_path: Path, previous_release: Path) -> Path:
    """The three example orgs (inbound and outbound assistants; Vapi, Twilio and Google
    Calendar credentials) and `signal-clinic` (Resend and ElevenLabs credentials, a webhook
    forward URL, `adopt: byName`), all encrypted to the demo age key."""
    root = tmp_path / "specs"
    shipped = previous_release / "specs" / "examples"  # as the previous release had them
    shutil.copytree(shipped, root, ignore=shutil.ignore_patterns("*.agekey"))
    doc = org_doc(
        "signal-clinic",
        extra_credentials={
            "resend": {"apiKey": "re_upgrade_test"},
            "elevenlabs": {"apiKey": "el-upgrade-test"},
        },
    )
    doc["spec"]["webhook"] = {"forwardUrl": "https://platform.example.com/vapi/signal-clinic"}
    doc["spec"]["adopt"] = "byName"
    SpecDir(root, DEMO_RECIPIENT).write(doc)
    return root


# -- what the previous release left, read back -----------------------------------------------


def _rows(url: str, query: str) -> list[dict[str, Any]]:
    with psycopg.connect(url, row_factory=dict_row) as conn:
        return conn.execute(query).fetchall()


def _db_state(url: str) -> dict[str, list[dict[str, Any]]]:
    """The rows an upgrade must keep, by the previous release's columns (timestamps that move
    on every run, such as last_reconciled_at, left out)."""
    return {
        # the platform reads this table: every column but last_used_at (a webhook moves it)
        "assistant_org_mapping": _rows(
            url,
            "SELECT id, vapi_assistant_id, org_id, assistant_role, assistant_name, created_at,"
            " inactive_at FROM assistant_org_mapping ORDER BY vapi_assistant_id",
        ),
        "assistants": _rows(
            url,
            "SELECT org_id, role, vapi_assistant_id, status, create_started_at FROM assistants"
            " ORDER BY org_id, role",
        ),
        "org_credentials": _rows(
            url,
            "SELECT id, org_id, provider, fingerprint, is_active, created_at, webhook_only_until"
            " FROM org_credentials ORDER BY org_id, provider",
        ),
        "organizations": _rows(
            url,
            "SELECT id, slug, name, status, retired_at, vapi_account_id, webhook_forward_url,"
            " created_at FROM organizations ORDER BY slug, id",
        ),
    }


def _migrations_applied(url: str) -> dict[str, tuple[str, Any]]:
    return {
        r["version"]: (r["checksum"], r["applied_at"])
        for r in _rows(url, "SELECT version, checksum, applied_at FROM schema_migrations")
    }


def _api_keys(specs: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """slug -> Vapi API key, decrypted as the reconciler decrypts them."""
    monkeypatch.setenv("SOPS_AGE_KEY_FILE", str(DEMO_AGE_KEY))
    monkeypatch.delenv("SOPS_AGE_KEY", raising=False)
    loaded = load_tree(specs)
    assert not loaded.problems, loaded.problems
    return {
        f.org.metadata.slug: f.org.spec.credentials.vapi.api_key.get_secret_value()
        for f in loaded.specs
        if f.org.spec.credentials.vapi is not None
    }


def _vapi_state(emulator: str, keys: dict[str, str]) -> dict[str, Any]:
    """Every account's assistants (id, name, updatedAt, tag) and the emulator's totals."""
    stats = httpx.get(f"{emulator}/_emulator/stats", timeout=10).json()
    return {
        "accounts": accounts(emulator),
        "assistants": {
            slug: sorted(
                (a["id"], a["name"], a["updatedAt"], str(a.get("metadata")))
                for a in live(emulator, key)
            )
            for slug, key in keys.items()
        },
        "totals": {k: v for k, v in stats.items() if k.endswith("_total")},
    }


def _vapi_writes(emulator: str) -> dict[str, int]:
    """Every write request the emulator received (any kind: assistants, numbers, tools)."""
    return {
        route: n
        for route, n in emulator_stats(emulator).items()
        if route.split(" ")[0] in ("POST", "PATCH", "PUT", "DELETE") and n
    }


def _previous_release_schema(url: str, previous_release: Path) -> None:
    """The database has exactly the previous release's migrations (so it really migrated it)."""
    shipped = sorted(
        p.stem for p in (previous_release / "reconciler" / "state" / "migrations").glob("*.sql")
    )
    assert shipped[-1] == PREVIOUS_LAST_MIGRATION
    assert sorted(_migrations_applied(url)) == shipped


def _upgraded_schema(url: str, before: dict[str, tuple[str, Any]]) -> None:
    """Every migration of this checkout is applied, and the previous release's rows are kept
    as they were (same checksum, same applied_at): nothing re-run, nothing rewritten."""
    after = _migrations_applied(url)
    ours = {version for version, _ in _migrations()}
    assert ours <= set(after), sorted(ours - set(after))
    assert set(after) <= ours | set(before)
    for version, row in before.items():
        assert after[version] == row, version
    new = sorted(set(after) - set(before))
    assert all(v > PREVIOUS_LAST_MIGRATION for v in new), new


# -- the tests -------------------------------------------------------------------------------

# what an ElevenLabs key on an assistant looks like in a plan (a dynamic credential)
CREDENTIALS_FIELDS = {"credentials", "credentials[0].provider", "credentials[0].apiKey"}


def _still(assistant: tuple[Any, ...], patched: set[str]) -> tuple[Any, ...]:
    """An assistant as listed, its updatedAt left out when this release PATCHed it."""
    vid, name, updated, tag = assistant
    return (vid, name, None if vid in patched else updated, tag)


def test_an_upgrade_from_the_previous_release_plans_and_applies_nothing(
    releases: tuple[Release, Release],
    fresh_database: str,
    emulator: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Five orgs reconciled by the previous release (one of them then retired by it), then
    `db migrate`, `plan --detailed-exitcode`, `apply` and `plan` again by this checkout: both
    plans exit 0, no Vapi write, and every row the previous release wrote is as it was."""
    old, new = releases
    specs = _spec_folder(tmp_path, old.code_root)
    # a fifth org, retired by the previous release: its mapping rows stay, inactive
    gone = SpecDir(specs, DEMO_RECIPIENT).write(org_doc("gone-clinic"))

    # the previous release reconciles everything, then retires gone-clinic
    _ok(old("apply", str(specs)))
    gone.unlink()
    _ok(old("apply", "--prune", str(specs)))
    _ok(old("plan", "--detailed-exitcode", str(specs)))  # converged, by its own account
    _previous_release_schema(fresh_database, old.code_root)

    keys = _api_keys(specs, monkeypatch)
    db_before = _db_state(fresh_database)
    vapi_before = _vapi_state(emulator, keys)
    migrations_before = _migrations_applied(fresh_database)
    writes_before = _vapi_writes(emulator)
    mapping = db_before["assistant_org_mapping"]
    assert len([m for m in mapping if m["inactive_at"] is None]) == 7  # 2 + 1 + 2 + 2
    assert len([m for m in mapping if m["inactive_at"] is not None]) == 2  # gone-clinic's
    orgs = {o["slug"]: o for o in db_before["organizations"]}
    assert orgs["gone-clinic"]["status"] == "Retired"
    assert {o["status"] for s, o in orgs.items() if s != "gone-clinic"} == {"Ready"}
    assert {c["provider"] for c in db_before["org_credentials"]} == {
        "vapi",
        "twilio",
        "google_calendar",
        "resend",
        "elevenlabs",
    }

    # this checkout: migrate (the upgrade step), then a plan whose only changes are what this
    # release brings on purpose: an org's ElevenLabs key given to each of its assistants (one
    # `credentials` PATCH each, shown first); nothing created, deleted, orphaned or remapped
    _ok(new("db", "migrate"))
    _upgraded_schema(fresh_database, migrations_before)
    planned = json.loads(_ok(new("plan", "--format", "json", "--detailed-exitcode", str(specs)), 2))
    changes = [c for c in planned["changes"] if c["action"] != "noop"]
    assert {(c["org"], c["resource"], c["action"]) for c in changes} == {
        ("bright-smiles", "assistant", "update"),
        ("signal-clinic", "assistant", "update"),
    }, changes
    assert all({f["path"] for f in c["fields"]} <= CREDENTIALS_FIELDS for c in changes), changes
    patched = {c["vapi_id"] for c in changes}
    _ok(new("apply", str(specs)))
    _ok(new("plan", "--detailed-exitcode", str(specs)))

    wrote = _vapi_writes(emulator)
    assert wrote == {
        **writes_before,
        "PATCH /assistant/{id}": writes_before.get("PATCH /assistant/{id}", 0) + len(patched),
    }  # those PATCHes alone: no POST, no DELETE, nothing else
    vapi_after = _vapi_state(emulator, keys)
    for part, seen in vapi_before.items():
        if part == "assistants":  # the patched ones moved their updatedAt, nothing else
            seen = {slug: [_still(a, patched) for a in listed] for slug, listed in seen.items()}
            now = {
                slug: [_still(a, patched) for a in listed]
                for slug, listed in vapi_after[part].items()
            }
            assert now == seen, "Vapi assistants changed"
            continue
        assert vapi_after[part] == seen, f"Vapi {part} changed"
    db_after = _db_state(fresh_database)
    for table, rows in db_before.items():
        assert db_after[table] == rows, f"{table} changed"
    _upgraded_schema(fresh_database, migrations_before)


def test_a_create_the_previous_release_left_pending_is_adopted_not_repeated(
    releases: tuple[Release, Release], fresh_database: str, emulator: str, tmp_path: Path
) -> None:
    """The previous release committed a `creating` row, POSTed, and lost the answer (Vapi
    created the assistant, then answered 500): the upgraded reconciler adopts that tagged
    assistant; it creates no second one."""
    old, new = releases
    specs = _spec_folder(tmp_path, old.code_root)
    _ok(old("apply", str(specs)))
    doc = org_doc(
        "late-clinic", assistants={"inbound": {"name": "Late inbound", "firstMessage": "Hi"}}
    )
    SpecDir(specs, DEMO_RECIPIENT).write(doc)
    # late-clinic's POST is held 3 s, then Vapi commits it and answers 500 (outcome unknown);
    # meanwhile every listing is made to fail, so the previous release cannot find and adopt
    # it: it stops with the `creating` row committed, as a crash there would leave it
    posts = emulator_stats(emulator)["POST /assistant"]
    fault(
        emulator,
        method="POST",
        path="/assistant",
        mode="error_after_commit",
        status=500,
        delay_ms=3000,
    )
    running = old.start("apply", "--org", "late-clinic", str(specs))
    wait_until(lambda: emulator_stats(emulator)["POST /assistant"] > posts, 60, "the POST arrives")
    fault(
        emulator,
        method="GET",
        path="/assistant",
        mode="error",
        status=503,
        retry_after="0",
        times=None,
    )
    _ok(old.finish(running), code=1)
    clear_faults(emulator)

    org_id = doc["metadata"]["id"]
    pending = [a for a in _db_state(fresh_database)["assistants"] if str(a["org_id"]) == org_id]
    assert [(a["role"], a["status"], a["vapi_assistant_id"]) for a in pending] == [
        ("inbound", "creating", None)
    ]
    [created] = tagged(emulator, doc)  # the create happened in Vapi
    db_before = _db_state(fresh_database)
    writes_before = _vapi_writes(emulator)
    others_before = [m for m in db_before["assistant_org_mapping"] if str(m["org_id"]) != org_id]
    assert len(others_before) == 7

    _ok(new("db", "migrate"))
    _ok(new("apply", str(specs)))
    _ok(new("plan", "--detailed-exitcode", str(specs)))

    wrote = _vapi_writes(emulator)
    # no second POST and no DELETE (the only new writes are this release's ElevenLabs-key
    # PATCHes of other orgs' assistants: see the test above)
    assert {r: n for r, n in wrote.items() if not r.startswith("PATCH")} == {
        r: n for r, n in writes_before.items() if not r.startswith("PATCH")
    }
    assert [a["id"] for a in tagged(emulator, doc)] == [created["id"]]
    assert created["updatedAt"] == tagged(emulator, doc)[0]["updatedAt"]  # not PATCHed
    after = _db_state(fresh_database)
    [row] = [a for a in after["assistants"] if str(a["org_id"]) == org_id]
    assert (row["role"], row["status"], row["vapi_assistant_id"]) == (
        "inbound",
        "ready",
        created["id"],
    )
    [mapped] = [m for m in after["assistant_org_mapping"] if str(m["org_id"]) == org_id]
    assert (mapped["vapi_assistant_id"], mapped["assistant_role"], mapped["inactive_at"]) == (
        created["id"],
        "inbound",
        None,
    )
    # the other orgs' rows are as the previous release left them
    assert [m for m in after["assistant_org_mapping"] if str(m["org_id"]) != org_id] == (
        others_before
    )
    assert {o["status"] for o in after["organizations"]} == {"Ready"}
