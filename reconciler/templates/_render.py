"""Checking a template file and rendering an org's assistant from it: `${param}` substitution
in string values, the org's overrides merged on top, the result checked as an assistant.

Substitution is deliberately small: `${name}` in a string value is replaced by the
parameter's value as text, `$${` writes a literal `${`, and nothing else is interpreted (no
expressions, loops or conditionals). Keys are never substituted. A value's type never changes:
`"${port}"` of an integer parameter renders the string "8080", so a field typed otherwise
fails the assistant check instead of being coerced.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

from pydantic import ValidationError

from reconciler.redact import is_sensitive_key
from reconciler.spec.models import AssistantSpec, ToolSpec
from reconciler.templates._merge import (
    Leaf,
    MergeError,
    Node,
    Path,
    format_path,
    merge,
    plain_and_overridden,
    unwrap,
)
from reconciler.templates._model import (
    ASSISTANT_FIELDS,
    AnyTemplate,
    AssistantTemplate,
    Origin,
    Parameter,
    ParameterValue,
    Source,
    TemplateError,
    TemplateUse,
    ToolTemplate,
    one_line,
    value_problem,
)

MAX_RENDERED_CHARS = 1024 * 1024
"""The text a rendering may make from parameters, as a spec file may hold (1 MiB): a long
value used many times by a template is refused before it is built."""
_TOKEN = re.compile(r"\$\$\{|\$\{(?P<body>[^}]*)(?P<close>\})?")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class Ref:
    """A `${name}` in a string."""

    name: str


def scan(text: str) -> list[str | Ref]:
    """A string value as literal pieces and parameter references. Raises ValueError for a
    `${` that is not `${name}`."""
    parts: list[str | Ref] = []
    pos = 0
    for match in _TOKEN.finditer(text):
        parts.append(text[pos : match.start()])
        pos = match.end()
        if match.group(0) == "$${":
            parts.append("${")
        elif match["close"] is None:
            raise ValueError("`${` without a closing `}` (write `$${` for a literal `${`)")
        elif not _NAME.fullmatch(match["body"]):
            raise ValueError(
                f"`${{{match['body']}}}` is not a parameter name (no expressions; write `$${{` "
                "for a literal `${`)"
            )
        else:
            parts.append(Ref(match["body"]))
    parts.append(text[pos:])
    return [p for p in parts if p != ""]


def _strings(value: Any, at: Path) -> Iterator[tuple[Path, str]]:
    if isinstance(value, str):
        yield at, value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from _strings(v, (*at, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _strings(v, (*at, i))


def _keys(value: Any, at: Path) -> Iterator[tuple[Path, str]]:
    if isinstance(value, Mapping):
        for k, v in value.items():
            yield (*at, k), k
            yield from _keys(v, (*at, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _keys(v, (*at, i))


@dataclass(frozen=True)
class Template:
    """A checked template file and where it was read from (named in every error)."""

    source: str
    model: AnyTemplate

    @property
    def ref(self) -> str:
        return self.model.ref

    @property
    def of(self) -> Literal["assistant", "tool"]:
        """What it makes: its body's key in the file, and what an org uses it for."""
        return "tool" if isinstance(self.model, ToolTemplate) else "assistant"

    @property
    def body(self) -> dict[str, Any]:
        return self.model.tool if isinstance(self.model, ToolTemplate) else self.model.assistant

    @property
    def fields(self) -> frozenset[str] | None:
        """The top-level keys its body and an override may set (None: any, as a tool's fields
        are Vapi's by `type`)."""
        return None if isinstance(self.model, ToolTemplate) else ASSISTANT_FIELDS

    @cached_property
    def compiled(self) -> Compiled:
        return _compile(self.body, self.ref)

    @cached_property
    def references(self) -> tuple[int, dict[str, int]]:
        """The length of the literal text around parameters, and how often each parameter
        is used: what a rendering's size is known from before it is made."""
        literal, uses = 0, dict.fromkeys(self.model.parameters, 0)

        def walk(node: Compiled) -> None:
            nonlocal literal
            if isinstance(node, dict):
                for v in node.values():
                    walk(v)
            elif isinstance(node, list):
                for v in node:
                    walk(v)
            elif isinstance(node, _Text):
                for part in node.parts:
                    if isinstance(part, str):
                        literal += len(part)
                    else:
                        uses[part.name] += 1

        walk(self.compiled)
        return literal, uses

    def error(self, path: Path, message: str) -> TemplateError:
        return TemplateError(self.source, format_path(path), self.ref, message)


