"""Body validation for the Vapi emulator: assistants by `assistant_schema.json` and the
hand-written `AssistantValidator`; phone numbers and tools by `openapi_kinds.json` and the
`jsonschema` library (`KindValidator`, at the end).

The data file is extracted from Vapi's OpenAPI document by `scripts/extract_assistant_schema.py`.
This module walks it generically (`properties`, `required`, `$ref`, `items`, `oneOf` told apart
by a `provider` enum, and the scalar keywords `type`, `enum`, `minimum`, `maximum`, `minLength`,
`maxLength`, `nullable`) and words its errors the way Vapi's NestJS/class-validator stack does:
"name must be shorter than or equal to 40 characters", "voice.property foo should not exist",
"each value in endCallPhrases must be ...". A schema `{}` means "anything" (a `oneOf` that is not
provider-discriminated, or a schema beyond the extraction depth).

`VapiNormaliser` (the emulator's opt-in `normalise` mode) stores a validated body the way Vapi
answers with it: the server defaults of `SERVER_DEFAULTS` filled in, top-level keys in Vapi's
order, nested keys in Postgres jsonb order, and the computed `isServerUrlSecretSet` added.

Standalone: the stdlib, and the `jsonschema` library for phone numbers and tools
(`KindValidator`).
"""

from __future__ import annotations

import json
import math
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from jsonschema import Draft4Validator
from jsonschema.exceptions import best_match
from referencing import Registry
from referencing.jsonschema import DRAFT4

SCHEMA_PATH = Path(__file__).with_name("assistant_schema.json")

Schema = Mapping[str, Any]

_TYPE_MESSAGES = {
    "string": "{} must be a string",
    "number": "{} must be a number conforming to the specified constraints",
    "integer": "{} must be an integer number",
    "boolean": "{} must be a boolean value",
    "array": "{} must be an array",
    "object": "{} must be an object",
}


