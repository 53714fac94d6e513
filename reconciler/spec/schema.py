"""The JSON schema of spec files, generated from the models (editors and CI use it)."""

from __future__ import annotations

import json
from typing import Any

from reconciler.spec.models import Organization
from reconciler.templates import TemplateUse

_ASSISTANT = {"$ref": "#/$defs/AssistantSpec"}
_EITHER = {"anyOf": [_ASSISTANT, {"$ref": "#/$defs/TemplatedAssistant"}]}


def _either(node: Any) -> Any:
    """Where an assistant may be written in full, it may name a template instead."""
    if node == _ASSISTANT:
        return _EITHER
    if isinstance(node, dict):
        return {k: _either(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_either(v) for v in node]
    return node


def schema_text() -> str:
    schema = Organization.model_json_schema(by_alias=True, mode="validation")
    defs = schema["$defs"]
    defs["Assistants"] = _either(defs["Assistants"])
    templated = TemplateUse.model_json_schema(by_alias=True, mode="validation")
    templated["title"] = "TemplatedAssistant"
    templated["description"] = (
        "An assistant made from a template under templates/ (docs/templates.md): "
        "`template: NAME@VERSION`, its parameters in `with`, and `overrides` of the "
        "assistant's fields."
    )
    defs["TemplatedAssistant"] = templated
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"
