"""The outage breaker every repository shares: an unreachable database fails the orgs that
follow at once for a pause, and the run's own record waits the pause out once per outage."""

from __future__ import annotations

import psycopg
import pytest
from psycopg_pool import PoolTimeout

from reconciler.state._base import StateError, _Breaker

PAUSE_S = 60.0  # long enough that no test crosses it by itself


class Calls:
    """Counts the attempts that reach the database and the pauses waited out."""

    def __init__(self, breaker: _Breaker) -> None:
        self.breaker = breaker
        self.attempts = 0

    def call(self, *, patient: bool = False, fails: BaseException | None = None) -> None:
        with self.breaker.guard(patient=patient):
            self.attempts += 1
            if fails is not None:
                raise fails


def outage() -> psycopg.OperationalError:
    return psycopg.OperationalError("connection refused\nDETAIL: more")


@pytest.fixture
def slept() -> list[float]:
    return []


@pytest.fixture
def calls(slept: list[float]) -> Calls:
    return Calls(_Breaker(PAUSE_S, sleep=slept.append))


def test_an_outage_fails_the_next_calls_at_once_with_its_reason(calls: Calls) -> None:
    with pytest.raises(StateError, match=r"^database unavailable: connection refused$"):
        calls.call(fails=outage())
    with pytest.raises(StateError, match=r"connection refused \(not retried for a few seconds\)"):
        calls.call()
    assert calls.attempts == 1


def test_a_pool_timeout_is_an_outage(calls: Calls) -> None:
    with pytest.raises(StateError, match="no connection within the pool timeout"):
        calls.call(fails=PoolTimeout("timeout"))
    with pytest.raises(StateError, match="not retried"):
        calls.call()
    assert calls.attempts == 1


def test_an_error_that_is_no_outage_does_not_open_it(calls: Calls) -> None:
    with pytest.raises(StateError, match=r"^database error: "):
        calls.call(fails=psycopg.errors.UniqueViolation("duplicate key"))
    calls.call()
    assert calls.attempts == 2


def test_the_runs_record_waits_the_pause_out_once_per_outage(
    calls: Calls, slept: list[float]
) -> None:
    with pytest.raises(StateError):
        calls.call(fails=outage())  # an org's statement: the breaker opens
    with pytest.raises(StateError, match=r"^database unavailable"):
        calls.call(patient=True, fails=outage())  # the statuses: wait, try, still down
    assert len(slept) == 1 and 0 < slept[0] <= PAUSE_S
    assert calls.attempts == 2
    with pytest.raises(StateError, match="not retried"):
        calls.call(patient=True)  # the run's row: no second wait for the same outage
    assert len(slept) == 1 and calls.attempts == 2


def test_a_patient_call_that_gets_through_closes_it(calls: Calls, slept: list[float]) -> None:
    with pytest.raises(StateError):
        calls.call(fails=outage())
    calls.call(patient=True)  # the database came back during the pause
    calls.call()
    assert len(slept) == 1 and calls.attempts == 3


def test_patience_comes_back_once_a_call_succeeds(calls: Calls, slept: list[float]) -> None:
    with pytest.raises(StateError):
        calls.call(patient=True, fails=outage())  # spent on this outage
    calls.breaker._until = 0.0  # the pause is over: the next call tries
    calls.call()  # and the database is back
    with pytest.raises(StateError):
        calls.call(fails=outage())  # a new outage
    calls.call(patient=True)  # is waited out again
    assert len(slept) == 1 and calls.attempts == 4
