"""Spec format v1: one Organization per file. The JSON schema in schemas/ is generated from here."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic.alias_generators import to_camel

from reconciler.netpolicy import (
    ALLOW_SETTING,
    ForwardPolicy,
    ForwardRefused,
    allowed_from_environment,
)

API_VERSION = "reconciler/v1"
SLUG_PATTERN = r"^[a-z0-9][a-z0-9-]{1,62}$"
ASSISTANT_NAME_MAX = 40
ROLES = ("inbound", "outbound")
# Keys of the assistant's `metadata` that the reconciler owns (its ownership tag).
RESERVED_METADATA_KEYS = frozenset({"managedBy", "orgId", "role"})

# YAML key under `credentials` -> provider name in Postgres.
PROVIDERS: dict[str, str] = {
    "vapi": "vapi",
    "twilio": "twilio",
    "googleCalendar": "google_calendar",
    "resend": "resend",
    "elevenlabs": "elevenlabs",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Camel(_Strict):
    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True
    )


class Metadata(_Strict):
    id: UUID = Field(description="Stable UUID of the organisation: the org_id everywhere.")
    slug: Annotated[str, Field(pattern=SLUG_PATTERN, description="Equals the file name.")]
    name: Annotated[str, Field(min_length=1, max_length=200, description="Display name.")]


Secret = Annotated[SecretStr, Field(json_schema_extra={"writeOnly": True})]


class VapiCredentials(_Camel):
    api_key: Secret
    webhook_secret: Secret

    @field_validator("api_key", "webhook_secret")
    @classmethod
    def _header_safe(cls, value: SecretStr) -> SecretStr:
        """Both travel in HTTP headers (Authorization, x-vapi-secret): printable ASCII only."""
        text = value.get_secret_value()
        if not text.strip():
            raise ValueError("must not be empty")
        if not (text.isascii() and text.isprintable()) or text != text.strip():
            raise ValueError(
                "must be printable ASCII without surrounding spaces (it travels in an HTTP header)"
            )
        return value


class TwilioCredentials(_Camel):
    account_sid: Secret
    auth_token: Secret


class GoogleCalendarCredentials(_Camel):
    client_id: Secret
    client_secret: Secret
    refresh_token: Secret


class ResendCredentials(_Camel):
    api_key: Secret


class ElevenLabsCredentials(_Camel):
    api_key: Secret


class Credentials(_Camel):
    """Encrypted in place by SOPS; every leaf is a secret."""

    vapi: VapiCredentials | None = None
    twilio: TwilioCredentials | None = None
    google_calendar: GoogleCalendarCredentials | None = None
    resend: ResendCredentials | None = None
    elevenlabs: ElevenLabsCredentials | None = None

    def revealed(self) -> dict[str, dict[str, str]]:
        """Plain values by Postgres provider name: only for encryption and the Vapi key."""
        out: dict[str, dict[str, str]] = {}
        for yaml_key, provider in PROVIDERS.items():
            model = getattr(self, to_snake(yaml_key))
            if model is not None:
                out[provider] = {
                    to_camel(k): v.get_secret_value() for k, v in model if v is not None
                }
        return out


def to_snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


class AssistantSpec(BaseModel):
    """Vapi CreateAssistantDTO fields, camelCase, passed to Vapi as written.

    Only top-level names are checked here (Vapi checks the rest); the list follows Vapi's
    OpenAPI document.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(min_length=1, max_length=ASSISTANT_NAME_MAX)]
    firstMessage: str | None = None
    firstMessageMode: str | None = None
    firstMessageInterruptionsEnabled: bool | None = None
    model: dict[str, Any] | None = None
    voice: dict[str, Any] | None = None
    transcriber: dict[str, Any] | None = None
    server: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    maxDurationSeconds: Annotated[int, Field(ge=10, le=43200)] | None = None
    backgroundSound: Any = None
    voicemailMessage: str | None = None
    endCallMessage: str | None = None
    endCallPhrases: list[str] | None = None
    clientMessages: list[Any] | None = None
    serverMessages: list[Any] | None = None
    credentialIds: list[str] | None = None
    credentials: list[Any] | None = None
    hooks: list[Any] | None = None
    transportConfigurations: list[Any] | None = None
    modelOutputInMessagesEnabled: bool | None = None
    voicemailDetection: Any = None
    analysisPlan: dict[str, Any] | None = None
    artifactPlan: dict[str, Any] | None = None
    backgroundSpeechDenoisingPlan: dict[str, Any] | None = None
    compliancePlan: dict[str, Any] | None = None
    keypadInputPlan: dict[str, Any] | None = None
    monitorPlan: dict[str, Any] | None = None
    observabilityPlan: dict[str, Any] | None = None
    startSpeakingPlan: dict[str, Any] | None = None
    stopSpeakingPlan: dict[str, Any] | None = None

    @field_validator("metadata")
    @classmethod
    def _no_reserved_keys(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        clash = sorted(RESERVED_METADATA_KEYS & set(value or {}))
        if clash:
            raise ValueError(f"keys {clash} are reserved for the reconciler's ownership tag")
        return value

    def vapi_fields(self) -> dict[str, Any]:
        """The fields as the user wrote them (unset ones are not sent to Vapi)."""
        return self.model_dump(exclude_unset=True, mode="json")


class Assistants(_Strict):
    inbound: AssistantSpec | None = None
    outbound: AssistantSpec | None = None

    def by_role(self) -> dict[str, AssistantSpec]:
        return {role: spec for role in ROLES if (spec := getattr(self, role)) is not None}


class Webhook(_Camel):
    """Where `serve` forwards this org's verified webhooks (else RECONCILER_FORWARD_URL)."""

    forward_url: Annotated[
        str,
        Field(
            pattern=r"^https?://[^\s@/]+(/\S*)?$",
            max_length=2000,
            description="http(s) URL without credentials; the verified webhook is POSTed there "
            "unchanged and its answer relayed to Vapi. Not a loopback, link-local "
            "(cloud metadata) or other internal address, nor localhost, unless the operator "
            "allows its network (RECONCILER_FORWARD_ALLOW_NETWORKS).",
        ),
    ]

    @field_validator("forward_url")
    @classmethod
    def _allowed_address(cls, value: str) -> str:
        """A literal address (or `localhost`) that the forward policy refuses is refused here,
        offline; a name is resolved and checked when a webhook is forwarded."""
        try:
            ForwardPolicy(allowed_from_environment()).check_literal(value)
        except ForwardRefused as exc:
            raise ValueError(
                f"a forward URL may not reach {exc} (an operator may allow its network with "
                f"{ALLOW_SETTING})"
            ) from None
        return value


class OrgSpecBody(_Strict):
    credentials: Credentials = Field(default_factory=Credentials)
    assistants: Assistants = Field(default_factory=Assistants)
    webhook: Webhook | None = None
    adopt: Literal["byName"] | None = Field(
        default=None,
        description="byName: an untagged assistant whose name equals a desired one is tagged "
        "and adopted instead of a new one created (moving an existing account in). "
        "Unset: such an assistant is reported as unmanaged and left alone.",
    )

    @model_validator(mode="after")
    def _vapi_needed(self) -> OrgSpecBody:
        if self.assistants.by_role() and self.credentials.vapi is None:
            raise ValueError("credentials.vapi is required when assistants are given")
        return self


class Organization(_Strict):
    """One file in specs/: who the org is, its credentials and its assistants."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        title="Organization",
        json_schema_extra={"$id": "org.schema.json"},
    )

    apiVersion: Literal["reconciler/v1"]
    kind: Literal["Organization"]
    metadata: Metadata
    spec: OrgSpecBody = Field(default_factory=OrgSpecBody)
