"""The JSON schema of spec files, generated from the models (editors and CI use it)."""

from __future__ import annotations

import json
from typing import Any

from reconciler.spec.models import Organization
from reconciler.templates import TemplateUse


def _either(node: Any, spec: str, templated: str) -> Any:
    """Where an assistant (a tool) may be written in full, it may name a template instead."""
    if node == {"$ref": f"#/$defs/{spec}"}:
        return {"anyOf": [node, {"$ref": f"#/$defs/{templated}"}]}
    if isinstance(node, dict):
        return {k: _either(v, spec, templated) for k, v in node.items()}
    if isinstance(node, list):
        return [_either(v, spec, templated) for v in node]
    return node


def schema_text() -> str:
    schema = Organization.model_json_schema(by_alias=True, mode="validation")
    defs = schema["$defs"]
    defs["Assistants"] = _either(defs["Assistants"], "AssistantSpec", "TemplatedAssistant")
    body = defs["OrgSpecBody"]
    body["properties"]["tools"] = _either(body["properties"]["tools"], "ToolSpec", "TemplatedTool")
    for made, title in (("assistant", "TemplatedAssistant"), ("tool", "TemplatedTool")):
        templated = TemplateUse.model_json_schema(by_alias=True, mode="validation")
        templated["title"] = title
        templated["description"] = (
            f"A{'n' if made == 'assistant' else ''} {made} made from a template under "
            "templates/ (docs/templates.md): `template: NAME@VERSION`, its parameters in "
            f"`with`, and `overrides` of the {made}'s fields."
        )
        defs[title] = templated
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"
