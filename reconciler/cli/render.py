"""Plan output: text for people (PR comments), JSON for machines. Secrets never appear, and
every string that came from a user or a server is escaped before it reaches a terminal."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.text import Text

from reconciler.cli.textdiff import DiffLine, one_line, summary, value_diff
from reconciler.controller.run import RunReport
from reconciler.engine.actions import (
    RESOURCE_ACTIONS,
    Action,
    AdoptAssistant,
    AdoptResource,
    CreateAssistant,
    CreateResource,
    DeactivateCredential,
    DeleteAssistant,
    DeleteResource,
    LeaveAccount,
    MoveTemplate,
    OrgPlan,
    RetireOrg,
    StoreCredential,
    TemplateMove,
    UpdateAssistant,
    UpdateResource,
    UpsertOrg,
)
from reconciler.engine.diff import FieldChange
from reconciler.engine.kinds import BY_NAME, KEYED
from reconciler.engine.rollouts import Decision
from reconciler.redact import SENSITIVE, printable
from reconciler.templates import parse_ref

_SYMBOL = {"create": "+", "update": "~", "delete": "-", "adopt": "<="}
_STYLE = {"create": "green", "update": "yellow", "delete": "red", "adopt": "cyan"}
_DIFF_STYLE = {"-": "red", "+": "green", "~": "yellow", "…": "dim", " ": ""}


def _safe(text: object) -> str:
    """Escaped for the terminal (control characters) and for rich (markup)."""
    return escape(printable(text))


def _value(v: Any) -> str:
    return one_line(v)  # whole: a long text is shown as a diff instead (`change_view`)


def _title(action: Action) -> str:
    match action:
        case UpsertOrg(slug=slug):
            return f"organization {slug}"
        case StoreCredential(provider=p, kind="update"):
            return f"credential {p} (sensitive value changed)"
        case StoreCredential(provider=p) | DeactivateCredential(provider=p):
            return f"credential {p} (sensitive)"
        case CreateAssistant(role=role):
            return f"assistant {role} {json.dumps(action.name, ensure_ascii=False)}"
        case UpdateAssistant(role=role, vapi_id=vid, adopt=adopt):
            return f"assistant {role}{_id(vid)}" + (" [adopted]" if adopt else "")
        case AdoptAssistant(role=role, vapi_id=vid, note=note):
            return f"assistant {role} ({vid}): adopt, {note}"
        case MoveTemplate(role=role, vapi_id=vid, before=before, after=after):
            return (
                f"assistant {role}{_id(vid)}: template {before or '(none)'} -> "
                f"{after or '(none)'}, renders as before (nothing sent to Vapi)"
            )
        case DeleteAssistant(role=role, vapi_id=vid, note=note):
            return f"assistant {role} ({vid or 'no id'}): {note}"
        case CreateResource(resource=kind, name=name):
            return f"{_label(kind)} {name}"
        case UpdateResource(resource=kind, name=name, vapi_id=vid, adopt=adopt):
            return f"{_label(kind)} {name}{_id(vid)}" + (" [adopted]" if adopt else "")
        case AdoptResource(resource=kind, name=name, vapi_id=vid, note=note):
            return f"{_label(kind)} {name}{_id(vid)}: adopt, {note}"
        case DeleteResource(resource=kind, name=name, vapi_id=vid, note=note):
            return f"{_label(kind)} {name} ({vid or 'no id'}): {note}"
        case LeaveAccount(old_account=old, new_account=new):
            return (
                f"organization: Vapi account {old} -> {new or 'a new, empty one'} "
                "(accepted; old mappings kept for late webhooks)"
            )
        case RetireOrg(reason=reason):
            return f"organization: retire ({reason}; credentials deactivated, history kept)"
    raise AssertionError(action)  # pragma: no cover


def _id(vapi_id: str) -> str:
    """` (asst_…)`; nothing where the id is not known (`diff --base`, offline)."""
    return f" ({vapi_id})" if vapi_id else ""


def _label(kind: str) -> str:
    """How a kind is named in the text plan: `tool`, `phone number`."""
    found = BY_NAME.get(kind)
    return found.label if found is not None else kind


def unchanged_text(entry: str) -> str:
    """An entry of `OrgPlan.unchanged`: an assistant's role, or `kind/name`."""
    kind, sep, name = entry.partition("/")
    return f"{_label(kind)} {name}" if sep else f"assistant {entry}"


