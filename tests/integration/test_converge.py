"""apply against real Postgres and the emulator: convergence, adoption, no duplicates."""

from __future__ import annotations

import threading
import time

import pytest

from reconciler.controller.run import Controller
from reconciler.secrets.crypto import MasterKey
from reconciler.spec.loader import load_tree
from reconciler.state.store import AssistantWriter, OrgWriter, StateWriter
from reconciler.vapi.client import http_client
from tests.helpers import (
    FAST_RETRY,
    SpecDir,
    active_mappings,
    clear_faults,
    create_assistant,
    emulator_stats,
    fault,
    key_of,
    live,
    org_doc,
    writes,
)


def live_role(emulator: str, doc: dict, role: str) -> dict:
    """The org's live assistant for `role` (found by its ownership tag)."""
    key = key_of(doc)
    return next(a for a in live(emulator, key) if a["metadata"]["role"] == role)


def test_apply_twice_second_run_sends_no_write(
    specs: SpecDir, controller: Controller, emulator: str, state: StateWriter
) -> None:
    docs = [org_doc(f"org-{i}") for i in range(3)]
    for doc in docs:
        specs.write(doc)
    loaded = load_tree(specs.root)

    first = controller.apply(loaded)
    assert first.ok, [o.error for o in first.failed]
    assert first.counts()["create"] == 3 + 3 + 6  # org rows, vapi credentials, assistants
    assert writes(emulator) == 6
    for doc in docs:
        tagged = live(emulator, key_of(doc))
        assert sorted(a["metadata"]["role"] for a in tagged) == ["inbound", "outbound"]
        assert all(a["metadata"]["orgId"] == doc["metadata"]["id"] for a in tagged)
    assert len(active_mappings(state.pool)) == 6

    before = emulator_stats(emulator)
    second = controller.apply(load_tree(specs.root))
    after = emulator_stats(emulator)
    assert second.ok and not second.has_changes
    assert writes(emulator) == 6  # no new POST, PATCH or DELETE
    assert after["GET /assistant"] - before["GET /assistant"] == 3  # one list per org


def test_changed_field_sends_one_patch_with_only_that_field(
    specs: SpecDir, controller: Controller, emulator: str
) -> None:
    doc = org_doc("acme")
    specs.write(doc)
    assert controller.apply(load_tree(specs.root)).ok
    doc["spec"]["assistants"]["inbound"]["firstMessage"] = "Changed greeting"
    specs.write(doc)

    plan = controller.plan(load_tree(specs.root))
    (outcome,) = plan.outcomes
    assert outcome.plan is not None
    (action,) = outcome.plan.actions
    assert action.kind == "update"
    assert action.patch == {"firstMessage": "Changed greeting"}  # type: ignore[union-attr]

    assert controller.apply(load_tree(specs.root)).ok
    assert emulator_stats(emulator)["PATCH /assistant/{id}"] == 1
    assert live_role(emulator, doc, "inbound")["firstMessage"] == "Changed greeting"


def test_removed_field_is_cleared_on_vapi(
    specs: SpecDir, controller: Controller, emulator: str
) -> None:
    doc = org_doc("acme")
    specs.write(doc)
    assert controller.apply(load_tree(specs.root)).ok
    del doc["spec"]["assistants"]["outbound"]["voice"]
    specs.write(doc)
    assert controller.apply(load_tree(specs.root)).ok
    outbound = live_role(emulator, doc, "outbound")
    assert "voice" not in outbound or outbound["voice"] is None
    assert not controller.plan(load_tree(specs.root)).has_changes


def test_tagged_assistant_missing_from_mapping_is_adopted(
    specs: SpecDir, controller: Controller, emulator: str, state: StateWriter
) -> None:
    doc = org_doc("acme")
    specs.write(doc)
    assert controller.apply(load_tree(specs.root)).ok
    ids_before = active_mappings(state.pool)
    with state.pool.connection() as conn:  # Postgres lost its state (restore, new replica...)
        conn.execute("TRUNCATE assistant_org_mapping, assistants")

    report = controller.apply(load_tree(specs.root))
    assert report.ok
    assert report.counts()["adopt"] == 2 and report.counts()["create"] == 0
    assert emulator_stats(emulator)["POST /assistant"] == 2  # only the first run's creates
    assert active_mappings(state.pool) == ids_before


