"""Body validation for the Vapi emulator, driven by `assistant_schema.json`.

The data file is extracted from Vapi's OpenAPI document by `scripts/extract_assistant_schema.py`.
This module walks it generically (`properties`, `required`, `$ref`, `items`, `oneOf` told apart
by a `provider` enum, and the scalar keywords `type`, `enum`, `minimum`, `maximum`, `minLength`,
`maxLength`, `nullable`) and words its errors the way Vapi's NestJS/class-validator stack does:
"name must be shorter than or equal to 40 characters", "voice.property foo should not exist",
"each value in endCallPhrases must be ...". A schema `{}` means "anything" (a `oneOf` that is not
provider-discriminated, or a schema beyond the extraction depth).

Standalone: stdlib only.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

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