def created_id(action: Action, created: dict[str, str]) -> str | None:
    """The id an applied create got (`OrgOutcome.created`: roles, and `kind/name`)."""
    if isinstance(action, CreateAssistant):
        return created.get(action.role)
    if isinstance(action, CreateResource):
        return created.get(f"{action.resource}/{action.name}")
    return None


def lifecycle_lines(plan: OrgPlan | None) -> list[str]:
    """An orphan left alone, duplicates and unmanaged assistants: shown, never acted on; and
    what `diff --base` cannot know offline."""
    if plan is None:
        return []
    lines = [f"? orphaned: {plan.orphaned}"] if plan.orphaned and not plan.actions else []
    lines += [f"? {_label(u.resource)} {u.name}: unknown offline: {u.reason}" for u in plan.unknown]
    lines += [
        f"? {f.action} {_label(f.resource)} {f.role} ({f.vapi_id}): {f.reason}"
        for f in plan.findings
    ]
    return lines


def _changes(action: Action) -> tuple[FieldChange, ...]:
    return getattr(action, "changes", ())


def _change_text(kind: str, ch: FieldChange) -> str:
    if kind == "create":
        return _value(ch.new)
    text = f"{_value(ch.old)} -> {_value(ch.new)}"
    return f"{text} (drift)" if ch.drift and not ch.sensitive else text


def change_view(kind: str, ch: FieldChange) -> tuple[str, list[DiffLine]]:
    """A field's change: one line (`"old" -> "new"`), or a head line and the lines of a diff
    for a long text or value. A sensitive change is never diffed (its values are masks)."""
    old = None if kind == "create" else ch.old
    lines = None if ch.sensitive else value_diff(old, ch.new)
    if lines is None:
        return _change_text(kind, ch), []
    head = summary(old, ch.new)
    return (f"{head} (drift)" if ch.drift else head), lines


Part = str | tuple[str, str]
"""A piece of an output line: plain text, or (text, rich style)."""


def _diff_parts(line: DiffLine) -> list[Part]:
    """A diff line's pieces: removed words red, added ones green, the `[-...-]` / `{+...+}`
    marks kept (they carry the meaning without colour)."""
    style = _DIFF_STYLE[line.kind]
    outer = style if line.kind != "~" else ""
    marks = {"-": ("[-", "-]", "red"), "+": ("{+", "+}", "green")}
    prefix = f"{line.kind} " if line.kind in " -+~" else ""
    parts: list[Part] = [(prefix, outer)] if prefix else []
    for mark, text in line.parts:
        if mark:
            start, end, colour = marks[mark]
            parts.append((start + text + end, f"{outer} {colour}".strip()))
        else:
            parts.append((text, outer))
    return parts


class _Lines:
    """Output lines made of pieces (never markup: a name or a value is text whatever its
    brackets), printed together in one `console.print`; to a pipe or a file (no colour), as
    plain text written at once: rich's styled text cost a no-op `apply` of many orgs about a
    tenth of its CPU."""

    def __init__(self) -> None:
        self.lines: list[tuple[Part, ...]] = []

    def print(self, *parts: Part) -> None:
        self.lines.append(parts)

    def print_to(self, console: Console) -> None:
        if not self.lines or console.quiet:
            return
        if console.color_system is not None or console.is_terminal:
            console.print(Text("\n").join(Text.assemble(*line) for line in self.lines))
            return
        text = "\n".join(
            "".join(p if isinstance(p, str) else p[0] for p in line) for line in self.lines
        )
        try:
            console.file.write(text + "\n")
            console.file.flush()
        except BrokenPipeError:
            console.on_broken_pipe()  # quiet from now on, and said once (`cli.console`)


@dataclass(frozen=True)
class Rollout:
    """The orgs a template change moves in this plan: from `before` to `after` (each a
    `name@version`, or None: written in full in the org file)."""

    before: str | None
    after: str | None
    orgs: tuple[str, ...]  # slugs
    change: int  # orgs whose assistants change in Vapi
    unchanged: int  # orgs whose assistants render as before (their overrides cover it)

    def line(self) -> str:
        """`template dental-receptionist 3 → 4: 37 orgs, 35 change, 2 unchanged through
        overrides`."""
        b = parse_ref(self.before) if self.before else None
        a = parse_ref(self.after) if self.after else None
        if a is not None and b is not None and a[0] == b[0]:
            head = f"template {a[0]} {b[1]} → {a[1]}"
        else:
            head = f"template {self.before or '(none)'} → {self.after or '(none)'}"
        n = len(self.orgs)
        return (
            f"{head}: {n} org{'s' if n != 1 else ''}, {self.change} change, "
            f"{self.unchanged} unchanged through overrides"
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "from": self.before,
            "to": self.after,
            "orgs": len(self.orgs),
            "change": self.change,
            "unchanged": self.unchanged,
            "org_slugs": list(self.orgs),
        }


