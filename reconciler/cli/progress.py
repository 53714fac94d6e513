"""`plan` and `apply` over many orgs: each org's result printed as soon as it is known.

- Text output to a terminal: one line per org as it ends, above a live progress line (the
  stage, orgs done of total, failures, elapsed time) that is gone when the run ends.
- Text output to a pipe or a file: the same org lines, plain (no control code), each written
  at once (flushed), then the plan as before.
- JSON and markdown: stdout holds the document only; the live line goes to stderr when stderr
  is a terminal.
- `--quiet`: no org line and no live line; the end shows only the summary and problems.

The controller calls `org_done` from its worker threads: one lock serialises the output. A
reader gone (`| head`) stops the lines, never the run: the command finishes its work.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from types import TracebackType
from typing import TYPE_CHECKING

from rich.text import Text

from reconciler.redact import printable

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress as Bar
    from rich.progress import TaskID

    from reconciler.controller.run import OrgOutcome

_PAST = {"create": "created", "update": "updated", "delete": "deleted", "adopt": "adopted"}


def org_line(outcome: OrgOutcome, *, applied: bool) -> tuple[str, str]:
    """One org's result on one line (printable), and its rich style."""
    slug = printable(outcome.slug)
    if outcome.error:
        return f"{slug}: failed: {printable(outcome.error)}", "red"
    if outcome.skipped:
        return f"{slug}: skipped: {printable(outcome.skipped)}", "cyan"
    plan = outcome.plan
    actions = outcome.done if applied and outcome.done is not None else plan.actions if plan else ()
    counts: Counter[str] = Counter(a.kind for a in actions)
    kinds = [k for k in ("create", "update", "delete", "adopt") if counts[k]]
    if applied:
        text = ", ".join(f"{_PAST[k]} {counts[k]}" for k in kinds)
    else:
        text = ", ".join(f"{counts[k]} to {k}" for k in kinds)
    text = text or "no changes"
    if plan is not None and plan.orphaned:
        text += "; orphaned"
    warnings = len(plan.warnings) if plan else 0
    if warnings:
        text += f"; {warnings} warning(s)"
    return f"{slug}: {text}", "magenta" if warnings else ""


class OrgProgress:
    """The `controller.run.Progress` of the CLI (see the module's docstring)."""

    def __init__(
        self,
        console: Console | None,
        *,
        applied: bool,
        lines: bool,
        live: bool,
    ) -> None:
        self.console = console
        self.applied = applied
        self.lines = lines and console is not None
        self.live = live and console is not None
        self.lock = threading.Lock()
        self.closed = False  # the reader of our output is gone
        self.done = 0
        self.failed = 0
        self.started = time.monotonic()
        self._bar: Bar | None = None
        self._task: TaskID | None = None

    def __enter__(self) -> OrgProgress:
        if self.live and self.console is not None:
            from rich.progress import (
                MofNCompleteColumn,
                Progress,
                SpinnerColumn,
                TextColumn,
                TimeElapsedColumn,
            )

            self._bar = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                MofNCompleteColumn(),
                TextColumn("orgs, {task.fields[failed]} failed,"),
                TimeElapsedColumn(),
                console=self.console,
                transient=True,
            )
            self._task = self._bar.add_task("reading specs", total=None, failed=0)
            self._bar.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with self.lock:
            if self._bar is not None:
                try:
                    self._bar.stop()
                except OSError:
                    self.closed = True
                self._bar = None

    def stage(self, name: str, total: int) -> None:
        with self.lock:
            self.done = 0
            self.failed = 0
            if self._bar is not None and self._task is not None:
                self._bar.update(self._task, description=name, total=total, completed=0, failed=0)

    def org_done(self, outcome: OrgOutcome, *, final: bool) -> None:
        with self.lock:
            self.done += 1
            self.failed += 0 if outcome.ok else 1
            if self._bar is not None and self._task is not None:
                self._bar.update(self._task, completed=self.done, failed=self.failed)
            if not (final and self.lines) or self.closed or self.console is None:
                return
            text, style = org_line(outcome, applied=self.applied)
            try:
                if self._bar is None and not self.console.is_terminal:
                    # plain, one line however long, and at once: rich's renderer costs about
                    # a millisecond a line, which a no-op apply of many orgs would notice
                    self.console.file.write(text + "\n")
                    self.console.file.flush()
                else:
                    self.console.print(Text(text, style=style))  # no markup to parse
            except OSError:  # BrokenPipeError: `| head` has what it wanted; the run goes on
                self.closed = True


def for_output(console: Console, *, fmt: str, quiet: bool, applied: bool) -> OrgProgress:
    """The progress of a `plan` or `apply` writing `fmt` to `console` (stdout)."""
    if quiet:
        return OrgProgress(None, applied=applied, lines=False, live=False)
    if fmt == "text":
        return OrgProgress(console, applied=applied, lines=True, live=console.is_terminal)
    from reconciler.cli.console import make

    err = make(stderr=True)
    return OrgProgress(err, applied=applied, lines=False, live=err.is_terminal)
