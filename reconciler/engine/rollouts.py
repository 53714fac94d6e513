"""Template rollouts in waves: which orgs may move to a template version in this run, which
are held on their old one, and whether the rollout moves on. Pure: the controller gathers the
facts (the template's waves, the orgs moving, their last status, the rollout's row) and
writes the step decided here.

A template may declare `rollout.waves`: named orgs first, then shares of all the orgs moving
(`percent`, counted over all of them, in a fixed order of `sha256(version:org id)`), each
with a soak time. The orgs of waves not started yet are *held*: their templated assistants are
left as they are (the planner plans nothing for them) until their wave starts. A wave starts
when every org of the one before has been Ready on the new version for its soak time. An org
of the wave under way that fails (Failed or Stalled), or whose webhooks start failing (as the
process deciding saw them: `webhooks_failing`), halts the rollout: no new wave until the
operator resumes it (`reconciler rollout resume`). Orgs that no wave names belong to the last.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

FAILING = frozenset({"Failed", "Stalled"})


@dataclass(frozen=True)
class WaveSpec:
    orgs: tuple[str, ...] | None  # slugs
    percent: int | None
    soak_s: float


@dataclass(frozen=True)
class Mover:
    """An org whose templated assistant the specs move to the version rolled out."""

    org_id: str
    slug: str
    moved: bool  # Postgres records every such assistant on the new version already
    status: str | None  # its last status (Ready, Failed, ...), None: never reconciled
    webhooks_failing: str | None = None  # how its webhooks fail since the wave began, if so


@dataclass(frozen=True)
class Row:
    """Where the rollout is, as Postgres records it (None for a rollout not started)."""

    wave: int
    wave_ready_s: float | None  # since every org of the wave was first seen Ready on it
    halted: str | None
    done: bool


Step = Literal["start", "ready", "unready", "advance", "halt", "finish", "none"]


@dataclass(frozen=True)
class Decision:
    template: str
    waves: int
    wave: int  # the wave under way after this run's step
    step: Step  # what this run records (`none`: nothing)
    held: frozenset[str]  # org ids left on their old version in this run
    members: tuple[tuple[str, ...], ...]  # slugs of each wave
    halted: str | None  # why the rollout is halted (after this run's step)
    reason: str = ""  # the step's reason, for a halt

    def held_note(self, slug: str) -> str:
        wave = next((i for i, m in enumerate(self.members, 1) if slug in m), self.waves)
        why = f"halted: {self.halted}" if self.halted else f"wave {self.wave} of {self.waves}"
        return f"held by the rollout of {self.template} until its wave {wave} ({why})"


def _order(template: str, org_id: str) -> str:
    return hashlib.sha256(f"{template}:{org_id}".encode()).hexdigest()


def partition(
    template: str, waves: Sequence[WaveSpec], movers: Iterable[Mover]
) -> list[list[Mover]]:
    """The movers of each wave: named orgs where named, then shares of all of them (counted
    over every mover, cumulative) in a fixed order; the rest in the last wave."""
    pending = sorted(movers, key=lambda m: _order(template, m.org_id))
    total = len(pending)
    out: list[list[Mover]] = []
    placed = 0
    for wave in waves:
        if wave.orgs is not None:
            named = set(wave.orgs)
            members = [m for m in pending if m.slug in named]
        else:
            target = math.ceil(total * (wave.percent or 0) / 100)
            members = pending[: max(0, target - placed)]
        pending = [m for m in pending if m not in members]
        placed += len(members)
        out.append(members)
    if pending and out:
        out[-1] += pending
    return out


def decide(
    template: str, waves: Sequence[WaveSpec], movers: Iterable[Mover], row: Row | None
) -> Decision:
    """This run's gate and step for one rollout."""
    groups = partition(template, waves, movers)
    members = tuple(tuple(sorted(m.slug for m in g)) for g in groups)
    count = len(groups)
    if row is None:
        return _decision(template, groups, members, 1, "start", None)
    wave, halted = min(row.wave, count), row.halted
    if row.done or halted is not None:
        return _decision(template, groups, members, wave, "none", halted)
    current = groups[wave - 1]
    failing = sorted(m.slug for m in current if m.status in FAILING)
    if failing:
        reason = f"org {', '.join(failing)} of wave {wave} failed"
        return _decision(template, groups, members, wave, "halt", reason, reason)
    hooks = sorted((m.slug, m.webhooks_failing) for m in current if m.webhooks_failing)
    if hooks:
        told = "; ".join(f"{slug}: {why}" for slug, why in hooks)
        reason = f"webhooks of wave {wave} are failing ({told})"
        return _decision(template, groups, members, wave, "halt", reason, reason)
    ready = all(m.moved and m.status == "Ready" for m in current)
    if not ready:
        step: Step = "unready" if row.wave_ready_s is not None else "none"
        return _decision(template, groups, members, wave, step, None)
    if row.wave_ready_s is None:
        return _decision(template, groups, members, wave, "ready", None)
    if row.wave_ready_s < waves[wave - 1].soak_s:
        return _decision(template, groups, members, wave, "none", None)
    if wave >= count:
        return _decision(template, groups, members, wave, "finish", None)
    return _decision(template, groups, members, wave + 1, "advance", None)


def _decision(
    template: str,
    groups: list[list[Mover]],
    members: tuple[tuple[str, ...], ...],
    wave: int,
    step: Step,
    halted: str | None,
    reason: str = "",
) -> Decision:
    held = frozenset(m.org_id for g in groups[wave:] for m in g if not m.moved)
    return Decision(template, len(groups), wave, step, held, members, halted, reason)


def waves_of(declared: Mapping[str, object] | None) -> list[WaveSpec]:
    """The template's `rollout.waves` as plain values (its checked model dumped)."""
    if not declared:
        return []
    waves = declared.get("waves")
    out: list[WaveSpec] = []
    for wave in waves if isinstance(waves, list) else []:
        if isinstance(wave, Mapping):
            orgs = wave.get("orgs")
            percent = wave.get("percent")
            soak = wave.get("soakSeconds", 0)
            out.append(
                WaveSpec(
                    tuple(str(o) for o in orgs) if isinstance(orgs, list) else None,
                    int(percent) if isinstance(percent, int) else None,
                    float(soak) if isinstance(soak, int | float) else 0.0,
                )
            )
    return out
