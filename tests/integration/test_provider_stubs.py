"""A local trial sends nothing to third parties: RECONCILER_PROVIDER_STUBS points every provider
(Vapi included) at the emulator, which answers each provider's verification call in its
documented shape (`reconciler/vapi/stubs.py`)."""

from __future__ import annotations

import os
import socket
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from reconciler.config import PROVIDER_STUB_PATHS, load_settings
from reconciler.errors import ConfigError
from reconciler.providers.verify import Endpoints
from tests.helpers import (
    SpecDir,
    assert_no_traceback,
    emulator_stats,
    reset_emulator,
    twilio_number,
)
from tests.integration.test_kinds import TWILIO, tenant
from tests.integration.test_verify import PROVIDERS, full_doc

ENDPOINT_FIELDS = ("vapi", "twilio", "resend", "elevenlabs", "google_oauth", "google_calendar")


def test_the_setting_points_every_provider_at_the_stubs(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [k for k in os.environ if k.startswith(("RECONCILER_", "VAPI_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("RECONCILER_PROVIDER_STUBS", "http://127.0.0.1:8787/")
    settings = load_settings()
    endpoints = Endpoints.from_settings(settings)
    for name in ENDPOINT_FIELDS:
        assert getattr(endpoints, name).startswith("http://127.0.0.1:8787"), name
    assert settings.vapi_base_url == "http://127.0.0.1:8787"
    assert endpoints.google_oauth == "http://127.0.0.1:8787/_stubs/google/token"
    assert len(PROVIDER_STUB_PATHS) == len(ENDPOINT_FIELDS)


@pytest.mark.parametrize("other", ["VAPI_BASE_URL", "RECONCILER_TWILIO_BASE_URL"])
def test_a_provider_url_beside_the_setting_is_refused(
    monkeypatch: pytest.MonkeyPatch, other: str
) -> None:
    monkeypatch.setenv("RECONCILER_PROVIDER_STUBS", "http://127.0.0.1:8787")
    monkeypatch.setenv(other, "https://api.example.com")
    with pytest.raises(ConfigError) as refused:
        load_settings()
    assert str(refused.value) == (
        "invalid environment: RECONCILER_PROVIDER_STUBS points every provider at local stubs; "
        f"unset {other}"
    )
    assert "example.com" not in str(refused.value)  # a setting's value is never echoed


@pytest.fixture
def local_only(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Every TCP connection Python opens (httpx's included) is recorded, and one to a host that
    is not 127.0.0.1 fails the test (Postgres is reached by libpq, not through here)."""
    opened: list[tuple[str, int]] = []
    real = socket.create_connection

    def guarded(address: tuple[str, int], *args: Any, **kwargs: Any) -> socket.socket:
        opened.append((str(address[0]), int(address[1])))
        if address[0] not in ("127.0.0.1", "localhost", "::1"):
            raise AssertionError(f"a connection to {address[0]} left this machine")
        return real(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", guarded)
    return opened


def test_verify_against_the_emulator_succeeds_for_every_provider_and_stays_local(
    cli: Any,
    specs: SpecDir,
    emulator: str,
    monkeypatch: pytest.MonkeyPatch,
    local_only: list[tuple[str, int]],
) -> None:
    good, bad = full_doc("acme"), full_doc("beta")
    for provider in ("twilio", "resend", "elevenlabs", "googleCalendar"):
        key = next(k for k in bad["spec"]["credentials"][provider] if k != "accountSid")
        bad["spec"]["credentials"][provider][key] = "invalid-" + key
    specs.write(good)
    specs.write(bad)
    monkeypatch.delenv("VAPI_BASE_URL")
    monkeypatch.delenv("RECONCILER_TWILIO_BASE_URL", raising=False)  # the stubs name it
    monkeypatch.setenv("RECONCILER_PROVIDER_STUBS", emulator)
    applied = cli("apply", str(specs.root))
    assert applied.code == 0, applied.out + applied.err

    result = cli("verify")
    assert_no_traceback(result)
    lines = {tuple(line.split()[:2]): line.split()[2] for line in result.out.splitlines()[:-1]}
    assert {p: lines[("acme", p)] for p in PROVIDERS} == dict.fromkeys(PROVIDERS, "ok")
    assert {p: lines[("beta", p)] for p in PROVIDERS} == {
        "vapi": "ok", "twilio": "error", "resend": "error", "elevenlabs": "error",
        "google_calendar": "error",
    }  # fmt: skip
    assert "twilio: 401 Authenticate (error 20003)" in result.out
    assert "google_calendar: refresh 400 Token has been expired or revoked." in result.out
    assert result.code == 1

    stats = emulator_stats(emulator)
    assert stats["GET /_stubs/twilio"] == 2
    assert stats["POST /_stubs/google/token"] == 2
    assert stats["GET /_stubs/google/calendar"] == 1  # only acme's refresh gave a token
    port = urlsplit(emulator).port
    assert local_only and {address for address in local_only} == {("127.0.0.1", port)}


def test_a_local_trial_checks_twilio_numbers_at_the_stub_and_stays_local(
    cli: Any,
    specs: SpecDir,
    emulator: str,
    monkeypatch: pytest.MonkeyPatch,
    local_only: list[tuple[str, int]],
) -> None:
    listing = f"{emulator}/_stubs/twilio/2010-04-01/Accounts/{TWILIO['accountSid']}"
    listing += "/IncomingPhoneNumbers.json"
    auth = (TWILIO["accountSid"], TWILIO["authToken"])
    twilio_number(emulator, TWILIO["accountSid"], "+14155550100")
    shown = httpx.get(listing, params={"PhoneNumber": "+14155550100"}, auth=auth, timeout=5)
    assert shown.status_code == 200
    assert [
        (n["phone_number"], n["friendly_name"], n["account_sid"])
        for n in shown.json()["incoming_phone_numbers"]
    ] == [("+14155550100", "(415) 555-0100", TWILIO["accountSid"])]
    assert httpx.get(listing, auth=(auth[0], "invalid-token"), timeout=5).status_code == 401

    specs.write(tenant("acme"))  # +14155550100 (registered) and +14155550101 (not)
    monkeypatch.delenv("VAPI_BASE_URL")
    monkeypatch.delenv("RECONCILER_TWILIO_BASE_URL", raising=False)  # the stubs name it
    monkeypatch.setenv("RECONCILER_PROVIDER_STUBS", emulator)
    applied = cli("apply", str(specs.root))
    assert applied.code == 1
    assert "+14155550101 is not a number of acme's Twilio account (sensitive)" in applied.out
    # every create is vetted before the org's first Vapi write: neither number is imported
    assert emulator_stats(emulator)["POST /phone-number"] == 0
    port = urlsplit(emulator).port
    assert {address for address in local_only} == {("127.0.0.1", port)}

    reset_emulator(emulator)  # forgets the registered numbers too
    shown = httpx.get(listing, params={"PhoneNumber": "+14155550100"}, auth=auth, timeout=5)
    assert shown.json()["incoming_phone_numbers"] == []
