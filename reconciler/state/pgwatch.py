"""The embedded Postgres watchdog: stops the server of a data directory once no process uses it.

`reconciler.state.embedded` starts it detached, handing down the watch lock it already holds
(`--lock-fd N --detach`). By hand, `python -m reconciler.state.pgwatch DATA_DIR` watches in the
foreground, or exits at once when a watchdog already watches that directory.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

from reconciler.state import embedded


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reconciler.state.pgwatch")
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--lock-fd", type=int, help="an inherited descriptor of the held lock")
    parser.add_argument("--detach", action="store_true", help="fork; the parent returns at once")
    args = parser.parse_args(argv)
    home: Path = args.data_dir.resolve()
    fd: int | None = args.lock_fd if args.lock_fd is not None else embedded.claim_watch(home)
    if fd is None:
        return 0  # another watchdog watches this directory
    if args.detach and os.fork() != 0:
        os._exit(0)  # the child is the watchdog, orphaned at once: nobody has to reap it
    embedded.watch(home, fd)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