def _type_ok(value: object, type_: str) -> bool:
    if type_ == "string":
        return isinstance(value, str)
    if type_ in ("number", "integer"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        return math.isfinite(value) and (type_ == "number" or float(value).is_integer())
    if type_ == "boolean":
        return isinstance(value, bool)
    if type_ == "array":
        return isinstance(value, list)
    if type_ == "object":
        return isinstance(value, dict)
    return True


def _join(path: str, key: str | int) -> str:
    return f"{path}.{key}" if path else str(key)


def _fmt_number(n: float) -> str:
    return str(int(n)) if float(n).is_integer() else str(n)


class AssistantValidator:
    """Validates CreateAssistantDTO / UpdateAssistantDTO bodies; returns error messages."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        self._defs: dict[str, Schema] = dict(data["defs"])
        self._roots: dict[str, str] = dict(data["roots"])

    @classmethod
    def load(cls, path: Path = SCHEMA_PATH) -> AssistantValidator:
        return cls(json.loads(path.read_text(encoding="utf-8")))

    def member_properties(self, field: str, value: Mapping[str, Any]) -> Mapping[str, Schema]:
        """The properties the create schema allows in `value` as the top-level `field`: those of
        the member its `provider` chooses (a provider union), or of the object itself."""
        schema = self._resolve(self._resolve({"$ref": self._roots["create"]})["properties"][field])
        for member in (self._resolve(m) for m in schema.get("oneOf", ())):
            if value.get("provider") in (self._providers(member) or ()):
                return dict(member.get("properties", {}))
        return dict(schema.get("properties", {}))

    def validate(self, body: Mapping[str, Any], which: Literal["create", "update"]) -> list[str]:
        errors: list[str] = []
        self._check(dict(body), {"$ref": self._roots[which]}, "", "", errors)
        return errors

    def _resolve(self, schema: Schema) -> Schema:
        seen = 0
        while "$ref" in schema and seen < 32:  # refs to refs are rare; bound them anyway
            schema = self._defs.get(schema["$ref"], {})
            seen += 1
        return schema

    def _providers(self, member: Schema) -> list[Any] | None:
        """The `provider` enum of an object member of a oneOf (None: not an object member)."""
        if member.get("type") != "object" and "properties" not in member:
            return None
        enum = self._resolve(member.get("properties", {}).get("provider", {})).get("enum")
        return list(enum) if isinstance(enum, list) else []

    def _check(self, value: Any, schema: Schema, path: str, label: str, errors: list[str]) -> None:
        """Validate `value` at `path`; messages name it `label` (the path, or "each value in")."""
        schema = self._resolve(schema)
        if not schema or value is None:
            return
        if "oneOf" in schema:
            self._check_one_of(value, [self._resolve(m) for m in schema["oneOf"]], path, errors)
            return
        type_ = schema.get("type") or ("object" if "properties" in schema else None)
        if isinstance(type_, str) and not _type_ok(value, type_):
            if type_ == "object" and "properties" in schema:
                errors.append(f"nested property {label} must be either object or array")
            else:
                errors.append(_TYPE_MESSAGES.get(type_, "{} has the wrong type").format(label))
            return
        if isinstance(value, dict) and "properties" in schema:
            self._check_object(value, schema, path, errors)
        elif isinstance(value, list):
            self._check_array(value, schema, path, errors)
        else:
            self._check_scalar(value, schema, label, errors)

    def _check_object(
        self, value: dict[str, Any], schema: Schema, path: str, errors: list[str]
    ) -> None:
        props: Mapping[str, Schema] = schema["properties"]
        required = set(schema.get("required", ()))
        prefix = f"{path}." if path else ""
        errors.extend(
            f"{prefix}property {key} should not exist" for key in value if key not in props
        )
        for key, sub in props.items():
            child = _join(path, key)
            if value.get(key) is None:
                resolved = self._resolve(sub)
                if key in required and not (key in value and resolved.get("nullable")):
                    errors.append(self._missing_message(child, resolved))
                continue
            self._check(value[key], sub, child, child, errors)

    def _check_array(self, value: list[Any], schema: Schema, path: str, errors: list[str]) -> None:
        items = self._resolve(schema.get("items", {}))
        if not items and "enum" in schema:  # `type: array` + `enum`: each element is an enum value
            items = {"enum": schema["enum"]}
        nested = "properties" in items or "oneOf" in items
        for index, item in enumerate(value):
            child = _join(path, index)
            self._check(item, items, child, child if nested else f"each value in {path}", errors)

    @staticmethod
    def _check_scalar(value: Any, schema: Schema, label: str, errors: list[str]) -> None:
        enum = schema.get("enum")
        if isinstance(enum, list) and value not in enum:
            values = ", ".join(str(v) for v in enum)
            errors.append(f"{label} must be one of the following values: {values}")
            return
        if isinstance(value, str):
            if "maxLength" in schema and len(value) > schema["maxLength"]:
                n = schema["maxLength"]
                errors.append(f"{label} must be shorter than or equal to {n} characters")
            if "minLength" in schema and len(value) < schema["minLength"]:
                n = schema["minLength"]
                errors.append(f"{label} must be longer than or equal to {n} characters")
        elif isinstance(value, int | float) and not isinstance(value, bool):
            if "minimum" in schema and value < schema["minimum"]:
                errors.append(f"{label} must not be less than {_fmt_number(schema['minimum'])}")
            if "maximum" in schema and value > schema["maximum"]:
                errors.append(f"{label} must not be greater than {_fmt_number(schema['maximum'])}")

    def _check_one_of(
        self, value: Any, members: list[Schema], path: str, errors: list[str]
    ) -> None:
        objects = [(m, self._providers(m)) for m in members]
        object_members = [(m, p) for m, p in objects if p is not None]
        if not object_members or any(not p for _, p in object_members):
            return  # not discriminated by `provider`: accept anything
        if isinstance(value, dict):
            for member, providers in object_members:
                if value.get("provider") in (providers or ()):
                    self._check(value, member, path, path, errors)
                    return
            allowed = ", ".join(str(v) for _, p in object_members for v in p or ())
            errors.append(f"{path}.provider must be one of the following values: {allowed}")
            return
        scalars = [m for m, p in objects if p is None]
        for member in scalars:
            attempt: list[str] = []
            self._check(value, member, path, path, attempt)
            if not attempt:
                return
        if scalars:
            self._check(value, scalars[0], path, path, errors)
        else:
            errors.append(f"nested property {path} must be either object or array")

    def _missing_message(self, path: str, schema: Schema) -> str:
        if "enum" in schema:
            values = ", ".join(str(v) for v in schema["enum"])
            return f"{path} must be one of the following values: {values}"
        type_ = schema.get("type")
        if isinstance(type_, str) and type_ in _TYPE_MESSAGES:
            return _TYPE_MESSAGES[type_].format(path)
        return f"{path} should not be null or undefined"


# -- server defaults and read-side normalisation (the emulator's `normalise` mode) -------------


@dataclass(frozen=True)
class ServerDefault:
    """A default Vapi documents for the top-level `field` (`sub` None), or for the sub-field `sub`
    of the object set as `field`: filled when that object's schema declares `sub`, and, with
    `providers`, only for those providers. `source` says where the value comes from."""

    field: str
    sub: str | None
    value: Any
    source: str
    providers: tuple[str, ...] = ()


def _each(field: str, provider: str, source: str, **values: Any) -> tuple[ServerDefault, ...]:
    return tuple(ServerDefault(field, sub, v, source, (provider,)) for sub, v in values.items())


_OPENAPI = "vapi-openapi.json"
_REFERENCE = "vapi-api.md"
_GITOPS = "VapiAI/gitops"

# A default is here when Vapi's OpenAPI document gives it as a `default` keyword, or when two
# sources agree on it. Left out on purpose:
# - `backgroundSound`: "'office' for phone calls, 'off' for web calls" (OpenAPI), chosen per call;
# - `clientMessages`/`serverMessages`: what is sent when unset ("Omitting serverMessages ...
#   means all defaults", VapiAI/gitops docs/learnings/assistants.md), so unset is a real state;
# - `model.temperature`: 0.5 per the OpenAPI descriptions, 0 per VapiAI/gitops learnings;
# - `voice.model` of 11labs: 'eleven_turbo_v2' per OpenAPI, 'eleven_turbo_v2_5' per VapiAI/gitops;
# - `modelOutputInMessagesEnabled` and Deepgram's `numerals`/`endpointing`...: a description only;
# - a default `model`, `voice` or `transcriber` object: none is documented.
# Whether Vapi stores these or applies them per call is unverified: answers of API-created
# assistants published on GitHub show none of them. Filling them is the stricter test (a client
# must ignore what Vapi adds), not a claim that every Vapi answer carries them.
SERVER_DEFAULTS: tuple[ServerDefault, ...] = (
    ServerDefault(
        "firstMessageInterruptionsEnabled", None, False, f"{_OPENAPI} Assistant: default false"
    ),
    ServerDefault(
        "firstMessageMode",
        None,
        "assistant-speaks-first",
        f"{_OPENAPI} Assistant: @default 'assistant-speaks-first'; {_GITOPS} AGENTS.md",
    ),
    ServerDefault(
        "maxDurationSeconds",
        None,
        600,
        f"{_REFERENCE}: default 600; {_OPENAPI}: @default 600; "
        f"{_GITOPS} docs/learnings/call-duration.md",
    ),
    ServerDefault("voice", "cachingEnabled", True, f"{_OPENAPI}: default true in every voice"),
    ServerDefault("voice", "speed", 1, f"{_OPENAPI} VapiVoice: default", ("vapi",)),
    ServerDefault("voice", "mipOptOut", False, f"{_OPENAPI} DeepgramVoice: default", ("deepgram",)),
    *_each(
        "voice",
        "inworld",
        f"{_OPENAPI} InworldVoice: default",
        model="inworld-tts-1",
        languageCode="en",
        temperature=1.1,
        speakingRate=1,
    ),
    *_each(
        "voice",
        "minimax",
        f"{_OPENAPI} MinimaxVoice: default",
        model="speech-02-turbo",
        subtitleType="sentence",
        pitch=0,
        speed=1,
        volume=1,
        region="worldwide",
        textNormalizationEnabled=True,
    ),
    *_each("voice", "xai", f"{_OPENAPI} XaiVoice: default", language="en", speed=1.1),
    ServerDefault("voice", "styleDegree", 1, f"{_OPENAPI} MicrosoftVoice: default", ("microsoft",)),
    ServerDefault(
        "transcriber", "mipOptOut", False, f"{_OPENAPI} DeepgramTranscriber: default", ("deepgram",)
    ),
    *_each(
        "transcriber",
        "speechmatics",
        f"{_OPENAPI} SpeechmaticsTranscriber: default",
        operatingPoint="enhanced",
        region="eu",
        enableDiarization=False,
        maxDelay=3000,
        numeralStyle="written",
        endOfTurnSensitivity=0.5,
        removeDisfluencies=False,
        minimumSpeechDuration=0,
    ),
    ServerDefault(
        "model",
        "maxTokens",
        250,
        f"{_OPENAPI} every model with maxTokens: Default is 250; "
        f"{_GITOPS} docs/learnings/assistants.md",
    ),
    ServerDefault(
        "server",
        "timeoutSeconds",
        20,
        f"{_REFERENCE}: timeoutSeconds default 20; {_OPENAPI} Server: @default 20",
    ),
)

# Top-level keys in the order of Vapi's answers published on GitHub (the columns of its entity);
# keys not seen there follow alphabetically (their real place is unverified).
TOP_LEVEL_ORDER = (
    "id",
    "orgId",
    "name",
    "voice",
    "createdAt",
    "updatedAt",
    "model",
    "firstMessage",
    "voicemailMessage",
    "endCallMessage",
    "transcriber",
    "firstMessageMode",
    "analysisPlan",
    "artifactPlan",
)
# Computed on read, last in every published answer; `vapi-api.md` names it as a field GET adds.
# Always false: the legacy secret fields that set it are not in the schema, so never accepted.
COMPUTED_FIELD = "isServerUrlSecretSet"


def _jsonb_key(key: str) -> tuple[int, bytes]:
    raw = key.encode("utf-8")
    return len(raw), raw


def jsonb_order(value: Any) -> Any:
    """`value` with each object's keys as Postgres jsonb keeps them (shorter first, then
    bytewise), the order of the nested objects in Vapi's published answers."""
    if isinstance(value, dict):
        return {k: jsonb_order(value[k]) for k in sorted(value, key=_jsonb_key)}
    if isinstance(value, list):
        return [jsonb_order(v) for v in value]
    return value


