"""The JSON schema of spec files, generated from the models (editors and CI use it)."""

from __future__ import annotations

import json

from reconciler.spec.models import Organization


def schema_text() -> str:
    schema = Organization.model_json_schema(by_alias=True, mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"
