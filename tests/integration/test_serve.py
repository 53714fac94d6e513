"""`reconciler serve` as a real process: real Postgres, the Vapi emulator over HTTP, signals,
the HTTP endpoints, backoff, stalled specs, a git source, the embedded Postgres, JSON logs.
Every wait polls up to a deadline; every process started is killed in the fixture teardown."""

from __future__ import annotations

import copy
import itertools
import json
import re
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pyrage
import pytest

from reconciler.controller.loop import LoopConfig, ReconcileLoop
from reconciler.controller.run import STOPPING, Controller
from reconciler.secrets import sops
from reconciler.secrets.crypto import MasterKey
from reconciler.state.store import StateWriter
from tests.helpers import (
    SpecDir,
    clear_faults,
    emulator_stats,
    fault,
    git,
    key_of,
    live,
    org_doc,
    writes,
)
from tests.helpers.serve import (
    ServeLauncher,
    all_ready,
    assert_clean_log,
    assert_no_secret,
    base_env,
    condition,
    edit_spec,
    has_first_message,
    orgs_by_slug,
    query,
    run_cli,
    schedule,
    secrets_of,
    session_env,
    wait_until,
    write_spec,
)

INTERVAL_S = 1.0
CONVERGE_WITHIN_S = 20.0


@pytest.fixture
def env(
    database_url: str,
    master_key: MasterKey,
    emulator: str,
    age_identity: tuple[Path, str],
    pool: Any,  # truncates the tables
    tmp_path: Path,
) -> dict[str, str]:
    return session_env(
        database_url, master_key.to_b64(), emulator, age_identity[0], tmp_path / "data"
    )


@pytest.fixture
def launcher(env: dict[str, str], tmp_path: Path) -> Iterator[ServeLauncher]:
    launcher = ServeLauncher(tmp_path, env)
    try:
        yield launcher
    finally:
        launcher.close()


def _id(doc: dict[str, Any]) -> str:
    org_id: str = doc["metadata"]["id"]
    return org_id


def _secret_doc(slug: str) -> dict[str, Any]:
    """An org whose secret values cannot appear anywhere by chance."""
    token = time.monotonic_ns()
    return org_doc(slug, api_key=f"key-{slug}-SECRET{token}", secret=f"whsec-{slug}-SECRET{token}")


def _converged(emulator: str, database_url: str, docs: list[dict[str, Any]]) -> bool:
    slugs = [d["metadata"]["slug"] for d in docs]
    return all(len(live(emulator, key_of(d))) == 2 for d in docs) and all_ready(database_url, slugs)


def _wait_converged(emulator: str, database_url: str, docs: list[dict[str, Any]]) -> None:
    wait_until(
        lambda: _converged(emulator, database_url, docs),
        CONVERGE_WITHIN_S,
        "every org has its 2 assistants and is Ready",
        every_s=0.2,
    )


def _db_now(database_url: str) -> Any:
    return query(database_url, "SELECT now() AS now")[0]["now"]


# -- 1. start and converge -------------------------------------------------------------------


def test_serve_converges_and_reconciler_status_reports_it(
    launcher: ServeLauncher,
    specs: SpecDir,
    emulator: str,
    database_url: str,
    env: dict[str, str],
) -> None:
    docs = [_secret_doc("acme"), _secret_doc("beta")]
    for doc in docs:
        specs.write(doc)
    serve = launcher.start(str(specs.root))

    health = serve.get("/healthz")
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    ready = serve.get("/readyz")
    assert ready.status_code == 200 and ready.json() == {"status": "ready"}
    _wait_converged(emulator, database_url, docs)

    rows = orgs_by_slug(database_url)
    for doc in docs:
        row = rows[doc["metadata"]["slug"]]
        assert row["status"] == "Ready" and row["status_message"] is None
        assert row["last_reconciled_at"] is not None
        ready_c = condition(row, "Ready")
        assert ready_c["status"] == "True"
        assert ready_c["reason"] in ("Applied", "UpToDate")
        assert condition(row, "Reconciling")["status"] == "False"
        assert condition(row, "Stalled")["status"] == "False"
        names = sorted(a["name"] for a in live(emulator, key_of(doc)))
        assert names == sorted(a["name"] for a in doc["spec"]["assistants"].values())
    assert emulator_stats(emulator)["POST /assistant"] == 4

    text = run_cli(env, "status")
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    for slug in ("acme", "beta"):
        [line] = [ln for ln in lines if ln.startswith(f"{slug} ")]
        assert re.match(rf"^{slug}\s+Ready\s", line), line

    as_json = run_cli(env, "status", "--format", "json")
    assert as_json.returncode == 0, as_json.stderr
    views = json.loads(as_json.stdout)["orgs"]
    assert [v["slug"] for v in views] == ["acme", "beta"]
    for view, doc in zip(views, docs, strict=True):
        assert view["id"] == _id(doc) and view["status"] == "Ready"
        assert {c["type"]: c["status"] for c in view["conditions"]} == {
            "Ready": "True",
            "Reconciling": "False",
            "Stalled": "False",
        }
        ids = {a["id"] for a in live(emulator, key_of(doc))}
        assert {a["vapiAssistantId"] for a in view["assistants"]} == ids
        assert view["credentials"]["vapi"]["configured"] is True
        assert view["runs"], "the run history is empty"

    detail = run_cli(env, "status", "--org", "acme")
    assert detail.returncode == 0, detail.stderr
    out = detail.stdout
    assert out.splitlines()[0].split() == [
        "SLUG",
        "STATUS",
        "LAST",
        "RECONCILED",
        "REVISION",
        "MESSAGE",
    ]
    assert out.splitlines()[1].startswith("acme ")
    assert "beta" not in out
    assert re.search(r"^\s+Ready\s+True\s+(Applied|UpToDate)", out, re.M), out
    assert re.search(r"^\s+Stalled\s+False\s", out, re.M), out
    for a in live(emulator, key_of(docs[0])):
        assert a["id"] in out
    assert "credential vapi: configured" in out

    unknown = run_cli(env, "status", "--org", "nope")
    assert unknown.returncode == 1
    assert unknown.stdout == ""
    assert unknown.stderr.strip().splitlines() == ["error: no org with slug nope in Postgres"]

    secrets = [s for d in docs for s in secrets_of(d)]
    assert_no_secret(
        {"status": text.stdout, "status json": as_json.stdout, "status --org": out}, secrets
    )
    code, took = serve.stop()
    assert code == 0 and took < 10
    assert_clean_log(serve.log())