def rollouts(report: RunReport) -> list[Rollout]:
    """The blast radius of the template changes in the plan, one entry per (from, to)."""
    moved: dict[tuple[str | None, str | None], dict[str, bool]] = {}
    for outcome in report.outcomes:
        plan = outcome.plan
        for move in plan.templates if plan else ():
            orgs = moved.setdefault((move.before, move.after), {})
            orgs[outcome.slug] = orgs.get(outcome.slug, False) or move.changes
    out = [
        Rollout(
            before,
            after,
            tuple(sorted(orgs)),
            sum(orgs.values()),
            sum(not changes for changes in orgs.values()),
        )
        for (before, after), orgs in moved.items()
    ]
    return sorted(out, key=lambda r: (r.after or "", r.before or ""))


def wave_line(d: Decision) -> str:
    """`rollout dental-receptionist@4: wave 2 of 3 (acme, bravo), 12 org(s) held`, and why
    it is halted."""
    wave = ", ".join(d.members[d.wave - 1]) if d.wave <= len(d.members) else ""
    text = f"rollout {d.template}: wave {d.wave} of {d.waves}" + (f" ({wave})" if wave else "")
    text += f", {len(d.held)} org(s) held on their old version" if d.held else ""
    if d.step == "advance":
        text += f" (wave {d.wave - 1} done and soaked: wave {d.wave} starts now)"
    elif d.step == "finish":
        text += " (done: every org moved)"
    if d.halted:
        text += f"; HALTED: {d.halted} (`reconciler rollout resume {d.template}` goes on)"
    return text


def _move_of(plan: OrgPlan | None, action: Action) -> TemplateMove | None:
    role = getattr(action, "role", None)
    if plan is None or action.resource != "assistant" or role is None:
        return None
    return next((m for m in plan.templates if m.role == role), None)


def render_text(
    report: RunReport, console: Console, *, verb: str = "Plan", quiet: bool = False
) -> None:
    """The plan (or what was applied), org by org, then the run's problems and the summary.
    `quiet`: only the summary and the problems (an org's error and warnings, failed files).
    Printed as one text: rich costs about as much per print as per line of it."""
    out = _Lines()
    for rollout in rollouts(report):
        out.print((printable(rollout.line()), "bold"))
    for decision in report.rollouts:
        out.print((printable(wave_line(decision)), "bold"))
    for outcome in report.outcomes:
        plan = outcome.plan
        if quiet:
            if outcome.error or (plan and plan.warnings):
                out.print((printable(outcome.slug), "bold"))
                for warning in plan.warnings if plan else ():
                    out.print("  ", (f"! {printable(warning)}", "magenta"))
                if outcome.error:
                    out.print("  ", (f"x error: {printable(outcome.error)}", "red"))
            continue
        out.print((printable(outcome.slug), "bold"), " ", (f"({printable(outcome.org_id)})", "dim"))
        if outcome.skipped:
            out.print("  ", (f"~ skipped: {printable(outcome.skipped)}", "cyan"))
        for action in plan.actions if plan else ():
            style = _STYLE[action.kind]
            title = _title(action)
            made = created_id(action, outcome.created)
            if made is not None:
                title += f" created: {made}"
            out.print("  ", (f"{_SYMBOL[action.kind]} {printable(title)}", style))
            note = getattr(action, "note", "")
            if note and not isinstance(
                action, AdoptAssistant | DeleteAssistant | AdoptResource | DeleteResource
            ):
                out.print("      ", (f"({printable(note)})", "dim"))
            move = _move_of(plan, action)
            for ch in _changes(action):
                head, lines = change_view(action.kind, ch)
                if move is not None:
                    head += f" ({_cause_text(move, ch)})"
                out.print(f"      {printable(ch.path)}: {printable(head)}")
                for diff_line in lines:
                    out.print("        ", *_diff_parts(diff_line))
        for entry in plan.unchanged if plan else ():
            out.print("  ", (f"= {printable(unchanged_text(entry))} unchanged", "dim"))
        for line in lifecycle_lines(plan):
            out.print("  ", (printable(line), "magenta"))
        for warning in plan.warnings if plan else ():
            out.print("  ", (f"! {printable(warning)}", "magenta"))
        for note in plan.notes if plan else ():
            out.print("  ", (f"i {printable(note)}", "dim"))
        if outcome.error:
            out.print("  ", (f"x error: {printable(outcome.error)}", "red"))
    for problem in report.problems:
        out.print((f"x {printable(problem)}", "red"))
    for warning in report.warnings:
        out.print((f"! {printable(warning)}", "magenta"))
    for note in report.notes:
        out.print((f"x {printable(note)}", "red"))
    c = report.counts()
    tail = f" ({c['adopt']} to adopt)" if c["adopt"] else ""
    unknown = unknown_count(report)
    if unknown:
        tail += f" {unknown} unknown offline (see `?`): `plan` knows."
    out.print(
        (f"{verb}:", "bold"),
        f" {c['create']} to create, {c['update']} to update, {c['delete']} to delete.{tail}",
    )
    if report.skipped:
        names = ", ".join(printable(o.slug) for o in report.skipped)
        out.print((f"Skipped: {len(report.skipped)} org(s) held elsewhere ({names})", "cyan"))
    if report.failed or report.problems:
        parts = []
        if report.failed:
            names = ", ".join(printable(o.slug) for o in report.failed)
            parts.append(f"{len(report.failed)} org(s) ({names})")
        if report.problems:
            files = ", ".join(printable(p) for p in report.failed_files)
            parts.append(f"{len(report.failed_files)} file(s) ({files})")
        out.print((f"Failed: {'; '.join(parts)}", "red"))
    out.print_to(console)