class VapiNormaliser:
    """Turns validated create and PATCH bodies into what Vapi stores and answers."""

    def __init__(
        self, validator: AssistantValidator, defaults: tuple[ServerDefault, ...] = SERVER_DEFAULTS
    ) -> None:
        self._validator = validator
        self._top = [d for d in defaults if d.sub is None]
        self._nested: dict[str, list[ServerDefault]] = {}
        for d in defaults:
            if d.sub is not None:
                self._nested.setdefault(d.field, []).append(d)

    def created(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """A create body as stored: the top-level defaults of the fields it leaves out (one sent
        as null stays unset, as on PATCH) and the sub-field defaults of each object it sets."""
        out = {k: v for k, v in body.items() if v is not None}
        out.update((d.field, d.value) for d in self._top if d.field not in body)
        return {k: self.field_value(k, v) for k, v in out.items()}

    def field_value(self, field: str, value: Any) -> Any:
        """`value` as stored for the top-level `field` (a create sets it, a PATCH replaces it
        whole): with the sub-field defaults its schema declares and it leaves out."""
        rows = self._nested.get(field)
        if not rows or not isinstance(value, dict):
            return value
        declared = self._validator.member_properties(field, value)
        filled = dict(value)
        for d in rows:
            chosen = not d.providers or value.get("provider") in d.providers
            if chosen and d.sub in declared and d.sub not in value:
                filled[d.sub] = d.value
        return filled

    @staticmethod
    def answer(assistant: Mapping[str, Any]) -> dict[str, Any]:
        """`assistant` laid out as Vapi writes it: top-level keys in `TOP_LEVEL_ORDER`, nested
        ones in jsonb order, and `isServerUrlSecretSet` last."""
        rank = {k: i for i, k in enumerate(TOP_LEVEL_ORDER)}
        keys = sorted(
            (k for k in assistant if k != COMPUTED_FIELD),
            key=lambda k: (rank.get(k, len(rank)), k),
        )
        out = {k: jsonb_order(assistant[k]) for k in keys}
        out[COMPUTED_FIELD] = False
        return out


# -- phone numbers and tools: Vapi's OpenAPI extract, checked by a JSON Schema validator --------

KINDS_SCHEMA_PATH = Path(__file__).with_name("openapi_kinds.json")
_KINDS_URI = "urn:vapi-reconciler:openapi-kinds"
_JSON = "application/json"


def _closed(schema: Any) -> Any:
    """`schema` with `additionalProperties: false` on every object schema that lists its
    `properties` and says nothing of others: Vapi's NestJS pipes reject unknown properties
    ("property X should not exist"), which OpenAPI does not say. A `pattern` written as a
    JavaScript regex literal (`/^[a-z]+$/`, as Vapi's document has them) loses its slashes.
    Recurses through sub-schemas only (a property named like a keyword is a name)."""
    if isinstance(schema, list):
        return [_closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "properties" and isinstance(value, dict):
            out[key] = {name: _closed(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
            out[key] = _closed(value)
        elif key in ("allOf", "anyOf", "oneOf") and isinstance(value, list):
            out[key] = [_closed(s) for s in value]
        elif key == "components" and isinstance(value, dict):
            schemas = value.get("schemas", {})
            out[key] = {**value, "schemas": {name: _closed(s) for name, s in schemas.items()}}
        elif key == "paths" and isinstance(value, dict):  # the operations' schemas
            out[key] = _closed_paths(value)
        elif key == "pattern" and isinstance(value, str) and len(value) > 1:
            out[key] = value[1:-1] if value[0] == value[-1] == "/" else value
        else:
            out[key] = value
    if isinstance(out.get("properties"), dict) and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def _closed_paths(paths: dict[str, Any]) -> dict[str, Any]:
    """`paths` with each operation's request and answer schemas `_closed`."""

    def media(content: dict[str, Any]) -> dict[str, Any]:
        return {t: {**m, "schema": _closed(m.get("schema", {}))} for t, m in content.items()}

    out: dict[str, Any] = {}
    for path, operations in paths.items():
        out[path] = {}
        for method, op in operations.items():
            closed = dict(op)
            if "requestBody" in op:
                body = op["requestBody"]
                closed["requestBody"] = {**body, "content": media(body.get("content", {}))}
            closed["responses"] = {
                status: {**r, "content": media(r.get("content", {}))}
                for status, r in op.get("responses", {}).items()
            }
            out[path][method] = closed
    return out


def _without_nulls(value: Any) -> Any:
    """`value` with each object's null members left out: class-validator's @IsOptional lets
    null stand for "not given" (a PATCH's null clears the field); a required one is then missing."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def _label(parts: Any) -> str:
    return ".".join(str(p) for p in parts)


class KindValidator:
    """Validates phone-number and tool request bodies against the request schemas of Vapi's
    OpenAPI document (`openapi_kinds.json`, vendored by scripts/vendor_openapi.py) with the
    maintained `jsonschema` library, and words the errors as Vapi's NestJS pipes do where that
    is cheap ("name must be shorter than or equal to 40 characters", "property foo should not
    exist"); every message starts with the dotted path of the field it is about.

    A body is a `oneOf` chosen by a discriminator (`provider` for phone numbers, `type` for
    tools): the member is picked by the body's value, or by the stored record's on a PATCH that
    leaves it out, then the body is checked against that member alone."""

    def __init__(self, document: Mapping[str, Any]) -> None:
        self._document = _closed(dict(document))
        registry: Registry[Any] = Registry().with_resource(
            _KINDS_URI, DRAFT4.create_resource(self._document)
        )
        self._registry = registry

    @classmethod
    def load(cls, path: Path = KINDS_SCHEMA_PATH) -> KindValidator:
        return cls(json.loads(path.read_text(encoding="utf-8")))

    def discriminator(self, path: str, method: str) -> tuple[str, dict[str, str]]:
        """The request body's discriminating property and its values' component names."""
        schema = self._document["paths"][path][method]["requestBody"]["content"][_JSON]["schema"]
        found = schema["discriminator"]
        return found["propertyName"], dict(found["mapping"])

    def validate(
        self, body: Mapping[str, Any], path: str, method: str, stored: str | None = None
    ) -> list[str]:
        """What is wrong with `body` as the request body of `method path` (empty: nothing);
        `stored` is the discriminator value of the record a PATCH changes."""
        prop, mapping = self.discriminator(path, method)
        chosen = body.get(prop, stored)
        if chosen not in mapping or (stored is not None and chosen != stored):
            allowed = [stored] if stored is not None else list(mapping)
            return [f"{prop} must be one of the following values: {', '.join(allowed)}"]
        validator = Draft4Validator(
            {"$ref": f"{_KINDS_URI}{mapping[chosen]}"}, registry=self._registry
        )
        errors = sorted(
            validator.iter_errors(_without_nulls(dict(body))),
            key=lambda e: (list(map(str, e.absolute_path)), e.validator),
        )
        return list(dict.fromkeys(m for e in errors for m in self._messages(e)))

    def answer_errors(self, answer: Any, path: str, method: str, status: str = "200") -> list[str]:
        """What is wrong with `answer` as the `status` answer of `method path` in Vapi's document
        (closed as the requests are: a field the document does not declare is an error). For
        tests: the emulator's answers must be what Vapi documents."""
        pointer = "/".join(
            p.replace("~", "~0").replace("/", "~1")
            for p in ("paths", path, method, "responses", status, "content", _JSON, "schema")
        )
        ref = f"{_KINDS_URI}#/{urllib.parse.quote(pointer, safe='/~')}"
        validator = Draft4Validator({"$ref": ref}, registry=self._registry)
        errors = sorted(validator.iter_errors(answer), key=lambda e: list(map(str, e.path)))
        return list(dict.fromkeys(m for e in errors for m in self._messages(e)))

    def _messages(self, error: Any) -> list[str]:
        label = _label(error.absolute_path)
        prefix = f"{label}." if label else ""
        kind, value, instance = error.validator, error.validator_value, error.instance
        if kind == "additionalProperties" and isinstance(instance, dict):
            allowed = set(error.schema.get("properties", {}))
            return [f"{prefix}property {k} should not exist" for k in instance if k not in allowed]
        if kind == "required":  # one error per missing property
            missing = [k for k in value if k not in instance and repr(k) in error.message]
            return [f"{prefix}{k} should not be null or undefined" for k in missing[:1]]
        name = label or "body"
        if kind == "type" and isinstance(value, str) and value in _TYPE_MESSAGES:
            return [_TYPE_MESSAGES[value].format(name)]
        if kind == "enum":
            return [f"{name} must be one of the following values: {', '.join(map(str, value))}"]
        if kind == "maxLength":
            return [f"{name} must be shorter than or equal to {value} characters"]
        if kind == "minLength":
            return [f"{name} must be longer than or equal to {value} characters"]
        if kind == "pattern":
            return [f"{name} must match /{value}/ regular expression"]
        if kind == "minimum":
            return [f"{name} must not be less than {_fmt_number(value)}"]
        if kind == "maximum":
            return [f"{name} must not be greater than {_fmt_number(value)}"]
        if kind in ("oneOf", "anyOf") and error.context:
            return self._messages(best_match(error.context))
        return [f"{name} does not match its schema ({kind})"]
