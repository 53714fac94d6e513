"""How many orgs `serve` claims at a time (`controller.loop.batch_size`): each batch reads the
whole fleet's index and decides the run's rules over every spec, so a run must take a bounded
number of batches, whatever the size of the fleet, or its cost grows with the fleet's square."""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler.controller.loop import (
    MAX_BATCHES,
    MAX_PER_WORKER,
    MIN_BATCH,
    LoopConfig,
    ReconcileLoop,
    batch_size,
)
from reconciler.controller.run import OrgOutcome, RunReport
from reconciler.spec.loader import LoadResult


@given(fleet=st.integers(0, 10**6), concurrency=st.integers(1, 256))
def test_a_run_takes_few_batches_each_done_well_within_its_claim(
    fleet: int, concurrency: int
) -> None:
    batch = batch_size(fleet, concurrency)
    assert batch >= MIN_BATCH
    assert batch >= 4 * concurrency  # every worker has orgs to take
    least = max(MIN_BATCH, 4 * concurrency)
    assert batch <= max(least, MAX_PER_WORKER * concurrency)  # done well within its claim
    if fleet <= MAX_BATCHES * MAX_PER_WORKER * concurrency:
        assert -(-fleet // batch) <= MAX_BATCHES
    # and no larger than it must be: a smaller batch would need more than MAX_BATCHES
    if batch > least:
        assert -(-fleet // (batch - 1)) > MAX_BATCHES


def test_batches_by_fleet() -> None:
    assert batch_size(200, 16) == MIN_BATCH
    assert batch_size(200, 32) == 128
    assert batch_size(1000, 16) == 125  # 8 batches, where 64 a batch made 16
    assert batch_size(5000, 16) == 128  # at most 8 per worker: 40 batches, not 79


class _Schedule:
    """Claims the due orgs (every one given) `limit` at a time, recording each claim."""

    def __init__(self) -> None:
        self.claims: list[int] = []

    def claim(self, digests: dict[str, str], *, next_in_s: float, limit: int, **_: Any) -> set[str]:
        taken = set(sorted(digests)[:limit])
        self.claims.append(len(taken))
        return taken

    def finished(self, *_: Any) -> None:
        pass

    def release(self, *_: Any) -> None:
        pass


class _Controller:
    def __init__(self, concurrency: int) -> None:
        self.concurrency = concurrency
        self.stopping = threading.Event()

    def apply(self, loaded: LoadResult, **_: Any) -> RunReport:
        return RunReport([OrgOutcome(s.path.stem, str(s.org.metadata.id)) for s in loaded.specs])


@pytest.mark.parametrize(("orgs", "concurrency", "batches"), [(1000, 16, 8), (100, 16, 2)])
def test_serve_claims_a_run_in_those_batches(orgs: int, concurrency: int, batches: int) -> None:
    specs = [
        SimpleNamespace(
            path=Path(f"org-{i:04d}.yaml"),
            org=SimpleNamespace(metadata=SimpleNamespace(id=f"id-{i:04d}")),
            digest=f"d{i}",
        )
        for i in range(orgs)
    ]
    loop = ReconcileLoop(
        _Controller(concurrency),  # type: ignore[arg-type]
        SimpleNamespace(),  # type: ignore[arg-type]
        LoopConfig(Path("specs")),
        replica="test",
    )
    schedule = loop.schedule = _Schedule()  # type: ignore[assignment]
    report = loop._apply(LoadResult(specs, []), None)  # type: ignore[arg-type]
    assert report is not None and len(report.outcomes) == orgs  # every org, once
    assert len({o.org_id for o in report.outcomes}) == orgs
    assert len(schedule.claims) == batches
    assert max(schedule.claims) == batch_size(orgs, concurrency)
