"""Status writes in Postgres (only on change, heartbeat, history of 10), the shared schedule
(claims, backoff, release) and secret rotation bookkeeping. Conditions, the spec cache and the
git source, which need no database: tests/unit/test_status_schedule.py."""

from __future__ import annotations

import threading
import uuid

import psycopg
import pytest

from reconciler.controller import status
from reconciler.controller.run import Controller
from reconciler.spec.loader import load_tree
from reconciler.state.schedule import Backoff, Schedule
from reconciler.state.store import RUNS_KEPT, OrgStatus, StateWriter
from tests.helpers import SpecDir, org_doc


def new_org(state: StateWriter, slug: str = "acme") -> str:
    org_id = str(uuid.uuid4())
    state.orgs.upsert(org_id, slug, slug.title())
    return org_id


def ready(org_id: str, **changes: int) -> OrgStatus:
    conditions = status.ready(changes)
    return OrgStatus(org_id, status.summary(conditions), None, conditions, changes=changes)


def runs(state: StateWriter, org_id: str) -> list[tuple[str, dict[str, int]]]:
    with state.pool.connection() as conn:
        return conn.execute(
            "SELECT outcome, changes FROM org_runs WHERE org_id = %s ORDER BY id", (org_id,)
        ).fetchall()


def column(state: StateWriter, sql: str, *params: object) -> object:
    with state.pool.connection() as conn:
        row = conn.execute(sql, params).fetchone()
    return row[0] if row else None


# -- status writes -------------------------------------------------------------------------------


def test_unchanged_status_is_not_written_again(state: StateWriter) -> None:
    org = new_org(state)
    assert state.orgs.finish([ready(org, create=2)]) == [org]
    assert state.orgs.finish([ready(org)]) == [org]  # Applied -> UpToDate: a change
    stamp = column(state, "SELECT last_reconciled_at FROM organizations WHERE id = %s", org)
    for _ in range(3):  # a converged org: nothing written
        assert state.orgs.finish([ready(org)]) == []
    assert column(state, "SELECT last_reconciled_at FROM organizations WHERE id = %s", org) == stamp
    assert [r[0] for r in runs(state, org)] == ["Ready", "Ready"]
    assert runs(state, org)[0][1] == {"create": 2}


def test_heartbeat_rewrites_an_unchanged_status_after_ten_minutes(state: StateWriter) -> None:
    org = new_org(state)
    state.orgs.finish([ready(org)])
    with state.pool.connection() as conn:
        conn.execute(
            "UPDATE organizations SET last_reconciled_at = now() - interval '11 minutes'"
            " WHERE id = %s",
            (org,),
        )
    assert state.orgs.finish([ready(org)]) == [org]
    assert state.orgs.finish([ready(org)]) == []


def test_condition_change_is_written_with_its_transition_time(state: StateWriter) -> None:
    org = new_org(state)
    state.orgs.finish([ready(org)])
    failed = status.failed("Vapi answered 500")
    assert state.orgs.finish([OrgStatus(org, "Failed", "Vapi answered 500", failed)]) == [org]
    with state.pool.connection() as conn:
        row = conn.execute(
            "SELECT status, conditions, status_changed_at FROM organizations WHERE id = %s",
            (org,),
        ).fetchone()
    assert row is not None
    assert row[0] == "Failed"
    by_type = {c["type"]: c for c in row[1]}
    assert by_type["Ready"]["status"] == "False"
    assert by_type["Reconciling"]["reason"] == "RetryScheduled"
    assert row[2] is not None


def test_history_keeps_the_last_ten_runs(state: StateWriter) -> None:
    org = new_org(state)
    for i in range(RUNS_KEPT + 5):
        state.orgs.finish([ready(org, update=i + 1)])
    kept = runs(state, org)
    assert len(kept) == RUNS_KEPT
    assert [r[1]["update"] for r in kept] == list(range(6, RUNS_KEPT + 6))


def test_revisions_attempted_and_applied(state: StateWriter) -> None:
    org = new_org(state)
    conditions = status.ready({})
    state.orgs.finish([OrgStatus(org, "Ready", None, conditions, revision="aaa", applied=True)])
    failed = status.failed("boom")
    state.orgs.finish([OrgStatus(org, "Failed", "boom", failed, revision="bbb", applied=False)])
    with state.pool.connection() as conn:
        row = conn.execute(
            "SELECT last_attempted_revision, last_applied_revision FROM organizations"
            " WHERE id = %s",
            (org,),
        ).fetchone()
    assert row == ("bbb", "aaa")


def test_status_read_holds_no_secret_and_lists_runs(state: StateWriter) -> None:
    org = new_org(state)
    state.credentials.store(org, "vapi", "sealed-value", "fp")
    state.orgs.finish([ready(org, create=1)])
    (row,) = state.orgs.statuses("acme")
    assert row["credentials"] == [
        {"provider": "vapi", "active": True, "last_verified_at": None, "verification_error": None}
    ]
    assert "sealed-value" not in repr(row)
    assert row["runs"][0]["changes"] == {"create": 1}
    assert state.orgs.statuses("nobody") == []