def test_lost_create_response_is_adopted_not_duplicated(
    specs: SpecDir, controller: Controller, emulator: str, state: StateWriter
) -> None:
    doc = org_doc("acme", assistants={"inbound": {"name": "Front desk"}})
    specs.write(doc)
    fault(
        emulator, method="POST", path="/assistant", mode="error_after_commit", status=500, times=1
    )

    report = controller.apply(load_tree(specs.root))
    assert report.ok, [o.error for o in report.failed]
    key = key_of(doc)
    assert len(live(emulator, key)) == 1
    assert emulator_stats(emulator)["POST /assistant"] == 1
    assert [row[2] for row in active_mappings(state.pool)] == [live(emulator, key)[0]["id"]]


def test_failed_create_waits_out_the_grace_period_then_creates_once(
    specs: SpecDir, controller: Controller, emulator: str
) -> None:
    doc = org_doc("acme", assistants={"inbound": {"name": "Front desk"}})
    specs.write(doc)
    key = key_of(doc)
    fault(emulator, method="POST", path="/assistant", mode="error", status=503, times=1)

    first = controller.apply(load_tree(specs.root))  # outcome unknown: no second POST now
    assert "outcome unknown" in (first.failed[0].error or "")
    assert emulator_stats(emulator)["POST /assistant"] == 1
    assert first.counts()["create"] == 2  # what took effect: org row and credential only

    waiting = controller.apply(load_tree(specs.root))  # still inside the grace period
    assert "waiting up to 60s" in (waiting.failed[0].error or "")
    assert emulator_stats(emulator)["POST /assistant"] == 1

    controller.create_grace_s = 0  # the grace period is over
    assert controller.apply(load_tree(specs.root)).ok
    assert emulator_stats(emulator)["POST /assistant"] == 2
    assert len(live(emulator, key)) == 1


