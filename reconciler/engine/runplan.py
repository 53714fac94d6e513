"""The rules that span a whole run, as one pure value: `plan_run(facts) -> RunPlan`, as
`planner.plan_org` is the plan of one org. `plan`, `apply` and `serve` all take these decisions
from here, and the controller only carries them out:

- which specs run, and which are refused before any I/O, with the reason (a slug another org
  holds, a Vapi key another spec also has, not in the saved plan being applied);
- which orgs in Postgres are *orphans* (their spec is gone from a folder read whole) and which
  are *failing* (their spec file is there but did not load or decrypt: never called gone);
- whether orphans may be retired in this run (never when a file failed: it may be theirs);
- the run's delete bound (`bound_deletes`): more planned deletes than `--max-deletes` in one
  run, counted over every org and orphan of the run, and none is made.

Pure: no I/O, no clock; the facts are plain values (a Vapi key enters as its keyed digest).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

# the default lives in limits, which `reconciler --help` reads without loading this module
from reconciler.engine.limits import MAX_DELETES as MAX_DELETES
from reconciler.engine.limits import MAX_TEMPLATE_ORGS as MAX_TEMPLATE_ORGS
from reconciler.engine.rollouts import Decision


@dataclass(frozen=True)
class SpecFacts:
    """A spec that loaded: its org and the keyed digest of its Vapi API key (None: no key)."""

    org_id: str
    slug: str
    key_digest: str | None = None


@dataclass(frozen=True)
class FailedFile:
    """A spec file that did not load or decrypt. A spec file is named after its org's slug, so
    `slug` is its stem; `org_id` when its `metadata.id` could still be read."""

    path: str
    slug: str
    org_id: str | None = None


@dataclass(frozen=True)
class KnownOrg:
    """A live (not retired) org in Postgres."""

    org_id: str
    slug: str


@dataclass(frozen=True)
class TemplateMoveFact:
    """A spec's org whose assistant Postgres records as written from another template (or
    none) than the spec now renders it from: `to` (`name@version`)."""

    org_id: str
    slug: str
    to: str


@dataclass(frozen=True)
class RunFacts:
    specs: tuple[SpecFacts, ...]  # the specs this call runs
    known: tuple[KnownOrg, ...] = ()
    failed: tuple[FailedFile, ...] = ()  # every file of the run that failed
    peers: tuple[SpecFacts, ...] | None = None  # every spec of the run (serve runs batches)
    whole_fleet: bool = False  # the whole folder was read: an org without a spec is an orphan
    prune: bool = False
    max_deletes: int = MAX_DELETES
    saved: Mapping[str, str] | None = None  # `apply FILE`: org id -> slug of the saved plan
    moves: tuple[TemplateMoveFact, ...] = ()  # over every spec of the run (serve: all batches)
    max_template_orgs: int = MAX_TEMPLATE_ORGS
    accept_rollouts: frozenset[str] = frozenset()  # `name@version`s moved past the bound


@dataclass(frozen=True)
class Refusal:
    """An org refused before anything of it runs; `stalled`: retrying cannot help until a
    spec changes (None: an ordinary failure)."""

    org_id: str
    slug: str
    reason: str
    stalled: str | None = None


@dataclass(frozen=True)
class RunPlan:
    run: tuple[SpecFacts, ...]  # specs to plan or apply, in the order given
    refused: tuple[Refusal, ...]  # specs (and saved-plan orgs) refused, with the reason
    orphans: tuple[KnownOrg, ...]  # by slug: their spec is gone from a folder read whole
    failing: tuple[KnownOrg, ...]  # their spec file is there but failed: not orphans
    prune: bool  # assistants may be deleted (removed roles, duplicates, strays)
    retire_orphans: bool  # orphans may be retired in this run
    held_back: str  # why orphans are not retired although `--prune` was asked ("" if not)
    max_deletes: int
    # template rollouts in waves (`engine.rollouts`): each one's gate and step in this run
    rollouts: tuple[Decision, ...] = ()

    def refusal(self, org_id: str) -> Refusal | None:
        return next((r for r in self.refused if r.org_id == org_id), None)


def orphan_held_back(failed: int) -> str:
    return (
        f"not retired in this run: {failed} spec file(s) failed to load, and one may be this org's"
    )


def plan_run(facts: RunFacts) -> RunPlan:
    peers = facts.peers if facts.peers is not None else facts.specs
    present = {s.org_id for s in peers} | {s.org_id for s in facts.specs}
    failing_ids = {f.org_id for f in facts.failed if f.org_id}
    failing_slugs = {f.slug for f in facts.failed}
    failing = tuple(
        sorted(
            (
                k
                for k in facts.known
                if k.org_id not in present and (k.org_id in failing_ids or k.slug in failing_slugs)
            ),
            key=lambda k: k.slug,
        )
    )
    failing_set = {k.org_id for k in failing}
    orphans: tuple[KnownOrg, ...] = ()
    if facts.whole_fleet:
        orphans = tuple(
            sorted(
                (k for k in facts.known if k.org_id not in present and k.org_id not in failing_set),
                key=lambda k: k.slug,
            )
        )
    held_back = ""
    if facts.prune and orphans and facts.failed:
        held_back = orphan_held_back(len({f.path for f in facts.failed}))
    retire = facts.prune and bool(orphans) and not held_back
    retiring = {k.org_id for k in orphans} if retire else set()

    refused: list[Refusal] = []
    owners = {k.slug: k.org_id for k in facts.known}
    for spec in facts.specs:
        owner = owners.get(spec.slug)
        if owner is None or owner == spec.org_id or owner in retiring:
            continue  # (an orphan retired in this run frees its slug first)
        gone = owner in {k.org_id for k in orphans}
        refused.append(
            Refusal(
                spec.org_id,
                spec.slug,
                f"slug {spec.slug} belongs to org {owner} in Postgres, not to {spec.org_id}: "
                + (
                    "that org's spec is gone; `apply --prune` retires it and frees the slug"
                    if gone and not held_back
                    else f"that org's spec is gone, but it is {held_back}"
                    if gone
                    else "a new id for an existing slug is refused"
                ),
                "SlugConflict",
            )
        )
    refused += _shared_keys(facts.specs, peers, {r.org_id for r in refused})
    refused += bound_rollouts(facts, {r.org_id for r in refused})
    if facts.saved is not None:
        refused += _saved(facts, failing_ids, failing_slugs, {r.org_id for r in refused})
    out = {r.org_id for r in refused}
    return RunPlan(
        run=tuple(s for s in facts.specs if s.org_id not in out),
        refused=tuple(refused),
        orphans=orphans,
        failing=failing,
        prune=facts.prune,
        retire_orphans=retire,
        held_back=held_back,
        max_deletes=facts.max_deletes,
    )


def bound_rollouts(facts: RunFacts, refused: set[str]) -> list[Refusal]:
    """A template version that would move more than `max_template_orgs` orgs in one run moves
    none of them (unless accepted by name): each is refused whole, so it stays on its old
    version with its other changes, and says how to go on."""
    orgs: dict[str, set[str]] = {}
    for move in facts.moves:
        orgs.setdefault(move.to, set()).add(move.org_id)
    over = {
        ref: len(ids)
        for ref, ids in orgs.items()
        if len(ids) > facts.max_template_orgs and ref not in facts.accept_rollouts
    }
    out: list[Refusal] = []
    here = {s.org_id: s.slug for s in facts.specs}
    seen: set[str] = set()
    for move in sorted(facts.moves, key=lambda m: (m.to, m.slug)):
        if move.to not in over or move.org_id not in here or move.org_id in refused:
            continue
        if move.org_id in seen:
            continue
        seen.add(move.org_id)
        out.append(
            Refusal(
                move.org_id,
                move.slug,
                f"template rollout {move.to} would move {over[move.to]} orgs in one run, more "
                f"than --max-template-orgs {facts.max_template_orgs}: none of them moves (each "
                f"keeps its old version); to move them all, --accept-template-rollout {move.to}",
                "TemplateRolloutBound",
            )
        )
    return out


def _shared_keys(
    specs: Iterable[SpecFacts], peers: Iterable[SpecFacts], refused: set[str]
) -> list[Refusal]:
    """BYOC means one Vapi account per org: two specs with one key would fight over it. Every
    spec of the run counts (`peers`), so a key shared with an org of another batch is caught."""
    by_key: dict[str, set[str]] = {}
    everyone = {s.org_id: s for s in (*peers, *specs)}
    for spec in everyone.values():
        if spec.key_digest is not None:
            by_key.setdefault(spec.key_digest, set()).add(spec.slug)
    out: list[Refusal] = []
    for spec in specs:
        if spec.key_digest is None or spec.org_id in refused:
            continue
        others = sorted(s for s in by_key[spec.key_digest] if s != spec.slug)
        if others:
            out.append(
                Refusal(
                    spec.org_id,
                    spec.slug,
                    f"shares its Vapi API key with {', '.join(others)}: "
                    "each org needs its own Vapi account",
                    "SharedAccount",
                )
            )
    return out


def _saved(
    facts: RunFacts, failing_ids: set[str], failing_slugs: set[str], refused: set[str]
) -> list[Refusal]:
    """`apply FILE` runs that plan and no other: an org it does not hold is refused, and one it
    holds that is not here is reported as failing (its file did not load) or gone."""
    assert facts.saved is not None
    out = [
        Refusal(s.org_id, s.slug, "not in the saved plan (new since it was made): nothing done")
        for s in facts.specs
        if s.org_id not in facts.saved and s.org_id not in refused
    ]
    here = {s.org_id for s in facts.specs} | refused
    for org_id, slug in sorted(facts.saved.items(), key=lambda kv: kv[1]):
        if org_id in here:
            continue
        if org_id in failing_ids or slug in failing_slugs:
            why = "its spec file failed to load (see the file's problem)"
        else:
            why = "its spec is gone"
        out.append(Refusal(org_id, slug or org_id, f"in the saved plan, but {why}: nothing done"))
    return out


@dataclass(frozen=True)
class DeleteBound:
    total: int  # deletes the run would make
    limit: int
    allowed: bool
    note: str  # one line when not allowed, else ""


def bound_deletes(planned: Mapping[str, int], limit: int) -> DeleteBound:
    """The run's deletes (by org, orphans included) against `--max-deletes`: past it, none."""
    total = sum(planned.values())
    if total <= limit:
        return DeleteBound(total, limit, True, "")
    return DeleteBound(
        total,
        limit,
        False,
        f"this run would delete {total} assistants, numbers or tools, more than --max-deletes "
        f"{limit}: nothing "
        "was deleted or retired; check `plan --prune`, then raise --max-deletes",
    )
