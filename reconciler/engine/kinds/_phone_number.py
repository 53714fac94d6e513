"""Phone numbers: `POST /phone-number` imports (or, for `vapi`, makes) one; `GET /phone-number`
lists, `PATCH`/`DELETE /phone-number/{id}`. No `metadata`: a number is the org's by
`(provider, number)` or its `sipUri`; one org per number (`vapi_resources`' unique index)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from reconciler.engine.kinds._kind import Reference, ResourceKind


def number_key(number: Mapping[str, Any]) -> str | None:
    provider = number.get("provider")
    address = number.get("number") or number.get("sipUri")
    if not isinstance(provider, str) or not isinstance(address, str):
        return None
    return f"{provider}:{address}"


PHONE_NUMBER = ResourceKind(
    name="phoneNumber",
    label="phone number",
    path="/phone-number",
    ownership="naturalKey",
    natural_key=number_key,
    immutable=frozenset({"provider", "number", "sipUri"}),
    secret_fields=frozenset({"twilioAccountSid", "twilioAuthToken", "twilioApiSecret"}),
    write_only=frozenset({"twilioAuthToken", "twilioApiSecret"}),
    references=(Reference("assistantId", "assistant"),),
    # unbound, not deleted: the number stays the org's, and calls to it reach no assistant
    on_removal={"assistantId": None},
)


def number_body(fields: Mapping[str, Any], twilio: Mapping[str, str] | None) -> dict[str, Any]:
    """The Vapi body of one `spec.phoneNumbers` entry (camelCase, as the spec dumps it).
    `assistantId` is always present (None: unbound), filled in by the planner from the
    `assistant` role; a Twilio number carries the org's own Twilio credentials."""
    body: dict[str, Any] = {"provider": fields["provider"]}
    for name in ("number", "sipUri", "credentialId", "name", "fallbackDestination"):
        if fields.get(name) is not None:
            body[name] = fields[name]
    if fields["provider"] == "twilio":
        if twilio is None:
            raise ValueError("a Twilio number needs the org's credentials.twilio")
        body["twilioAccountSid"] = twilio["accountSid"]
        body["twilioAuthToken"] = twilio["authToken"]
        body["smsEnabled"] = bool(fields.get("smsEnabled", False))
    body["assistantId"] = None
    return body
