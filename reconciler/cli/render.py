"""Plan output: text for people (PR comments), JSON for machines. Secrets never appear."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.markup import escape

from reconciler.controller.run import RunReport
from reconciler.engine.actions import (
    Action,
    AdoptAssistant,
    CreateAssistant,
    DeactivateCredential,
    DeleteAssistant,
    StoreCredential,
    UpdateAssistant,
    UpsertOrg,
)
from reconciler.engine.diff import SENSITIVE, FieldChange

_SYMBOL = {"create": "+", "update": "~", "delete": "-", "adopt": "<="}
_STYLE = {"create": "green", "update": "yellow", "delete": "red", "adopt": "cyan"}
_MAX_VALUE = 80


def _value(v: Any) -> str:
    text = json.dumps(v, ensure_ascii=False) if not isinstance(v, str) or v != SENSITIVE else v
    return text if len(text) <= _MAX_VALUE else text[: _MAX_VALUE - 3] + "..."


def _title(action: Action) -> str:
    match action:
        case UpsertOrg(slug=slug):
            return f"organization {slug}"
        case StoreCredential(provider=p) | DeactivateCredential(provider=p):
            return f"credential {p} (sensitive)"
        case CreateAssistant(role=role, body=body):
            return f"assistant {role} {json.dumps(body.get('name'))}"
        case UpdateAssistant(role=role, vapi_id=vid, adopt=adopt):
            return f"assistant {role} ({vid})" + (" [adopted]" if adopt else "")
        case AdoptAssistant(role=role, vapi_id=vid, note=note):
            return f"assistant {role} ({vid}): adopt, {note}"
        case DeleteAssistant(role=role, vapi_id=vid, note=note):
            return f"assistant {role} ({vid or 'no id'}): {note}"
    raise AssertionError(action)  # pragma: no cover


def _changes(action: Action) -> tuple[FieldChange, ...]:
    return getattr(action, "changes", ())


def render_text(report: RunReport, console: Console, *, verb: str = "Plan") -> None:
    for outcome in report.outcomes:
        plan = outcome.plan
        console.print(f"[bold]{escape(outcome.slug)}[/bold] [dim]({outcome.org_id})[/dim]")
        for action in plan.actions if plan else ():
            style = _STYLE[action.kind]
            console.print(f"  [{style}]{_SYMBOL[action.kind]} {escape(_title(action))}[/{style}]")
            note = getattr(action, "note", "")
            if note and not isinstance(action, AdoptAssistant | DeleteAssistant):
                console.print(f"      [dim]({escape(note)})[/dim]")
            for ch in _changes(action):
                arrow = (
                    _value(ch.new)
                    if action.kind == "create"
                    else f"{_value(ch.old)} -> {_value(ch.new)}"
                )
                console.print(f"      {escape(ch.path)}: {escape(arrow)}")
        for role in plan.unchanged if plan else ():
            console.print(f"  [dim]= assistant {role} unchanged[/dim]")
        for warning in plan.warnings if plan else ():
            console.print(f"  [magenta]! {escape(warning)}[/magenta]")
        if outcome.error:
            console.print(f"  [red]x error: {escape(outcome.error)}[/red]")
    for problem in report.problems:
        console.print(f"[red]x {escape(str(problem))}[/red]")
    c = report.counts()
    tail = f" ({c['adopt']} to adopt)" if c["adopt"] else ""
    console.print(
        f"[bold]{verb}:[/bold] {c['create']} to create, {c['update']} to update, "
        f"{c['delete']} to delete.{tail}"
    )
    if report.failed or report.problems:
        failed = [o.slug for o in report.failed] + [str(p.path) for p in report.problems]
        console.print(f"[red]Failed: {len(failed)} ({', '.join(failed)})[/red]")


def report_json(report: RunReport) -> dict[str, Any]:
    changes: list[dict[str, Any]] = []
    warnings: list[dict[str, str]] = []
    for o in report.outcomes:
        for action in o.plan.actions if o.plan else ():
            changes.append(
                {
                    "org": o.slug,
                    "org_id": o.org_id,
                    "resource": action.resource,
                    "action": action.kind,
                    "role": getattr(action, "role", None),
                    "provider": getattr(action, "provider", None),
                    "vapi_id": getattr(action, "vapi_id", None),
                    "fields": [
                        {"path": ch.path, "before": ch.old, "after": ch.new}
                        for ch in _changes(action)
                    ],
                }
            )
        warnings += [{"org": o.slug, "message": w} for w in (o.plan.warnings if o.plan else ())]
    errors = [{"org": o.slug, "message": o.error or ""} for o in report.failed]
    errors += [{"file": str(p.path), "message": str(p)} for p in report.problems]
    summary = {
        **report.counts(),
        "unchanged": sum(len(o.plan.unchanged) for o in report.outcomes if o.plan),
        "orgs": len(report.outcomes),
        "errors": len(errors),
        "no_op": not report.has_changes,
    }
    return {
        "format_version": "1",
        "changes": changes,
        "warnings": warnings,
        "errors": errors,
        "summary": summary,
    }
