"""How a changed value is shown in the text and markdown plans: whole, never cut.

A long string (a system prompt of thousands of characters) is shown as a diff of itself, so a
reviewer sees the sentence that changed and not the whole prompt twice: line by line when it
has several lines (a changed line that is long is itself shown word by word), word by word when
it is one long line, with a few words or lines of context and long unchanged stretches elided
with "…". A long structured value (a list of tools) is a line diff of its indented JSON.

Masked values (`(sensitive)`, `(sensitive value changed)`, ...) are never diffed: a caller gets
`None` and shows them as they are. Every piece of text is made printable (`redact.printable`):
no control character or escape sequence reaches a terminal or a comment. Pure: no rich, no
markdown; `cli.render` and `cli.markdown` style the pieces.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from difflib import SequenceMatcher
from typing import Any, Literal

from reconciler.redact import SENSITIVE, printable

LONG = 80
"""A string longer than this, or with a line break, is shown as a diff of itself."""
CONTEXT_LINES = 2
CONTEXT_WORDS = 5
CONTEXT_CHARS = 120
"""An unchanged line shown for context is cut to this many characters (a changed one never)."""
ELLIPSIS = "…"

Mark = Literal["", "-", "+"]
Kind = Literal[" ", "-", "+", "~", "…"]


@dataclass(frozen=True)
class DiffLine:
    """One line of a diff: `kind` is " " (context), "-", "+", "~" (a line changed word by word:
    its `parts` are marked "-" or "+" where words went or came) or "…" (lines elided)."""

    kind: Kind
    parts: tuple[tuple[Mark, str], ...]

    def plain(self) -> str:
        """As text: `[-removed-]` and `{+added+}` around changed words, as `git diff
        --word-diff=plain` writes them."""
        text = "".join(
            f"[-{t}-]" if m == "-" else f"{{+{t}+}}" if m == "+" else t for m, t in self.parts
        )
        return f"{self.kind} {text}" if self.kind in " -+~" else text


def is_masked(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(SENSITIVE[:-1])


def one_line(value: Any) -> str:
    """A value on one line, whole: JSON, or a masked value as it is."""
    if is_masked(value):
        return str(value)
    return json.dumps(value, ensure_ascii=False, default=str)


def _is_long(value: Any) -> bool:
    return isinstance(value, str) and (len(value) > LONG or "\n" in value)


def summary(old: Any, new: Any) -> str:
    """The head line of a diff: what kind of value, and its size before and after."""
    if isinstance(old, str) or isinstance(new, str):
        before = "null" if old is None else f"{len(old):,}"
        after = "null" if new is None else f"{len(new):,}"
        if old is None:
            return f"text, {after} characters"
        return f"text, {before} -> {after} characters"
    return "value, as indented JSON"


def value_diff(old: Any, new: Any) -> list[DiffLine] | None:
    """The lines that show how `old` became `new` (`old` None: a new value), or None when the
    value is short enough for one line (`"old" -> "new"`) or masked."""
    if is_masked(old) or is_masked(new) or old == new:
        return None
    if isinstance(new, str) and (old is None or isinstance(old, str)):
        if not (_is_long(old) or _is_long(new)):
            return None
        before = "" if old is None else old
        if "\n" in before or "\n" in new or old is None:
            return line_diff(_lines(before) if old is not None else [], _lines(new))
        return word_diff(before, new)
    if isinstance(old, str) and new is None and _is_long(old):  # a long text removed
        return line_diff(_lines(old), [])
    if old is None or new is None or isinstance(old, str) or isinstance(new, str):
        return None  # a value added or removed, or a change of type: one line says it
    if max(len(one_line(old)), len(one_line(new))) <= LONG:
        return None
    return line_diff(_json_lines(old), _json_lines(new))


def _lines(text: str) -> list[str]:
    return text.split("\n")


def _json_lines(value: Any) -> list[str]:
    return json.dumps(value, ensure_ascii=False, indent=2, default=str).split("\n")


def _context(line: str) -> str:
    shown = printable(line)
    return shown if len(shown) <= CONTEXT_CHARS else shown[: CONTEXT_CHARS - 1] + ELLIPSIS


def _elided(n: int, what: str) -> DiffLine:
    return DiffLine("…", (("", f"{ELLIPSIS} {n:,} unchanged {what}"),))


def line_diff(a: list[str], b: list[str]) -> list[DiffLine]:
    """Changed lines whole, `CONTEXT_LINES` of context around them, the rest elided. A changed
    line paired with one much like it is shown word by word (a long paragraph of a prompt)."""
    matcher = SequenceMatcher(None, a, b, autojunk=len(a) + len(b) > JUNK_AFTER // 10)
    out: list[DiffLine] = []
    shown_to = 0  # lines of `a` up to here are shown or elided already
    for group in matcher.get_grouped_opcodes(CONTEXT_LINES):
        first = group[0][1]
        if first > shown_to:
            out.append(_elided(first - shown_to, "line(s)"))
        for tag, i1, i2, j1, j2 in group:
            if tag == "equal":
                out += [DiffLine(" ", (("", _context(line)),)) for line in a[i1:i2]]
            elif tag == "replace" and i2 - i1 == j2 - j1:
                for old, new in zip(a[i1:i2], b[j1:j2], strict=True):
                    out += _changed_line(old, new)
            else:
                out += [DiffLine("-", (("", printable(line)),)) for line in a[i1:i2]]
                out += [DiffLine("+", (("", printable(line)),)) for line in b[j1:j2]]
        shown_to = group[-1][2]
    if shown_to < len(a) and out:
        out.append(_elided(len(a) - shown_to, "line(s)"))
    return out


def _changed_line(old: str, new: str) -> list[DiffLine]:
    if (len(old) > LONG or len(new) > LONG) and _similar(old, new):
        return word_diff(old, new, kind="~")
    return [DiffLine("-", (("", printable(old)),)), DiffLine("+", (("", printable(new)),))]


_TOKEN = re.compile(r"\S+\s*|\s+")
"""A word with the whitespace after it: half as many tokens as words and spaces apart, and no
run of identical space tokens to make the matching quadratic (50 KB of text: 0.2 s, not 30)."""
JUNK_AFTER = 20_000
"""Past this many words (a tenth of it in lines) to compare, difflib's heuristic skips the
most frequent ones (blank lines, "the"): a coarser diff, in bounded time."""


def _similar(old: str, new: str) -> bool:
    a, b = _TOKEN.findall(old), _TOKEN.findall(new)
    return SequenceMatcher(None, a, b, autojunk=False).ratio() > 0.5


def word_diff(old: str, new: str, *, kind: Kind = "~") -> list[DiffLine]:
    """One line per cluster of changed words: the words removed and added marked, up to
    `CONTEXT_WORDS` words of context on each side, longer unchanged stretches elided (and a new
    line begun there)."""
    segments = _segments(_TOKEN.findall(old), _TOKEN.findall(new))
    lines: list[list[tuple[Mark, str]]] = [[]]
    for index, (gone, came, run) in enumerate(segments):
        if run is None:
            removed, added = "".join(gone), "".join(came)
            space = _common_space(removed, added)
            removed, added = removed[: len(removed) - len(space)], added[: len(added) - len(space)]
            if removed:
                lines[-1].append(("-", printable(removed)))
            if added:
                lines[-1].append(("+", printable(added)))
            if space:
                lines[-1].append(("", printable(space)))
            continue
        first, last = index == 0, index == len(segments) - 1
        head = [] if first else _words(run, CONTEXT_WORDS)
        tail = [] if last else _words(run[::-1], CONTEXT_WORDS)[::-1]
        if len(head) + len(tail) >= len(run):  # short: shown whole
            lines[-1].append(("", printable("".join(run))))
            continue
        if head:
            lines[-1].append(("", printable("".join(head)) + ELLIPSIS))
        if not first and not last:
            lines.append([])  # a long unchanged stretch: the next change on its own line
        if tail:
            lines[-1].append(("", f"{ELLIPSIS} {printable(''.join(tail))}"))
    return [DiffLine(kind, tuple(parts)) for parts in lines if parts]


def _common_space(a: str, b: str) -> str:
    """The whitespace both end with: shown after the marks, not inside them."""
    n = 0
    while n < min(len(a), len(b)) and a[-1 - n] == b[-1 - n] and a[-1 - n].isspace():
        n += 1
    return a[len(a) - n :] if n else ""


_Segment = tuple[list[str], list[str], list[str] | None]
MERGE_WORDS = 3
"""Changes fewer than this many unchanged words apart are shown as one change (a rewritten
sentence, not its common words matched one by one)."""


def _segments(a: list[str], b: list[str]) -> list[_Segment]:
    """(removed, added, None) for a change, ([], [], tokens) for an unchanged run; changes a
    few words apart merged."""
    out: list[_Segment] = []
    opcodes = _opcodes(a, b)
    for index, (tag, i1, i2, j1, j2) in enumerate(opcodes):
        inner = 0 < index < len(opcodes) - 1
        run = a[i1:i2]
        if tag == "equal" and not (inner and sum(not t.isspace() for t in run) < MERGE_WORDS):
            out.append(([], [], run))
            continue
        gone, came = (run, b[j1:j2]) if tag != "equal" else (run, list(run))
        if out and out[-1][2] is None:
            out[-1][0].extend(gone)
            out[-1][1].extend(came)
        else:
            out.append((list(gone), list(came), None))
    return out


def _opcodes(a: list[str], b: list[str]) -> list[tuple[str, int, int, int, int]]:
    """difflib's opcodes, with the common start and end set aside first: one sentence changed
    in a long prompt compares only around that sentence."""
    most = min(len(a), len(b))
    head = 0
    while head < most and a[head] == b[head]:
        head += 1
    tail = 0
    while tail < most - head and a[-1 - tail] == b[-1 - tail]:
        tail += 1
    mid_a, mid_b = a[head : len(a) - tail], b[head : len(b) - tail]
    out: list[tuple[str, int, int, int, int]] = [("equal", 0, head, 0, head)] if head else []
    if mid_a or mid_b:
        junk = len(mid_a) + len(mid_b) > JUNK_AFTER
        matcher = SequenceMatcher(None, mid_a, mid_b, autojunk=junk)
        out += [
            (tag, i1 + head, i2 + head, j1 + head, j2 + head)
            for tag, i1, i2, j1, j2 in matcher.get_opcodes()
        ]
    if tail:
        out.append(("equal", len(a) - tail, len(a), len(b) - tail, len(b)))
    return out


def _words(tokens: list[str], n: int) -> list[str]:
    """The first tokens holding `n` words (whitespace between them kept)."""
    taken: list[str] = []
    words = 0
    for token in tokens:
        if not token.isspace():
            if words == n:
                break
            words += 1
        taken.append(token)
    return taken
