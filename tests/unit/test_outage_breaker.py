"""The outage breaker every repository shares: an unreachable database fails the orgs that
follow at once for a pause, and the run's own record waits the pause out, once per outage
that a patient call has already given its chance."""

from __future__ import annotations

import psycopg
import pytest
from psycopg_pool import PoolTimeout

from reconciler.state._base import StateError, _Breaker

PAUSE_S = 3.0


class Clock:
    """A monotonic clock that only a sleep (or the test) moves."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


class Calls:
    """Counts the attempts that reach the database."""

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
def clock() -> Clock:
    return Clock()


@pytest.fixture
def calls(clock: Clock) -> Calls:
    return Calls(_Breaker(PAUSE_S, sleep=clock.sleep, clock=clock))


def test_an_outage_fails_the_next_calls_at_once_with_its_reason(calls: Calls) -> None:
    with pytest.raises(StateError, match=r"^database unavailable: connection refused$"):
        calls.call(fails=outage())
    with pytest.raises(StateError, match=r"connection refused \(not retried for a few seconds\)"):
        calls.call()
    assert calls.attempts == 1


def test_after_the_pause_calls_try_again(calls: Calls, clock: Clock) -> None:
    with pytest.raises(StateError):
        calls.call(fails=outage())
    clock.now += PAUSE_S
    calls.call()
    assert calls.attempts == 2 and clock.slept == []


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


def test_the_runs_record_waits_the_pause_out_once_per_outage(calls: Calls, clock: Clock) -> None:
    with pytest.raises(StateError):
        calls.call(fails=outage())  # an org's statement: the breaker opens
    with pytest.raises(StateError, match=r"^database unavailable"):
        calls.call(patient=True, fails=outage())  # the statuses: wait, try, still down
    assert clock.slept == [PAUSE_S] and calls.attempts == 2
    with pytest.raises(StateError, match="not retried"):
        calls.call(patient=True)  # the run's row: no second wait for the same outage
    assert clock.slept == [PAUSE_S] and calls.attempts == 2


def test_a_patient_call_that_waited_the_pool_timeout_out_spends_the_patience(
    calls: Calls, clock: Clock
) -> None:
    with pytest.raises(StateError):
        calls.call(patient=True, fails=PoolTimeout("timeout"))  # no wait, then the pool's
    with pytest.raises(StateError, match="not retried"):
        calls.call(patient=True)
    assert clock.slept == [] and calls.attempts == 1


def test_a_patient_call_cut_at_once_leaves_the_next_its_wait(calls: Calls, clock: Clock) -> None:
    """A restart drops the statuses' connection: the run's row still waits, and gets in."""
    with pytest.raises(StateError):
        calls.call(patient=True, fails=outage())  # failed at once, waited nothing
    calls.call(patient=True)  # the run's row: waits the pause out, the database is back
    assert clock.slept == [PAUSE_S] and calls.attempts == 2


def test_patience_comes_back_once_a_call_gets_through(calls: Calls, clock: Clock) -> None:
    with pytest.raises(StateError):
        calls.call(fails=outage())
    with pytest.raises(StateError):
        calls.call(patient=True, fails=outage())  # waited, failed: spent on this outage
    clock.now += PAUSE_S
    calls.call()  # the database is back
    with pytest.raises(StateError):
        calls.call(fails=outage())  # a new outage
    calls.call(patient=True)  # is waited out again
    assert clock.slept == [PAUSE_S, PAUSE_S] and calls.attempts == 5


def test_a_patient_call_that_gets_through_leaves_a_newer_outage_standing(
    calls: Calls, clock: Clock
) -> None:
    """Another thread found the database gone while the patient call ran: what it found
    stands for the calls after (the patient call's success clears no one else's outage)."""
    with pytest.raises(StateError):
        calls.call(fails=outage())
    # the patient call waits the pause out, then runs; meanwhile, elsewhere: down again
    with calls.breaker.guard(patient=True), pytest.raises(StateError):
        calls.call(fails=outage())
    with pytest.raises(StateError, match="not retried"):
        calls.call()
