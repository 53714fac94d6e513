"""`plan --format markdown`: a plan as a pull-request comment.

A summary table (orgs with something to do or a problem; the rest counted in one line), then
one collapsible `<details>` section per such org with its changes in a `diff` block (a long
text changed, such as a system prompt, as a diff of its lines or words: `cli.textdiff`). Secrets
are never shown (the plan holds them masked already). Every string from a spec or a server is
made printable and escaped for where it lands: table cells (`|`, HTML), summaries
(HTML), code blocks (a fence longer than any backtick run inside). The comment is cut, with a
note saying so, before GitHub's 65,536-character limit.
"""

from __future__ import annotations

import html
import re

from reconciler.cli.render import (
    _cause_text,
    _changes,
    _move_of,
    _title,
    change_view,
    lifecycle_lines,
    rollouts,
    unknown_count,
)
from reconciler.cli.textdiff import DiffLine
from reconciler.controller.run import OrgOutcome, RunReport
from reconciler.redact import printable

LIMIT = 65_000
"""Characters at most: GitHub refuses a comment over 65,536."""
_KINDS = ("create", "update", "delete", "adopt")
_SYMBOL = {"create": "+", "update": "~", "delete": "-", "adopt": "+"}


def _cell(text: object) -> str:
    """One line, HTML-escaped, with the characters that would end a cell or open code
    escaped."""
    return html.escape(printable(text, 200), quote=False).replace("|", "\\|").replace("`", "\\`")


def _fence(lines: list[str]) -> str:
    longest = max((len(run) for line in lines for run in re.findall(r"`+", line)), default=0)
    fence = "`" * max(3, longest + 1)
    return "\n".join([f"{fence}diff", *lines, fence])


def _diff_line(line: DiffLine) -> str:
    text = line.plain()
    if line.kind in " -+~":
        return f"{line.kind}       {text[2:]}"
    return f"        {text}"


def _counts(outcome: OrgOutcome) -> dict[str, int]:
    counts = dict.fromkeys(_KINDS, 0)
    for action in outcome.plan.actions if outcome.plan else ():
        counts[action.kind] += 1
    return counts


def _problems(outcome: OrgOutcome) -> list[str]:
    found = [f"error: {outcome.error}"] if outcome.error else []
    found += [f"warning: {w}" for w in (outcome.plan.warnings if outcome.plan else ())]
    return found


def _section(outcome: OrgOutcome) -> str:
    lines: list[str] = []
    for action in outcome.plan.actions if outcome.plan else ():
        lines.append(f"{_SYMBOL[action.kind]} {printable(_title(action))}")
        move = _move_of(outcome.plan, action)
        for ch in _changes(action):
            head, diff = change_view(action.kind, ch)
            if move is not None:
                head += f" ({_cause_text(move, ch)})"
            lines.append(f"    {printable(ch.path)}: {printable(head)}")
            # the diff's own mark in the first column, where GitHub colours `-` and `+` lines
            lines += [_diff_line(line) for line in diff]
    for role in outcome.plan.unchanged if outcome.plan else ():
        lines.append(f"  assistant {role} unchanged")
    lines += [printable(line) for line in lifecycle_lines(outcome.plan)]
    for note in outcome.plan.notes if outcome.plan else ():
        lines.append(f"  note: {printable(note)}")
    lines += [f"! {printable(p)}" for p in _problems(outcome)]
    if outcome.skipped:
        lines.append(f"  skipped: {printable(outcome.skipped)}")
    c = _counts(outcome)
    summary = ", ".join(f"{_SYMBOL[k]}{c[k]} {k}" for k in _KINDS if c[k]) or "no changes"
    if outcome.error:
        summary += ", failed"
    title = html.escape(f"{printable(outcome.slug)}: {summary}", quote=False)
    return f"<details><summary>{title}</summary>\n\n{_fence(lines)}\n\n</details>\n"


def render_markdown(report: RunReport, *, limit: int = LIMIT) -> str:
    c = report.counts()
    head = [
        "### Reconciler plan",
        "",
        f"**{c['create']}** to create, **{c['update']}** to update, **{c['delete']}** to "
        f"delete, **{c['adopt']}** to adopt; {len(report.failed)} org(s) failed, "
        f"{len(report.failed_files)} file(s) failed.",
        "",
    ]
    unknown = unknown_count(report)
    if unknown:
        head[-1:-1] = [
            f"**{unknown}** unknown offline (marked `?`): `reconciler plan` knows.",
        ]
    moved = rollouts(report)
    if moved:  # the blast radius of each template change, before anything else
        head[1:1] = ["", *(f"- **{_cell(r.line())}**" for r in moved)]
    shown = [
        o
        for o in report.outcomes
        if (o.plan and o.plan.has_changes) or _problems(o) or lifecycle_lines(o.plan)
    ]
    quiet = len(report.outcomes) - len(shown)
    table = ["| org | create | update | delete | adopt | problems |", "|---|---|---|---|---|---|"]
    for outcome in shown:
        counts = _counts(outcome)
        cells = [_cell(outcome.slug), *(str(counts[k]) for k in _KINDS)]
        cells.append(_cell("; ".join(_problems(outcome))) or "-")
        table.append(f"| {' | '.join(cells)} |")
    tail: list[str] = []
    if quiet:
        tail.append(f"{quiet} other org(s): no changes.")
    if report.problems:
        tail += ["", "**Spec files that failed:**", ""]
        tail += [f"- {_cell(p)}" for p in report.problems]
    if report.warnings:
        tail += ["", *(f"> **Warning:** {_cell(w)}" for w in report.warnings)]
    parts = ["\n".join(head), "\n".join(table) + "\n" if shown else "", "\n".join(tail)]
    sections = [_section(o) for o in shown]
    return _cut(parts, sections, limit)


def _cut(parts: list[str], sections: list[str], limit: int) -> str:
    """The summary first, then as many org sections as fit; a note says what was left out."""
    reserve = 300  # room for the note
    out = "\n".join(p for p in parts if p) + "\n\n"
    if len(out) > limit - reserve:  # even the summary is too long: cut it by lines
        kept = out[: limit - reserve].rsplit("\n", 1)[0]
        return kept + _note("the summary table", len(sections))
    for i, section in enumerate(sections):
        if len(out) + len(section) > limit - reserve:
            return out + _note("org sections", len(sections) - i)
        out += section + "\n"
    return out


def _note(what: str, left: int) -> str:
    return (
        f"\n\n> **Cut here:** {left} more {what} not shown (a comment holds 65,536 "
        "characters). Run `reconciler plan` for the whole plan.\n"
    )
