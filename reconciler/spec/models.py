"""Spec format v1: one Organization per file. The JSON schema in schemas/ is generated from here."""

from __future__ import annotations

import functools
import re
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    field_validator,
    model_validator,
)
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
# OpenAI's function names: what Vapi's `function.name` accepts.
TOOL_NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
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
                out[provider] = {_camel(k): v.get_secret_value() for k, v in model if v is not None}
        return out


# a credential field's YAML name: a few fixed names, each made once, not for every org of every run
_camel = functools.cache(to_camel)


@functools.cache
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
    tools: Annotated[
        list[Annotated[str, Field(pattern=TOOL_NAME_PATTERN)]] | None,
        Field(
            description="Names of tools in `spec.tools`: their Vapi ids are written into "
            "`model.toolIds` (after any ids given there).",
        ),
    ] = None
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

    @field_validator("tools")
    @classmethod
    def _tools_once(cls, value: list[str] | None) -> list[str] | None:
        repeated = sorted({t for t in value or () if (value or []).count(t) > 1})
        if repeated:
            raise ValueError(f"tools {repeated} are listed more than once")
        return value

    def vapi_fields(self) -> dict[str, Any]:
        """The fields as the user wrote them (unset ones are not sent to Vapi), without our
        own (`tools`: references the engine turns into `model.toolIds`)."""
        return self.model_dump(exclude_unset=True, exclude={"tools"}, mode="json")


ASSISTANT_NAME_PATTERN = r"^[a-z][a-zA-Z0-9-]{0,31}$"


class Assistants(BaseModel):
    """The roles `inbound` and `outbound`, and any more assistants by name (an after-hours
    line, a second language: `afterHours`, `spanish`), each mapped and resolved like the two."""

    model_config = ConfigDict(
        extra="allow",
        frozen=True,
        json_schema_extra={"propertyNames": {"pattern": ASSISTANT_NAME_PATTERN}},
    )
    __pydantic_extra__: dict[str, AssistantSpec] = Field(init=False)

    inbound: AssistantSpec | None = None
    outbound: AssistantSpec | None = None

    @model_validator(mode="after")
    def _names(self) -> Assistants:
        names = sorted(self.model_extra or {})
        bad = [k for k in names if not re.match(ASSISTANT_NAME_PATTERN, k)]
        if bad:
            raise ValueError(
                f"assistant names {bad} must match {ASSISTANT_NAME_PATTERN} (a letter, then "
                "letters, digits or '-', at most 32)"
            )
        for name in names:  # a misspelt role would silently be a third assistant
            import difflib  # here: `validate` of files without other names never loads it

            close = difflib.get_close_matches(name.lower(), ROLES, n=1, cutoff=0.75)
            if close:
                raise ValueError(
                    f"assistant {name!r} looks like a misspelt {close[0]!r}; did you mean "
                    f"{close[0]!r}? (another assistant needs a name not close to a role)"
                )
        return self

    def by_role(self) -> dict[str, AssistantSpec]:
        """Every assistant by its role or name: the two roles first, then the others by name."""
        named = {role: spec for role in ROLES if (spec := getattr(self, role)) is not None}
        extra = self.model_extra or {}
        return {**named, **{name: extra[name] for name in sorted(extra)}}


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


# Server-side fields Vapi adds to every object: never part of a spec.
SERVER_OWNED_FIELDS = frozenset({"id", "orgId", "createdAt", "updatedAt"})