def load_template(data: object, source: str) -> Template:
    """A template file's parsed YAML checked: its shape, that its body sets only fields of
    the assistant spec (a tool template: any), that every `${name}` is a declared parameter
    and every parameter is used. Raises TemplateError (one line)."""
    ref = "?"
    if isinstance(data, Mapping) and isinstance(data.get("metadata"), Mapping):
        name, version = data["metadata"].get("name"), data["metadata"].get("version")
        ref = f"{name}@{version}"
    kind: type[AnyTemplate] = (
        ToolTemplate
        if isinstance(data, Mapping) and data.get("kind") == "ToolTemplate"
        else AssistantTemplate
    )
    try:
        model = kind.model_validate(data)
    except ValidationError as exc:
        field, message = one_line(exc)
        raise TemplateError(source, field, ref, message) from None
    template = Template(source, model)
    body, at = template.body, template.of
    fields = template.fields
    for key in body:
        if fields is not None and key not in fields:
            raise template.error((at, key), f"{key} is not a field of the assistant spec")
    for path, key in _keys(body, (at,)):
        if key.startswith("$") or "${" in key:
            raise template.error(path, "keys are never substituted nor directives in a template")
    used: set[str] = set()
    for path, text in _strings(body, (at,)):
        try:
            refs = [p.name for p in scan(text) if isinstance(p, Ref)]
        except ValueError as exc:
            raise template.error(path, str(exc)) from None
        if refs and _secret_place(path):
            raise template.error(
                path,
                "secrets are never parameters: this value is masked as a secret (a header "
                "value, or under a key with a secret word); the org's credentials stay in "
                "spec.credentials",
            )
        for name in refs:
            if name not in model.parameters:
                declared = ", ".join(model.parameters) or "none"
                raise template.error(path, f"unknown parameter ${{{name}}} (declared: {declared})")
        used.update(refs)
    for name in model.parameters:
        if name not in used:
            raise template.error(("parameters", name), f"parameter {name} is never used")
    return template


def _secret_place(path: Path) -> bool:
    """Where the plan masks a value as a secret: every `headers` value, and every value under
    a key with a secret word (`redact.is_sensitive_key`)."""
    keys = [p for p in path if isinstance(p, str)]
    return "headers" in keys[:-1] or any(is_sensitive_key(k) for k in keys)


@dataclass(frozen=True)
class Rendered:
    """An org's effective assistant: the plain body, the same checked as an assistant spec,
    the paths of the values the org's overrides set, and (`origins`, on demand) the origin of
    each leaf by its path (`model.messages[0].content`)."""

    assistant: dict[str, Any]  # what it makes: an assistant, or a tool
    spec: AssistantSpec | ToolSpec
    overridden: frozenset[str]
    tree: Node = field(repr=False)

    @cached_property
    def origins(self) -> dict[str, Origin]:
        return unwrap(self.tree)[1]


def _text(value: ParameterValue) -> str:
    """A parameter's value inside a string: booleans as YAML writes them."""
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


@dataclass(frozen=True)
class _Text:
    """A string of the template body, scanned once: its pieces and the parameters it uses."""

    parts: tuple[str | Ref, ...]
    names: tuple[str, ...]


@dataclass(frozen=True)
class _Static:
    """A part of the body that uses no parameter: the same tree for every org (merging
    copies what it changes, so sharing it is safe)."""

    node: Node


Compiled = dict[str, "Compiled"] | list["Compiled"] | Leaf | _Text | _Static


def _static(node: Compiled) -> bool:
    return isinstance(node, Leaf | _Static)


def _node(part: Compiled) -> Node:
    """A static part as a merged tree's node."""
    assert isinstance(part, Leaf | _Static)
    return part.node if isinstance(part, _Static) else part


