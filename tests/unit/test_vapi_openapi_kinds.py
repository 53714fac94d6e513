"""The vendored phone-number and tool schemas (reconciler/vapi/openapi_kinds.json, made by
scripts/vendor_openapi.py) are whole, and `KindValidator` reads them as Vapi's pipes would:
the member chosen by the discriminator, unknown properties refused, nulls as "not given", each
message naming the field. The emulator over HTTP: tests/integration/test_emulator_kinds.py."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from reconciler.vapi.emulator_schema import KINDS_SCHEMA_PATH, KindValidator

REF = re.compile(r'"#/components/schemas/([^"]+)"')
TWILIO = {"provider": "twilio", "number": "+15551230001", "twilioAccountSid": "AC1"}


@pytest.fixture(scope="module")
def validator() -> KindValidator:
    return KindValidator.load()


def test_the_vendored_kinds_extract_is_whole() -> None:
    text = KINDS_SCHEMA_PATH.read_text(encoding="utf-8")
    document = json.loads(text)
    schemas = document["components"]["schemas"]
    dangling = sorted({name for name in REF.findall(text) if name not in schemas})
    assert dangling == [], f"refs missing from {KINDS_SCHEMA_PATH}: rerun the vendoring script"
    assert document["x-vendored"]["schemas"] == len(schemas)
    assert "Handoff" not in json.dumps(document["paths"])
    assert "CreateHandoffToolDTO" not in schemas
    for path, method in [
        ("/phone-number", "post"),
        ("/phone-number/{id}", "patch"),
        ("/tool", "post"),
        ("/tool/{id}", "patch"),
    ]:
        body = document["paths"][path][method]["requestBody"]["content"]["application/json"]
        mapping = body["schema"]["discriminator"]["mapping"]
        assert all(ref.removeprefix("#/components/schemas/") in schemas for ref in mapping.values())
    assert document["paths"]["/v2/phone-number"]["get"]["responses"]["200"]


@pytest.mark.parametrize(
    ("body", "path", "method", "stored", "expected"),
    [
        (TWILIO, "/phone-number", "post", None, []),
        ({**TWILIO, "name": None, "assistantId": None}, "/phone-number", "post", None, []),
        (
            {**TWILIO, "twilioAccountSid": None},
            "/phone-number",
            "post",
            None,
            ["twilioAccountSid should not be null or undefined"],
        ),
        ({"name": "x"}, "/phone-number/{id}", "patch", "twilio", []),
        (
            {"provider": "vapi"},
            "/phone-number/{id}",
            "patch",
            "twilio",
            ["provider must be one of the following values: twilio"],
        ),
        ({**TWILIO, "hooks": [{"on": "nope"}]}, "/phone-number", "post", None, None),
        ({"type": "function", "function": {"name": "ok_name"}}, "/tool", "post", None, []),
        (
            {"type": "function", "async": "yes"},
            "/tool",
            "post",
            None,
            ["async must be a boolean value"],
        ),
        ({"type": "function", "messages": [{"type": "nope"}]}, "/tool", "post", None, None),
        (
            {"type": "endCall", "extra": 1},
            "/tool",
            "post",
            None,
            ["property extra should not exist"],
        ),
        ({"async": True}, "/tool/{id}", "patch", "function", []),
        ({"async": True}, "/tool/{id}", "patch", "endCall", ["property async should not exist"]),
        (
            {"type": None},
            "/tool/{id}",
            "patch",
            "function",
            ["type must be one of the following values: function"],
        ),
    ],
)
def test_kind_validator_messages(
    validator: KindValidator,
    body: dict[str, Any],
    path: str,
    method: str,
    stored: str | None,
    expected: list[str] | None,
) -> None:
    messages = validator.validate(body, path, method, stored)
    if expected is None:  # a nested union: some message about that field
        field = next(iter(set(body) - set(TWILIO) - {"type"}))
        assert messages
        assert all(m.startswith(f"{field}.") for m in messages), messages
    else:
        assert messages == expected
