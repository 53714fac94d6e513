"""Plans show the whole change (issue 15): no value cut at 80 characters, and a long text that
changed (a system prompt) shown as a diff of its lines or words, so the sentence that changed is
what a reviewer reads. Masked values are never diffed; nothing unprintable gets through."""

from __future__ import annotations

import io
import re

from rich.console import Console

from reconciler.cli.markdown import render_markdown
from reconciler.cli.render import change_view, render_text
from reconciler.cli.textdiff import CONTEXT_CHARS, value_diff
from reconciler.controller.run import OrgOutcome, RunReport
from reconciler.engine.actions import CreateAssistant, OrgPlan, UpdateAssistant
from reconciler.engine.diff import SENSITIVE_CHANGED, FieldChange, field_changes
from reconciler.engine.model import FINGERPRINT_PREFIX
from reconciler.redact import SENSITIVE

CHANGED = "On Saturdays the clinic opens at nine and closes at noon sharp."


def prompt(sentences: int = 80, *, changed: int | None = None, sep: str = " ") -> str:
    """A system prompt of about 5,000 characters, one sentence per number."""
    out = [
        f"Rule {i}: greet the caller kindly and confirm appointment number {i} twice."
        for i in range(sentences)
    ]
    if changed is not None:
        out[changed] = CHANGED
    return sep.join(out)


def text_of(report: RunReport) -> str:
    out = io.StringIO()
    render_text(report, Console(file=out, width=120, highlight=False, soft_wrap=True))
    return out.getvalue()


def update(*changes: FieldChange) -> RunReport:
    plan = OrgPlan("org-1", "acme", (UpdateAssistant("inbound", "asst-1", {}, changes=changes),))
    return RunReport([OrgOutcome("acme", "org-1", plan=plan)])


def test_a_sentence_changed_in_a_long_prompt_shows_that_sentence_not_the_prompt() -> None:
    old, new = prompt(), prompt(changed=40)
    assert len(old) > 5_000
    text = text_of(update(FieldChange("model.messages[0].content", old, new)))
    assert CHANGED in text  # the new sentence, whole
    assert "[-Rule 40: greet the caller kindly and confirm appointment number 40 twice.-]" in text
    assert "{+" + CHANGED + "+}" in text
    assert "Rule 3:" not in text and "Rule 77:" not in text  # far context elided
    assert len(text) < 800, text  # not the prompt, twice
    assert f"content: text, {len(old):,} -> {len(new):,} characters\n" in text


def test_a_multi_line_prompt_is_a_line_diff_with_context() -> None:
    old, new = prompt(60, sep="\n"), prompt(60, changed=30, sep="\n")
    lines = value_diff(old, new)
    assert lines is not None
    shown = [line.plain() for line in lines]
    assert shown[0] == "… 28 unchanged line(s)"
    assert "  Rule 28: greet the caller kindly and confirm appointment number 28 twice." in shown
    assert "- Rule 30: greet the caller kindly and confirm appointment number 30 twice." in shown
    assert f"+ {CHANGED}" in shown
    assert shown[-1] == "… 27 unchanged line(s)"
    assert len(shown) == 8


def test_a_long_changed_line_of_a_multi_line_text_is_diffed_word_by_word() -> None:
    old = "Intro.\n" + prompt(20) + "\nOutro."
    new = "Intro.\n" + prompt(20, changed=10) + "\nOutro."
    shown = [line.plain() for line in value_diff(old, new) or []]
    assert shown[0] == "  Intro." and shown[-1] == "  Outro."
    [changed] = [s for s in shown if s.startswith("~ ")]
    assert "{+" + CHANGED + "+}" in changed and "Rule 2:" not in changed


def test_masked_values_are_never_diffed() -> None:
    long_mask = SENSITIVE_CHANGED + " " + "x" * 200
    assert value_diff(SENSITIVE, "y" * 200) is None
    assert value_diff("y" * 200, long_mask) is None
    # a field the planner marks sensitive shows its masks on one line, never a diff
    secret = FieldChange("server.headers.x-vapi-secret", "a" * 300, "b" * 300, sensitive=True)
    assert change_view("update", secret)[1] == []
    # and what the planner makes of a secret leaf is masks only
    [change] = field_changes(
        {"headers": {"x": FINGERPRINT_PREFIX + "1" * 64}},
        {"headers": {"x": FINGERPRINT_PREFIX + "2" * 64}},
    )
    assert change.sensitive and (change.old, change.new) == (SENSITIVE, SENSITIVE_CHANGED)
    text = text_of(update(change))
    assert "headers.x: (sensitive) -> (sensitive value changed)" in text
    assert FINGERPRINT_PREFIX not in text


