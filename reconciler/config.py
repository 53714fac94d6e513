"""Settings from the environment, read once at the edge (CLI) and passed down explicitly."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from reconciler.errors import ConfigError
from reconciler.netpolicy import parse_networks

_BASE_URL = r"^https?://[^\s@/]+(/\S*)?$"
"""A provider's base URL: http(s), no credentials in it (they travel in headers)."""


def default_data_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_data_dir("vapi-reconciler"))


class Settings(BaseSettings):
    """What an operator may set; every field has an environment variable."""

    model_config = SettingsConfigDict(env_prefix="", extra="ignore", populate_by_name=True)

    database_url: SecretStr | None = Field(default=None, alias="RECONCILER_DATABASE_URL")
    data_dir: Path = Field(default_factory=default_data_dir, alias="RECONCILER_DATA_DIR")
    vapi_base_url: str = Field(default="https://api.vapi.ai", alias="VAPI_BASE_URL")
    master_key: SecretStr | None = Field(default=None, alias="RECONCILER_MASTER_KEY")
    # key_id:base64,...: the first encrypts, all decrypt (rotation); instead of MASTER_KEY
    master_keys: SecretStr | None = Field(default=None, alias="RECONCILER_MASTER_KEYS")
    concurrency: int = Field(default=16, ge=1, le=256, alias="RECONCILER_CONCURRENCY")
    vapi_timeout_s: float = Field(default=30.0, gt=0, alias="RECONCILER_VAPI_TIMEOUT")
    # serve
    admin_token: SecretStr | None = Field(default=None, alias="RECONCILER_ADMIN_TOKEN")
    forward_url: str | None = Field(
        default=None, pattern=r"^https?://[^\s@/]+(/\S*)?$", alias="RECONCILER_FORWARD_URL"
    )
    forward_timeout_s: float = Field(default=6.0, gt=0, lt=7.5, alias="RECONCILER_FORWARD_TIMEOUT")
    # webhook forwarding: per-org and total caps on forwards in flight (past them: 503 at
    # once), networks an org's forwardUrl may reach despite the address policy (a sidecar on
    # 127.0.0.1), and how long a request body may take to arrive (past it: 408)
    forward_max_in_flight: int = Field(
        default=32, ge=1, le=100_000, alias="RECONCILER_FORWARD_MAX_IN_FLIGHT"
    )
    forward_max_in_flight_total: int = Field(
        default=512, ge=1, le=1_000_000, alias="RECONCILER_FORWARD_MAX_IN_FLIGHT_TOTAL"
    )
    forward_allow_networks: str = Field(default="", alias="RECONCILER_FORWARD_ALLOW_NETWORKS")
    webhook_body_timeout_s: float = Field(
        default=5.0, gt=0, le=60, alias="RECONCILER_WEBHOOK_BODY_TIMEOUT"
    )
    replica_id: str | None = Field(
        default=None, pattern=r"^[\x21-\x7e]{1,100}$", alias="RECONCILER_REPLICA_ID"
    )
    backoff_max_s: float = Field(default=600.0, gt=0, alias="RECONCILER_BACKOFF_MAX")
    secret_grace_s: float = Field(default=300.0, ge=0, alias="RECONCILER_SECRET_GRACE")
    webhook_listen: bool = Field(default=True, alias="RECONCILER_WEBHOOK_LISTEN")
    # lifecycle: how long a deleted assistant's mapping (and a retired org's webhook secret)
    # still verifies late webhooks
    mapping_retention_s: float = Field(
        default=30 * 86400.0, ge=0, alias="RECONCILER_MAPPING_RETENTION"
    )

    @field_validator("forward_allow_networks")
    @classmethod
    def _networks(cls, value: str) -> str:
        """`127.0.0.0/8,::1`: networks or addresses, comma-separated."""
        try:
            parse_networks(value)
        except ValueError:  # its message quotes the item: settings are never echoed
            raise ValueError("must be networks or addresses such as 127.0.0.0/8,::1") from None
        return value

    @field_validator("mapping_retention_s", mode="before")
    @classmethod
    def _days(cls, value: object) -> object:
        """`30d`, `12h`, `90m`, `45s`, or a number of seconds."""
        if isinstance(value, str):
            match = _DURATION.match(value)
            if match is None:
                raise ValueError("must be a duration such as 30d, 12h, 90m or 3600 (seconds)")
            return float(match.group(1)) * _UNIT_S[match.group(2) or "s"]
        return value

    # credential verification (`reconciler verify`, and `serve` every interval): where each
    # provider is reached (a local stub in tests), and how often `serve` verifies (0: never)
    twilio_base_url: str = Field(
        default="https://api.twilio.com", pattern=_BASE_URL, alias="RECONCILER_TWILIO_BASE_URL"
    )
    resend_base_url: str = Field(
        default="https://api.resend.com", pattern=_BASE_URL, alias="RECONCILER_RESEND_BASE_URL"
    )
    elevenlabs_base_url: str = Field(
        default="https://api.elevenlabs.io",
        pattern=_BASE_URL,
        alias="RECONCILER_ELEVENLABS_BASE_URL",
    )
    google_oauth_url: str = Field(
        default="https://oauth2.googleapis.com/token",
        pattern=_BASE_URL,
        alias="RECONCILER_GOOGLE_OAUTH_URL",
    )
    google_calendar_base_url: str = Field(
        default="https://www.googleapis.com/calendar/v3",
        pattern=_BASE_URL,
        alias="RECONCILER_GOOGLE_CALENDAR_BASE_URL",
    )
    verify_interval_s: float = Field(default=6 * 3600.0, ge=0, alias="RECONCILER_VERIFY_INTERVAL")
    # a local trial: every provider (Vapi included) at the emulator's stubs, nothing sent to a
    # third party (`reconciler vapi-emulator` serves them; see PROVIDER_STUB_PATHS)
    provider_stubs: str | None = Field(
        default=None, pattern=_BASE_URL, alias="RECONCILER_PROVIDER_STUBS"
    )

    @model_validator(mode="after")
    def _stubs(self) -> Settings:
        """RECONCILER_PROVIDER_STUBS=URL points every provider's base URL at the stubs under
        URL. Set together with a provider's own URL it is refused: which one wins would be a
        guess, and a guess that reaches a third party is what the setting rules out."""
        if self.provider_stubs is None:
            return self
        base = self.provider_stubs.rstrip("/")
        named = sorted(
            str(Settings.model_fields[name].alias)
            for name in PROVIDER_STUB_PATHS
            if name in self.model_fields_set
        )
        if named:
            raise ValueError(
                f"RECONCILER_PROVIDER_STUBS points every provider at local stubs; unset "
                f"{', '.join(named)}"
            )
        for name, path in PROVIDER_STUB_PATHS.items():
            setattr(self, name, base + path)
        return self

    @field_validator("verify_interval_s", mode="before")
    @classmethod
    def _verify_interval(cls, value: object) -> object:
        """`6h`, `90m`, `0` (off): the same durations as RECONCILER_MAPPING_RETENTION."""
        return cls._days(value)


