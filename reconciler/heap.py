"""What lives as long as a command, left out of the collector's full passes (`gc.freeze`): the
one home of that, for the CLI's runs and `serve`'s loop."""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["settled"]


@contextmanager
def settled() -> Iterator[Callable[[], None]]:
    """What is alive now (the modules, `serve`'s app and pools) and what the caller adds by
    calling the `settle` it gives (every spec once read, in a CLI run) is left out of the
    collector's full passes until the block ends: it lives that long, yet each full pass walked
    it all again (a tenth of a no-op run's CPU at 1,000 orgs; in `serve`, 98 -> 42 us of CPU
    per org and run). Given back to the collector at the end, even on an error: a caller in its
    own process (the tests, a program embedding the CLI) keeps a collector that sees
    everything. A freeze made before (a host process freezing before it forks, a run beside
    this one) is left as it is: `gc.unfreeze` is not counted, so undoing it here would undo
    theirs."""
    if gc.get_freeze_count():
        yield lambda: None
        return
    gc.freeze()
    try:
        yield gc.freeze
    finally:
        gc.unfreeze()
