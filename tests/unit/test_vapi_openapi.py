"""The vendored extract of Vapi's OpenAPI document (tests/fixtures/vapi-openapi-assistant.json,
made by scripts/vendor_openapi.py) is whole: the `Assistant` schema is there with the fields the
emulator's tests read, and every `$ref` in it resolves inside the file."""

from __future__ import annotations

import json
import re

from tests.helpers import VAPI_OPENAPI, vapi_openapi_schemas

REF = re.compile(r'"#/components/schemas/([^"]+)"')


def test_the_vendored_openapi_extract_is_whole() -> None:
    schemas = vapi_openapi_schemas()
    assistant = schemas["Assistant"]
    assert {"id", "orgId", "createdAt", "updatedAt"} <= set(assistant["required"])
    assert {"name", "voice", "model", "metadata"} <= set(assistant["properties"])
    text = VAPI_OPENAPI.read_text(encoding="utf-8")
    dangling = sorted({name for name in REF.findall(text) if name not in schemas})
    assert dangling == [], f"refs missing from {VAPI_OPENAPI}: rerun scripts/vendor_openapi.py"
    assert json.loads(text)["x-vendored"]["schemas"] == len(schemas)