FORMAT_VERSION = "3"
"""The JSON plan's contract version (docs/plan-format.md): bumped on any incompatible change."""


def unknown_count(report: RunReport) -> int:
    """What `diff --base` could not know offline, in all orgs (0 for `plan`)."""
    return sum(len(o.plan.unknown) for o in report.outcomes if o.plan is not None)


def address(slug: str, action: Action | None = None, *, role: str | None = None) -> str:
    """`org/<slug>`, `org/<slug>/assistant/<role>`, `org/<slug>/credential/<provider>` or
    `org/<slug>/<kind>/<name>` (`tool`, `phoneNumber`); `role` may be `kind/name` too."""
    if role is not None:
        return f"org/{slug}/{role}" if "/" in role else f"org/{slug}/assistant/{role}"
    match action:
        case StoreCredential(provider=p) | DeactivateCredential(provider=p):
            return f"org/{slug}/credential/{p}"
        case (
            CreateAssistant(role=r)
            | UpdateAssistant(role=r)
            | AdoptAssistant(role=r)
            | MoveTemplate(role=r)
        ):
            return f"org/{slug}/assistant/{r}"
        case DeleteAssistant(role=r):
            return f"org/{slug}/assistant/{r}"
        case (
            CreateResource(resource=k, name=n)
            | UpdateResource(resource=k, name=n)
            | AdoptResource(resource=k, name=n)
            | DeleteResource(resource=k, name=n)
        ):
            return f"org/{slug}/{k}/{n}"
    return f"org/{slug}"


def _reason(action: Action) -> str | None:
    if isinstance(action, RetireOrg):
        return action.reason or None
    if isinstance(action, LeaveAccount):
        return f"Vapi account {action.old_account} -> {action.new_account or 'a new, empty one'}"
    return getattr(action, "note", "") or None


def _cause_text(move: TemplateMove, ch: FieldChange) -> str:
    cause = move.cause(ch.path, drift=ch.drift)
    if cause == "template":
        return f"from template {move.after}" if move.after else "from the org file"
    return "from the org's overrides" if cause == "org" else "drift"