PROVIDER_STUB_PATHS = {
    "vapi_base_url": "",
    "twilio_base_url": "/_stubs/twilio",
    "resend_base_url": "/_stubs/resend",
    "elevenlabs_base_url": "/_stubs/elevenlabs",
    "google_oauth_url": "/_stubs/google/token",
    "google_calendar_base_url": "/_stubs/google/calendar/v3",
}
"""Where `reconciler vapi-emulator` serves each provider, under RECONCILER_PROVIDER_STUBS (the
emulator serves Vapi itself at its root; `reconciler.vapi.stubs` serves the others)."""

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*$")
_UNIT_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def load_settings(**values: Any) -> Settings:
    """Settings from the environment (and `values`, by alias), with a bad variable as a
    ConfigError naming it and the problem, never its value: it may be a secret."""
    try:
        return Settings(**values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{_variable(err['loc'])}: {err['msg']}"
            if err["loc"]
            else str(err["msg"]).removeprefix("Value error, ")  # a rule across variables
            for err in exc.errors(include_input=False)
        )
        raise ConfigError(f"invalid environment: {problems}") from None
    except SettingsError:  # a value that the source could not even parse
        raise ConfigError("invalid environment: cannot parse the reconciler settings") from None


def _variable(loc: tuple[int | str, ...]) -> str:
    """The environment variable of an error location (aliases are the variable names)."""
    if not loc:
        return "settings"
    name = str(loc[0])
    field = Settings.model_fields.get(name)
    if field is not None and field.alias:
        return field.alias
    return name
