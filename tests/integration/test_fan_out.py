"""A run's orgs are worked on by `concurrency` workers that each take the next org
(`PlanController._each`): every org exactly once, the outcomes in the order of the orgs, as
many at a time as the bound allows and never more, one org's failure its own."""

from __future__ import annotations

import threading
import time

import pytest

from reconciler.controller.run import Controller, OrgOutcome
from reconciler.engine.model import DesiredOrg
from reconciler.secrets.crypto import MasterKey
from reconciler.state.store import StateWriter
from reconciler.vapi.client import http_client
from tests.helpers import FAST_RETRY


def _items(n: int) -> list[tuple[DesiredOrg | None, OrgOutcome]]:
    return [
        (DesiredOrg(f"id-{i}", f"org-{i}", f"Org {i}", {}, {}), OrgOutcome(f"org-{i}", f"id-{i}"))
        for i in range(n)
    ]


@pytest.mark.parametrize("concurrency", [1, 4])
def test_each_org_once_in_order_as_many_at_a_time_as_the_bound(
    state: StateWriter, emulator: str, master_key: MasterKey, concurrency: int
) -> None:
    with http_client(emulator, timeout_s=5) as http:
        ctl = Controller(state, http, master_key, concurrency=concurrency, retry=FAST_RETRY)
        items = _items(13)
        lock, now, most, worked = threading.Lock(), [0], [0], []
        full = threading.Barrier(concurrency, timeout=10)  # the bound reached, or it fails

        def work(desired: DesiredOrg, outcome: OrgOutcome) -> None:
            with lock:
                now[0] += 1
                most[0] = max(most[0], now[0])
                worked.append(desired.org_id)
            try:
                if desired.org_id == "id-5":
                    raise RuntimeError("this org's own trouble")
                if desired.org_id in ("id-0", "id-1", "id-2", "id-3")[:concurrency]:
                    full.wait()  # the first ones wait until `concurrency` run at once,
                    time.sleep(0.2)  # then hold them: a worker more would start meanwhile
            finally:
                with lock:
                    now[0] -= 1

        outcomes = ctl._each(items, work)
    assert [o.org_id for o in outcomes] == [f"id-{i}" for i in range(13)]
    assert sorted(worked) == sorted(f"id-{i}" for i in range(13))  # each once
    assert most[0] == concurrency
    assert [o.org_id for o in outcomes if o.error] == ["id-5"]
    assert ctl._each([], work) == []


class _Interrupted(BaseException):
    """Worse than an org's failure (as Ctrl-C is): the run stops."""


def test_an_interruption_starts_no_further_org(
    state: StateWriter, emulator: str, master_key: MasterKey
) -> None:
    with http_client(emulator, timeout_s=5) as http:
        ctl = Controller(state, http, master_key, concurrency=2, retry=FAST_RETRY)
        worked: list[str] = []
        reached = threading.Event()

        def work(desired: DesiredOrg, outcome: OrgOutcome) -> None:
            worked.append(desired.org_id)
            if desired.org_id == "id-2":
                reached.set()
                raise _Interrupted
            if desired.org_id == "id-0":  # holds its worker (the one the run waits for
                reached.wait(10)  # first) until the interruption, and a while after it
                time.sleep(0.2)

        with pytest.raises(_Interrupted):
            ctl._each(_items(12), work)
    assert sorted(worked) == ["id-0", "id-1", "id-2"], worked  # under way, not the rest