def _change_json(
    slug: str, org_id: str, action: Action, move: TemplateMove | None = None
) -> dict[str, Any]:
    fields = _changes(action)
    before: dict[str, Any] | None = {ch.path: ch.old for ch in fields} or None
    after: dict[str, Any] | None = {ch.path: ch.new for ch in fields} or None
    if action.kind == "create":
        before = None
    reason = _reason(action)
    if isinstance(action, StoreCredential):
        before = None if action.kind == "create" else {"config": SENSITIVE}
        after = {"config": SENSITIVE}
        reason = reason or ("sensitive value changed" if action.kind == "update" else None)
    return {
        "address": address(slug, action),
        "org": slug,
        "org_id": org_id,
        "resource": action.resource,
        "action": action.kind,
        "role": getattr(action, "role", None),
        "provider": getattr(action, "provider", None),
        "name": action.name if isinstance(action, RESOURCE_ACTIONS) else None,
        "vapi_id": getattr(action, "vapi_id", None),
        "before": before,
        "after": after,
        "drift": any(ch.drift for ch in fields),
        "reason": reason,
        "template": {"from": move.before, "to": move.after} if move is not None else None,
        "fields": [
            {
                "path": ch.path,
                "before": ch.old,
                "after": ch.new,
                "drift": ch.drift,
                "sensitive": ch.sensitive,
                "cause": (
                    move.cause(ch.path, drift=ch.drift)
                    if move is not None
                    else "drift"
                    if ch.drift
                    else "org"
                ),
            }
            for ch in fields
        ],
    }


def _other(slug: str, org_id: str, kind: str, addr: str, reason: str | None) -> dict[str, Any]:
    parts = addr.split("/", 3)  # org, slug, then the resource and its name or role
    resource = parts[2] if len(parts) == 4 else "organization"
    return {
        "address": addr,
        "org": slug,
        "org_id": org_id,
        "resource": resource,
        "action": kind,
        "role": parts[3] if resource == "assistant" else None,
        "provider": None,
        "name": parts[3] if resource in KEYED else None,
        "vapi_id": None,
        "before": None,
        "after": None,
        "drift": False,
        "reason": reason,
        "template": None,
        "fields": [],
    }


def report_json(report: RunReport) -> dict[str, Any]:
    """The plan as data: the contract of docs/plan-format.md (secrets masked, as everywhere)."""
    changes: list[dict[str, Any]] = []
    warnings: list[dict[str, str]] = []
    notes: list[dict[str, str]] = []
    for o in report.outcomes:
        plan = o.plan
        if plan is None:
            continue
        mine: list[dict[str, Any]] = []
        if plan.blocked:
            reason = "; ".join(plan.blocked)
            mine.append(_other(o.slug, o.org_id, "blocked", address(o.slug), reason))
        mine += [
            _change_json(o.slug, o.org_id, action, _move_of(plan, action))
            for action in plan.actions
        ]
        for role in plan.unchanged:
            mine.append(_other(o.slug, o.org_id, "noop", address(o.slug, role=role), None))
        if plan.orphaned and not plan.actions:
            reason = f"orphaned: {plan.orphaned}"
            mine.append(_other(o.slug, o.org_id, "noop", address(o.slug), reason))
        for f in plan.findings:
            at = f.role if f.resource == "assistant" else f"{f.resource}/{f.role}"
            entry = _other(o.slug, o.org_id, f.action, address(o.slug, role=at), f.reason)
            mine.append({**entry, "vapi_id": f.vapi_id})
        for u in plan.unknown:
            if u.resource == "credential":
                where = f"{address(o.slug)}/credential/{u.name}"
                entry = {**_other(o.slug, o.org_id, u.action, where, u.reason)}
                mine.append({**entry, "resource": "credential", "provider": u.name})
            else:
                at = f"{u.resource}/{u.name}" if u.resource in KEYED else u.name
                where = address(o.slug, role=at)
                mine.append(_other(o.slug, o.org_id, u.action, where, u.reason))
        changes += [{**entry, "orphaned": bool(plan.orphaned)} for entry in mine]
        warnings += [{"org": o.slug, "message": w} for w in plan.warnings]
        notes += [{"org": o.slug, "message": n} for n in plan.notes]
    warnings += [{"run": "deletes", "message": w} for w in report.warnings]
    errors: list[dict[str, Any]] = [
        {"org": o.slug, "message": o.error or ""} for o in report.failed
    ]
    errors += [
        {
            "file": str(p.path),
            **({"line": p.line, "column": p.column} if p.line is not None else {}),
            "message": str(p),
        }
        for p in report.problems
    ]
    errors += [{"run": "record", "message": n} for n in report.notes]
    skipped = [{"org": o.slug, "message": o.skipped or ""} for o in report.skipped]
    kinds = [c["action"] for c in changes]
    summary = {
        **report.counts(),
        "noop": kinds.count("noop"),
        "blocked": kinds.count("blocked"),
        "duplicate": kinds.count("duplicate"),
        "unmanaged": kinds.count("unmanaged"),
        "unknown": kinds.count("unknown"),
        "orphaned": len({c["org"] for c in changes if c["orphaned"]}),
        "unchanged": kinds.count("noop"),  # format 1's name, kept
        "orgs": len(report.outcomes),
        "orgs_failed": len(report.failed),
        "orgs_skipped": len(report.skipped),
        "files_failed": len(report.failed_files),
        "errors": len(errors),
        "no_op": not report.has_changes,
    }
    return {
        "format_version": FORMAT_VERSION,
        "templates": [r.as_json() for r in rollouts(report)],
        "rollouts": [
            {
                "template": d.template,
                "wave": d.wave,
                "waves": d.waves,
                "step": d.step,
                "members": [list(m) for m in d.members],
                "held": len(d.held),
                "halted": d.halted,
            }
            for d in report.rollouts
        ],
        "changes": changes,
        "warnings": warnings,
        "notes": notes,
        "skipped": skipped,
        "errors": errors,
        "summary": summary,
    }