def _compile(value: Any, ref: str) -> Compiled:
    """The template body with each string scanned and each other leaf wrapped, once per
    template: rendering an org is then a walk that joins pieces, past the static parts."""
    if isinstance(value, Mapping):
        fields = {k: _compile(v, ref) for k, v in value.items()}
        if all(_static(p) for p in fields.values()):
            return _Static({k: _node(p) for k, p in fields.items()})
        return fields
    if isinstance(value, list):
        items = [_compile(v, ref) for v in value]
        if all(_static(p) for p in items):
            return _Static([_node(p) for p in items])
        return items
    if not isinstance(value, str):
        return Leaf(value, Origin("template", ref))
    pieces = tuple(scan(value))
    names = tuple(dict.fromkeys(p.name for p in pieces if isinstance(p, Ref)))
    if not names:
        return Leaf("".join(p for p in pieces if isinstance(p, str)), Origin("template", ref))
    return _Text(pieces, names)


def _substitute(
    value: Compiled, values: Mapping[str, tuple[ParameterValue, str]], ref: str
) -> Node:
    """The compiled body with parameters substituted, every leaf with its origin."""
    if isinstance(value, dict):
        return {k: _substitute(v, values, ref) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, values, ref) for v in value]
    if isinstance(value, Leaf):
        return value  # shared: leaves are never changed, only replaced
    if isinstance(value, _Static):
        return value.node
    text = "".join(p if isinstance(p, str) else _text(values[p.name][0]) for p in value.parts)
    given = tuple(n for n in value.names if values[n][1] == "with")
    defaults = tuple(n for n in value.names if values[n][1] == "default")
    source: Source = "with" if given else "default" if defaults else "template"
    return Leaf(text, Origin(source, ref, given, defaults))


def resolve(
    parameters: Mapping[str, Parameter],
    given: Mapping[str, Any],
    fail: Callable[[Path, str], TemplateError],
) -> dict[str, tuple[ParameterValue, str]]:
    """Each parameter's value and whether it came from `with` or its default."""
    for name in given:
        if name not in parameters:
            declared = ", ".join(parameters) or "none"
            raise fail(("with", name), f"unknown parameter {name} (declared: {declared})")
    values: dict[str, tuple[ParameterValue, str]] = {}
    missing = []
    for name, parameter in parameters.items():
        if name in given:
            if problem := value_problem(parameter, given[name]):
                raise fail(("with", name), f"parameter {name} ({parameter.type}) {problem}")
            values[name] = (given[name], "with")
        elif parameter.default is not None:
            values[name] = (parameter.default, "default")
        else:
            missing.append(name)
    if missing:
        raise fail(("with",), f"missing required parameter(s): {', '.join(missing)}")
    return values


def render(template: Template, use: TemplateUse, *, org_file: str, field: str = "") -> Rendered:
    """The assistant an org's `use` of `template` describes. `org_file` and `field` (the
    assistant's path in that file, `assistants.inbound`) are named in every error."""
    ref = template.ref

    def fail(path: Path, message: str) -> TemplateError:
        full = format_path(tuple(p for p in (*field.split("."), *path) if p != ""))
        return TemplateError(org_file, full, ref, message)

    if use.template != ref:
        raise fail(("template",), f"{use.template} asked for, {ref} given")
    values = resolve(template.model.parameters, use.with_, fail)
    literal, uses = template.references
    size = literal + sum(n * len(_text(values[name][0])) for name, n in uses.items())
    if size > MAX_RENDERED_CHARS:
        raise fail(
            ("with",),
            f"the parameters would render {size:,} characters of text, over "
            f"{MAX_RENDERED_CHARS:,} (a value used many times by the template)",
        )
    body = _substitute(template.compiled, values, ref)
    fields = template.fields
    for key in use.overrides:
        if fields is not None and key not in fields:
            raise fail(("overrides", key), f"{key} is not a field of the assistant spec")
    try:
        merged = merge(body, use.overrides, Origin("override", ref))
    except MergeError as exc:
        raise fail(("overrides", *exc.path), exc.message) from None
    made, overridden = plain_and_overridden(merged)
    checked: type[AssistantSpec] | type[ToolSpec] = (
        ToolSpec if template.of == "tool" else AssistantSpec
    )
    try:
        spec = checked.model_validate(made, strict=True)
    except ValidationError as exc:
        path, message = one_line(exc)
        raise fail(
            tuple(path.split(".")), f"the rendered {template.of} is refused: {message}"
        ) from None
    return Rendered(made, spec, overridden, merged)
