"""A serve run hands each batch the same fleet, and the controller keeps that fleet's facts
(`PlanController._views`): they must be the facts of the fleet it is handed now, never those
of the run before (a key moved to another org between runs is two orgs on one account)."""

from __future__ import annotations

from reconciler.controller.run import Controller, Options
from reconciler.spec.loader import LoadResult
from tests.helpers import loaded, org_doc


def _refused(controller: Controller, batch: LoadResult, fleet: LoadResult) -> dict[str, str]:
    run = controller.run_plan(batch, peers=fleet, options=Options())
    return {r.slug: r.reason for r in run.refused}


def test_each_fleet_is_read_afresh(controller: Controller) -> None:
    a, b = org_doc("fleet-a", api_key="key-a"), org_doc("fleet-b", api_key="key-b")
    first = loaded(a, b, digests=True)
    batch_b = LoadResult([first.specs[1]], [])
    assert _refused(controller, batch_b, first) == {}
    assert _refused(controller, batch_b, first) == {}  # the same fleet again: as it was

    # the next run: org a now holds b's key (b's own file unchanged, batch b alone)
    moved = org_doc("fleet-a", org_id=a["metadata"]["id"], api_key="key-b")
    second = loaded(moved, b, digests=True)
    batch_b = LoadResult([second.specs[1]], [])
    refused = _refused(controller, batch_b, second)
    assert "shares its Vapi API key with fleet-a" in refused.get("fleet-b", ""), refused

    # and back: a fleet handed again after another is its own facts, not the last ones kept
    assert _refused(controller, LoadResult([first.specs[1]], []), first) == {}
