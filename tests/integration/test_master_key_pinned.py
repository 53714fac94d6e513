"""A rotation is never undone (issue 14): Postgres records the active master key id (set by
`keys rotate`), and a process whose active key is not that one, or that lacks the key id of a
row it would compare or replace, writes no credential in any write path: `apply`, `serve`'s
loop, the store itself, `org retire`, `keys rotate`. Each says why in one line naming the key
id; `plan` says it instead of "sensitive value changed"; `keys status` exits 1 naming the rows
it cannot open. Real Postgres and the emulator; no test here waits on a clock."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from reconciler.controller.loop import LoopConfig, ReconcileLoop
from reconciler.controller.run import Controller
from reconciler.credentials import CredentialStore, CredentialUnavailable
from reconciler.errors import MasterKeyRefused
from reconciler.secrets.crypto import KeyRing, MasterKey
from reconciler.state.store import StateWriter
from reconciler.vapi.client import http_client
from tests.helpers import FAST_RETRY, SpecDir, loaded, org_doc, writes

LACKS = "credential {p} of org acme is under master key 'k2', which RECONCILER_MASTER_KEYS lacks"


def ring_env(monkeypatch: pytest.MonkeyPatch, *pairs: tuple[str, MasterKey]) -> None:
    monkeypatch.delenv("RECONCILER_MASTER_KEY", raising=False)
    value = ",".join(f"{kid}:{key.to_b64()}" for kid, key in pairs)
    monkeypatch.setenv("RECONCILER_MASTER_KEYS", value)


def rows(state: StateWriter) -> list[tuple[Any, ...]]:
    """Every credential row as stored: what must not move."""
    with state.pool.connection() as conn:
        return conn.execute(
            "SELECT org_id::text, provider, encrypted_config, fingerprint,"
            " previous_encrypted_config, is_active, updated_at"
            " FROM org_credentials ORDER BY org_id, provider"
        ).fetchall()


def key_ids(state: StateWriter) -> list[str]:
    with state.pool.connection() as conn:
        found = conn.execute(
            "SELECT reconciler_token_key_id(encrypted_config) FROM org_credentials"
        ).fetchall()
    return sorted(r[0] for r in found)


def recorded(state: StateWriter) -> str | None:
    record = state.credentials.master_key()
    return None if record is None else str(record["key_id"])


@pytest.fixture
def rotated(
    cli: Any, specs: SpecDir, state: StateWriter, monkeypatch: pytest.MonkeyPatch
) -> dict[str, Any]:
    """acme applied under k1, then the ring k2,k1 deployed and `keys rotate` run: every row is
    under k2, which Postgres records as the active key."""
    k1, k2 = MasterKey.generate(), MasterKey.generate()
    doc = org_doc("acme", extra_credentials={"resend": {"apiKey": "re-acme-1"}})
    specs.write(doc)
    ring_env(monkeypatch, ("k1", k1))
    assert cli("apply", str(specs.root)).code == 0
    assert recorded(state) == "k1"  # the first credential write recorded its key
    ring_env(monkeypatch, ("k2", k2), ("k1", k1))
    rotate = cli("keys", "rotate")
    assert rotate.code == 0, rotate.err
    assert key_ids(state) == ["k2", "k2"] and recorded(state) == "k2"
    record = state.credentials.master_key()
    assert record is not None and record["retired"] == ["k1"]
    return {"k1": k1, "k2": k2, "doc": doc}


def test_an_old_process_writes_no_credential_through_plan_apply_or_rotate(
    cli: Any,
    specs: SpecDir,
    state: StateWriter,
    emulator: str,
    rotated: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    doc = rotated["doc"]
    doc["spec"]["credentials"]["resend"]["apiKey"] = "re-acme-2"  # a real change to write
    specs.write(doc)
    before, vapi_writes = rows(state), writes(emulator)
    empty = tmp_path / "no-specs"
    empty.mkdir()

    ring_env(monkeypatch, ("k1", rotated["k1"]))  # the old replica: k1 only
    plan = cli("plan", str(specs.root))
    assert plan.code == 1
    for provider in ("resend", "vapi"):
        assert LACKS.format(p=provider) in plan.out, plan.out
    assert "sensitive value changed" not in plan.out

    apply = cli("apply", str(specs.root))
    assert apply.code == 1 and LACKS.format(p="vapi") in apply.out
    assert rows(state) == before and writes(emulator) == vapi_writes

    retire = cli(
        "org", "retire", "acme", "--yes", "--path", str(empty)
    )  # reads the stored Vapi key
    assert retire.code == 1 and LACKS.format(p="vapi") in retire.out, retire.out + retire.err
    assert rows(state) == before and writes(emulator) == vapi_writes

    rotate = cli("keys", "rotate")  # an old cron job: must not make k1 active again
    assert rotate.code == 1 and "master key 'k1' was replaced by an earlier" in rotate.err
    assert "a rotation is never undone (the active one is 'k2')" in rotate.err
    assert "nothing re-encrypted" in rotate.out
    assert recorded(state) == "k2" and rows(state) == before

    # a rolled-back deployment that has both keys, the old one first
    ring_env(monkeypatch, ("k1", rotated["k1"]), ("k2", rotated["k2"]))
    plan = cli("plan", str(specs.root))
    not_first = (
        "no credential of org acme is written: the active master key is 'k2' (recorded in "
        "Postgres), but RECONCILER_MASTER_KEYS lists 'k1' first"
    )
    assert plan.code == 1 and not_first in plan.out and "sensitive value" not in plan.out
    apply = cli("apply", str(specs.root))
    assert apply.code == 1 and not_first in apply.out
    retire = cli("org", "retire", "acme", "--yes", "--path", str(empty))
    assert retire.code == 1 and not_first in retire.out, retire.out + retire.err
    rotate = cli("keys", "rotate")
    assert rotate.code == 1 and "a rotation is never undone" in rotate.err
    assert recorded(state) == "k2" and rows(state) == before and writes(emulator) == vapi_writes

    with state.pool.connection() as conn:
        live = conn.execute("SELECT retired_at FROM organizations").fetchall()
    assert live == [(None,)]  # not retired

    ring_env(monkeypatch, ("k2", rotated["k2"]))  # the current process converges it
    assert cli("apply", str(specs.root)).code == 0
    assert rows(state) != before and key_ids(state) == ["k2", "k2"]


def test_an_old_serve_replica_claims_nothing_and_its_applier_writes_nothing(
    state: StateWriter, specs: SpecDir, emulator: str, rotated: dict[str, Any]
) -> None:
    doc = rotated["doc"]
    doc["spec"]["credentials"]["resend"]["apiKey"] = "re-acme-2"
    specs.write(doc)
    before = rows(state)
    with http_client(emulator, timeout_s=5) as http:
        for ring, says in (
            (KeyRing.single(rotated["k1"], "k1"), "which RECONCILER_MASTER_KEYS lacks"),
            (
                KeyRing((("k1", rotated["k1"]), ("k2", rotated["k2"]))),
                "but RECONCILER_MASTER_KEYS lists 'k1' first",
            ),
        ):
            controller = Controller(state, http, ring, concurrency=2, retry=FAST_RETRY)
            loop = ReconcileLoop(controller, state, LoopConfig(specs.root), replica="old")
            assert loop.run_once() is None  # the tick claims no org
            error = loop.status.last_error or ""
            assert "the active master key is 'k2'" in error and says in error, error
            assert "claims no org" in error and "\n" not in error
            with state.pool.connection() as conn:
                claimed = conn.execute(
                    "SELECT count(*) FROM org_schedule WHERE claimed_by = 'old'"
                ).fetchone()
            assert claimed == (0,)

            report = controller.apply(loaded(doc))  # the apply path serve runs, per org
            (outcome,) = report.outcomes
            assert outcome.error is not None and "'k2'" in outcome.error
            assert outcome.done == [] and rows(state) == before


def test_the_store_itself_refuses_with_the_key_ids(
    state: StateWriter, rotated: dict[str, Any]
) -> None:
    """The last line of defence, whatever planned the write: the upsert and `orgs.retire`."""
    before = rows(state)
    org_id = str(rotated["doc"]["metadata"]["id"])
    old = KeyRing.single(rotated["k1"], "k1")
    sealed = old.encrypt({"apiKey": "re-acme-9"}, aad=f"{org_id}:resend")
    with pytest.raises(MasterKeyRefused) as missing:
        state.credentials.store(
            org_id, "resend", sealed, old.fingerprint({}), key_ids=old.ids, slug="acme"
        )
    assert str(missing.value) == LACKS.format(p="resend")
    assert (missing.value.key_id, missing.value.provider, missing.value.org) == (
        "k2",
        "resend",
        "acme",
    )
    both = ("k1", "k2")  # holds the row's key, but encrypts under k1
    with pytest.raises(MasterKeyRefused) as not_active:
        state.credentials.store(org_id, "resend", sealed, "fp", key_ids=both, slug="acme")
    refused = not_active.value
    assert (refused.active_id, refused.recorded_id, refused.key_id) == ("k1", "k2", "k2")
    with pytest.raises(MasterKeyRefused):  # a new provider: no row to replace, still refused
        state.credentials.store(org_id, "twilio", sealed, "fp", key_ids=both, slug="acme")
    webhook_only = old.encrypt({"webhookSecret": "whsec"}, aad=f"{org_id}:vapi")
    with pytest.raises(MasterKeyRefused):
        state.orgs.retire(org_id, webhook_only, "test", key_ids=both, slug="acme")
    assert rows(state) == before
    with state.pool.connection() as conn:
        retired = conn.execute("SELECT retired_at FROM organizations WHERE id = %s", (org_id,))
        assert retired.fetchone() == (None,)  # the whole retirement rolled back


def test_the_store_refuses_to_replace_a_row_under_a_key_it_lacks_even_under_the_active_key(
    state: StateWriter, rotated: dict[str, Any]
) -> None:
    """Mid-rotation to k3 (recorded, rows still under k2): a process with k3 alone may write a
    new row, not replace one it cannot read."""
    with state.pool.connection() as conn:
        conn.execute("UPDATE master_key SET key_id = 'k3'")
    before = rows(state)
    org_id = str(rotated["doc"]["metadata"]["id"])
    k3 = KeyRing.single(MasterKey.generate(), "k3")
    sealed = k3.encrypt({"apiKey": "re-acme-9"}, aad=f"{org_id}:resend")
    with pytest.raises(MasterKeyRefused) as err:
        state.credentials.store(org_id, "resend", sealed, "fp", key_ids=k3.ids, slug="acme")
    assert str(err.value) == LACKS.format(p="resend")
    assert rows(state) == before
    twilio = k3.encrypt({"accountSid": "AC1", "authToken": "t"}, aad=f"{org_id}:twilio")
    state.credentials.store(org_id, "twilio", twilio, "fp", key_ids=k3.ids, slug="acme")
    assert key_ids(state) == ["k2", "k2", "k3"]


def test_the_credential_library_names_the_missing_key_and_writes_nothing(
    state: StateWriter, database_url: str, rotated: dict[str, Any]
) -> None:
    before = rows(state)
    org_id = str(rotated["doc"]["metadata"]["id"])
    setting = f"k1:{rotated['k1'].to_b64()}"
    with (
        CredentialStore.from_url(database_url, setting, caller="old-svc", listen=False) as store,
        pytest.raises(CredentialUnavailable) as err,
    ):
        store.vapi(org_id)
    message = str(err.value)
    assert f"credential vapi of org {org_id} is under master key 'k2'" in message
    assert "\n" not in message and rotated["k1"].to_b64() not in message
    assert rows(state) == before


def test_keys_status_exits_1_naming_each_row_it_cannot_open(
    cli: Any, state: StateWriter, rotated: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    ring_env(monkeypatch, ("k2", rotated["k2"]))
    ok = cli("keys", "status")
    assert ok.code == 0, ok.err
    assert "active key id: k2 (set by keys rotate" in ok.out and "2 row(s)  (active)" in ok.out

    ring_env(monkeypatch, ("k1", rotated["k1"]))  # missing key
    missing = cli("keys", "status")
    assert missing.code == 1 and "Traceback" not in missing.err
    lines = missing.err.strip().splitlines()
    for provider in ("resend", "vapi"):
        assert f"error: {LACKS.format(p=provider)}" in lines
    assert "error: 2 row(s) do not open under RECONCILER_MASTER_KEYS" in lines

    ring_env(monkeypatch, ("k2", MasterKey.generate()))  # wrong key under the right id
    wrong = cli("keys", "status")
    assert wrong.code == 1 and "Traceback" not in wrong.err
    for provider in ("resend", "vapi"):
        assert (
            f"error: credential {provider} of org acme does not open under master key 'k2': "
            "a wrong key in RECONCILER_MASTER_KEYS, or a tampered row"
        ) in wrong.err.splitlines()
    for run in (ok, missing, wrong):
        for key in (rotated["k1"], rotated["k2"]):
            assert key.to_b64() not in run.out + run.err


def _org(state: StateWriter, slug: str) -> str:
    org_id = str(uuid.uuid4())
    state.orgs.upsert(org_id, slug, slug.title())
    return org_id


def test_the_first_writer_records_its_key_and_a_concurrent_other_key_loses(
    state: StateWriter, pool: Any
) -> None:
    assert recorded(state) is None
    ka, kb = KeyRing.single(MasterKey.generate(), "ka"), KeyRing.single(MasterKey.generate(), "kb")
    org_id = _org(state, "acme")

    # Another process records 'ka' and has not committed yet when this one, under 'kb', writes
    # its first credential: the conditional insert waits for it, then finds 'ka' and refuses.
    with pool.connection() as other:
        other.execute("BEGIN")
        other.execute("INSERT INTO master_key (key_id, set_by) VALUES ('ka', 'other')")
        sealed = kb.encrypt({"apiKey": "x"}, aad=f"{org_id}:resend")
        failed: list[BaseException] = []

        def write() -> None:
            try:
                state.credentials.store(org_id, "resend", sealed, "fp", key_ids=kb.ids)
            except BaseException as exc:
                failed.append(exc)

        writer = threading.Thread(target=write)
        writer.start()
        _wait_for_a_lock_wait(pool)
        other.execute("COMMIT")
        writer.join(timeout=30)
    assert not writer.is_alive()
    assert len(failed) == 1 and isinstance(failed[0], MasterKeyRefused), failed
    assert "the active master key is 'ka'" in str(failed[0])
    assert recorded(state) == "ka" and rows(state) == []

    sealed = ka.encrypt({"apiKey": "x"}, aad=f"{org_id}:resend")
    state.credentials.store(org_id, "resend", sealed, "fp", key_ids=ka.ids)
    assert key_ids(state) == ["ka"]


def test_with_no_record_a_first_writer_lacking_a_key_in_use_records_nothing(
    state: StateWriter,
) -> None:
    ka, kb = KeyRing.single(MasterKey.generate(), "ka"), KeyRing.single(MasterKey.generate(), "kb")
    acme, beta = _org(state, "acme"), _org(state, "beta")
    state.credentials.store(acme, "resend", ka.encrypt({}, aad=f"{acme}:resend"), "fp")
    with state.pool.connection() as conn:
        conn.execute("DELETE FROM master_key")  # as a database from before 0008, mid-rotation
    with pytest.raises(MasterKeyRefused) as err:
        state.credentials.store(
            beta, "resend", kb.encrypt({}, aad=f"{beta}:resend"), "fp", key_ids=kb.ids
        )
    assert str(err.value) == (
        "credential resend of org acme is under master key 'ka', which RECONCILER_MASTER_KEYS lacks"
    )
    assert recorded(state) is None and key_ids(state) == ["ka"]


def _wait_for_a_lock_wait(pool: Any) -> None:
    """Until some session of this database waits on a lock (polled state, not a clock)."""
    for _ in range(2000):
        with pool.connection() as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock'"
            ).fetchone()
        if row and row[0]:
            return
        time.sleep(0.01)
    raise AssertionError("the second writer never waited on the first one's record")


def test_rotate_records_the_key_before_it_re_encrypts(
    state: StateWriter, cli: Any, specs: SpecDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rotate that dies after recording the key and before its batches leaves k2 active:
    the old process is refused at once, and a rerun finishes."""
    k1, k2 = MasterKey.generate(), MasterKey.generate()
    specs.write(org_doc("acme"))
    ring_env(monkeypatch, ("k1", k1))
    assert cli("apply", str(specs.root)).code == 0
    ring_env(monkeypatch, ("k2", k2), ("k1", k1))
    with state.pool.connection() as conn:  # hold every row: the batches cannot start
        conn.execute("BEGIN")
        conn.execute("SELECT 1 FROM org_credentials FOR UPDATE")
        result: list[Any] = []
        runner = threading.Thread(target=lambda: result.append(cli("keys", "rotate")))
        runner.start()
        _wait_for_a_lock_wait(state.pool)
        assert recorded(state) == "k2" and key_ids(state) == ["k1"]
        conn.execute("ROLLBACK")
        runner.join(timeout=60)
    assert result and result[0].code == 0 and key_ids(state) == ["k2"]