# -- 2. a spec change ------------------------------------------------------------------------


def test_spec_change_is_converged_within_an_interval(
    launcher: ServeLauncher, specs: SpecDir, emulator: str, database_url: str
) -> None:
    acme = org_doc("acme")
    specs.write(acme)
    serve = launcher.start(str(specs.root))
    _wait_converged(emulator, database_url, [acme])

    # Runs that change nothing write no status row (only a heartbeat every 10 minutes).
    wait_until(
        lambda: condition(orgs_by_slug(database_url)["acme"], "Ready")["reason"] == "UpToDate",
        3 * INTERVAL_S + 2.0,
        "a run that found nothing to do",
    )
    before = orgs_by_slug(database_url)["acme"]
    history = "SELECT count(*) AS n FROM org_runs WHERE org_id = %s"
    [runs_before] = query(database_url, history, (_id(acme),))
    for _ in range(2):
        claimed = schedule(database_url)[_id(acme)]["claimed_at"]
        wait_until(
            lambda c=claimed: schedule(database_url)[_id(acme)]["claimed_at"] > c,
            2 * INTERVAL_S + 2.0,
            "acme is reconciled again",
        )
    after = orgs_by_slug(database_url)["acme"]
    assert after["last_reconciled_at"] == before["last_reconciled_at"]
    assert after["conditions"] == before["conditions"]
    assert query(database_url, history, (_id(acme),)) == [runs_before]
    patches = emulator_stats(emulator)["PATCH /assistant/{id}"]

    changed = copy.deepcopy(acme)
    changed["spec"]["assistants"]["inbound"]["firstMessage"] = "Welcome to Acme, v2"
    write_spec(specs, changed)  # re-encrypted, renamed into place
    wait_until(
        lambda: has_first_message(emulator, key_of(acme), "Welcome to Acme, v2"),
        2 * INTERVAL_S + 3.0,
        "the new firstMessage reaches Vapi",
        every_s=0.05,
    )
    # one PATCH for the change, and later runs find nothing to do
    time.sleep(2 * INTERVAL_S)
    assert emulator_stats(emulator)["PATCH /assistant/{id}"] == patches + 1
    [run] = [
        r
        for r in query(
            database_url,
            "SELECT changes FROM org_runs WHERE org_id = %s ORDER BY id",
            (_id(acme),),
        )
        if r["changes"].get("update")
    ]
    assert run["changes"] == {"update": 1}
    assert orgs_by_slug(database_url)["acme"]["status"] == "Ready"
    assert serve.stop()[0] == 0
    assert_clean_log(serve.log())


# -- 3. backoff --------------------------------------------------------------------------------