def test_values_are_never_cut() -> None:
    tools = [{"type": "function", "function": {"name": f"tool_{i}"}} for i in range(8)]
    added = FieldChange("model.tools", None, tools)  # a value added: one line, whole
    long_name = FieldChange("firstMessage", "Hi", "H" + "i" * 150)  # short to long: a word diff
    text = text_of(update(added, long_name))
    assert "tool_7" in text and "..." not in text
    assert "{+H" + "i" * 150 + "+}" in text


def test_a_long_structured_value_is_a_line_diff_of_its_json() -> None:
    tools = [{"type": "function", "function": {"name": f"tool_{i}"}} for i in range(8)]
    more = [*tools, {"type": "transferCall"}]
    shown = [line.plain() for line in value_diff(tools, more) or []]
    assert '+     "type": "transferCall"' in shown
    assert not any("tool_1" in s for s in shown)  # far from the change: elided


def test_a_new_multi_line_text_is_shown_line_by_line() -> None:
    body = prompt(5, sep="\n")
    create = CreateAssistant("inbound", {}, changes=(FieldChange("model.prompt", None, body),))
    report = RunReport([OrgOutcome("acme", "org-1", plan=OrgPlan("org-1", "acme", (create,)))])
    text = text_of(report)
    assert f"model.prompt: text, {len(body):,} characters\n" in text
    for line in body.split("\n"):
        assert f"+ {line}" in text


def test_nothing_unprintable_gets_through() -> None:
    old = prompt(10) + " \x1b[2J\u202e"
    new = prompt(10, changed=5) + " \x1b[2J\u202e\x07"
    text = text_of(update(FieldChange("firstMessage", old, new)))
    markdown = render_markdown(update(FieldChange("firstMessage", old, new)))
    for out in (text, markdown):
        assert "\x1b" not in out and "\u202e" not in out and "\x07" not in out
        assert "\\x07" in out


def test_unchanged_context_lines_are_cut_but_changed_lines_never() -> None:
    wide = "w " * 200
    old = f"{wide}\nshort line\n{wide}"
    new = f"{wide}\nanother line\n{wide}"
    shown = [line.plain() for line in value_diff(old, new) or []]
    assert shown[0].startswith("  w w") and len(shown[0]) == 2 + CONTEXT_CHARS
    assert shown[0].endswith("…")
    assert "- short line" in shown and "+ another line" in shown


def test_markdown_shows_the_diff_in_its_fenced_block() -> None:
    old = prompt(40, sep="\n")
    new = prompt(40, changed=20, sep="\n").replace(CHANGED, CHANGED + " Use ``` and `x`.")
    markdown = render_markdown(update(FieldChange("model.messages[0].content", old, new)))
    block = re.search(r"\n(`{4,})diff\n(.*?)\n\1\n", markdown, re.S)
    assert block is not None, markdown
    body = block.group(2).splitlines()
    assert (
        f"+       {CHANGED} Use ``` and `x`." in body
    )  # the mark in the first column: GitHub colours it
    assert any(line.startswith("-       Rule 20:") for line in body)
    assert "Rule 5:" not in markdown


def test_a_long_prompt_is_diffed_in_bounded_time() -> None:
    """Repetitive text with five scattered changes: 50 KB on one line, and 6,000 short lines
    with a blank line after each (difflib is quadratic on repeated tokens and lines: spaces
    apart from words took 30 s for the first, blank lines unjunked 6 s for the second)."""
    import random
    import time

    rng = random.Random(2)
    vocabulary = [f"w{i}" for i in range(300)]
    words = [rng.choice(vocabulary) for _ in range(10_000)]
    changed = list(words)
    for k in range(0, len(words), len(words) // 5):
        changed[k] = "CHANGED"
    started = time.monotonic()
    one = value_diff(" ".join(words), " ".join(changed))
    assert time.monotonic() - started < 3
    assert one is not None and sum(line.plain().count("{+CHANGED+}") for line in one) == 5

    many_words = [rng.choice(vocabulary) for _ in range(12_000)]
    many_changed = list(many_words)
    for k in range(0, len(many_words), len(many_words) // 5):
        many_changed[k] = "CHANGED"
    old = "\n\n".join(" ".join(many_words[i : i + 2]) for i in range(0, len(many_words), 2))
    new = "\n\n".join(" ".join(many_changed[i : i + 2]) for i in range(0, len(many_changed), 2))
    started = time.monotonic()
    many = value_diff(old, new)
    assert time.monotonic() - started < 3
    assert many is not None
    assert sum(line.kind == "+" and "CHANGED" in line.plain() for line in many) == 5