def test_rotate_refuses_while_a_row_is_under_a_key_it_lacks_and_never_goes_back(
    cli: Any, state: StateWriter, rotated: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    before = rows(state)
    k3 = MasterKey.generate()
    ring_env(monkeypatch, ("k3", k3))  # a new key, but not the one the rows are under
    refused = cli("keys", "rotate")
    assert refused.code == 1 and "nothing re-encrypted" in refused.out
    for provider in ("resend", "vapi"):
        assert f"error: {LACKS.format(p=provider)}" in refused.err.splitlines()
    assert recorded(state) == "k2" and rows(state) == before

    ring_env(monkeypatch, ("k3", k3), ("k2", rotated["k2"]))
    done = cli("keys", "rotate")
    assert done.code == 0 and "re-encrypted 2 of 2" in done.out, done.err
    record = state.credentials.master_key()
    assert record is not None and (record["key_id"], record["retired"]) == ("k3", ["k1", "k2"])
    ring_env(monkeypatch, ("k2", rotated["k2"]), ("k3", k3))  # back to k2: never
    back = cli("keys", "rotate")
    assert back.code == 1 and "master key 'k2' was replaced by an earlier" in back.err
    assert recorded(state) == "k3" and key_ids(state) == ["k3", "k3"]


def test_a_wrong_key_under_the_active_id_writes_nothing(
    cli: Any,
    specs: SpecDir,
    state: StateWriter,
    emulator: str,
    rotated: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Same id, other key bytes (a mistyped secret): its fingerprints differ from every stored
    one, so without the recorded check value it would re-encrypt every credential under a key
    no other process has. It is refused like an old key, and plan says so."""
    before, vapi_writes = rows(state), writes(emulator)
    wrong = MasterKey.generate()
    ring_env(monkeypatch, ("k2", wrong))
    says = (
        "no credential of org acme is written: RECONCILER_MASTER_KEYS holds another key under "
        "the active id 'k2' than the one Postgres records (a wrong key)"
    )
    plan = cli("plan", str(specs.root))
    assert plan.code == 1 and says in plan.out and "sensitive value" not in plan.out, plan.out
    apply = cli("apply", str(specs.root))
    assert apply.code == 1 and says in apply.out
    rotate = cli("keys", "rotate")
    assert rotate.code == 1 and "a wrong key" in rotate.err and "nothing re-encrypted" in rotate.out
    status = cli("keys", "status")
    assert status.code == 1 and "(a wrong key)" in status.err
    assert rows(state) == before and writes(emulator) == vapi_writes

    ring = KeyRing.single(wrong, "k2")
    org_id = str(rotated["doc"]["metadata"]["id"])
    sealed = ring.encrypt({"apiKey": "re-x"}, aad=f"{org_id}:resend")
    with pytest.raises(MasterKeyRefused, match="a wrong key"):
        state.credentials.store(
            org_id, "resend", sealed, "fp", key_ids=ring.ids, key_check=ring.check_value()
        )
    with http_client(emulator, timeout_s=5) as http:
        controller = Controller(state, http, ring, concurrency=2, retry=FAST_RETRY)
        assert "(a wrong key)" in (controller.master_key_refusal() or "")
    assert rows(state) == before


def test_rotate_records_a_check_value_only_for_a_key_that_opens_the_rows(
    cli: Any, state: StateWriter, rotated: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """As after migration 0008 pinned an existing database: the id, no check value yet."""
    with state.pool.connection() as conn:
        conn.execute("UPDATE master_key SET key_check = NULL")
    before = rows(state)
    ring_env(monkeypatch, ("k2", MasterKey.generate()))
    wrong = cli("keys", "rotate")
    assert wrong.code == 1 and "does not open under master key 'k2'" in wrong.err
    record = state.credentials.master_key()
    assert record is not None and record["key_check"] is None and rows(state) == before

    ring_env(monkeypatch, ("k2", rotated["k2"]))
    right = cli("keys", "rotate")
    assert right.code == 0, right.err
    record = state.credentials.master_key()
    expected = KeyRing.single(rotated["k2"], "k2").check_value()
    assert record is not None and record["key_check"] == expected


def _migration_pin(state: StateWriter) -> None:
    """The statement of migration 0008 that pins a database already holding credentials."""
    from importlib import resources

    sql = (resources.files("reconciler.state") / "migrations" / "0008_master_key.sql").read_text()
    statement = sql[sql.rindex("INSERT INTO master_key") :]
    with state.pool.connection() as conn:
        conn.execute("DELETE FROM master_key")
        conn.execute(statement.encode())


def test_migration_0008_pins_a_database_whose_rows_use_one_key_id(state: StateWriter) -> None:
    ka, kb = KeyRing.single(MasterKey.generate(), "ka"), KeyRing.single(MasterKey.generate(), "kb")
    acme, beta = _org(state, "acme"), _org(state, "beta")
    state.credentials.store(acme, "resend", ka.encrypt({}, aad=f"{acme}:resend"), "fp")
    _migration_pin(state)
    record = state.credentials.master_key()
    assert record is not None and (record["key_id"], record["key_check"]) == ("ka", None)
    with state.pool.connection() as conn:  # mid-rotation: two ids in use
        conn.execute(
            "INSERT INTO org_credentials (org_id, provider, encrypted_config, fingerprint)"
            " VALUES (%s, 'resend', %s, 'fp')",
            (beta, kb.encrypt({}, aad=f"{beta}:resend")),
        )
    _migration_pin(state)
    assert state.credentials.master_key() is None


def test_a_write_racing_keys_rotate_waits_for_it_then_is_refused(
    state: StateWriter, pool: Any, rotated: dict[str, Any]
) -> None:
    """`keys rotate` has recorded k3 and not committed yet when a k2 process writes: its
    statement waits on the record (FOR SHARE), then sees k3 and writes nothing."""
    before = rows(state)
    org_id = str(rotated["doc"]["metadata"]["id"])
    ring = KeyRing.single(rotated["k2"], "k2")
    sealed = ring.encrypt({"apiKey": "re-acme-9"}, aad=f"{org_id}:resend")
    failed: list[BaseException] = []

    def write() -> None:
        try:
            state.credentials.store(
                org_id, "resend", sealed, "fp", key_ids=ring.ids, key_check=ring.check_value()
            )
        except BaseException as exc:
            failed.append(exc)

    with pool.connection() as rotation:
        rotation.execute("BEGIN")
        rotation.execute("UPDATE master_key SET key_id = 'k3', key_check = NULL")
        writer = threading.Thread(target=write)
        writer.start()
        _wait_for_a_lock_wait(pool)
        rotation.execute("COMMIT")
        writer.join(timeout=30)
    assert not writer.is_alive()
    assert len(failed) == 1 and isinstance(failed[0], MasterKeyRefused), failed
    assert failed[0].recorded_id == "k3" and rows(state) == before