def test_failing_org_backs_off_while_a_healthy_org_keeps_its_interval(
    launcher: ServeLauncher, specs: SpecDir, emulator: str, database_url: str
) -> None:
    good, bad = org_doc("good"), org_doc("bad")
    specs.write(good)
    bad_path = specs.write(bad)
    serve = launcher.start(str(specs.root), env={"RECONCILER_BACKOFF_MAX": "60"})
    _wait_converged(emulator, database_url, [good, bad])

    # Every PATCH of bad's inbound assistant fails (400: no retry inside one run).
    [row] = query(
        database_url,
        "SELECT vapi_assistant_id FROM assistants WHERE org_id = %s AND role = 'inbound'",
        (_id(bad),),
    )
    fault(
        emulator,
        method="PATCH",
        path=f"/assistant/{row['vapi_assistant_id']}",
        mode="error",
        status=400,
        times=None,
    )
    edit_spec(bad_path, "Hello!", "Hello again!")

    seen: dict[int, dict[str, Any]] = {}
    good_claims: set[Any] = set()
    deadline = time.monotonic() + 30
    while True:
        rows = schedule(database_url)
        b, g = rows[_id(bad)], rows[_id(good)]
        assert g["failures"] == 0
        good_claims.add(g["claimed_at"])
        if b["failures"] > 0:
            seen.setdefault(b["failures"], b)
        if b["failures"] >= 4:
            break
        assert time.monotonic() < deadline, f"bad reached only {b['failures']} failures"
        time.sleep(0.05)

    assert sorted(seen) == [1, 2, 3, 4], "a failure count was skipped"
    waits = [(seen[k]["next_run_at"] - seen[k]["claimed_at"]).total_seconds() for k in (1, 2, 3, 4)]
    gaps = [(seen[k + 1]["claimed_at"] - seen[k]["claimed_at"]).total_seconds() for k in (1, 2, 3)]
    for earlier, later in itertools.pairwise(waits):
        assert later > 1.5 * earlier, f"the backoff does not grow: {waits}"
    assert waits[3] >= 6.0, waits  # base 1 s, doubled per failure: 1, 2, 4, 8
    # claims happen on ticks (one interval, with jitter): a gap is its wait rounded up to a tick,
    # so two successive gaps may round to the same tick count, never shrink by a tick or more
    tick = INTERVAL_S * 1.1
    for earlier, later in itertools.pairwise(gaps):
        assert later > earlier - tick, f"attempts get more frequent: {gaps}"
    assert gaps[-1] > gaps[0] + tick, f"attempts do not get rarer: {gaps}"

    # meanwhile the healthy org was claimed about once per interval
    first, last = seen[1]["claimed_at"], seen[4]["claimed_at"]
    claims = sorted(c for c in good_claims if c is not None and first <= c <= last)
    window = (last - first).total_seconds()  # about 7 s: 1 + 2 + 4
    assert len(claims) >= window / (INTERVAL_S * 1.2), (window, claims)
    longest = max((b - a).total_seconds() for a, b in itertools.pairwise(claims))
    assert longest < 2.5 * INTERVAL_S, claims
    org_rows = orgs_by_slug(database_url)
    assert org_rows["good"]["status"] == "Ready"
    failing = org_rows["bad"]
    assert failing["status"] == "Failed"
    assert condition(failing, "Ready")["status"] == "False"
    assert condition(failing, "Reconciling") == {
        "type": "Reconciling",
        "status": "True",
        "reason": "RetryScheduled",
        "message": "retrying with backoff",
    }
    assert condition(failing, "Stalled")["status"] == "False"

    # The fault goes; a trigger retries the backed-off org at once, not in its ~8 s backoff.
    assert schedule(database_url)[_id(bad)]["due_in_s"] > 4.0
    clear_faults(emulator)
    serve.send(signal.SIGHUP)
    wait_until(
        lambda: (
            schedule(database_url)[_id(bad)]["failures"] == 0
            and has_first_message(emulator, key_of(bad), "Hello again!")
        ),
        3.0,
        "the backed-off org is retried after SIGHUP and its failures reset",
    )
    wait_until(lambda: all_ready(database_url, ["good", "bad"]), 3.0, "both orgs Ready")
    assert serve.stop()[0] == 0
    assert_clean_log(serve.log())


# -- 4. stalled specs --------------------------------------------------------------------------


def test_broken_spec_files_stall_their_org_and_the_others_carry_on(
    launcher: ServeLauncher, specs: SpecDir, emulator: str, database_url: str
) -> None:
    acme, beta, gamma = org_doc("acme"), org_doc("beta"), org_doc("gamma")
    for doc in (acme, beta, gamma):
        specs.write(doc)
    serve = launcher.start(str(specs.root))
    _wait_converged(emulator, database_url, [acme, beta, gamma])

    other_key = str(pyrage.x25519.Identity.generate().to_public())
    write_spec(specs, beta, recipient=other_key)  # cannot be decrypted with our age key
    invalid = copy.deepcopy(gamma)
    invalid["metadata"]["bogus"] = "not a field"
    write_spec(specs, invalid)  # does not validate
    broken_at = _db_now(database_url)

    def stalled() -> bool:
        rows = orgs_by_slug(database_url)
        return {rows["beta"]["status"], rows["gamma"]["status"]} == {"Stalled"}

    wait_until(stalled, 2 * INTERVAL_S + 3.0, "beta and gamma are Stalled")
    rows = orgs_by_slug(database_url)
    for slug, reason in (("beta", "DecryptionFailed"), ("gamma", "SpecInvalid")):
        row = rows[slug]
        stall = condition(row, "Stalled")
        assert stall["status"] == "True" and stall["reason"] == reason, stall
        assert f"{slug}.yaml" in stall["message"], stall
        assert "\n" not in stall["message"]
        assert condition(row, "Ready")["status"] == "False"
        assert condition(row, "Reconciling")["status"] == "False"
        assert row["status_message"] == stall["message"]
        assert len(live(emulator, key_of(beta if slug == "beta" else gamma))) == 2

    # acme carries on: reconciled again after the breakage, still Ready
    wait_until(
        lambda: schedule(database_url)[_id(acme)]["claimed_at"] > broken_at,
        2 * INTERVAL_S + 2.0,
        "acme is still reconciled every interval",
    )
    assert orgs_by_slug(database_url)["acme"]["status"] == "Ready"
    assert emulator_stats(emulator)["DELETE /assistant/{id}"] == 0
    assert serve.stop()[0] == 0
    assert_clean_log(serve.log())


