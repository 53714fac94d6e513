"""The rich console the commands print through, and what happens when its reader goes away.

rich's own answer to a closed pipe (`reconciler plan | head -1`) is `SystemExit(1)` from
whichever thread printed: from a worker thread of `apply` that would drop the run's record.
Here the console goes quiet and raises `BrokenPipeError`, which the progress printer absorbs
(the run goes on) and the entry point turns into a quiet exit (`cli.main`). rich is imported
only when a console is made, so `reconciler --help` stays fast.
"""

from __future__ import annotations

import errno
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

STDOUT_CLOSED = threading.Event()
"""Set once a write to stdout failed because its reader is gone."""


def make(*, stderr: bool = False) -> Console:
    from rich.console import Console

    class _Console(Console):
        def on_broken_pipe(self) -> None:
            self.quiet = True  # nothing more is written: no second error
            if not self.stderr:
                STDOUT_CLOSED.set()
            raise BrokenPipeError(errno.EPIPE, "the reader of the output is gone")

    # ":fire:" in a name stays text; no guessing of what to colour
    return _Console(stderr=stderr, highlight=False, soft_wrap=True, emoji=False)