# -- secret rotation bookkeeping ----------------------------------------------------------------


def rotation(state: StateWriter, org: str) -> tuple[str | None, object]:
    with state.pool.connection() as conn:
        row = conn.execute(
            "SELECT previous_encrypted_config, previous_valid_until FROM org_credentials"
            " WHERE org_id = %s AND provider = 'vapi'",
            (org,),
        ).fetchone()
    assert row is not None
    return row[0], row[1]


def test_changed_vapi_credential_keeps_the_previous_until_the_org_is_ready(
    state: StateWriter,
) -> None:
    org = new_org(state)
    state.credentials.store(org, "vapi", "old-sealed", "fp-old")
    assert rotation(state, org) == (None, None)
    state.credentials.store(org, "vapi", "old-sealed", "fp-old")  # unchanged: nothing kept
    assert rotation(state, org) == (None, None)
    state.credentials.store(org, "vapi", "new-sealed", "fp-new")
    assert rotation(state, org) == ("old-sealed", None)  # in progress: no end yet
    failed = status.failed("PATCH failed")
    state.orgs.finish([OrgStatus(org, "Failed", "PATCH failed", failed)])
    assert rotation(state, org) == ("old-sealed", None)  # not complete while failing
    state.orgs.finish([ready(org)], secret_grace_s=300)
    previous, until = rotation(state, org)
    assert previous == "old-sealed" and until is not None
    state.orgs.finish([ready(org, update=1)], secret_grace_s=0)  # grace over: dropped
    with state.pool.connection() as conn:
        conn.execute(
            "UPDATE org_credentials SET previous_valid_until = now() - interval '1 second'"
            " WHERE org_id = %s",
            (org,),
        )
    state.orgs.finish([ready(org)])
    assert rotation(state, org) == (None, None)


def test_other_providers_keep_no_previous(state: StateWriter) -> None:
    org = new_org(state)
    state.credentials.store(org, "twilio", "a", "fp-a")
    state.credentials.store(org, "twilio", "b", "fp-b")
    with state.pool.connection() as conn:
        row = conn.execute(
            "SELECT previous_encrypted_config FROM org_credentials WHERE provider = 'twilio'"
        ).fetchone()
    assert row == (None,)


# -- the schedule ------------------------------------------------------------------------------


def test_claims_are_shared_between_replicas(state: StateWriter) -> None:
    orgs = {str(uuid.uuid4()): "d" for _ in range(10)}
    a, b = Schedule(state, "a"), Schedule(state, "b")
    first = a.claim(orgs, next_in_s=60)
    assert first == set(orgs)
    assert b.claim(orgs, next_in_s=60) == set()  # all pushed ahead: none due
    assert a.claim(orgs, next_in_s=60) == set()