def test_loop_decrypts_only_new_or_changed_files(
    controller: Controller, state: StateWriter, specs: SpecDir, emulator: str
) -> None:
    acme, beta, gamma = org_doc("acme"), org_doc("beta"), org_doc("gamma")
    acme_path = specs.write(acme)
    specs.write(beta)
    other_key = str(pyrage.x25519.Identity.generate().to_public())
    write_spec(specs, gamma, recipient=other_key)
    calls: list[str] = []

    def counting(path: Path, data: bytes) -> bytes:
        calls.append(path.name)
        return sops.decrypt_bytes(path, data)

    config = LoopConfig(specs.root, interval_s=60)
    loop = ReconcileLoop(controller, state, config, replica="test", decrypt=counting)
    first = loop.run_once()
    assert sorted(calls) == ["acme.yaml", "beta.yaml", "gamma.yaml"]
    assert first is not None
    assert [p.name for p in first.failed_files] == ["gamma.yaml"]
    assert {o.slug for o in first.outcomes if o.ok and not o.skipped} == {"acme", "beta"}

    calls.clear()
    loop.run_once()  # nothing changed: no sops process at all, not even for the bad file
    assert calls == []

    edit_spec(acme_path, "Hello!", "Hello, changed")
    loop.run_once()
    assert calls == ["acme.yaml"]  # only the changed file
    assert has_first_message(emulator, key_of(acme), "Hello, changed")

    calls.clear()
    loop.trigger()  # asks to retry files that failed
    loop.run_once()
    assert calls == ["gamma.yaml"]


def test_a_key_changed_in_a_file_is_seen_by_the_next_run(
    controller: Controller, state: StateWriter, specs: SpecDir
) -> None:
    """The run's facts of each spec (its key's digest) are remembered by the file's digest
    between batches and runs: a file given another org's key is refused with it next run."""
    acme, beta = org_doc("acme"), org_doc("beta")
    specs.write(acme)
    specs.write(beta)
    loop = ReconcileLoop(controller, state, LoopConfig(specs.root, interval_s=60), replica="test")
    first = loop.run_once()
    assert first is not None and first.ok
    beta["spec"]["credentials"]["vapi"]["apiKey"] = key_of(acme)
    specs.write(beta)
    loop.trigger()
    again = loop.run_once()
    assert again is not None
    refused = {o.slug: o.error or "" for o in again.outcomes}
    assert "shares its Vapi API key with beta" in refused["acme"], refused
    assert "shares its Vapi API key with acme" in refused["beta"], refused


# -- 5. SIGTERM --------------------------------------------------------------------------------


def test_sigterm_while_idle_exits_zero(
    launcher: ServeLauncher, specs: SpecDir, emulator: str, database_url: str
) -> None:
    docs = [org_doc("acme"), org_doc("beta")]
    for doc in docs:
        specs.write(doc)
    serve = launcher.start(str(specs.root), interval="60s")
    _wait_converged(emulator, database_url, docs)
    code, took = serve.stop(signal.SIGTERM)
    assert code == 0
    assert took < 10.0
    log = serve.log()
    assert "SIGTERM: finishing the org in hand, then exiting" in log
    assert any(ln.endswith("INFO reconciler.serve: stopped") for ln in log.splitlines()), log
    assert_clean_log(log)


def test_sigterm_during_a_run_finishes_the_org_in_hand_and_releases_the_rest(
    launcher: ServeLauncher, specs: SpecDir, emulator: str, database_url: str
) -> None:
    docs = [org_doc("acme"), org_doc("beta")]
    for doc in docs:
        specs.write(doc)
    # Each account listing takes 2 s; one org at a time: the run is surely in progress.
    fault(emulator, method="GET", path="/assistant", mode="delay", delay_ms=2000, times=None)
    serve = launcher.start(
        str(specs.root),
        interval="60s",
        env={"RECONCILER_CONCURRENCY": "1", "RECONCILER_REPLICA_ID": "replica-a"},
    )
    wait_until(
        lambda: emulator_stats(emulator)["GET /assistant"] >= 1,
        10.0,
        "the first org's listing is in flight",
        every_s=0.02,
    )
    code, took = serve.stop(signal.SIGTERM)
    assert code == 0
    assert took < 10.0
    log = serve.log()
    assert "stopped" in log and "still in progress" not in log, log
    assert_clean_log(log)

    rows = schedule(database_url)
    assert sorted(rows) == sorted(_id(d) for d in docs)
    done = [r for r in rows.values() if r["claimed_by"] == "replica-a"]
    released = [r for r in rows.values() if r["claimed_by"] is None]
    assert len(done) == 1 and len(released) == 1, rows
    assert released[0]["due_in_s"] <= 0.0  # due now, for whichever replica comes next
    finished = orgs_by_slug(database_url)
    assert [r["id"] for r in finished.values() if r["status"] == "Ready"] == [done[0]["org_id"]]
    assert released[0]["org_id"] not in {r["id"] for r in finished.values()}


