"""Template rollouts in waves (`engine.rollouts`): pure, so every rule is a few lines here."""

from __future__ import annotations

from reconciler.engine.rollouts import Mover, Row, WaveSpec, decide, partition, waves_of

REF = "desk@4"
NAMED_THEN_HALF_THEN_ALL = [
    WaveSpec(("alpha",), None, 0.0),
    WaveSpec(None, 50, 600.0),
    WaveSpec(None, 100, 0.0),
]


def movers(*slugs: str, moved: tuple[str, ...] = (), status: str = "Ready") -> list[Mover]:
    return [Mover(f"id-{s}", s, s in moved, status) for s in slugs]


SLUGS = ("alpha", "bravo", "charlie", "delta", "echo", "fox")


def test_waves_take_named_orgs_then_shares_of_all_then_the_rest() -> None:
    groups = partition(REF, NAMED_THEN_HALF_THEN_ALL, movers(*SLUGS))
    sizes = [len(g) for g in groups]
    assert [m.slug for m in groups[0]] == ["alpha"]
    assert sizes == [1, 2, 3]  # 50% of 6 is 3 in all: alpha and two more; then the rest
    assert sorted(m.slug for g in groups for m in g) == sorted(SLUGS)
    again = partition(REF, NAMED_THEN_HALF_THEN_ALL, list(reversed(movers(*SLUGS))))
    assert [[m.slug for m in g] for g in again] == [[m.slug for m in g] for g in groups]
    # orgs no wave reaches belong to the last one
    short = partition(REF, [WaveSpec(("alpha",), None, 0.0)], movers(*SLUGS))
    assert [len(g) for g in short] == [6]


def test_a_new_rollout_starts_with_its_first_wave_and_holds_the_rest() -> None:
    d = decide(REF, NAMED_THEN_HALF_THEN_ALL, movers(*SLUGS), None)
    assert (d.step, d.wave, d.waves) == ("start", 1, 3)
    assert d.held == {f"id-{s}" for s in SLUGS} - {"id-alpha"}
    assert "until its wave" in d.held_note("bravo") and "wave 1 of 3" in d.held_note("bravo")


def test_a_wave_soaks_once_all_its_orgs_are_ready_on_the_version_then_the_next_starts() -> None:
    not_yet = decide(REF, NAMED_THEN_HALF_THEN_ALL, movers(*SLUGS), Row(1, None, None, False))
    assert not_yet.step == "none" and not_yet.wave == 1  # alpha has not moved yet
    moved = movers(*SLUGS, moved=("alpha",))
    ready = decide(REF, NAMED_THEN_HALF_THEN_ALL, moved, Row(1, None, None, False))
    assert ready.step == "ready" and ready.wave == 1
    # wave 1 soaks 0 s: the next run starts wave 2, whose orgs may move in that run
    advanced = decide(REF, NAMED_THEN_HALF_THEN_ALL, moved, Row(1, 0.0, None, False))
    assert (advanced.step, advanced.wave) == ("advance", 2)
    wave2 = set(advanced.members[1])
    assert advanced.held == {f"id-{s}" for s in SLUGS} - {"id-alpha"} - {f"id-{s}" for s in wave2}
    # wave 2 soaks 600 s before wave 3
    done2 = movers(*SLUGS, moved=("alpha", *wave2))
    soaking = decide(REF, NAMED_THEN_HALF_THEN_ALL, done2, Row(2, 599.0, None, False))
    assert soaking.step == "none" and soaking.wave == 2
    assert decide(REF, NAMED_THEN_HALF_THEN_ALL, done2, Row(2, 600.0, None, False)).step == (
        "advance"
    )
    # an org of the wave no longer Ready: the soak starts again
    one = sorted(wave2)[0]
    wobbly = [m if m.slug != one else Mover(m.org_id, m.slug, True, "Pending") for m in done2]
    unready = decide(REF, NAMED_THEN_HALF_THEN_ALL, wobbly, Row(2, 10.0, None, False))
    assert (unready.step, unready.wave) == ("unready", 2)
    everyone = movers(*SLUGS, moved=SLUGS)
    finished = decide(REF, NAMED_THEN_HALF_THEN_ALL, everyone, Row(3, 0.0, None, False))
    assert finished.step == "finish" and finished.held == frozenset()