def _when(value: Any) -> str:
    return str(value)[:19].replace("T", " ") if value else "-"


def render_status(views: list[dict[str, Any]], console: Console, *, detail: bool) -> None:
    """`reconciler status`: one line per org; with `--org`, its conditions, assistants, tools,
    phone numbers (and the outbound one), credentials and last runs."""
    if not views:
        console.print("No org in Postgres yet: run `reconciler apply` or `reconciler serve`.")
        return
    rows = [
        (
            printable(view["slug"]),
            printable(view["status"]),
            _when(view["lastReconciledAt"]),
            printable(
                str(view["lastAppliedRevision"] or view["lastAttemptedRevision"] or "-")[:12]
            ),
            printable(view["message"] or ""),
        )
        for view in views
    ]
    header = ("SLUG", "STATUS", "LAST RECONCILED", "REVISION", "MESSAGE")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]

    def columns(cells: tuple[str, ...]) -> str:
        return "  ".join([*(c.ljust(w) for c, w in zip(cells, widths, strict=False)), cells[4]])

    console.print(escape(columns(header).rstrip()), style="bold")
    for view, row in zip(views, rows, strict=True):
        console.print(escape(columns(row).rstrip()))
        if not detail:
            continue
        for c in view["conditions"]:
            text = f"  {c['type']:<12} {c['status']:<5} {c['reason']}"
            if c.get("message"):
                text += f": {c['message']}"
            console.print(_safe(text))
        console.print(
            _safe(
                f"  revisions: attempted {view['lastAttemptedRevision'] or '-'}, "
                f"applied {view['lastAppliedRevision'] or '-'}"
            )
        )
        for a in view["assistants"]:
            made = f", template {a['template']}" if a.get("template") else ""
            console.print(
                _safe(
                    f"  assistant {a['role']}: {a['vapiAssistantId'] or '-'} ({a['status']}{made})"
                )
            )
        for t in view["tools"]:
            console.print(_safe(f"  tool {t['name']}: {t['vapiToolId'] or '-'} ({t['status']})"))
        for n in view["phoneNumbers"]:
            console.print(
                _safe(
                    f"  phone number {n['number']} ({n['provider'] or '-'}): "
                    f"{n['vapiPhoneNumberId'] or '-'} ({n['status']})"
                )
            )
        if view["outbound"] is not None:
            out = view["outbound"]
            console.print(
                _safe(f"  outbound from {out['phoneNumber']}: {out['phoneNumberId'] or '-'}")
            )
        for provider, cred in view["credentials"].items():
            state = "configured" if cred["configured"] else "inactive"
            verified = _when(cred["lastVerifiedAt"])
            error = f", error: {cred['verificationError']}" if cred["verificationError"] else ""
            console.print(_safe(f"  credential {provider}: {state}, verified {verified}{error}"))
        for run in view["runs"]:
            changes = ", ".join(f"{k} {v}" for k, v in (run.get("changes") or {}).items())
            text = f"  run {_when(run['at'])} {run['outcome']}"
            if changes:
                text += f" ({changes})"
            if run.get("message"):
                text += f": {run['message']}"
            console.print(_safe(text))