def test_loop_releases_claimed_orgs_it_does_not_start_when_stopping(
    controller: Controller,
    state: StateWriter,
    specs: SpecDir,
    emulator: str,
    database_url: str,
) -> None:
    docs = [org_doc("acme"), org_doc("beta")]
    for doc in docs:
        specs.write(doc)
    loop = ReconcileLoop(controller, state, LoopConfig(specs.root, interval_s=60), replica="r1")
    controller.stopping.set()
    assert loop.run_once() is None  # stopping before the run: nothing is even claimed
    assert schedule(database_url) == {}
    controller.stopping.clear()
    claim = loop.schedule.claim

    def claim_then_stop(*args: Any, **kwargs: Any) -> set[str]:
        claimed = claim(*args, **kwargs)
        controller.stopping.set()  # SIGTERM right after the claim, before any org started
        return claimed

    loop.schedule.claim = claim_then_stop  # type: ignore[method-assign]
    report = loop.run_once()
    loop.schedule.claim = claim  # type: ignore[method-assign]
    assert report is not None
    assert sorted(o.slug for o in report.outcomes) == ["acme", "beta"]
    assert all(o.skipped == STOPPING for o in report.outcomes)
    rows = schedule(database_url)
    assert len(rows) == 2
    for row in rows.values():
        assert row["claimed_by"] is None and row["due_in_s"] <= 0.0, row
    assert writes(emulator) == 0

    # not stopping: the same claim pushes the orgs most of an interval ahead
    controller.stopping.clear()
    report = loop.run_once()
    assert report is not None and report.ok
    for row in schedule(database_url).values():
        assert row["claimed_by"] == "r1" and row["due_in_s"] > 40.0, row


# -- 6. the HTTP API ---------------------------------------------------------------------------


def test_api_is_off_without_an_admin_token(
    launcher: ServeLauncher, specs: SpecDir, emulator: str, database_url: str
) -> None:
    acme = org_doc("acme")
    specs.write(acme)
    serve = launcher.start(str(specs.root), interval="60s")
    _wait_converged(emulator, database_url, [acme])
    for token in (None, "anything"):
        assert serve.post("/api/reconcile", token=token).status_code == 404
        assert serve.get("/api/orgs", token=token).status_code == 404
        assert serve.get("/api/orgs/acme", token=token).status_code == 404
    assert serve.get("/healthz").status_code == 200
    assert serve.get("/metrics").status_code == 200
    assert serve.stop()[0] == 0


def test_api_auth_trigger_orgs_and_no_secret_anywhere(
    launcher: ServeLauncher, specs: SpecDir, emulator: str, database_url: str
) -> None:
    acme, beta = _secret_doc("acme"), _secret_doc("beta")
    acme_path = specs.write(acme)
    beta_path = specs.write(beta)
    token = "admin-token-for-tests"
    serve = launcher.start(str(specs.root), interval="60s", env={"RECONCILER_ADMIN_TOKEN": token})
    _wait_converged(emulator, database_url, [acme, beta])

    for wrong in (None, "wrong", token + "x", token[:-1]):
        assert serve.post("/api/reconcile", token=wrong).status_code == 401
        assert serve.get("/api/orgs", token=wrong).status_code == 401
        assert serve.get("/api/orgs/acme", token=wrong).status_code == 401
    for header in (token, "Bearer", f"Basic {token}", f"bearer  {token}"):
        answer = serve.http.get("/api/orgs", headers={"Authorization": header})
        assert answer.status_code == 401, header
    lower = serve.http.get("/api/orgs", headers={"Authorization": f"bearer {token}"})
    assert lower.status_code == 200  # the scheme is case-insensitive (RFC 7235)

    # beta's next PATCH fails with an answer that echoes its secrets (as a careless API might)
    [row] = query(
        database_url,
        "SELECT vapi_assistant_id FROM assistants WHERE org_id = %s AND role = 'inbound'",
        (_id(beta),),
    )
    echo = f"rejected key {key_of(beta)} and secret {secrets_of(beta)[1]}"
    fault(
        emulator,
        method="PATCH",
        path=f"/assistant/{row['vapi_assistant_id']}",
        mode="error",
        status=400,
        times=None,
        body={"message": [echo], "error": "Bad Request", "statusCode": 400},
    )
    edit_spec(beta_path, "Hello!", "Hello, beta")
    edit_spec(acme_path, "Hello!", "Hello via the API")
    started = time.monotonic()
    answer = serve.post("/api/reconcile", token=token)
    assert answer.status_code == 202 and answer.json() == {"status": "reconcile triggered"}
    wait_until(
        lambda: has_first_message(emulator, key_of(acme), "Hello via the API"),
        5.0,
        "the triggered run applies the change (the next interval is 60 s away)",
        every_s=0.05,
    )
    assert time.monotonic() - started < 10.0
    wait_until(lambda: orgs_by_slug(database_url)["beta"]["status"] == "Failed", 5.0, "beta failed")

    listing = serve.get("/api/orgs", token=token)
    assert listing.status_code == 200
    orgs = listing.json()["orgs"]
    assert [o["slug"] for o in orgs] == ["acme", "beta"]
    assert [o["status"] for o in orgs] == ["Ready", "Failed"]
    assert "rejected key" in orgs[1]["message"]  # the echo reached the status, masked
    one = serve.get("/api/orgs/acme", token=token)
    assert one.status_code == 200
    assert one.json()["id"] == _id(acme) and one.json()["slug"] == "acme"
    assert len(one.json()["assistants"]) == 2
    assert one.json()["credentials"]["vapi"]["configured"] is True
    unknown = serve.get("/api/orgs/nope", token=token)
    assert unknown.status_code == 404 and "error" in unknown.json()

    metrics = serve.get("/metrics")
    assert metrics.status_code == 200 and "reconciler_" in metrics.text
    code, _ = serve.stop()
    assert code == 0
    assert_no_secret(
        {
            "/api/orgs": listing.text,
            "/api/orgs/acme": one.text,
            "/api/orgs/nope": unknown.text,
            "/metrics": metrics.text,
            "stderr": serve.log(),
        },
        secrets_of(acme) + secrets_of(beta),
    )
    assert_clean_log(serve.log())


