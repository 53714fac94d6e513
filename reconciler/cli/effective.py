"""`reconciler render`: an org's effective assistants as the reconciler will send them, offline
(no key, database or network), optionally with the origin of every value; and
`render --template NAME@VERSION --all`, the preview of moving every org that uses a template to
that version.

Secret-looking leaves are masked as the plan masks them; credentials are never read.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from reconciler.redact import mask_tree, printable
from reconciler.spec import loader
from reconciler.spec.templated import Templates, Use
from reconciler.templates import TemplateError, TemplateUse, format_path, parse_ref, render

EXIT_OK, EXIT_ERROR = 0, 1
_PLAIN_KEY = re.compile(r"[A-Za-z_$][A-Za-z0-9_$-]*")
HIDDEN = "(sensitive)"


def _masked(assistant: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = mask_tree(dict(assistant), lambda _: HIDDEN)
    return out


def _scalar(value: Any) -> str:
    """A YAML scalar that reads back as `value` (JSON's forms are YAML's too)."""
    return json.dumps(value, ensure_ascii=False)


def _key(key: str) -> str:
    return key if _PLAIN_KEY.fullmatch(key) else json.dumps(key, ensure_ascii=False)


def yaml_lines(
    node: Any, origins: Mapping[str, str] | None = None, path: tuple[str | int, ...] = ()
) -> Iterator[str]:
    """`node` as block YAML, each leaf followed by `# origin` when `origins` are given."""

    def note(at: tuple[str | int, ...]) -> str:
        if origins is None:
            return ""
        origin = origins.get(format_path(at))
        return f"  # {printable(origin)}" if origin else ""

    if isinstance(node, dict):
        for k, v in node.items():
            at = (*path, k)
            if isinstance(v, (dict, list)) and v:
                yield f"{_key(k)}:"
                yield from ("  " + line for line in yaml_lines(v, origins, at))
            else:
                empty = "{}" if isinstance(v, dict) else "[]" if isinstance(v, list) else None
                yield f"{_key(k)}: {empty or _scalar(v)}{note(at)}"
    elif isinstance(node, list):
        for i, v in enumerate(node):
            at = (*path, i)
            if isinstance(v, (dict, list)) and v:
                inner = list(yaml_lines(v, origins, at))
                yield "- " + inner[0]
                yield from ("  " + line for line in inner[1:])
            else:
                empty = "{}" if isinstance(v, dict) else "[]" if isinstance(v, list) else None
                yield f"- {empty or _scalar(v)}{note(at)}"
    else:
        yield f"{_scalar(node)}{note(path)}"


def _org_file(result: loader.LoadResult, slug: str) -> Path | None:
    for spec in result.specs:
        if spec.org.metadata.slug == slug:
            return spec.path
    return None


def _document(path: Path) -> dict[str, Any]:
    """The org file as written (read and parsed as `validate` does)."""
    data, _ = loader.read_spec(path, path.resolve())
    doc, _ = loader.parse_yaml(path, data) if data is not None else (None, [])
    if doc is None:  # cannot be: the file passed `validate` a moment ago
        raise TemplateError(str(path), "", "?", "the file changed while it was read")
    return doc


def _uses(
    doc: dict[str, Any], path: Path, templates: Templates
) -> tuple[dict[str, Any], tuple[Use, ...]]:
    """The org file's assistants as checked, and each templated one's rendering (origins)."""
    expanded, failed, uses = templates.expand(doc, str(path))
    if failed:
        raise failed[0]
    return expanded["spec"]["assistants"], uses


def cmd_render(args: argparse.Namespace) -> int:
    result = loader.validate_tree(Path(args.path))
    if args.template:
        return _preview(args, result)
    if not args.org:
        print("error: render needs --org SLUG (or --template NAME@VERSION --all)", file=sys.stderr)
        return EXIT_ERROR
    path = _org_file(result, args.org)
    if path is None:
        mine = [p for p in result.problems if p.path.stem == args.org]
        for problem in mine:
            print(problem, file=sys.stderr)
        if not mine:
            print(f"error: no valid spec with slug {printable(args.org)}", file=sys.stderr)
        return EXIT_ERROR
    try:
        assistants, uses = _uses(_document(path), path, result.templates)
    except TemplateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    roles = [args.assistant] if args.assistant else list(assistants)
    if args.assistant and args.assistant not in assistants:
        known = ", ".join(assistants) or "none"
        print(
            f"error: {printable(args.org)} has no assistant {printable(args.assistant)} "
            f"(it has: {printable(known)})",
            file=sys.stderr,
        )
        return EXIT_ERROR
    by_role = {u.role: u for u in uses}
    out: dict[str, Any] = {}
    for role in roles:
        use = by_role.get(role)
        origins = (
            {k: str(v) for k, v in use.rendered.origins.items()}
            if use is not None
            else _all_from_org(assistants[role])
        )
        out[role] = (_masked(assistants[role]), origins, use.ref if use else None)
    if args.format == "json":
        doc = {
            role: (
                {"assistant": body, "template": ref, "origins": origins}
                if args.show_origin
                else body
            )
            for role, (body, origins, ref) in out.items()
        }
        print(json.dumps(doc if not args.assistant else doc[roles[0]], indent=2))
        return EXIT_OK
    lines: list[str] = []
    for role, (body, origins, ref) in out.items():
        shown = origins if args.show_origin else None
        if not args.assistant:
            made = f"  # template {ref}" if ref and args.show_origin else ""
            lines.append(f"{_key(role)}:{made}")
            lines += ["  " + line for line in yaml_lines(body, shown)]
        else:
            lines += list(yaml_lines(body, shown))
    print("\n".join(lines))
    return EXIT_OK


def _all_from_org(assistant: Mapping[str, Any]) -> dict[str, str]:
    """Origins of an assistant written in full in the org file."""
    out: dict[str, str] = {}

    def walk(node: Any, at: tuple[str | int, ...]) -> None:
        if isinstance(node, dict) and node:
            for k, v in node.items():
                walk(v, (*at, k))
        elif isinstance(node, list) and node:
            for i, v in enumerate(node):
                walk(v, (*at, i))
        else:
            out[format_path(at)] = "org file"

    walk(dict(assistant), ())
    return out


def _preview(args: argparse.Namespace, result: loader.LoadResult) -> int:
    """`--template NAME@VERSION --all`: each org that uses NAME at another version, rendered
    at VERSION with its own `with` and `overrides`, as a diff of its effective assistant."""
    wanted = parse_ref(args.template)
    if wanted is None or not args.all:
        print("error: --template takes NAME@VERSION, with --all", file=sys.stderr)
        return EXIT_ERROR
    target = result.templates.usable.get(args.template)
    if target is None:
        why = result.templates.refused.get(args.template)
        said = f"refused (see {printable(why)})" if why else "not found under templates/"
        print(f"error: template {printable(args.template)} {said}", file=sys.stderr)
        return EXIT_ERROR
    name = wanted[0]
    moved = same = failed = 0
    for spec in sorted(result.specs, key=lambda s: s.org.metadata.slug):
        if not any(_name(ref) == name for ref in spec.org.templates.values()):
            continue  # does not use it: its file is not read again
        doc = _document(spec.path)
        try:
            _, uses = _uses(doc, spec.path, result.templates)
        except TemplateError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed += 1
            continue
        for use in uses:
            if _name(use.ref) != name or use.ref == args.template:
                continue
            where = f"{spec.org.metadata.slug}/{use.role}"
            written = doc["spec"]["assistants"][use.role]  # its own with and overrides
            raw = {k: v for k, v in written.items() if k in ("with", "overrides")}
            try:
                after = render(
                    target,
                    TemplateUse.model_validate({**raw, "template": args.template}),
                    org_file=str(spec.path),
                    field=f"spec.assistants.{use.role}",
                )
            except TemplateError as exc:
                print(f"{printable(where)}: {use.ref} → {args.template}: refused: {exc}")
                failed += 1
                continue
            before_text = list(yaml_lines(_masked(use.rendered.assistant)))
            after_text = list(yaml_lines(_masked(after.assistant)))
            if before_text == after_text:
                same += 1
                print(f"{printable(where)}: {use.ref} → {args.template}: unchanged")
                continue
            moved += 1
            print(f"{printable(where)}: {use.ref} → {args.template}:")
            for line in difflib.unified_diff(before_text, after_text, lineterm="", n=1):
                if not line.startswith(("---", "+++")):
                    print(f"  {printable(line)}")
    total = moved + same
    print(
        f"template {printable(name)} → {printable(args.template)}: {total} assistant(s) of "
        f"other versions, {moved} change, {same} unchanged"
        + (f", {failed} refused" if failed else "")
    )
    return EXIT_ERROR if failed or result.problems else EXIT_OK


def _name(ref: str) -> str:
    return ref.rsplit("@", 1)[0]