def test_a_failing_org_of_the_wave_halts_the_rollout_until_resumed() -> None:
    failing = [
        Mover("id-alpha", "alpha", True, "Failed"),
        *movers(*SLUGS[1:]),
    ]
    halt = decide(REF, NAMED_THEN_HALF_THEN_ALL, failing, Row(1, None, None, False))
    assert halt.step == "halt" and halt.reason == "org alpha of wave 1 failed"
    assert halt.held == {f"id-{s}" for s in SLUGS[1:]}  # the rest stay on the old version
    halted = Row(1, None, "org alpha of wave 1 failed", False)
    # halted: nothing moves on, even once the wave is Ready again
    ready_again = movers(*SLUGS, moved=("alpha",))
    stays = decide(REF, NAMED_THEN_HALF_THEN_ALL, ready_again, halted)
    assert stays.step == "none" and stays.wave == 1 and stays.halted
    assert "halted: org alpha of wave 1 failed" in stays.held_note("bravo")
    # resumed (the row no longer halted): judged afresh
    resumed = decide(REF, NAMED_THEN_HALF_THEN_ALL, ready_again, Row(1, None, None, False))
    assert resumed.step == "ready" and not resumed.halted


def test_waves_of_reads_the_templates_declaration() -> None:
    declared = {"waves": [{"orgs": ["a"], "soakSeconds": 60}, {"percent": 100}]}
    assert waves_of(declared) == [WaveSpec(("a",), None, 60.0), WaveSpec(None, 100, 0.0)]
    assert waves_of(None) == []


def test_webhooks_failing_in_the_wave_halt_the_rollout() -> None:
    moved = [
        Mover("id-alpha", "alpha", True, "Ready", "7 of 9 webhooks failed"),
        *movers(*SLUGS[1:]),
    ]
    halt = decide(REF, NAMED_THEN_HALF_THEN_ALL, moved, Row(1, None, None, False))
    assert halt.step == "halt"
    assert halt.reason == "webhooks of wave 1 are failing (alpha: 7 of 9 webhooks failed)"


def test_the_per_org_webhook_window_counts_by_minute_and_forgets_old_ones() -> None:
    from reconciler.metrics import OrgWebhooks

    window = OrgWebhooks(window_s=600)
    t0 = 6_000_000.0
    for outcome in ("forwarded", "forward_failed", "bad_secret", "busy", "malformed"):
        window.record("acme", outcome, now=t0)
    window.record(None, "bad_secret", now=t0)  # no org: not counted for any
    window.record("beta", "accepted", now=t0)
    assert window.counts("acme", 600, now=t0) == (1, 2)  # busy, malformed: not the org's
    assert window.counts("beta", 600, now=t0) == (1, 0)
    later = t0 + 5 * 60
    window.record("acme", "unavailable", now=later)
    assert window.counts("acme", 60, now=later) == (0, 1)  # the last minute only
    assert window.counts("acme", 600, now=later) == (1, 3)
    much_later = t0 + 20 * 60
    window.record("acme", "accepted", now=much_later)  # the old minutes go
    assert window.counts("acme", 3600, now=much_later) == (1, 0)


def test_a_process_halts_on_enough_failed_webhooks_of_an_org() -> None:
    from reconciler.controller.run import WEBHOOK_HALT_FAILED, webhooks_failing
    from reconciler.metrics import ORG_WEBHOOKS

    slug = "rollout-webhooks-unit"
    for _ in range(WEBHOOK_HALT_FAILED - 1):
        ORG_WEBHOOKS.record(slug, "forward_failed")
    assert webhooks_failing(slug, 600) is None  # not enough yet
    ORG_WEBHOOKS.record(slug, "forward_failed")
    assert (
        webhooks_failing(slug, 600)
        == f"{WEBHOOK_HALT_FAILED} of {WEBHOOK_HALT_FAILED} webhooks failed"
    )
    for _ in range(WEBHOOK_HALT_FAILED + 1):
        ORG_WEBHOOKS.record(slug, "forwarded")
    assert webhooks_failing(slug, 600) is None  # most of them succeed


def test_a_short_span_keeps_the_minute_it_began_in() -> None:
    """Failures seen a second before a minute's turn still count for a wave that began two
    seconds before the turn."""
    from reconciler.metrics import OrgWebhooks

    window = OrgWebhooks()
    turn = 6_000_000.0 - (6_000_000.0 % 60) + 60  # a minute's turn
    for _ in range(3):
        window.record("acme", "bad_secret", now=turn - 1)
    assert window.counts("acme", 2.0, now=turn + 0.5) == (0, 3)
    assert window.counts("acme", 0.5, now=turn + 0.5) == (0, 0)  # began after them