# -- 7. SIGHUP ---------------------------------------------------------------------------------


def test_sighup_triggers_a_run(
    launcher: ServeLauncher, specs: SpecDir, emulator: str, database_url: str
) -> None:
    acme = org_doc("acme")
    acme_path = specs.write(acme)
    serve = launcher.start(str(specs.root), interval="60s")
    _wait_converged(emulator, database_url, [acme])
    edit_spec(acme_path, "Hello!", "Hello after SIGHUP")
    serve.send(signal.SIGHUP)
    wait_until(
        lambda: has_first_message(emulator, key_of(acme), "Hello after SIGHUP"),
        5.0,
        "SIGHUP runs at once (the next interval is 60 s away)",
        every_s=0.05,
    )
    assert serve.proc.poll() is None, "SIGHUP stopped the process"
    assert "SIGHUP: reconciling now" in serve.log()
    assert serve.stop()[0] == 0
    assert_clean_log(serve.log())


# -- 9. git source -----------------------------------------------------------------------------


def test_git_source_applies_commits_and_records_revisions(
    launcher: ServeLauncher,
    tmp_path: Path,
    age_identity: tuple[Path, str],
    emulator: str,
    database_url: str,
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "--quiet", "--initial-branch", "main")
    specs = SpecDir(repo / "specs", age_identity[1])
    acme, beta = org_doc("acme"), org_doc("beta")
    acme_path = specs.write(acme)
    specs.write(beta)
    git(repo, "add", "-A")
    git(repo, "commit", "--quiet", "-m", "two orgs")
    first = git(repo, "rev-parse", "HEAD")

    serve = launcher.start("specs", "--git-url", str(repo), "--git-ref", "main")
    _wait_converged(emulator, database_url, [acme, beta])
    wait_until(
        lambda: all(
            r["last_applied_revision"] == first and r["last_attempted_revision"] == first
            for r in orgs_by_slug(database_url).values()
        ),
        5.0,
        "both orgs record the commit as applied",
    )

    edit_spec(acme_path, "Hello!", "Hello from commit two")
    git(repo, "commit", "--quiet", "-am", "acme greets differently")
    second = git(repo, "rev-parse", "HEAD")
    assert second != first
    wait_until(
        lambda: has_first_message(emulator, key_of(acme), "Hello from commit two"),
        2 * INTERVAL_S + 3.0,
        "the new commit is applied",
        every_s=0.05,
    )
    wait_until(
        lambda: (
            {r["last_applied_revision"] for r in orgs_by_slug(database_url).values()} == {second}
        ),
        2 * INTERVAL_S + 3.0,
        "both orgs move to the new revision",
    )
    assert serve.stop()[0] == 0
    assert_clean_log(serve.log())


def test_git_source_that_cannot_be_fetched_is_not_ready_with_a_readable_reason(
    launcher: ServeLauncher,
) -> None:
    url = "https://deploy:hunter2-PASSWORD@127.0.0.1:1/specs.git"
    serve = launcher.start("specs", "--git-url", url, "--git-ref", "main", wait_ready=False)

    def reason() -> str:
        if serve.status_code("/readyz") != 503:
            return ""
        problems = serve.get("/readyz").json()["problems"]
        return next((p for p in problems if "git" in p), "")

    text, _ = wait_until(reason, 15.0, "/readyz says why the git source failed")
    assert "\n" not in text
    assert "https://deploy:***@127.0.0.1:1/specs.git (main) failed:" in text
    assert "Failed to connect to 127.0.0.1 port 1" in text
    assert serve.get("/healthz").status_code == 200
    time.sleep(2 * INTERVAL_S)  # later runs fail the same way, the process stays up
    assert serve.status_code("/readyz") == 503
    code, _ = serve.stop()
    assert code == 0
    log = serve.log()
    assert "reconcile run failed: git " in log
    assert "hunter2-PASSWORD" not in log + text
    assert_clean_log(log)
    # the message names the git command that failed (a fetch), not an option of it
    assert text.startswith("git fetch of https://deploy:***@127.0.0.1:1/specs.git (main)"), text


# -- 10. the embedded Postgres shared with other commands --------------------------------------


