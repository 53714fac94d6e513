"""The files and values of templates: `kind: AssistantTemplate` and `kind: ToolTemplate`, an
org's use of one, where a rendered value came from, and the one-line error every check
raises."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from reconciler.redact import printable
from reconciler.spec.models import SLUG_PATTERN, AssistantSpec

PARAMETER_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
REF_PATTERN = r"^(?P<name>[a-z0-9][a-z0-9-]{1,62})@(?P<version>[1-9][0-9]{0,8})$"
# The assistant spec's own fields: the only keys a template body or an override may set at
# its top level (deeper keys are Vapi's, checked by Vapi as for any assistant).
ASSISTANT_FIELDS = frozenset(AssistantSpec.model_fields)
_REF = re.compile(REF_PATTERN)


@dataclass(eq=False)  # not frozen: raising sets __traceback__
class TemplateError(ValueError):
    """One problem, always printed as one line: the file, the field path, the template and
    what is wrong (the shape of `validate`'s problem lines, so the loader can relay it)."""

    file: str
    field: str
    template: str
    message: str

    def __str__(self) -> str:
        parts = [printable(self.file)]
        if self.field:
            parts.append(printable(self.field, 300))
        parts.append(f"template {printable(self.template)}")
        parts.append(printable(self.message, 1000))
        return ": ".join(parts)


def one_line(exc: ValidationError) -> tuple[str, str]:
    """The first field path and every message of a pydantic error, on one line: pydantic's
    own text spans several lines."""
    errors = exc.errors(include_url=False)
    paths = [".".join(str(p) for p in e["loc"] if p != "[key]") for e in errors]
    text = "; ".join(
        f"{path}: {e['msg']}" if path else e["msg"] for path, e in zip(paths, errors, strict=True)
    )
    return (paths[0] if paths else ""), text


class _Strict(BaseModel):
    """Strict: a template's types are what the YAML says ("3" is not a version)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


ParameterValue = str | int | bool


class Parameter(_Strict):
    """A typed hole in the body: required unless it has a default."""

    type: Literal["string", "integer", "boolean", "enum"]
    values: Annotated[list[str], Field(min_length=1)] | None = None
    default: ParameterValue | None = None
    maxLength: Annotated[int, Field(ge=1)] | None = None
    description: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Parameter:
        if (self.type == "enum") != (self.values is not None):
            raise ValueError("`values` is given for an enum, and only for an enum")
        if self.values is not None and len(set(self.values)) != len(self.values):
            raise ValueError("`values` lists a value twice")
        if self.maxLength is not None and self.type != "string":
            raise ValueError("`maxLength` is for strings only")
        if self.default is not None and (problem := value_problem(self, self.default)):
            raise ValueError(f"default {problem}")
        return self

    @property
    def required(self) -> bool:
        return self.default is None


def _kind(value: object) -> str:
    return {bool: "boolean", int: "integer", str: "string"}.get(type(value), type(value).__name__)


_EXPECTED: dict[str, tuple[type, str]] = {
    "string": (str, "a string"),
    "enum": (str, "a string"),
    "integer": (int, "an integer"),
    "boolean": (bool, "a boolean"),
}


def value_problem(parameter: Parameter, value: object) -> str | None:
    """Why `value` does not fit `parameter`, or None. Exact types: `True` is no integer and
    `3` no string, so a parameter never changes a value's type."""
    expected, called = _EXPECTED[parameter.type]
    if type(value) is not expected:
        return f"expects {called}, got {_kind(value)} {value!r}"
    if parameter.values is not None and value not in parameter.values:
        return f"{value!r} is not one of {', '.join(parameter.values)}"
    if parameter.maxLength is not None and len(str(value)) > parameter.maxLength:
        return f"is {len(str(value))} characters, over maxLength {parameter.maxLength}"
    return None


class TemplateMetadata(_Strict):
    name: Annotated[str, Field(pattern=SLUG_PATTERN)]
    version: Annotated[int, Field(ge=1, le=999_999_999)]
    description: str | None = None


class Wave(_Strict):
    """One step of a rollout: named orgs, or a share of those not yet moved."""

    orgs: (
        Annotated[list[Annotated[str, Field(pattern=SLUG_PATTERN)]], Field(min_length=1)] | None
    ) = None
    percent: Annotated[int, Field(ge=1, le=100)] | None = None
    soakSeconds: Annotated[int, Field(ge=0)] = 0

    @model_validator(mode="after")
    def _one_target(self) -> Wave:
        if (self.orgs is None) == (self.percent is None):
            raise ValueError("a wave names `orgs` or a `percent` of the rest, not both")
        return self


class Rollout(_Strict):
    """Parsed and checked now so a template can declare it; not acted on yet (issue 17)."""

    waves: Annotated[list[Wave], Field(min_length=1)]


class _TemplateFile(_Strict):
    """What every template file has: a name, an integer version and typed parameters."""

    apiVersion: Literal["reconciler/v1"]
    metadata: TemplateMetadata
    parameters: dict[Annotated[str, Field(pattern=PARAMETER_NAME_PATTERN)], Parameter] = Field(
        default_factory=dict
    )

    @property
    def ref(self) -> str:
        """`name@version`, as an org writes it."""
        return f"{self.metadata.name}@{self.metadata.version}"


class AssistantTemplate(_TemplateFile):
    """One assistant template file: the common parts, the body, and optional waves."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, title="AssistantTemplate")

    kind: Literal["AssistantTemplate"]
    assistant: dict[str, Any]
    rollout: Rollout | None = None


class ToolTemplate(_TemplateFile):
    """A tool template file: as an assistant template, with a `tool` body of the shape of a
    `spec.tools` entry (its fields are Vapi's, by `type`); no waves."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, title="ToolTemplate")

    kind: Literal["ToolTemplate"]
    tool: dict[str, Any]


AnyTemplate = AssistantTemplate | ToolTemplate


class TemplateUse(_Strict):
    """An org's assistant made from a template: `template`, `with`, `overrides`."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, populate_by_name=True)

    template: Annotated[str, Field(pattern=REF_PATTERN)]
    with_: dict[str, Any] = Field(default_factory=dict, alias="with")
    overrides: dict[str, Any] = Field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.template.rsplit("@", 1)[0]

    @property
    def version(self) -> int:
        return int(self.template.rsplit("@", 1)[1])


def parse_use(data: object, *, org_file: str, field: str) -> TemplateUse:
    """An org's `template`/`with`/`overrides` checked, or a one-line TemplateError naming
    the org file and the field (`assistants.inbound.template`)."""
    asked = data.get("template") if isinstance(data, dict) else None
    try:
        return TemplateUse.model_validate(data)
    except ValidationError as exc:
        path, message = one_line(exc)
        where = ".".join(p for p in (field, path) if p)
        raise TemplateError(org_file, where, str(asked or "?"), message) from None


def parse_ref(text: str) -> tuple[str, int] | None:
    """`name@version` split, or None when it is not one."""
    match = _REF.match(text)
    return (match["name"], int(match["version"])) if match else None


Source = Literal["template", "with", "default", "override"]


@dataclass(frozen=True)
class Origin:
    """Where a rendered leaf came from: the template body as written, the body with
    parameters from the org's `with` (`parameters`) or left at their defaults (`defaults`),
    or the org's override."""

    source: Source
    template: str
    parameters: tuple[str, ...] = ()
    defaults: tuple[str, ...] = ()

    def __str__(self) -> str:
        if self.source == "override":
            return "override"
        given = [f"with: {', '.join(self.parameters)}"] if self.parameters else []
        given += [f"default: {', '.join(self.defaults)}"] if self.defaults else []
        return f"template {self.template}" + (f" ({'; '.join(given)})" if given else "")
