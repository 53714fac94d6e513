"""How many orgs `serve` claims at a time (`controller.loop.batch_size`): each batch reads the
whole fleet's index and decides the run's rules over every spec, so a run must take a bounded
number of batches, whatever the size of the fleet, or its cost grows with the fleet's square."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from reconciler.controller.loop import MAX_BATCHES, MIN_BATCH, batch_size


@given(fleet=st.integers(0, 10**6), concurrency=st.integers(1, 256))
def test_a_run_takes_a_bounded_number_of_batches(fleet: int, concurrency: int) -> None:
    batch = batch_size(fleet, concurrency)
    assert batch >= MIN_BATCH
    assert batch >= 4 * concurrency  # every worker has orgs to take
    batches = -(-fleet // batch)
    assert batches <= MAX_BATCHES
    # and no larger than it must be: a smaller batch would need more than MAX_BATCHES
    if batch > max(MIN_BATCH, 4 * concurrency):
        assert -(-fleet // (batch - 1)) > MAX_BATCHES


def test_small_fleets_keep_the_small_batches() -> None:
    assert batch_size(200, 16) == MIN_BATCH
    assert batch_size(200, 32) == 128
    assert batch_size(1000, 16) == 125
    assert batch_size(5000, 16) == 625