class ToolSpec(BaseModel):
    """A Vapi tool, camelCase, passed to Vapi as written (`CreateToolDTO`, chosen by `type`).

    Its key in `spec.tools` is its name: a function tool's `function.name` (filled in when
    absent, refused when different); other types have one tool per type and org (Vapi gives
    them no name to tell two apart)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    type: Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9.-]{0,63}$")]

    @model_validator(mode="after")
    def _no_server_fields(self) -> ToolSpec:
        given = sorted(SERVER_OWNED_FIELDS & set(self.model_extra or {}))
        if given:
            raise ValueError(f"{given} are set by Vapi, not in a spec")
        return self

    def vapi_fields(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


E164_PATTERN = r"^\+[1-9][0-9]{6,14}$"
NUMBER_PROVIDERS = ("twilio", "vapi", "vonage", "telnyx", "byo-phone-number")


class PhoneNumberSpec(_Camel):
    """A phone number in the org's Vapi account: imported (Twilio with the org's own
    `credentials.twilio`; Vonage, Telnyx and BYO through a Vapi credential id) or a Vapi SIP
    number. Its number (or SIP URI) is its key: one org per number."""

    provider: Literal["twilio", "vapi", "vonage", "telnyx", "byo-phone-number"]
    number: str | None = Field(default=None, pattern=E164_PATTERN)
    sip_uri: str | None = Field(default=None, pattern=r"^sips?:[^\s@]+@[^\s]+$", max_length=200)
    name: str | None = Field(default=None, min_length=1, max_length=ASSISTANT_NAME_MAX)
    assistant: str | None = Field(
        default=None,
        description="The role of the assistant that answers it (`inbound`, `outbound`); none: "
        "Vapi asks the server URL (`assistant-request`).",
    )
    fallback_destination: dict[str, Any] | None = None
    sms_enabled: bool = Field(
        default=False,
        description="Twilio only. False by default, so an import does not take over the "
        "number's SMS webhook at Twilio.",
    )
    credential_id: str | None = Field(default=None, min_length=1, max_length=200)

    @property
    def key(self) -> str:
        return self.number or self.sip_uri or ""

    @model_validator(mode="after")
    def _addressed(self) -> PhoneNumberSpec:
        if self.provider == "vapi":
            if self.sip_uri is None or self.number is not None:
                raise ValueError("a `vapi` number is a SIP number: give `sipUri` (not `number`)")
        elif self.number is None or self.sip_uri is not None:
            raise ValueError(f"a `{self.provider}` number needs `number` in E.164 (no `sipUri`)")
        if self.provider in ("vonage", "telnyx", "byo-phone-number") and not self.credential_id:
            raise ValueError(f"a `{self.provider}` number needs the Vapi `credentialId` to use")
        if self.provider in ("twilio", "vapi") and self.credential_id:
            raise ValueError(f"a `{self.provider}` number takes no `credentialId`")
        if self.sms_enabled and self.provider != "twilio":
            raise ValueError("`smsEnabled` is for Twilio numbers only")
        return self


class Outbound(_Camel):
    phone_number: str = Field(
        description="The number (or SIP URI) of `spec.phoneNumbers` the outbound assistant "
        "calls from; its Vapi id is offered to the platform's services.",
    )


class OrgSpecBody(_Strict):
    credentials: Credentials = Field(default_factory=Credentials)
    assistants: Assistants = Field(default_factory=Assistants)
    tools: dict[Annotated[str, Field(pattern=TOOL_NAME_PATTERN)], ToolSpec] = Field(
        default_factory=dict,
        description="Tools created in the org's Vapi account, by name; assistants refer to "
        "them by that name (`tools: [name]`).",
    )
    phoneNumbers: list[PhoneNumberSpec] = Field(default_factory=list)
    outbound: Outbound | None = None
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
        if (self.tools or self.phoneNumbers) and self.credentials.vapi is None:
            raise ValueError("credentials.vapi is required when tools or phone numbers are given")
        return self

    @model_validator(mode="after")
    def _references(self) -> OrgSpecBody:
        """Every reference names something this file declares (found offline by `validate`)."""
        for role, assistant in self.assistants.by_role().items():
            missing = [t for t in assistant.tools or () if t not in self.tools]
            if missing:
                raise ValueError(
                    f"assistants.{role}.tools: {missing} not in spec.tools "
                    f"(declared: {sorted(self.tools) or 'none'})"
                )
            if assistant.tools and not isinstance((assistant.model or {}).get("provider"), str):
                raise ValueError(
                    f"assistants.{role}.tools: needs `model` with its `provider` (the tools' "
                    "ids go into `model.toolIds`)"
                )
        by_type: dict[str, str] = {}
        for name, tool in self.tools.items():
            function = (tool.model_extra or {}).get("function")
            if tool.type == "function":
                given = function.get("name") if isinstance(function, dict) else None
                if given is not None and given != name:
                    raise ValueError(
                        f"tools.{name}: function.name is {given!r}; it must equal the tool's "
                        "name (or be left out)"
                    )
            elif tool.type in by_type:
                raise ValueError(
                    f"tools.{name}: a second `{tool.type}` tool (after {by_type[tool.type]}); "
                    "Vapi gives such tools no name to tell two apart: one per org"
                )
            else:
                by_type[tool.type] = name
        seen: set[str] = set()
        for i, number in enumerate(self.phoneNumbers):
            if number.key in seen:
                raise ValueError(f"phoneNumbers[{i}]: {number.key} is listed twice")
            seen.add(number.key)
            if number.assistant is not None and number.assistant not in self.assistants.by_role():
                raise ValueError(
                    f"phoneNumbers[{i}].assistant: {number.assistant!r} is not an assistant "
                    f"of this org (declared: {sorted(self.assistants.by_role()) or 'none'})"
                )
            if number.provider == "twilio" and self.credentials.twilio is None:
                raise ValueError(
                    f"phoneNumbers[{i}]: a Twilio number is imported with the org's own "
                    "credentials.twilio, which this file does not give"
                )
        if self.outbound is not None and self.outbound.phone_number not in seen:
            raise ValueError(
                f"outbound.phoneNumber: {self.outbound.phone_number} is not in spec.phoneNumbers"
            )
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
    # role -> `name@version` of each assistant the loader rendered from a template (the file's
    # `template:`): not a field of the file, which says it in the assistant itself
    _templates: dict[str, str] = PrivateAttr(default_factory=dict)
    # role -> the paths (`model.messages[0].content`) of a templated assistant's values that
    # come from the org's `overrides`, not from the template
    _overridden: dict[str, frozenset[str]] = PrivateAttr(default_factory=dict)

    @property
    def templates(self) -> dict[str, str]:
        """Each templated assistant's template (`name@version`), by role."""
        return dict(self._private()["_templates"])

    @property
    def overridden(self) -> dict[str, frozenset[str]]:
        return dict(self._private()["_overridden"])

    def _private(self) -> dict[str, Any]:
        """The private attributes read from where pydantic keeps them: its own read of
        `self._templates` raises and catches an AttributeError on the way (3.5 us, against
        0.1), and they are read for each assistant of each org in a run."""
        private = self.__pydantic_private__
        assert private is not None  # set by every constructor of a model with private fields
        return private

    def made_from(
        self, templates: dict[str, str], overridden: dict[str, frozenset[str]] | None = None
    ) -> Organization:
        """This org, recording the templates its assistants were rendered from and which of
        their values the org overrides (the loader's call, right after the org is built)."""
        self._templates = dict(templates)  # its own: a copy of the org never shares them
        self._overridden = dict(overridden or {})
        return self