def test_concurrent_claims_never_take_one_org_twice(state: StateWriter) -> None:
    orgs = {str(uuid.uuid4()): "d" for _ in range(200)}
    Schedule(state, "seed").claim(orgs, next_in_s=0)  # rows exist, all due again at once
    results: dict[str, set[str]] = {}
    barrier = threading.Barrier(4)

    def replica(name: str) -> None:
        barrier.wait()
        # each may take a quarter: without SKIP LOCKED all four would pick the same 50 rows
        results[name] = Schedule(state, name).claim(orgs, next_in_s=60, limit=50)

    threads = [threading.Thread(target=replica, args=(f"r{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    claimed = [org for got in results.values() for org in got]
    assert len(claimed) == len(set(claimed))  # none twice
    assert set(claimed) == set(orgs)  # none lost


def test_changed_spec_is_due_at_once(state: StateWriter) -> None:
    org = str(uuid.uuid4())
    schedule = Schedule(state, "a")
    assert schedule.claim({org: "v1"}, next_in_s=600) == {org}
    assert schedule.claim({org: "v1"}, next_in_s=600) == set()
    assert schedule.claim({org: "v2"}, next_in_s=600) == {org}


def next_in(state: StateWriter, org: str) -> float:
    value = column(
        state,
        "SELECT EXTRACT(EPOCH FROM next_run_at - now()) FROM org_schedule WHERE org_id = %s",
        org,
    )
    return float(value)  # type: ignore[arg-type]


def test_backoff_doubles_caps_and_resets(state: StateWriter) -> None:
    org = str(uuid.uuid4())
    schedule = Schedule(state, "a")
    backoff = Backoff(base_s=10, cap_s=60)
    schedule.claim({org: "d"}, next_in_s=0)
    waits = []
    for _ in range(5):
        schedule.finished({org: False}, backoff)
        waits.append(round(next_in(state, org)))
    assert waits == [10, 20, 40, 60, 60]
    assert column(state, "SELECT failures FROM org_schedule WHERE org_id = %s", org) == 5
    schedule.finished({org: True}, backoff)
    assert column(state, "SELECT failures FROM org_schedule WHERE org_id = %s", org) == 0


def test_release_hands_claimed_orgs_back(state: StateWriter) -> None:
    org = str(uuid.uuid4())
    a, b = Schedule(state, "a"), Schedule(state, "b")
    assert a.claim({org: "d"}, next_in_s=600) == {org}
    b.release([org])  # not b's: nothing happens
    assert b.claim({org: "d"}, next_in_s=600) == set()
    a.release([org])
    assert b.claim({org: "d"}, next_in_s=600) == {org}


# -- conditions ----------------------------------------------------------------------------------


def test_a_failing_spec_marks_its_known_org_stalled(
    controller: Controller, state: StateWriter, specs: SpecDir
) -> None:
    doc = org_doc("acme")
    specs.write(doc)
    assert controller.apply(load_tree(specs.root)).ok
    path = specs.root / "acme.yaml"
    path.write_text(path.read_text().replace("kind: Organization", "kind: Nope"))
    report = controller.apply(load_tree(specs.root))
    assert report.problems
    (row,) = state.orgs.statuses("acme")
    assert row["status"] == "Stalled"
    stalled = {c["type"]: c for c in row["conditions"]}["Stalled"]
    assert stalled["status"] == "True" and stalled["reason"] == "SpecInvalid"
    assert "acme.yaml" in stalled["message"]


def test_schedule_tables_truncated_between_tests(state: StateWriter) -> None:
    # guards the fixture: a leftover claim from another test would make claims flaky
    with state.pool.connection() as conn:
        count = conn.execute("SELECT count(*) FROM org_schedule").fetchone()
    assert count == (0,)
    with pytest.raises(psycopg.errors.ForeignKeyViolation), state.pool.connection() as conn:
        conn.execute(
            "INSERT INTO org_runs (org_id, outcome) VALUES (%s, 'Ready')", (str(uuid.uuid4()),)
        )


def test_overlapping_rotations_keep_the_secrets_still_in_flight(state: StateWriter) -> None:
    org = new_org(state)
    state.credentials.store(org, "vapi", "A", "fp-A")
    for token in "BCDE":
        state.credentials.store(org, "vapi", token, f"fp-{token}")
    assert rotation(state, org) == ("B C D", None)  # the last three replaced, oldest first
    state.orgs.finish([ready(org)], secret_grace_s=300)  # E reached every assistant
    state.credentials.store(org, "vapi", "F", "fp-F")
    assert rotation(state, org) == ("E", None)  # a new rotation: only E can be in flight


def test_a_key_shared_with_an_org_of_another_batch_is_refused(
    controller: Controller, state: StateWriter, specs: SpecDir
) -> None:
    """`serve` applies in batches: the shared-key check still sees every spec of the run."""
    specs.write(org_doc("acme", api_key="one-key-for-two"))
    specs.write(org_doc("bravo", api_key="one-key-for-two"))
    loaded = load_tree(specs.root)
    only_acme = type(loaded)([s for s in loaded.specs if s.org.metadata.slug == "acme"], [])
    report = controller.apply(only_acme, peers=loaded)
    (outcome,) = report.outcomes
    assert outcome.error is not None and "shares its Vapi API key with bravo" in outcome.error
    assert outcome.stalled == "SharedAccount"
    assert controller.apply(only_acme).ok  # without the peers it cannot know


def test_status_api_answers_404_for_a_slug_postgres_cannot_hold(state: StateWriter) -> None:
    """A NUL byte (or a lone surrogate) in the slug: no org has it, so 404 - never a 503 with
    the database's own text ("PostgreSQL text fields cannot contain NUL (0x00) bytes")."""
    import httpx

    from reconciler.server.app import ServerParts, build_app
    from tests.helpers import served

    new_org(state, "acme")
    auth = {"Authorization": "Bearer t0ken"}
    app = build_app(ServerParts(state, None, "t0ken"))
    with served(app) as url, httpx.Client(base_url=url, timeout=10) as client:
        assert client.get("/api/orgs/acme", headers=auth).status_code == 200
        for slug in ("acme%00", "%00", "a%00b", "%ED%A0%80"):
            answer = client.get(f"/api/orgs/{slug}", headers=auth)
            assert answer.status_code == 404, (slug, answer.text)
            assert answer.json() == {"error": "no org with this slug"}
        assert client.get("/readyz").status_code == 200  # no outage was recorded either
    assert state.orgs.statuses("acme\x00") == [] and state.orgs.live_id("acme\x00") is None
    assert state.assistants.owner("asst\x00") is None
