"""Three `reconciler serve` replicas over one Postgres and one Vapi emulator, 100 orgs: every
org is reconciled, none twice at once (no duplicate assistant), and a replica SIGKILLed in the
middle of a run loses no org: the others take its orgs within about one interval."""

from __future__ import annotations

import signal
from concurrent.futures import ThreadPoolExecutor

import httpx

from reconciler.engine.model import tag_of
from tests.helpers import (
    SpecDir,
    accounts,
    clear_faults,
    emulator_stats,
    fault,
    key_of,
    live,
    org_doc,
)
from tests.helpers.serve import (
    Serve,
    ServeLauncher,
    assert_clean_log,
    edit_spec,
    orgs_by_slug,
    query,
    schedule,
    wait_until,
)

N_ORGS = 100
INTERVAL_S = 2.0


def _all_converged(emulator: str, database_url: str) -> bool:
    by_key = accounts(emulator)
    rows = orgs_by_slug(database_url)
    return (
        len(by_key) == N_ORGS
        and all(a["assistants"] == 2 for a in by_key.values())
        and len(rows) == N_ORGS
        and all(r["status"] == "Ready" for r in rows.values())
    )


def _mid_run(database_url: str, replicas: list[Serve]) -> Serve | None:
    """A replica that claimed at least 20 orgs in the last 0.3 s: with every account listing
    slowed to 100 ms and 4 orgs at a time, it is surely still working through them."""
    rows = query(
        database_url,
        "SELECT claimed_by, count(*) AS n FROM org_schedule"
        " WHERE claimed_at > now() - interval '0.3 seconds' GROUP BY claimed_by",
    )
    busy = {r["claimed_by"] for r in rows if r["n"] >= 20}
    return next((r for r in replicas if r.replica in busy), None)


def test_three_replicas_share_100_orgs_and_a_sigkill_loses_none(
    launcher: ServeLauncher, specs: SpecDir, emulator: str, database_url: str
) -> None:
    docs = [org_doc(f"org-{i:03d}") for i in range(N_ORGS)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        paths = list(pool.map(specs.write, docs))
    replicas = [
        launcher.start(
            str(specs.root),
            interval=f"{INTERVAL_S:g}s",
            env={"RECONCILER_REPLICA_ID": f"replica-{n}"},
            wait_ready=False,
        )
        for n in range(3)
    ]
    for serve in replicas:
        serve.wait_ready(60.0)

    wait_until(
        lambda: _all_converged(emulator, database_url),
        60.0,
        "100 orgs with 2 assistants each, all Ready",
        every_s=0.25,
    )
    stats = httpx.get(f"{emulator}/_emulator/stats", timeout=10).json()
    assert stats["assistants_total"] == 2 * N_ORGS
    assert stats["requests"]["POST /assistant"] == 2 * N_ORGS  # each create happened once
    creating_runs = query(
        database_url,
        "SELECT o.slug, count(r.id) FILTER (WHERE r.changes ? 'create') AS n"
        " FROM organizations o LEFT JOIN org_runs r ON r.org_id = o.id GROUP BY o.slug",
    )
    assert len(creating_runs) == N_ORGS
    assert {r["n"] for r in creating_runs} == {1}, "an org was created by more than one run"

    # Slow every account listing down so that a run takes a while, then kill the replica that
    # is in the middle of one.
    fault(emulator, method="GET", path="/assistant", mode="delay", delay_ms=100, times=None)
    victim, _ = wait_until(
        lambda: _mid_run(database_url, replicas), 4 * INTERVAL_S, "a replica is mid-run"
    )
    assert victim is not None
    victim.send(signal.SIGKILL)
    victim.proc.wait(timeout=10)
    killed_at = query(database_url, "SELECT now() AS now")[0]["now"]
    held = [
        r["org_id"] for r in schedule(database_url).values() if r["claimed_by"] == victim.replica
    ]
    assert held, "the killed replica held no org"
    survivors = [r for r in replicas if r is not victim]
    names = {r.replica for r in survivors}

    def taken_over() -> bool:
        rows = schedule(database_url)
        return all(
            rows[o]["claimed_by"] in names and rows[o]["claimed_at"] > killed_at for o in held
        )

    # due 0.8 interval after the victim's claim, then claimed at a survivor's next tick (or
    # right after its current run, when that run is longer than the interval)
    wait_until(taken_over, 2 * INTERVAL_S + 4.0, "the survivors take the orgs")
    clear_faults(emulator)

    # A change to every org after the kill: all of them converge to it.
    for path in paths:
        edit_spec(path, "Hello!", "Hello after the kill")

    def changed() -> bool:
        return all(
            any(a.get("firstMessage") == "Hello after the kill" for a in live(emulator, key_of(d)))
            for d in docs
        )

    # Generous: each survivor first runs sops on all 100 changed files, CPU-bound on a small
    # machine shared with other test runs (about 3 intervals when it is idle).
    wait_until(changed, 30.0, "every org has the change", every_s=0.5)
    wait_until(lambda: _all_converged(emulator, database_url), 10.0, "all Ready")

    # no duplicate anywhere: exactly the 2 tagged assistants of each org in its own account
    for doc in docs:
        found = live(emulator, key_of(doc))
        assert sorted(tag_of(a) or ("?", "?") for a in found) == [
            (doc["metadata"]["id"], "inbound"),
            (doc["metadata"]["id"], "outbound"),
        ]
    requests = emulator_stats(emulator)
    assert requests["POST /assistant"] == 2 * N_ORGS
    assert requests["DELETE /assistant/{id}"] == 0
    assert all(r["failures"] == 0 for r in schedule(database_url).values())

    for serve in survivors:
        assert serve.proc.poll() is None
        code, _ = serve.stop(signal.SIGTERM)
        assert code == 0
        assert_clean_log(serve.log())
