"""Outages and odd answers, against real Postgres and the emulator over HTTP: definite and
throttled creates, secrets drifted by hand, values Vapi does not keep, two keys on one account,
blocked plans, locks held elsewhere, and a database that dies mid-run."""

from __future__ import annotations

import io
import json
import threading
import time
import uuid
from typing import Any

import httpx
import pytest
from psycopg_pool import ConnectionPool
from rich.console import Console

from reconciler.cli.render import render_text, report_json
from reconciler.controller.run import Controller, _Look
from reconciler.engine.model import tag_of
from reconciler.secrets.crypto import MasterKey
from reconciler.state.db import open_pool
from reconciler.state.store import StateError, StateWriter
from reconciler.vapi.client import RetryPolicy, VapiReader, VapiWriter, http_client
from tests.helpers import (
    FAST_RETRY,
    add_key,
    create_assistant,
    emulator_stats,
    fault,
    key_of,
    live,
    loaded,
    org_doc,
    writes,
)
from tests.helpers.netproxy import cuttable


def rows(pool: ConnectionPool, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with pool.connection() as conn:
        return conn.execute(sql, params).fetchall()


# -- creates with a known or an unknown outcome ------------------------------------------------


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_a_definite_refusal_clears_the_pending_create_and_the_next_run_creates_at_once(
    controller: Controller, emulator: str, pool: ConnectionPool, status: int
) -> None:
    doc = org_doc("acme", assistants={"inbound": {"name": "Front desk"}})
    fault(emulator, method="POST", path="/assistant", mode="error", status=status, times=1)
    first = controller.apply(loaded(doc))
    [failed] = first.failed
    assert f"({status})" in (failed.error or "") or str(status) in (failed.error or "")
    assert "nothing was created" in (failed.error or "")
    assert rows(pool, "SELECT status FROM assistants") == []  # no `creating` mark left

    second = controller.apply(loaded(doc))  # no 60 s grace wait, no "unknown outcome"
    assert second.ok, [o.error for o in second.failed]
    assert second.counts()["create"] == 1
    assert len(live(emulator, key_of(doc))) == 1


def test_a_throttled_create_does_not_sleep_holding_the_lock_and_says_what_happens(
    state: StateWriter, emulator: str, master_key: MasterKey, pool: ConnectionPool
) -> None:
    doc = org_doc("acme", assistants={"inbound": {"name": "Front desk"}})
    fault(emulator, method="POST", path="/assistant", mode="error", status=429, retry_after="45")
    slept: list[float] = []
    retry = RetryPolicy(attempts=3, base_s=0.001, cap_s=0.01, sleep=slept.append)
    with http_client(emulator, timeout_s=5) as http:
        ctl = Controller(state, http, master_key, concurrency=1, retry=retry)
        started = time.monotonic()
        report = ctl.apply(loaded(doc))
    assert time.monotonic() - started < 5
    assert all(s < 1 for s in slept), slept  # never the 45 s Vapi asked for
    [failed] = report.failed
    message = failed.error or ""
    assert "429" in message and "next run" in message
    assert message.count("next run") == 1
    assert rows(pool, "SELECT status FROM assistants") == [("creating",)]  # still unknown


# -- drift in secrets, values Vapi does not keep -----------------------------------------------


def test_a_webhook_header_changed_in_the_dashboard_is_seen_and_restored(
    controller: Controller, emulator: str
) -> None:
    secret = f"whsec-{uuid.uuid4().hex}"
    doc = org_doc(
        "acme",
        secret=secret,
        assistants={"inbound": {"name": "Desk", "server": {"url": "https://hooks.example/v"}}},
    )
    assert controller.apply(loaded(doc)).ok
    [assistant] = live(emulator, key_of(doc))
    hand_typed = {"url": "https://hooks.example/v", "headers": {"x-vapi-secret": "typo"}}
    with httpx.Client(base_url=emulator) as http:
        VapiWriter(http, key_of(doc)).update_assistant(assistant["id"], {"server": hand_typed})

    plan = controller.plan(loaded(doc))
    [outcome] = plan.outcomes
    assert outcome.plan is not None
    [update] = outcome.plan.actions
    [change] = update.changes  # type: ignore[union-attr]
    assert (change.path, change.new, change.drift) == (
        "server.headers.x-vapi-secret",
        "(sensitive value drifted)",
        True,
    )
    assert secret not in repr(plan) and "typo" not in repr(plan)

    assert controller.apply(loaded(doc)).ok
    [assistant] = live(emulator, key_of(doc))
    assert assistant["server"]["headers"]["x-vapi-secret"] == secret
    assert not controller.plan(loaded(doc)).has_changes


def test_a_number_vapi_cannot_hold_is_reported_and_never_sent_again(
    controller: Controller, emulator: str
) -> None:
    # Vapi is a Node.js service: 2**53 + 1 comes back as 2**53 (the emulator does the same)
    fields = {
        "name": "Desk",
        "metadata": {"tenantRef": 2**53 + 1},
        "model": {"provider": "openai", "model": "gpt-4o", "temperature": 1.0},  # back as 1
    }
    doc = org_doc("acme", assistants={"inbound": fields})
    assert controller.apply(loaded(doc)).ok
    [assistant] = live(emulator, key_of(doc))
    assert assistant["metadata"]["tenantRef"] == 2**53  # really lost, so the test means it
    patches = emulator_stats(emulator)["PATCH /assistant/{id}"]
    for _ in range(2):
        report = controller.apply(loaded(doc))
        assert report.ok and not report.has_changes
        [outcome] = report.outcomes
        assert outcome.plan is not None
        assert [w.split(": Vapi")[0] for w in outcome.plan.warnings] == ["inbound: metadata"]
        assert outcome.plan.unchanged == ("inbound",)  # 1.0 against 1: the same number
    assert emulator_stats(emulator)["PATCH /assistant/{id}"] == patches  # never sent again

    # a new value in the spec is sent (once), and reported again if Vapi cannot hold it either
    fields["metadata"] = {"tenantRef": 2**53 + 3}
    doc["spec"]["assistants"]["inbound"] = fields
    assert controller.apply(loaded(doc)).counts()["update"] == 1
    again = controller.apply(loaded(doc))
    assert not again.has_changes
    assert emulator_stats(emulator)["PATCH /assistant/{id}"] == patches + 1


# -- two API keys on one Vapi account ----------------------------------------------------------


class CallLog:
    """Every Vapi call of a run, as (org slug, method, path, role created): which org made
    which call, for assertions that say so."""

    def __init__(self, docs: list[dict[str, Any]]) -> None:
        self.slugs = {key_of(d): d["metadata"]["slug"] for d in docs}
        self.calls: list[tuple[str, str, str, str]] = []
        self._lock = threading.Lock()

    def learn(self, *docs: dict[str, Any]) -> None:
        """After a key change: its new key names the same org."""
        self.slugs.update({key_of(d): d["metadata"]["slug"] for d in docs})

    def __call__(self, response: httpx.Response) -> None:
        request = response.request
        key = request.headers.get("authorization", "").removeprefix("Bearer ")
        role = ""
        if request.method == "POST":
            tag = tag_of(json.loads(request.content or b"{}"))
            role = tag[1] if tag else "?"
        with self._lock:
            self.calls.append((self.slugs.get(key, "?"), request.method, request.url.path, role))

    def since(self, mark: int, method: str) -> list[tuple[str, str]]:
        """(org, role) of each `method` call after the first `mark` calls."""
        with self._lock:
            return [(slug, role) for slug, m, _, role in self.calls[mark:] if m == method]

    def count(self) -> int:
        with self._lock:
            return len(self.calls)


def test_keys_sharing_one_empty_account_are_caught_in_the_same_run_with_one_stray_at_most(
    state: StateWriter, emulator: str, master_key: MasterKey, pool: ConnectionPool
) -> None:
    """Deterministic: every assertion holds whatever order the orgs' threads run in (which org
    creates first, and whether it gets its second role in before the others list, are up to
    the scheduler); each says which org made which call."""
    # bravo's and delta's keys reach alpha's (empty) account; charlie has its own
    a, b, c, d = org_doc("alpha"), org_doc("bravo"), org_doc("charlie"), org_doc("delta")
    add_key(emulator, key_of(a), key_of(b))
    add_key(emulator, key_of(a), key_of(d))
    sharing = {"alpha", "bravo", "delta"}
    log = CallLog([a, b, c, d])
    with http_client(emulator, timeout_s=5, on_response=log) as http:
        ctl = Controller(state, http, master_key, concurrency=8, retry=FAST_RETRY)
        first = ctl.apply(loaded(a, b, c, d))
        created = log.since(0, "POST")
        failed = {o.slug: o.error or "" for o in first.failed}
        assert set(failed) == sharing, (failed, created)
        # refused as sharing an account: by the keys seen to reach it, or (when an org lists the
        # account after another's create was committed there but before that create's answer
        # named the account) by the other org's tagged assistant in its listing
        refusals = ("each org needs its own Vapi account", "(one Vapi account per org)")
        assert all(any(r in e for r in refusals) for e in failed.values()), failed
        by_org: dict[str, list[str]] = {}
        for x in live(emulator, key_of(a)):
            tag = tag_of(x)
            assert tag is not None
            by_org.setdefault(tag[0], []).append(x["id"])
        slug_of = {doc["metadata"]["id"]: doc["metadata"]["slug"] for doc in (a, b, c, d)}
        # the first org's create named the account (its owner: the org with most there); any
        # other org's is a stray: at most one
        owner_id = max(by_org, key=lambda org: (len(by_org[org]), org))
        owner = slug_of[owner_id]
        strays = [i for org, ids in by_org.items() if org != owner_id for i in ids]
        assert len(strays) <= 1, ("creates, by org:", created)
        for stray in strays:  # reported by id
            assert any(stray in e for e in failed.values()), failed
        assert len(by_org[owner_id]) <= 2, ("creates, by org:", created)
        assert sorted(r for s, r in created if s == "charlie") == ["inbound", "outbound"]
        assert len(live(emulator, key_of(c))) == 2  # the other org carried on

        # now the account shows itself: every org but its owner is refused before any write.
        # The owner may still create the one role it lacks, if it plans before any other org
        # has listed the account in this run (nothing in Postgres says the account is shared:
        # a refused org's account is not recorded); never a second, and never another org.
        lacks = {"inbound", "outbound"} - {
            tag[1] for x in live(emulator, key_of(a)) if (tag := tag_of(x)) and tag[0] == owner_id
        }
        mark = log.count()
        again = ctl.apply(loaded(a, b, c, d))
        assert {o.slug for o in again.failed} == sharing
        posts = log.since(mark, "POST")
        allowed = [(owner, role) for role in sorted(lacks)]
        assert len(posts) <= 1 and set(posts) <= set(allowed), (
            f"account owner: {owner}, lacking {sorted(lacks)}; second run's creates, by org:",
            posts,
        )
        if strays:  # a stray in its account: the owner is refused too (one org per account)
            assert posts == [], (f"account owner: {owner}, strays: {strays}", posts)

        # bravo and delta get keys of their own; whatever they left in alpha's account is now
        # a stray that `--prune` removes (once their own accounts hold their assistants: a
        # second run when one of them had got there first)
        for doc in (b, d):
            slug = doc["metadata"]["slug"]
            doc["spec"]["credentials"]["vapi"]["apiKey"] = f"{slug}-own-{uuid.uuid4().hex[:6]}"
        log.learn(b, d)
        fixed = ctl.apply(loaded(a, b, c, d), prune=True)
        if not fixed.ok:
            assert [o.slug for o in fixed.failed] == ["alpha"], [o.error for o in fixed.failed]
            fixed = ctl.apply(loaded(a, b, c, d), prune=True)
        assert fixed.ok, [o.error for o in fixed.failed]
    tags = [tag_of(x) for x in live(emulator, key_of(a))]
    assert sorted(t[1] for t in tags if t) == ["inbound", "outbound"]
    assert {t[0] for t in tags if t} == {a["metadata"]["id"]}  # the strays are gone
    assert len(live(emulator, key_of(b))) == len(live(emulator, key_of(d))) == 2
    recorded = dict(rows(pool, "SELECT slug, vapi_account_id FROM organizations"))
    assert len(set(recorded.values())) == 4


def test_a_late_listing_cannot_let_a_second_stray_through(
    state: StateWriter,
    emulator: str,
    master_key: MasterKey,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A listing answered before another org's create but handled after it must not count as
    current: the listing's moment is when it was asked for."""
    a, b, d = org_doc("alpha"), org_doc("bravo"), org_doc("delta")
    add_key(emulator, key_of(a), key_of(b))
    add_key(emulator, key_of(a), key_of(d))
    late = {key_of(b): 0.4, key_of(d): 0.8}
    real = VapiReader.list_assistants

    def slow_to_hand_over(self: VapiReader, **kwargs: Any) -> list[dict[str, Any]]:
        result = real(self, **kwargs)
        key = self._headers["Authorization"].removeprefix("Bearer ")
        time.sleep(late.pop(key, 0))  # only each one's first listing
        return result

    monkeypatch.setattr(VapiReader, "list_assistants", slow_to_hand_over)
    with http_client(emulator, timeout_s=5) as http:
        ctl = Controller(state, http, master_key, concurrency=4, retry=FAST_RETRY)
        report = ctl.apply(loaded(a, b, d))
    assert {o.slug for o in report.failed} == {"alpha", "bravo", "delta"}
    owners = [tag[0] for x in live(emulator, key_of(a)) if (tag := tag_of(x))]
    assert len(set(owners)) == 1, owners  # alpha's, and no stray of bravo's or delta's


def test_an_org_new_in_this_run_and_refused_midway_keeps_nothing_in_postgres(
    state: StateWriter, emulator: str, master_key: MasterKey, pool: ConnectionPool
) -> None:
    a, b = org_doc("alpha"), org_doc("bravo")
    add_key(emulator, key_of(a), key_of(b))
    with http_client(emulator, timeout_s=5) as http:
        ctl = Controller(state, http, master_key, concurrency=2, retry=FAST_RETRY)
        report = ctl.apply(loaded(a, b))
    failed = {o.slug: o for o in report.failed}
    assert set(failed) == {"alpha", "bravo"}
    stopped = [o for o in report.failed if "stopped" in (o.error or "")]
    assert stopped, [o.error for o in report.failed]
    for outcome in stopped:  # refused midway: nothing of it in Postgres
        assert rows(pool, "SELECT count(*) FROM organizations WHERE id = %s", outcome.org_id) == [
            (0,)
        ]
        assert all(action.resource == "assistant" for action in outcome.done or [])


def test_a_second_key_on_a_known_account_is_refused_before_any_write(
    controller: Controller, emulator: str
) -> None:
    a = org_doc("alpha")
    assert controller.apply(loaded(a)).ok
    b = org_doc("bravo", assistants={})
    b["spec"]["assistants"] = {"inbound": {"name": "Bravo desk"}}
    add_key(emulator, key_of(a), key_of(b))
    before = writes(emulator)
    plan = controller.plan(loaded(a, b))
    assert {o.slug for o in plan.failed} == {"alpha", "bravo"}
    report = controller.apply(loaded(a, b))
    assert {o.slug for o in report.failed} == {"alpha", "bravo"}
    assert writes(emulator) == before


# -- blocked plans, locks --------------------------------------------------------------------


def test_a_blocked_org_writes_nothing_not_even_its_row(
    controller: Controller, emulator: str, pool: ConnectionPool
) -> None:
    doc = org_doc("acme")
    theirs = {"managedBy": "reconciler", "orgId": str(uuid.uuid4()), "role": "inbound"}
    create_assistant(emulator, key_of(doc), {"name": "Theirs", "metadata": theirs})
    report = controller.apply(loaded(doc))
    assert "refusing to manage it" in (report.failed[0].error or "")
    assert report.failed[0].done == []
    assert rows(pool, "SELECT count(*) FROM organizations") == [(0,)]
    assert rows(pool, "SELECT count(*) FROM org_credentials") == [(0,)]


def hold_lock(state: StateWriter, org_id: str, seconds: float) -> threading.Event:
    """Another reconciler holds the org for `seconds`; returns once it holds it."""
    held = threading.Event()

    def run() -> None:
        with state.orgs.lock(org_id) as lock:
            assert lock.held
            held.set()
            time.sleep(seconds)

    threading.Thread(target=run, daemon=True).start()
    assert held.wait(5)
    return held


def test_an_org_held_by_another_reconciler_is_skipped_not_failed(
    controller: Controller, state: StateWriter, emulator: str
) -> None:
    a, b = org_doc("alpha"), org_doc("bravo")
    hold_lock(state, a["metadata"]["id"], 1.5)
    report = controller.apply(loaded(a, b))
    assert report.ok  # nothing failed: exit 0
    [skipped] = report.skipped
    assert skipped.slug == "alpha" and "another reconciler" in (skipped.skipped or "")
    assert len(live(emulator, key_of(b))) == 2


def test_lock_wait_takes_the_org_once_the_other_reconciler_is_done(
    state: StateWriter, emulator: str, master_key: MasterKey
) -> None:
    doc = org_doc("alpha")
    hold_lock(state, doc["metadata"]["id"], 0.5)
    with http_client(emulator, timeout_s=5) as http:
        ctl = Controller(state, http, master_key, retry=FAST_RETRY, lock_wait_s=10)
        report = ctl.apply(loaded(doc))
    assert report.ok and not report.skipped
    assert len(live(emulator, key_of(doc))) == 2

    doc["spec"]["assistants"]["inbound"]["firstMessage"] = "Hello again!"  # work to do
    hold_lock(state, doc["metadata"]["id"], 3)
    with http_client(emulator, timeout_s=5) as http:
        ctl = Controller(state, http, master_key, retry=FAST_RETRY, lock_wait_s=0.3)
        report = ctl.apply(loaded(doc))
    assert "waited 0.3s" in (report.skipped[0].skipped or "")


def test_a_converged_org_is_known_without_its_lock(
    controller: Controller, state: StateWriter, emulator: str
) -> None:
    """A no-op needs no lock: an org held by another reconciler is reported converged when
    its account and Postgres already agree with its spec, and the run sends no statement of
    its own for any converged org (one read for all of them)."""
    docs = [org_doc(f"org{i:02d}") for i in range(16)]
    assert controller.apply(loaded(*docs)).ok
    hold_lock(state, docs[0]["metadata"]["id"], 1.5)
    before = state.queries
    report = controller.apply(loaded(*docs))
    assert report.ok and not report.skipped and not report.has_changes
    run_own = state.queries - before  # the index, the run's row, the first read, the statuses
    assert run_own < len(docs)  # two per org (the lock, the re-read) would be 32 more
    docs[1]["spec"]["assistants"]["inbound"]["firstMessage"] = "Changed"
    before = state.queries
    report = controller.apply(loaded(*docs))
    assert report.ok and report.counts()["update"] == 1
    # the changed org's lock and re-read under it, and its state's write
    assert state.queries - before >= run_own + 3


def test_a_look_outdated_by_another_reconciler_is_listed_again_under_the_lock(
    state: StateWriter, emulator: str, master_key: MasterKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between an org's look (no lock) and its lock, another reconciler creates the assistant
    the look found missing: Postgres no longer shows what the look saw, so the account is
    listed again under the lock and nothing is created twice."""
    doc = org_doc("alpha")
    outbound = doc["spec"]["assistants"].pop("outbound")
    with http_client(emulator, timeout_s=5) as http:
        first = Controller(state, http, master_key, retry=FAST_RETRY, lock_wait_s=5)
        other = Controller(state, http, master_key, retry=FAST_RETRY)
        assert first.apply(loaded(doc)).ok  # inbound only
        doc["spec"]["assistants"]["outbound"] = outbound
        look = first._look

        def look_then_other_applies(*args: Any, **kwargs: Any) -> Any:
            seen = look(*args, **kwargs)
            assert seen is not None and len(seen.live) == 1  # outbound missing: a create
            assert other.apply(loaded(doc)).ok
            assert len(live(emulator, key_of(doc))) == 2
            return seen

        monkeypatch.setattr(first, "_look", look_then_other_applies)
        report = first.apply(loaded(doc))
    [outcome] = report.outcomes
    assert outcome.ok and not [a for a in outcome.done or () if a.resource == "assistant"]
    assert len(live(emulator, key_of(doc))) == 2


def test_a_new_org_goes_straight_to_its_lock(
    controller: Controller, emulator: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An org Postgres does not hold yet always has something to do: it is not looked at
    without its lock (its account is listed once, under the lock). Nor would such a look's
    listing be reused: a new org refused for a shared account after its create was answered
    (`_forget_if_new`) leaves no row, as before, while its assistant stays in Vapi."""
    looked: list[str] = []
    look = controller._look

    def spy(desired: Any, *args: Any, **kwargs: Any) -> Any:
        looked.append(desired.slug)
        return look(desired, *args, **kwargs)

    monkeypatch.setattr(controller, "_look", spy)
    doc = org_doc("alpha")
    before = emulator_stats(emulator).get("GET /assistant", 0)
    assert controller.apply(loaded(doc)).ok
    assert looked == [] and len(live(emulator, key_of(doc))) == 2
    assert emulator_stats(emulator)["GET /assistant"] - before == 1 + 1  # the apply's, ours
    assert controller.apply(loaded(doc)).ok and looked == ["alpha"]  # now it has a row
    assert not _Look(None, [], {}, 0, None, True).reusable(None)


def test_a_failed_first_read_leaves_each_org_to_its_lock(
    controller: Controller, state: StateWriter, emulator: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run's one read of every org failing costs the look, not the run: each org is
    read under its lock as before the look, and the run is recorded."""
    docs = [org_doc("alpha"), org_doc("bravo")]
    assert controller.apply(loaded(*docs)).ok
    observe = state.orgs.observe
    calls: list[int] = []

    def first_fails(org_ids: list[str], *, many: bool = False) -> Any:
        calls.append(len(org_ids))
        if len(calls) == 1:
            raise StateError("Postgres is unavailable (test)")
        return observe(org_ids, many=many)

    monkeypatch.setattr(state.orgs, "observe", first_fails)
    docs[0]["spec"]["assistants"]["inbound"]["firstMessage"] = "Changed"
    report = controller.apply(loaded(*docs))
    assert report.ok and report.counts()["update"] == 1 and report.run_id is not None
    assert calls == [2, 1, 1]  # the batch, then each org under its lock


# -- a database that dies mid-run --------------------------------------------------------------


def _cut_on_create(
    monkeypatch: pytest.MonkeyPatch, proxy: Any, *, nth: int, stay_down: bool
) -> None:
    real = VapiWriter.create_assistant
    calls = {"n": 0}

    def create(self: VapiWriter, body: dict[str, Any]) -> dict[str, Any]:
        calls["n"] += 1
        if calls["n"] == nth:
            proxy.cut(stay_down=stay_down)  # Postgres killed (and maybe back at once)
        return real(self, body)

    monkeypatch.setattr(VapiWriter, "create_assistant", create)


def apply_while_postgres_dies(
    database_url: str,
    emulator: str,
    master_key: MasterKey,
    monkeypatch: pytest.MonkeyPatch,
    docs: list[dict[str, Any]],
    *,
    stay_down: bool,
) -> tuple[Any, float]:
    """apply through a proxy to Postgres that is cut at the second create; (report, seconds)."""
    with cuttable(database_url) as proxy:
        proxied = open_pool(proxy.url(database_url), max_size=12, name="proxied")
        try:
            _cut_on_create(monkeypatch, proxy, nth=2, stay_down=stay_down)
            with http_client(emulator, timeout_s=5) as http:
                ctl = Controller(
                    StateWriter(proxied), http, master_key, concurrency=2, retry=FAST_RETRY
                )
                started = time.monotonic()
                report = ctl.apply(loaded(*docs))
                return report, time.monotonic() - started
        finally:
            proxied.close()


def test_postgres_restarted_mid_run_every_org_still_has_an_outcome_and_a_status(
    database_url: str,
    pool: ConnectionPool,
    emulator: str,
    master_key: MasterKey,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    docs = [org_doc(f"org-{i}") for i in range(6)]
    report, _ = apply_while_postgres_dies(
        database_url, emulator, master_key, monkeypatch, docs, stay_down=False
    )
    assert len(report.outcomes) == 6
    for outcome in report.failed:
        assert outcome.error and "internal error" not in outcome.error
    assert report.notes == []  # the run and the statuses were recorded after the restart
    [(finished, failed)] = rows(
        pool, "SELECT finished_at IS NOT NULL, orgs_failed FROM reconcile_runs"
    )
    assert finished and failed == len(report.failed)
    statuses = rows(pool, "SELECT slug, status, status_message FROM organizations")
    for slug, status, message in statuses:
        assert status in ("Ready", "Failed"), (slug, status)
        assert status == "Ready" or message, slug  # never Pending, never without a reason
    # a later run (past the grace period of any create whose outcome the outage hid: a
    # `creating` row may have committed while its COMMIT's answer was lost) converges what the
    # first could not, without a duplicate
    with http_client(emulator, timeout_s=5) as http:
        again = Controller(StateWriter(pool), http, master_key, retry=FAST_RETRY, create_grace_s=0)
        second = again.apply(loaded(*docs))
        assert second.ok, [o.error for o in second.failed]
    for doc in docs:
        roles = sorted(tag_of(a)[1] for a in live(emulator, key_of(doc)))  # type: ignore[index]
        assert roles == ["inbound", "outbound"], roles


def test_postgres_gone_for_good_mid_run_the_report_survives(
    database_url: str,
    pool: ConnectionPool,
    emulator: str,
    master_key: MasterKey,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    docs = [org_doc(f"org-{i}") for i in range(4)]
    # the same waits as in production, shorter: a statement gives up on the pool after 3 s
    monkeypatch.setattr("reconciler.state.db.POOL_TIMEOUT_S", 3.0)
    report, elapsed = apply_while_postgres_dies(
        database_url, emulator, master_key, monkeypatch, docs, stay_down=True
    )
    assert len(report.outcomes) == 4
    assert report.failed
    for outcome in report.failed:
        assert outcome.error and "internal error" not in outcome.error, outcome.error
    assert any("not recorded" in n for n in report.notes)
    assert not report.ok
    assert elapsed < 30  # 6-9 s here: 3 s waits (an org's pool timeout, the pause, the statuses')


# -- secrets stay masked whatever they are called ---------------------------------------------

CANARY_KEYS = [
    "apiKeys", "client_secrets", "x-auth-tokens", "passwords", "bearer", "jwt", "passphrase",
    "privateKey", "accessKeyId", "secretId", "SESSION_TOKEN", "Set-Cookie", "signingSecret",
]  # fmt: skip


def test_secret_values_under_any_key_spelling_never_reach_postgres_or_a_plan(
    controller: Controller, emulator: str, pool: ConnectionPool
) -> None:
    canaries = {key: f"CANARY-{i}-{uuid.uuid4().hex[:10]}" for i, key in enumerate(CANARY_KEYS)}
    fields = {
        "name": "Desk",
        "metadata": dict(canaries),
        "server": {"url": "https://hooks.example/v", "headers": {"X-Custom": "CANARY-HEADER"}},
    }
    doc = org_doc("acme", assistants={"inbound": fields})
    first_plan = controller.plan(loaded(doc))
    assert controller.apply(loaded(doc)).ok
    # the values did reach Vapi (so the test means something)
    [assistant] = live(emulator, key_of(doc))
    assert assistant["metadata"]["apiKeys"] == canaries["apiKeys"]

    changed = {**fields, "metadata": {k: v + "-rotated" for k, v in canaries.items()}}
    rotated = loaded(
        org_doc(
            "acme",
            org_id=doc["metadata"]["id"],
            api_key=key_of(doc),
            assistants={"inbound": changed},
        )
    )
    second_plan = controller.plan(rotated)
    assert second_plan.has_changes
    texts = []
    for report in (first_plan, second_plan):
        buffer = io.StringIO()
        render_text(report, Console(file=buffer, width=200))
        texts += [buffer.getvalue(), json.dumps(report_json(report)), repr(report)]
    texts += [str(r) for r in rows(pool, "SELECT desired_config, applied_config FROM assistants")]
    for text in texts:
        assert "CANARY" not in text, text[:500]