def test_crash_between_create_and_record_adopts_next_run(
    specs: SpecDir,
    controller: Controller,
    emulator: str,
    state: StateWriter,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    doc = org_doc("acme", assistants={"inbound": {"name": "Front desk"}})
    specs.write(doc)

    def crash(*_a: object, **_k: object) -> None:
        raise KeyboardInterrupt  # the process dies after the POST, before Postgres records it

    loaded = load_tree(specs.root)
    with monkeypatch.context() as patched, pytest.raises(KeyboardInterrupt):
        patched.setattr(AssistantWriter, "record", crash)
        controller.apply(loaded)
    with state.pool.connection() as conn:
        assert conn.execute("SELECT status FROM assistants").fetchall() == [("creating",)]

    report = controller.apply(load_tree(specs.root))
    assert report.ok
    assert report.counts() == {"create": 0, "update": 0, "delete": 0, "adopt": 1}
    assert len(live(emulator, key_of(doc))) == 1


def test_concurrent_replicas_never_duplicate(
    specs: SpecDir, controller: Controller, emulator: str
) -> None:
    docs = [org_doc(f"org-{i}") for i in range(4)]
    for doc in docs:
        specs.write(doc)
    loaded = load_tree(specs.root)
    fault(emulator, method="POST", path="/assistant", mode="delay", delay_ms=50, times=100)

    results = []
    threads = [
        threading.Thread(target=lambda: results.append(controller.apply(loaded))) for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for doc in docs:
        tagged = live(emulator, key_of(doc))
        assert sorted(a["metadata"]["role"] for a in tagged) == ["inbound", "outbound"]
    assert emulator_stats(emulator)["POST /assistant"] == 8
    assert not controller.plan(loaded).has_changes


def test_one_failing_org_does_not_stop_the_others(
    specs: SpecDir, controller: Controller, emulator: str, state: StateWriter
) -> None:
    good = org_doc("good")
    bad = org_doc("bad", api_key="invalid-key-for-bad")
    specs.write(good)
    specs.write(bad)
    report = controller.apply(load_tree(specs.root))
    assert [o.slug for o in report.failed] == ["bad"]
    assert "rejected the API key" in (report.failed[0].error or "")
    assert "invalid-key-for-bad" not in (report.failed[0].error or "")
    assert len(live(emulator, key_of(good))) == 2
    with state.pool.connection() as conn:
        rows = dict(conn.execute("SELECT slug, status FROM organizations").fetchall())
        verification = conn.execute(
            "SELECT verification_error FROM org_credentials c JOIN organizations o"
            " ON o.id = c.org_id WHERE o.slug = 'bad'"
        ).fetchone()
        runs = conn.execute("SELECT orgs_total, orgs_failed FROM reconcile_runs").fetchall()
    assert rows == {"good": "Ready", "bad": "Failed"}
    assert verification is not None and "401" in verification[0]
    assert runs == [(2, 1)]


def test_vapi_outage_fails_the_org_without_partial_damage(
    specs: SpecDir, controller: Controller, emulator: str, state: StateWriter
) -> None:
    doc = org_doc("acme")
    specs.write(doc)
    fault(emulator, method="GET", path="/assistant", mode="error", status=503, times=10)
    report = controller.apply(load_tree(specs.root))
    assert not report.ok
    assert "503" in (report.failed[0].error or "")
    assert writes(emulator) == 0
    assert active_mappings(state.pool) == []
    clear_faults(emulator)
    assert controller.apply(load_tree(specs.root)).ok
    assert len(active_mappings(state.pool)) == 2


def test_credentials_stored_encrypted_and_restored_on_change(
    specs: SpecDir, controller: Controller, state: StateWriter
) -> None:
    doc = org_doc(
        "acme", extra_credentials={"twilio": {"accountSid": "AC123", "authToken": "tw-secret-1"}}
    )
    specs.write(doc)
    assert controller.apply(load_tree(specs.root)).ok
    with state.pool.connection() as conn:
        rows = conn.execute("SELECT provider, encrypted_config FROM org_credentials").fetchall()
    assert {p for p, _ in rows} == {"vapi", "twilio"}
    assert all("tw-secret-1" not in enc and enc.startswith("v1:") for _, enc in rows)
    plain = controller.key.decrypt(dict(rows)["twilio"], aad=f"{doc['metadata']['id']}:twilio")
    assert plain == {"accountSid": "AC123", "authToken": "tw-secret-1"}

    doc["spec"]["credentials"]["twilio"]["authToken"] = "tw-secret-2"
    specs.write(doc)
    report = controller.apply(load_tree(specs.root))
    kinds = [(a.kind, getattr(a, "provider", None)) for a in report.outcomes[0].plan.actions]  # type: ignore[union-attr]
    assert kinds == [("update", "twilio")]
    with state.pool.connection() as conn:
        (enc,) = conn.execute(
            "SELECT encrypted_config FROM org_credentials WHERE provider='twilio'"
        ).fetchone()
    assert (
        controller.key.decrypt(enc, aad=f"{doc['metadata']['id']}:twilio")["authToken"]
        == "tw-secret-2"
    )


def test_prune_deletes_removed_role_only_when_asked(
    specs: SpecDir, controller: Controller, emulator: str, state: StateWriter
) -> None:
    doc = org_doc("acme")
    specs.write(doc)
    assert controller.apply(load_tree(specs.root)).ok
    del doc["spec"]["assistants"]["outbound"]
    specs.write(doc)
    kept = controller.apply(load_tree(specs.root))
    assert kept.ok and emulator_stats(emulator)["DELETE /assistant/{id}"] == 0
    assert any("--prune" in w for w in kept.outcomes[0].plan.warnings)  # type: ignore[union-attr]
    pruned = controller.apply(load_tree(specs.root), prune=True)
    assert pruned.ok and emulator_stats(emulator)["DELETE /assistant/{id}"] == 1
    assert [row[1] for row in active_mappings(state.pool)] == ["inbound"]


def test_two_specs_sharing_one_vapi_account_are_refused(
    specs: SpecDir, controller: Controller, emulator: str
) -> None:
    specs.write(org_doc("acme", api_key="shared-key-123"))
    specs.write(org_doc("globex", api_key="shared-key-123"))
    specs.write(org_doc("initech"))
    report = controller.apply(load_tree(specs.root))
    failed = {o.slug: o.error for o in report.failed}
    assert set(failed) == {"acme", "globex"}
    assert "shares its Vapi API key with globex" in (failed["acme"] or "")
    assert "shared-key-123" not in str(failed)
    assert live(emulator, "shared-key-123") == []  # nothing written to the shared account
    assert emulator_stats(emulator)["POST /assistant"] == 2  # initech converged


def test_org_without_assistants_or_vapi_key_converges(
    specs: SpecDir, controller: Controller, emulator: str
) -> None:
    doc = org_doc("quiet", assistants={})
    doc["spec"]["credentials"] = {"resend": {"apiKey": "re_123"}}
    specs.write(doc)
    report = controller.apply(load_tree(specs.root))
    assert report.ok, [o.error for o in report.failed]
    assert report.counts()["create"] == 2  # org row + resend credential
    assert emulator_stats(emulator)["GET /assistant"] == 0
    assert not controller.plan(load_tree(specs.root)).has_changes


def test_replica_that_lost_its_lock_writes_nothing_to_vapi(
    specs: SpecDir,
    controller: Controller,
    emulator: str,
    state: StateWriter,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    specs.write(org_doc("acme"))
    loaded = load_tree(specs.root)
    real = OrgWriter.upsert

    def upsert_then_lose_lock(self: OrgWriter, *args: object) -> None:
        real(self, *args)  # type: ignore[arg-type]
        with state.pool.connection() as conn:  # e.g. an idle-transaction timeout, a failover
            # only this database's: the other pytest-xdist workers share the server
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory'"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            )

    monkeypatch.setattr(OrgWriter, "upsert", upsert_then_lose_lock)
    report = controller.apply(loaded)
    assert "lost the org lock" in (report.failed[0].error or "")
    assert writes(emulator) == 0


def test_create_committed_after_the_client_gave_up_is_adopted_not_duplicated(
    specs: SpecDir, state: StateWriter, emulator: str, master_key: MasterKey
) -> None:
    doc = org_doc("acme", assistants={"inbound": {"name": "Front desk"}})
    specs.write(doc)
    loaded = load_tree(specs.root)
    fault(emulator, method="POST", path="/assistant", mode="late_commit", delay_ms=800, times=1)
    with http_client(emulator, timeout_s=0.3) as http:
        ctl = Controller(state, http, master_key, concurrency=1, retry=FAST_RETRY)
        first = ctl.apply(loaded)  # the POST times out; the list shows nothing yet
        assert "outcome unknown" in (first.failed[0].error or "")
        second = ctl.apply(loaded)  # still nothing tagged, but inside the grace period
        assert "waiting" in (second.failed[0].error or "")
        time.sleep(1.0)  # the slow backend commits
        third = ctl.apply(loaded)
    assert third.ok
    assert third.counts()["adopt"] == 1
    assert emulator_stats(emulator)["POST /assistant"] == 1
    assert len(live(emulator, key_of(doc))) == 1


def test_account_with_another_orgs_assistants_fails_plan_and_apply(
    specs: SpecDir, controller: Controller, emulator: str
) -> None:
    doc = org_doc("acme")
    key = key_of(doc)
    specs.write(doc)
    theirs = {"managedBy": "reconciler", "orgId": "11111111-2222-4333-8444-555555555555"}
    create_assistant(emulator, key, {"name": "Theirs", "metadata": {**theirs, "role": "inbound"}})
    plan = controller.plan(load_tree(specs.root))
    assert "refusing to manage it" in (plan.failed[0].error or "")
    applied = controller.apply(load_tree(specs.root))
    assert "refusing to manage it" in (applied.failed[0].error or "")
    assert emulator_stats(emulator)["POST /assistant"] == 1  # only the foreign one
