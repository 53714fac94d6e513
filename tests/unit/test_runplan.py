"""The run's own rules as a pure value (`engine.runplan`): orphans and failing files, the prune
guard, slug conflicts, shared keys, saved plans and the delete bound. No Postgres, no Vapi."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from reconciler.engine.runplan import (
    MAX_DELETES,
    FailedFile,
    KnownOrg,
    RunFacts,
    SpecFacts,
    TemplateMoveFact,
    bound_deletes,
    plan_run,
)

ACME = SpecFacts("id-acme", "acme", "k-acme")
BETA = SpecFacts("id-beta", "beta", "k-beta")


def known(*slugs: str) -> tuple[KnownOrg, ...]:
    return tuple(KnownOrg(f"id-{s}", s) for s in slugs)


def test_an_org_without_a_spec_is_an_orphan_only_when_the_whole_folder_is_read() -> None:
    facts = RunFacts(specs=(ACME,), known=known("acme", "gone"), whole_fleet=True)
    assert [k.slug for k in plan_run(facts).orphans] == ["gone"]
    narrowed = RunFacts(specs=(ACME,), known=known("acme", "gone"), whole_fleet=False)
    assert plan_run(narrowed).orphans == ()


def test_a_failing_file_makes_its_org_failing_never_an_orphan() -> None:
    by_slug = FailedFile("specs/beta.yaml", "beta")
    by_id = FailedFile("specs/renamed.yaml", "renamed", "id-gamma")
    facts = RunFacts(
        specs=(ACME,),
        known=known("acme", "beta", "gamma", "gone"),
        failed=(by_slug, by_id),
        whole_fleet=True,
        prune=True,
    )
    run = plan_run(facts)
    assert [k.slug for k in run.failing] == ["beta", "gamma"]
    assert [k.slug for k in run.orphans] == ["gone"]
    # and with a file failing, no orphan is retired: it may be the orphan's file
    assert run.retire_orphans is False
    assert "2 spec file(s) failed to load" in run.held_back


def test_orphans_are_retired_only_with_prune_and_no_failed_file() -> None:
    base = RunFacts(specs=(ACME,), known=known("acme", "gone"), whole_fleet=True)
    assert plan_run(base).retire_orphans is False
    pruned = RunFacts(specs=(ACME,), known=known("acme", "gone"), whole_fleet=True, prune=True)
    assert plan_run(pruned).retire_orphans is True and plan_run(pruned).held_back == ""


def test_a_slug_held_by_another_org_is_refused_unless_its_orphan_is_retired_now() -> None:
    newcomer = SpecFacts("id-new", "acme", "k-new")
    facts = RunFacts(specs=(newcomer,), known=known("acme"), whole_fleet=True)
    [refusal] = plan_run(facts).refused
    assert refusal.stalled == "SlugConflict" and "apply --prune` retires it" in refusal.reason
    retiring = RunFacts(specs=(newcomer,), known=known("acme"), whole_fleet=True, prune=True)
    assert plan_run(retiring).refused == () and plan_run(retiring).run == (newcomer,)
    held = RunFacts(
        specs=(newcomer,),
        known=known("acme"),
        whole_fleet=True,
        prune=True,
        failed=(FailedFile("specs/x.yaml", "x"),),
    )
    [refusal] = plan_run(held).refused
    assert "not retired in this run" in refusal.reason
    narrowed = RunFacts(specs=(newcomer,), known=known("acme"))
    [refusal] = plan_run(narrowed).refused
    assert "a new id for an existing slug is refused" in refusal.reason


def test_a_shared_vapi_key_refuses_both_orgs_even_across_batches() -> None:
    twin = SpecFacts("id-twin", "twin", "k-acme")
    facts = RunFacts(specs=(ACME, twin, BETA))
    refused = {r.slug: r for r in plan_run(facts).refused}
    assert set(refused) == {"acme", "twin"}
    assert refused["acme"].stalled == "SharedAccount" and "twin" in refused["acme"].reason
    batch = RunFacts(specs=(ACME,), peers=(ACME, twin, BETA))
    [refusal] = plan_run(batch).refused
    assert refusal.slug == "acme" and "twin" in refusal.reason
    assert plan_run(RunFacts(specs=(ACME, BETA))).refused == ()


def test_a_template_version_moving_more_orgs_than_the_bound_moves_none_unless_accepted() -> None:
    specs = tuple(SpecFacts(f"id-{i}", f"org-{i}") for i in range(4))
    v4 = tuple(TemplateMoveFact(s.org_id, s.slug, "dental@4") for s in specs[:3])
    other = TemplateMoveFact("id-3", "org-3", "vet@2")
    facts = RunFacts(specs=specs, moves=(*v4, other), max_template_orgs=2)
    run = plan_run(facts)
    assert [r.slug for r in run.refused] == ["org-0", "org-1", "org-2"]  # all of dental@4
    assert {s.slug for s in run.run} == {"org-3"}  # vet@2 moves one org: within the bound
    first = run.refused[0]
    assert first.stalled == "TemplateRolloutBound"
    assert "template rollout dental@4 would move 3 orgs in one run, more than " in first.reason
    assert "--max-template-orgs 2" in first.reason
    assert "--accept-template-rollout dental@4" in first.reason
    # the bound counts the whole run, also from a batch (serve) that holds one of them
    batch = RunFacts(specs=specs[:1], moves=facts.moves, max_template_orgs=2)
    assert [r.slug for r in plan_run(batch).refused] == ["org-0"]
    # accepted by name, or within the bound: nothing refused
    accepted = RunFacts(
        specs=specs, moves=facts.moves, max_template_orgs=2, accept_rollouts=frozenset({"dental@4"})
    )
    assert plan_run(accepted).refused == ()
    assert plan_run(RunFacts(specs=specs, moves=facts.moves, max_template_orgs=3)).refused == ()


def test_a_saved_plan_runs_its_orgs_only_and_names_the_missing_ones_truthfully() -> None:
    facts = RunFacts(
        specs=(ACME, BETA),
        failed=(FailedFile("specs/gamma.yaml", "gamma"),),
        saved={"id-acme": "acme", "id-gamma": "gamma", "id-delta": "delta"},
    )
    run = plan_run(facts)
    assert [s.slug for s in run.run] == ["acme"]
    reasons = {r.slug: r.reason for r in run.refused}
    assert reasons["beta"].startswith("not in the saved plan")
    assert "failed to load" in reasons["gamma"] and "gone" not in reasons["gamma"]
    assert "its spec is gone" in reasons["delta"]


def test_the_delete_bound_is_the_runs_and_past_it_none() -> None:
    assert bound_deletes({"a": 2, "b": 3}, 5).allowed
    over = bound_deletes({"a": 2, "b": 3, "orphan": 1}, 5)
    assert not over.allowed and over.total == 6
    assert "would delete 6 assistants, numbers or tools, more than --max-deletes 5" in over.note
    assert RunFacts(specs=()).max_deletes == MAX_DELETES == 5  # never unbounded by default


slugs = st.lists(st.sampled_from("abcdefgh"), unique=True, max_size=8)


@given(slugs, slugs, slugs, st.booleans(), st.booleans())
def test_every_known_org_is_exactly_one_of_present_failing_or_orphaned(
    present: list[str], known_slugs: list[str], failed: list[str], whole: bool, prune: bool
) -> None:
    specs = tuple(SpecFacts(f"id-{s}", s) for s in present)
    facts = RunFacts(
        specs=specs,
        known=known(*known_slugs),
        failed=tuple(FailedFile(f"specs/{s}.yaml", s) for s in failed if s not in present),
        whole_fleet=whole,
        prune=prune,
    )
    run = plan_run(facts)
    orphans = {k.slug for k in run.orphans}
    failing = {k.slug for k in run.failing}
    assert not orphans & failing and not orphans & set(present)
    assert not failing & set(present)
    if whole:
        assert orphans | failing | set(present) >= set(known_slugs)
    else:
        assert orphans == set()
    if facts.failed:
        assert not run.retire_orphans
    assert {s.org_id for s in run.run} | {r.org_id for r in run.refused} >= {
        s.org_id for s in specs
    }
