"""What the credential store hands out, and the errors it raises.

Results are frozen dataclasses whose secret fields are `SecretStr`: their repr and str show
`SecretStr('**********')`, never a value; `.get_secret_value()` gives the value exactly as it
was written in the org's spec. Errors name the org and the provider, never a value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import SecretStr

from reconciler.errors import ReconcilerError
from reconciler.redact import printable


class CredentialError(ReconcilerError):
    """Base of the credential store's errors; the message names the org and the provider."""


class CredentialNotFound(CredentialError, LookupError):
    """The org has no active credential of this provider: none in its spec, removed from it,
    deactivated (a retired org, including its webhook-only Vapi row), or no such org. Never a
    fallback to anything else (no environment variable is read)."""

    def __init__(self, org_id: str, provider: str) -> None:
        super().__init__(f"no active {provider} credential for org {printable(org_id, 40)}")
        self.org_id = org_id
        self.provider = provider


class CredentialUnavailable(CredentialError):
    """The credential could not be read now: the database is unavailable, the stored row does
    not decrypt under these master keys (or lacks a field), or the store is closed. Never
    cached: a repaired database or row works at the next read."""


@dataclass(frozen=True, slots=True)
class VapiCredentials:
    org_id: str
    api_key: SecretStr
    webhook_secret: SecretStr


@dataclass(frozen=True, slots=True)
class TwilioCredentials:
    org_id: str
    account_sid: SecretStr
    auth_token: SecretStr


@dataclass(frozen=True, slots=True)
class GoogleCalendarCredentials:
    org_id: str
    client_id: SecretStr
    client_secret: SecretStr
    refresh_token: SecretStr


@dataclass(frozen=True, slots=True)
class ResendCredentials:
    org_id: str
    api_key: SecretStr


@dataclass(frozen=True, slots=True)
class ElevenLabsCredentials:
    org_id: str
    api_key: SecretStr


@dataclass(frozen=True, slots=True)
class AssistantOrg:
    """The org that owns a Vapi assistant (no secret in it)."""

    org_id: str
    slug: str
    role: str


@dataclass(frozen=True, slots=True)
class OutboundNumber:
    """The number an org's outbound assistant calls from (`spec.outbound.phoneNumber`, no
    secret in it): `phone_number` as the spec gives it (E.164 or a SIP URI) and
    `phone_number_id`, its Vapi id, what Vapi's `POST /call` takes as `phoneNumberId`; None
    until `apply` has made or imported the number in Vapi."""

    org_id: str
    phone_number: str
    phone_number_id: str | None


Credentials = (
    VapiCredentials
    | TwilioCredentials
    | GoogleCalendarCredentials
    | ResendCredentials
    | ElevenLabsCredentials
)

# provider (as in Postgres) -> result class and its fields: (attribute, key in the stored config,
# which is the spec's camelCase key)
PROVIDERS: dict[str, tuple[type[Any], tuple[tuple[str, str], ...]]] = {
    "vapi": (VapiCredentials, (("api_key", "apiKey"), ("webhook_secret", "webhookSecret"))),
    "twilio": (TwilioCredentials, (("account_sid", "accountSid"), ("auth_token", "authToken"))),
    "google_calendar": (
        GoogleCalendarCredentials,
        (
            ("client_id", "clientId"),
            ("client_secret", "clientSecret"),
            ("refresh_token", "refreshToken"),
        ),
    ),
    "resend": (ResendCredentials, (("api_key", "apiKey"),)),
    "elevenlabs": (ElevenLabsCredentials, (("api_key", "apiKey"),)),
}


def build(org_id: str, provider: str, config: object) -> Credentials:
    """The result of a decrypted config; `CredentialUnavailable` naming the missing field when
    the row is not what the reconciler writes."""
    cls, fields = PROVIDERS[provider]
    if not isinstance(config, dict):
        raise CredentialUnavailable(f"stored {provider} credential of org {org_id} is malformed")
    values: dict[str, SecretStr] = {}
    for attr, key in fields:
        value = config.get(key)
        if not isinstance(value, str):
            raise CredentialUnavailable(
                f"stored {provider} credential of org {org_id} has no {key} string"
            )
        values[attr] = SecretStr(value)
    result: Credentials = cls(org_id, **values)
    return result