def _postmaster_pid(data_dir: Path) -> int | None:
    try:
        return int((data_dir / "pgdata" / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


@pytest.fixture
def embedded_dir() -> Iterator[Path]:
    """A short path (the server's unix socket lives there); the server is gone at the end."""
    with tempfile.TemporaryDirectory(prefix="rs-emb-") as tmp:
        data_dir = Path(tmp)
        try:
            yield data_dir
        finally:
            pid = _postmaster_pid(data_dir)
            deadline = time.monotonic() + 15
            while pid is not None and _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if pid is not None and _alive(pid):
                from reconciler.state import embedded

                embedded.stop(data_dir)


def test_embedded_postgres_is_shared_with_status_and_plan_while_serving(
    tmp_path: Path,
    embedded_dir: Path,
    age_identity: tuple[Path, str],
    emulator: str,
    specs: SpecDir,
) -> None:
    env = base_env(
        VAPI_BASE_URL=emulator,
        RECONCILER_DATA_DIR=str(embedded_dir),
        SOPS_AGE_KEY_FILE=str(age_identity[0]),
        RECONCILER_CONCURRENCY="4",
        RECONCILER_ADMIN_TOKEN="embedded-admin",
    )
    acme = org_doc("acme")
    acme_path = specs.write(acme)
    launcher = ServeLauncher(tmp_path, env)
    try:
        serve = launcher.start(str(specs.root), wait_ready=False)
        serve.wait_ready(60.0)  # the first start of the embedded server runs initdb
        wait_until(
            lambda: (
                len(live(emulator, key_of(acme))) == 2
                and serve.get("/api/orgs/acme", token="embedded-admin").json().get("status")
                == "Ready"
            ),
            CONVERGE_WITHIN_S,
            "converged and Ready",
        )

        status = run_cli(env, "status")
        assert status.returncode == 0, status.stderr
        assert re.search(r"^acme\s+Ready\s", status.stdout, re.M), status.stdout
        plan = run_cli(env, "plan", str(specs.root), "--detailed-exitcode")
        assert plan.returncode == 0, plan.stdout + plan.stderr  # 0: nothing to change
        assert "0 to create, 0 to update, 0 to delete" in plan.stdout
        assert "Traceback" not in status.stderr + plan.stderr

        assert serve.get("/readyz").status_code == 200
        edit_spec(acme_path, "Hello!", "Hello, embedded")
        wait_until(
            lambda: has_first_message(emulator, key_of(acme), "Hello, embedded"),
            2 * INTERVAL_S + 3.0,
            "serve still converges after the other commands exited",
            every_s=0.05,
        )
        assert serve.get("/readyz").status_code == 200
        assert serve.stop()[0] == 0
        assert_clean_log(serve.log())
    finally:
        launcher.close()


# -- 11. JSON logs -----------------------------------------------------------------------------


def _parse_json_log(log: str) -> list[dict[str, Any]]:
    lines = []
    for line in log.splitlines():
        if not line.strip():
            continue
        try:
            lines.append(json.loads(line))
        except ValueError:
            pytest.fail(f"not a JSON log line: {line!r}")
    return lines


def test_json_log_lines_parse_with_time_level_logger_message(
    launcher: ServeLauncher, specs: SpecDir, emulator: str, database_url: str
) -> None:
    acme = org_doc("acme")
    specs.write(acme)
    broken = org_doc("broken", api_key="invalid-key-the-emulator-rejects")
    specs.write(broken)
    serve = launcher.start(str(specs.root), "--log-format", "json")
    _wait_converged(emulator, database_url, [acme])
    wait_until(lambda: '"org": "broken"' in serve.log(), 5.0, "the failing org is logged")
    code, _ = serve.stop(signal.SIGINT)
    assert code == 0

    lines = _parse_json_log(serve.log())
    assert lines
    for line in lines:
        assert {"time", "level", "logger", "message"} <= set(line), line
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"]), line
        assert line["level"] in ("debug", "info", "warning", "error", "critical"), line
        assert "\n" not in line["message"]
    messages = [ln["message"] for ln in lines]
    assert any(m.startswith("serving on 127.0.0.1:") for m in messages)
    assert any(m.startswith("SIGINT: finishing") for m in messages)
    assert "stopped" in messages
    failing = [ln for ln in lines if ln.get("org") == "broken"]
    assert failing and all(ln["level"] == "warning" for ln in failing)


def test_json_logs_stay_json_when_a_startup_warning_is_printed(
    launcher: ServeLauncher, specs: SpecDir, emulator: str, database_url: str
) -> None:
    """More concurrency than the server's free connections allow: serve says so and carries
    on with less. In JSON mode that warning must be a JSON line too."""
    acme = org_doc("acme")
    specs.write(acme)
    serve = launcher.start(
        str(specs.root), "--log-format", "json", env={"RECONCILER_CONCURRENCY": "256"}
    )
    _wait_converged(emulator, database_url, [acme])
    assert serve.stop()[0] == 0
    log = serve.log()
    assert "RECONCILER_CONCURRENCY=256" in log  # the warning was given
    _parse_json_log(log)


# -- 12. webhooks through a real serve process -------------------------------------------------


def test_webhooks_through_serve_every_outcome_and_forwarding(
    launcher: ServeLauncher, specs: SpecDir, emulator: str, database_url: str
) -> None:
    """The endpoint as `serve` mounts it: both auth modes, replayed and cross-org signatures,
    the error outcomes, and forwarding to the org's own URL with the answer relayed."""
    import hashlib
    import hmac
    import json as jsonlib

    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from tests.helpers import served as serve_app

    received: list[tuple[dict[str, str], bytes]] = []

    async def hook(request: Request) -> Response:
        received.append((dict(request.headers), await request.body()))
        return Response(b'{"assistantId": "answered"}', 201, media_type="application/json")

    downstream = Starlette(routes=[Route("/hook", hook, methods=["POST"])])
    with serve_app(downstream) as down:
        acme, beta = _secret_doc("acme"), _secret_doc("beta")
        acme["spec"]["webhook"] = {"forwardUrl": f"{down}/hook"}
        specs.write(acme)
        specs.write(beta)
        # the downstream is on 127.0.0.1, which an org's forwardUrl reaches only when allowed
        serve = launcher.start(
            str(specs.root),
            interval="60s",
            env={"RECONCILER_FORWARD_ALLOW_NETWORKS": "127.0.0.0/8"},
        )
        _wait_converged(emulator, database_url, [acme, beta])
        ids = {
            slug: query(
                database_url,
                "SELECT vapi_assistant_id FROM assistant_org_mapping m JOIN organizations o"
                " ON o.id = m.org_id WHERE o.slug = %s AND assistant_role = 'inbound'"
                " AND inactive_at IS NULL",
                (slug,),
            )[0]["vapi_assistant_id"]
            for slug in ("acme", "beta")
        }
        secret = {
            d["metadata"]["slug"]: d["spec"]["credentials"]["vapi"]["webhookSecret"]
            for d in (acme, beta)
        }

        def body(slug: str) -> bytes:
            doc = {"message": {"type": "tool-calls", "call": {"assistantId": ids[slug]}}}
            return jsonlib.dumps(doc).encode()

        def signed(slug: str, key: str, at: float) -> dict[str, str]:
            stamp = str(int(at))
            mac = hmac.new(key.encode(), f"{stamp}.".encode() + body(slug), hashlib.sha256)
            return {"x-timestamp": stamp, "x-signature": mac.hexdigest()}

        def post(slug: str, headers: dict[str, str], data: bytes | None = None) -> httpx.Response:
            return serve.http.post(
                "/webhooks/vapi", content=body(slug) if data is None else data, headers=headers
            )

        now = time.time()
        # acme forwards: the downstream's status and body come back; no secret goes there
        answer = post("acme", {"x-vapi-secret": secret["acme"]})
        assert (answer.status_code, answer.json()) == (201, {"assistantId": "answered"})
        headers, forwarded = received[-1]
        assert forwarded == body("acme")
        assert headers["x-reconciler-org-slug"] == "acme"
        assert headers["x-reconciler-assistant-role"] == "inbound"
        assert "x-vapi-secret" not in headers and "x-signature" not in headers
        assert post("acme", signed("acme", secret["acme"], now)).status_code == 201
        assert post("acme", signed("acme", secret["acme"], now * 1000)).status_code == 201
        # beta has no forward URL (and none is set globally): 200 with the org
        answer = post("beta", signed("beta", secret["beta"], now))
        assert answer.status_code == 200 and answer.json()["slug"] == "beta"
        refused = {
            "wrong secret": post("acme", {"x-vapi-secret": "nope"}),
            "missing secret": post("acme", {}),
            "another org's secret": post("acme", {"x-vapi-secret": secret["beta"]}),
            "another org's signature": post("acme", signed("acme", secret["beta"], now)),
            "replayed signature": post("acme", signed("acme", secret["acme"], now - 600)),
        }
        for why, response in refused.items():
            assert response.status_code == 401, why
        unknown = jsonlib.dumps({"message": {"call": {"assistantId": "not-an-assistant"}}})
        assert post("acme", {"x-vapi-secret": "x"}, unknown.encode()).status_code == 404
        assert post("acme", {"x-vapi-secret": "x"}, b"not json").status_code == 400
        big = b"{" + b" " * (1024 * 1024 + 10) + b"}"
        assert post("acme", {"x-vapi-secret": "x"}, big).status_code == 413
        assert len(received) == 3  # only the verified acme webhooks were forwarded
        metrics = serve.get("/metrics").text
        assert 'reconciler_webhook_requests_total{outcome="forwarded"} 3.0' in metrics
        code, _ = serve.stop()
        assert code == 0
        assert_no_secret({"log": serve.log()}, [*secret.values(), key_of(acme), key_of(beta)])


def test_sigterm_with_a_vapi_call_hanging_still_exits_zero_within_ten_seconds(
    launcher: ServeLauncher, specs: SpecDir, emulator: str
) -> None:
    """The org in hand waits on a listing that takes 16 s: serve abandons it (as a crash
    would, which the engine survives) rather than overstay the 10 s."""
    specs.write(org_doc("acme"))
    fault(emulator, method="GET", path="/assistant", mode="delay", delay_ms=16000, times=None)
    serve = launcher.start(str(specs.root), interval="60s", env={"RECONCILER_CONCURRENCY": "1"})
    wait_until(
        lambda: emulator_stats(emulator)["GET /assistant"] >= 1, 10.0, "listing", every_s=0.02
    )
    code, took = serve.stop(signal.SIGTERM)
    assert code == 0 and took < 10.0, (code, took)
    assert "abandoned" in serve.log()
    assert_clean_log(serve.log())
