"""Credential verification, one provider at a time, over httpx.MockTransport: the documented
request of each provider (method, path, query, auth), its documented answers (success, 401,
403, 429 then success, 5xx, timeouts, restricted keys), at most one retry, and reasons that are
one line, cut, and never show a secret. End to end (Postgres, stub servers, the CLI):
tests/integration/test_verify.py."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest

from reconciler.config import load_settings
from reconciler.errors import ConfigError
from reconciler.providers.verify import (
    CALL_TIMEOUT_S,
    ELEVENLABS,
    GOOGLE_CALENDAR,
    OK,
    REASON_LIMIT,
    REJECTED,
    RESEND,
    TWILIO,
    UNAVAILABLE,
    UNREADABLE,
    VAPI,
    Check,
    Endpoints,
    verify,
)

EP = Endpoints(
    vapi="https://vapi.test",
    twilio="https://twilio.test",
    resend="https://resend.test",
    elevenlabs="https://elevenlabs.test",
    google_oauth="https://oauth.test/token",
    google_calendar="https://calendar.test/calendar/v3",
)
SID = "AC0123456789abcdef0123456789abcdef"
CONFIGS: dict[str, dict[str, str]] = {
    VAPI: {"apiKey": "vapi-canary-key-7c1d", "webhookSecret": "whsec-canary-9a2b"},
    TWILIO: {"accountSid": SID, "authToken": "tw-canary-token-55e1"},
    RESEND: {"apiKey": "re_canary_3f9d8e7c"},
    ELEVENLABS: {"apiKey": "el-canary-key-0b4a"},
    GOOGLE_CALENDAR: {
        "clientId": "canary-client.apps.googleusercontent.com",
        "clientSecret": "GOCSPX-canary-secret-71",
        "refreshToken": "1//canary-refresh-token-42",
    },
}
ACCESS_TOKEN = "ya29.canary-access-token-do-not-show"
ALL_SECRETS = [v for c in CONFIGS.values() for v in c.values()] + [ACCESS_TOKEN]

Reply = httpx.Response | Exception | Callable[[httpx.Request], httpx.Response]


class Script:
    """A MockTransport handler answering from a list, recording every request."""

    def __init__(self, *replies: Reply) -> None:
        self.replies = list(replies)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if not self.replies:
            raise AssertionError(f"unexpected request {request.method} {request.url}")
        reply = self.replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        if isinstance(reply, httpx.Response):
            return reply
        return reply(request)


def success(provider: str) -> httpx.Response:
    """A documented 2xx answer of each provider's call (the parts we read)."""
    body: Any = {
        VAPI: [{"id": "a1", "orgId": "o1", "createdAt": "2026-01-01T00:00:00Z"}],
        TWILIO: {"sid": SID, "status": "active", "friendly_name": "Acme"},
        RESEND: {"object": "list", "data": [{"id": "d1", "name": "example.com"}]},
        ELEVENLABS: {"subscription": {"tier": "creator"}, "is_new_user": False},
        GOOGLE_CALENDAR: {"kind": "calendar#calendarList", "items": [{"id": "primary"}]},
    }[provider]
    return httpx.Response(200, json=body)


def token_ok() -> httpx.Response:
    return httpx.Response(
        200,
        json={
            "access_token": ACCESS_TOKEN,
            "expires_in": 3599,
            "scope": "https://www.googleapis.com/auth/calendar",
            "token_type": "Bearer",
        },
    )


def error_body(provider: str, status: int, message: str) -> httpx.Response:
    """Each provider's documented error shape."""
    body: Any = {
        VAPI: {"message": message, "error": "Unauthorized", "statusCode": status},
        TWILIO: {
            "code": 20003,
            "message": message,
            "more_info": "https://www.twilio.com/docs/errors/20003",
            "status": status,
        },
        RESEND: {"statusCode": status, "name": "validation_error", "message": message},
        ELEVENLABS: {"detail": {"status": "invalid_api_key", "message": message}},
        GOOGLE_CALENDAR: {"error": {"code": status, "message": message, "status": "DENIED"}},
    }[provider]
    return httpx.Response(status, json=body)


class Run:
    def __init__(self, script: Script, clock: Callable[[], float] | None = None) -> None:
        self.script = script
        self.sleeps: list[float] = []
        self.clock = clock

    def __call__(self, provider: str, config: dict[str, str] | None = None) -> Check:
        kwargs: dict[str, Any] = {"sleep": self.sleeps.append}
        if self.clock is not None:
            kwargs["clock"] = self.clock
        with httpx.Client(transport=httpx.MockTransport(self.script)) as http:
            return verify(
                http,
                provider,
                CONFIGS[provider] if config is None else config,
                EP,
                known=ALL_SECRETS[:-1],  # every secret of the org (the runner passes them)
                **kwargs,
            )


@pytest.fixture
def make() -> Callable[..., Run]:
    def build(*replies: Reply, clock: Callable[[], float] | None = None) -> Run:
        return Run(Script(*replies), clock)

    return build


def calls(provider: str, *final: Reply) -> list[Reply]:
    """The replies of a provider's whole conversation: Google's token first."""
    return [token_ok(), *final] if provider == GOOGLE_CALENDAR else list(final)


def assert_clean(check: Check) -> None:
    """One line, at most REASON_LIMIT characters, no secret of the org."""
    text = f"{check.reason} {check.note}"
    assert "\n" not in text and "\r" not in text
    assert check.reason is None or len(check.reason) <= REASON_LIMIT
    for secret in ALL_SECRETS:
        assert secret not in text


# -- the documented request of each provider -----------------------------------------------------


def test_vapi_lists_one_assistant_with_the_bearer_key(make: Any) -> None:
    r = make(success(VAPI))
    assert r(VAPI) == Check(OK)
    (req,) = r.script.requests
    assert (req.method, req.url.host, req.url.path) == ("GET", "vapi.test", "/assistant")
    assert parse_qs(req.url.query.decode()) == {"limit": ["1"]}
    assert req.headers["authorization"] == "Bearer vapi-canary-key-7c1d"


def test_twilio_fetches_the_account_by_its_sid_with_basic_auth(make: Any) -> None:
    r = make(success(TWILIO))
    assert r(TWILIO) == Check(OK)
    (req,) = r.script.requests
    assert req.method == "GET"
    assert req.url.path == f"/2010-04-01/Accounts/{SID}.json"
    scheme, _, blob = req.headers["authorization"].partition(" ")
    assert scheme == "Basic"
    assert base64.b64decode(blob).decode() == f"{SID}:tw-canary-token-55e1"


def test_resend_lists_domains_with_the_bearer_key(make: Any) -> None:
    r = make(success(RESEND))
    assert r(RESEND) == Check(OK)
    (req,) = r.script.requests
    assert (req.method, req.url.path) == ("GET", "/domains")
    assert req.headers["authorization"] == "Bearer re_canary_3f9d8e7c"


def test_elevenlabs_reads_the_current_user_with_xi_api_key(make: Any) -> None:
    r = make(success(ELEVENLABS))
    assert r(ELEVENLABS) == Check(OK)
    (req,) = r.script.requests
    assert (req.method, req.url.path) == ("GET", "/v1/user")
    assert req.headers["xi-api-key"] == "el-canary-key-0b4a"
    assert "authorization" not in req.headers


def test_google_refreshes_then_lists_one_calendar_with_the_access_token(make: Any) -> None:
    r = make(token_ok(), success(GOOGLE_CALENDAR))
    assert r(GOOGLE_CALENDAR) == Check(OK)
    token, listing = r.script.requests
    assert (token.method, str(token.url)) == ("POST", "https://oauth.test/token")
    assert token.headers["content-type"] == "application/x-www-form-urlencoded"
    assert parse_qs(token.content.decode()) == {
        "grant_type": ["refresh_token"],
        "client_id": ["canary-client.apps.googleusercontent.com"],
        "client_secret": ["GOCSPX-canary-secret-71"],
        "refresh_token": ["1//canary-refresh-token-42"],
    }
    assert "authorization" not in token.headers
    assert (listing.method, listing.url.path) == ("GET", "/calendar/v3/users/me/calendarList")
    assert parse_qs(listing.url.query.decode()) == {"maxResults": ["1"]}
    assert listing.headers["authorization"] == f"Bearer {ACCESS_TOKEN}"


def test_a_sid_that_is_not_a_path_segment_stays_one(make: Any) -> None:
    r = make(success(TWILIO))
    r(TWILIO, {"accountSid": "AC1/../x?y", "authToken": "tw-canary-token-55e1"})
    assert r.script.requests[0].url.raw_path == b"/2010-04-01/Accounts/AC1%2F..%2Fx%3Fy.json"


# -- refusals -----------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", [VAPI, TWILIO, RESEND, ELEVENLABS, GOOGLE_CALENDAR])
@pytest.mark.parametrize("status", [401, 403])
def test_a_refusal_is_rejected_with_the_status_and_the_providers_message(
    make: Any, provider: str, status: int
) -> None:
    r = make(*calls(provider, error_body(provider, status, "Invalid credentials here")))
    check = r(provider)
    assert check.outcome == REJECTED
    assert check.reason is not None
    assert check.reason.startswith(f"{provider}: ")
    assert f"{status} " in check.reason
    assert "Invalid credentials here" in check.reason
    assert r.sleeps == []  # a refusal is never retried
    assert_clean(check)


@pytest.mark.parametrize(
    ("provider", "reply", "reason"),
    [
        (
            TWILIO,
            httpx.Response(
                401,
                json={
                    "code": 20003,
                    "message": "Authenticate",
                    "more_info": "https://www.twilio.com/docs/errors/20003",
                    "status": 401,
                },
            ),
            "twilio: 401 Authenticate (error 20003)",
        ),
        (
            VAPI,
            httpx.Response(
                401,
                json={"message": ["Invalid Key.", "Hot tip"], "error": "Unauthorized"},
            ),
            "vapi: 401 Invalid Key.; Hot tip",
        ),
        (
            RESEND,
            httpx.Response(
                403,
                json={
                    "statusCode": 403,
                    "name": "invalid_api_key",
                    "message": "API key is invalid",
                },
            ),
            "resend: 403 API key is invalid (invalid_api_key)",
        ),
        (
            ELEVENLABS,
            httpx.Response(
                401,
                json={"detail": {"status": "invalid_api_key", "message": "Invalid API key"}},
            ),
            "elevenlabs: 401 Invalid API key (invalid_api_key)",
        ),
        (
            ELEVENLABS,
            httpx.Response(422, json={"detail": [{"loc": ["header"], "msg": "field required"}]}),
            "elevenlabs: 422 field required",
        ),
        (VAPI, httpx.Response(401, text="Unauthorized\n"), "vapi: 401 Unauthorized"),
        (VAPI, httpx.Response(401), "vapi: 401 Unauthorized"),
    ],
)
def test_reasons_follow_each_providers_documented_error_shape(
    make: Any, provider: str, reply: httpx.Response, reason: str
) -> None:
    assert make(reply)(provider) == Check(REJECTED, reason)


def test_google_names_the_step_that_failed(make: Any) -> None:
    r = make(
        httpx.Response(
            400,
            json={
                "error": "invalid_grant",
                "error_description": "Token has been expired or revoked.",
            },
        )
    )
    assert r(GOOGLE_CALENDAR) == Check(
        REJECTED,
        "google_calendar: refresh 400 Token has been expired or revoked. (invalid_grant)",
    )
    assert len(r.script.requests) == 1  # no calendar call without a token

    r = make(
        token_ok(),
        httpx.Response(
            403,
            json={
                "error": {
                    "code": 403,
                    "message": "Request had insufficient authentication scopes.",
                    "status": "PERMISSION_DENIED",
                }
            },
        ),
    )
    assert r(GOOGLE_CALENDAR) == Check(
        REJECTED,
        "google_calendar: calendar list 403 Request had insufficient authentication scopes."
        " (PERMISSION_DENIED)",
    )


def test_a_token_answer_without_an_access_token_is_no_verdict(make: Any) -> None:
    r = make(httpx.Response(200, json={"token_type": "Bearer"}))
    check = r(GOOGLE_CALENDAR)
    assert check.outcome == UNAVAILABLE
    assert check.reason == "google_calendar: refresh 200 without an access token"


def test_a_suspended_twilio_account_is_rejected(make: Any) -> None:
    reply = httpx.Response(200, json={"sid": SID, "status": "suspended"})
    assert make(reply)(TWILIO) == Check(REJECTED, "twilio: 200 the account is suspended")


# -- restricted but valid keys ------------------------------------------------------------------


def test_a_sending_only_resend_key_is_valid(make: Any) -> None:
    restricted = httpx.Response(
        401,
        json={
            "statusCode": 401,
            "name": "restricted_api_key",
            "message": "This API key is restricted to only send emails",
        },
    )
    check = make(restricted)(RESEND)
    assert check.ok
    assert check.reason is None
    assert check.note == "sending-only key: valid, cannot list domains"


def test_an_unknown_resend_key_is_not_taken_for_a_restricted_one(make: Any) -> None:
    invalid = httpx.Response(
        400, json={"statusCode": 400, "name": "validation_error", "message": "API key is invalid"}
    )
    assert make(invalid)(RESEND) == Check(
        REJECTED, "resend: 400 API key is invalid (validation_error)"
    )


def test_an_elevenlabs_key_without_user_read_is_valid(make: Any) -> None:
    scoped = httpx.Response(
        401,
        json={
            "detail": {
                "status": "missing_permissions",
                "message": "The API key you used is missing the permission user_read.",
            }
        },
    )
    check = make(scoped)(ELEVENLABS)
    assert check.ok
    assert check.note == "restricted key: valid, no user_read permission"


# -- no verdict: rate limits, server errors, timeouts ----------------------------------------


@pytest.mark.parametrize("provider", [VAPI, TWILIO, RESEND, ELEVENLABS, GOOGLE_CALENDAR])
def test_a_429_is_retried_once_after_its_retry_after(make: Any, provider: str) -> None:
    limited = httpx.Response(429, headers={"Retry-After": "2"}, json={"message": "slow down"})
    r = make(*calls(provider, limited, success(provider)))
    assert r(provider) == Check(OK)
    assert r.sleeps == [2.0]


@pytest.mark.parametrize("provider", [VAPI, TWILIO, RESEND, ELEVENLABS, GOOGLE_CALENDAR])
def test_a_5xx_twice_is_unavailable_after_exactly_one_retry(make: Any, provider: str) -> None:
    r = make(
        *calls(
            provider,
            httpx.Response(503, text="upstream unavailable"),
            httpx.Response(502, text="<html><body>\n<h1>Bad gateway</h1>\n</body></html>"),
        )
    )
    check = r(provider)
    assert check.outcome == UNAVAILABLE
    assert check.reason is not None
    assert "502 <html><body> <h1>Bad gateway</h1> </body></html>" in check.reason
    assert len(r.sleeps) == 1
    assert 0 < r.sleeps[0] <= 1.0
    assert_clean(check)


def test_a_5xx_then_success_is_ok(make: Any) -> None:
    r = make(httpx.Response(500), success(TWILIO))
    assert r(TWILIO) == Check(OK)
    assert len(r.script.requests) == 2


def test_a_long_retry_after_is_not_waited_for(make: Any) -> None:
    r = make(httpx.Response(429, headers={"Retry-After": "60"}, json={"message": "Too many"}))
    check = r(RESEND)
    assert check == Check(UNAVAILABLE, "resend: 429 Too many (asks to retry after 60 s)")
    assert r.sleeps == []
    assert len(r.script.requests) == 1


def test_a_retry_after_date_is_honoured_when_short(make: Any) -> None:
    import email.utils
    import time

    soon = email.utils.formatdate(time.time() + 3, usegmt=True)
    r = make(httpx.Response(429, headers={"Retry-After": soon}), success(VAPI))
    assert r(VAPI).ok
    assert len(r.sleeps) == 1
    assert 0 <= r.sleeps[0] <= 4


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (httpx.ReadTimeout("timed out"), f"timed out after {CALL_TIMEOUT_S:g} s"),
        (httpx.ConnectTimeout("timed out"), f"timed out after {CALL_TIMEOUT_S:g} s"),
        (httpx.ConnectError("[Errno 111] Connection refused"), "cannot connect"),
        (httpx.RemoteProtocolError("peer closed"), "connection failed (RemoteProtocolError)"),
    ],
)
@pytest.mark.parametrize("provider", [VAPI, TWILIO, GOOGLE_CALENDAR])
def test_no_answer_is_unavailable_and_not_retried(
    make: Any, provider: str, error: Exception, reason: str
) -> None:
    r = make(*calls(provider, error))
    step = "calendar list " if provider == GOOGLE_CALENDAR else ""
    assert r(provider) == Check(UNAVAILABLE, f"{provider}: {step}{reason}")
    assert r.sleeps == []


def test_a_body_trickling_in_is_cut_off_at_the_deadline(make: Any) -> None:
    now = [0.0]

    def clock() -> float:
        return now[0]

    def trickle() -> Iterator[bytes]:
        for _ in range(100):
            now[0] += 1.0  # each chunk takes a (fake) second
            yield b"[" if now[0] == 1 else b" "

    r = make(httpx.Response(200, content=trickle()), clock=clock)
    check = r(VAPI)
    assert check == Check(UNAVAILABLE, f"vapi: timed out after {CALL_TIMEOUT_S:g} s")
    assert now[0] <= CALL_TIMEOUT_S + 2


def test_a_redirect_is_not_followed(make: Any) -> None:
    moved = httpx.Response(302, headers={"Location": "https://elsewhere.test/steal"})
    r = make(moved)
    check = r(RESEND)
    assert check.outcome == UNAVAILABLE
    assert check.reason == "resend: 302 Found"
    assert len(r.script.requests) == 1


def test_a_success_that_is_not_the_documented_json_is_no_verdict(make: Any) -> None:
    r = make(httpx.Response(200, text="<html>captive portal</html>"))
    assert r(VAPI) == Check(UNAVAILABLE, "vapi: 200 with a body that is not JSON")
    r = make(httpx.Response(200, json={"not": "a list"}))
    assert r(VAPI) == Check(UNAVAILABLE, "vapi: 200 but not a list of assistants")


def test_an_unexpected_error_is_one_line_naming_its_type(make: Any) -> None:
    r = make(RuntimeError(f"kaboom {CONFIGS[VAPI]['apiKey']}"))
    assert r(VAPI) == Check(UNAVAILABLE, "vapi: internal error (RuntimeError)")


# -- secrets never shown; long bodies cut ---------------------------------------------------------


@pytest.mark.parametrize("provider", [VAPI, TWILIO, RESEND, ELEVENLABS, GOOGLE_CALENDAR])
def test_a_body_echoing_the_secrets_is_masked(make: Any, provider: str) -> None:
    echoed = " and ".join(ALL_SECRETS)
    r = make(*calls(provider, error_body(provider, 401, f"bad credentials: {echoed}")))
    check = r(provider)
    assert check.outcome == REJECTED
    assert "(sensitive)" in (check.reason or "")
    assert_clean(check)


def test_secret_looking_fields_and_bearer_tokens_in_an_answer_are_masked(make: Any) -> None:
    body = {
        "message": "denied for Authorization: Bearer abcdefghijklmnop",
        "apiKey": "some-other-value-shown-nowhere",
    }
    check = make(httpx.Response(401, json=body))(VAPI)
    assert check.reason == "vapi: 401 denied for Authorization: (sensitive)"
    r = make(httpx.Response(401, json={"error": "x", "token": "tok-visible-nowhere"}))
    reason = r(VAPI).reason or ""
    assert "tok-visible-nowhere" not in reason


def test_an_echoed_access_token_is_masked(make: Any) -> None:
    r = make(
        token_ok(),
        httpx.Response(401, json={"error": {"message": f"token {ACCESS_TOKEN} expired"}}),
    )
    check = r(GOOGLE_CALENDAR)
    assert check.reason == "google_calendar: calendar list 401 token (sensitive) expired"


def test_a_long_message_is_cut_to_one_short_line(make: Any) -> None:
    message = "very long reason \x1b[31m\u202e " * 500
    check = make(httpx.Response(403, json={"message": message}))(VAPI)
    assert check.reason is not None
    assert len(check.reason) == REASON_LIMIT
    assert check.reason.endswith("...")
    assert "\x1b" not in check.reason
    assert "\u202e" not in check.reason
    assert_clean(check)


def test_a_huge_body_is_not_read_past_its_bound(make: Any) -> None:
    sent = [0]

    def huge() -> Iterator[bytes]:
        for _ in range(1000):  # 64 MiB if it were all read
            sent[0] += 1
            yield b"x" * 65536

    check = make(httpx.Response(500, content=huge()), httpx.Response(500, content=huge()))(VAPI)
    assert check == Check(UNAVAILABLE, "vapi: 500 (a body over 64 KiB, not shown)")
    assert sent[0] <= 4


def test_a_deeply_nested_error_body_is_one_line(make: Any) -> None:
    body = "[" * 100_000 + "]" * 100_000
    check = make(httpx.Response(400, text=body))(VAPI)
    assert check.outcome == REJECTED
    assert_clean(check)


# -- what cannot be sent ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "config", "reason"),
    [
        (VAPI, {"webhookSecret": "whsec-canary-9a2b"}, "vapi: the stored credential has no apiKey"),
        (
            TWILIO,
            {"accountSid": SID, "authToken": "tw-canary-tökén"},
            "twilio: the stored authToken has characters an HTTP header cannot carry",
        ),
        (RESEND, {"apiKey": "  "}, "resend: the stored credential has no apiKey"),
        (
            GOOGLE_CALENDAR,
            {"clientId": "c", "clientSecret": "s"},
            "google_calendar: the stored credential has no refreshToken",
        ),
        ("mailgun", {"apiKey": "x"}, "mailgun: no verification for this provider"),
    ],
)
def test_a_credential_that_cannot_be_sent_is_unreadable_and_nothing_is_sent(
    make: Any, provider: str, config: dict[str, str], reason: str
) -> None:
    r = make()
    with httpx.Client(transport=httpx.MockTransport(r.script)) as http:
        check = verify(http, provider, config, EP, sleep=r.sleeps.append)
    assert check == Check(UNREADABLE, reason)
    assert r.script.requests == []


# -- settings -----------------------------------------------------------------------------------


def test_verification_settings_have_the_real_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "RECONCILER_VERIFY_INTERVAL",
        "RECONCILER_TWILIO_BASE_URL",
        "RECONCILER_RESEND_BASE_URL",
        "RECONCILER_ELEVENLABS_BASE_URL",
        "RECONCILER_GOOGLE_OAUTH_URL",
        "RECONCILER_GOOGLE_CALENDAR_BASE_URL",
        "VAPI_BASE_URL",
    ):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings()
    assert settings.verify_interval_s == 6 * 3600
    assert Endpoints.from_settings(settings) == Endpoints()


@pytest.mark.parametrize(("text", "seconds"), [("6h", 21600), ("90m", 5400), ("0", 0), ("45", 45)])
def test_the_verify_interval_is_a_duration(
    monkeypatch: pytest.MonkeyPatch, text: str, seconds: float
) -> None:
    monkeypatch.setenv("RECONCILER_VERIFY_INTERVAL", text)
    assert load_settings().verify_interval_s == seconds


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("RECONCILER_VERIFY_INTERVAL", "often"),
        ("RECONCILER_VERIFY_INTERVAL", "-1"),
        ("RECONCILER_TWILIO_BASE_URL", "https://user:hunter2@api.twilio.com"),
        ("RECONCILER_GOOGLE_OAUTH_URL", "ftp://oauth2.googleapis.com/token"),
    ],
)
def test_a_bad_verification_setting_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert variable in str(err.value)
    assert "hunter2" not in str(err.value)


def test_base_urls_come_from_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECONCILER_TWILIO_BASE_URL", "http://127.0.0.1:9/")
    monkeypatch.setenv("RECONCILER_GOOGLE_OAUTH_URL", "http://127.0.0.1:9/o/token")
    ep = Endpoints.from_settings(load_settings())
    assert ep.twilio == "http://127.0.0.1:9"
    assert ep.google_oauth == "http://127.0.0.1:9/o/token"


def test_the_check_table_covers_every_provider() -> None:
    from reconciler.providers.verify import CHECKS, PROVIDERS
    from reconciler.spec.models import PROVIDERS as SPEC_PROVIDERS

    assert set(CHECKS) == set(PROVIDERS) == set(SPEC_PROVIDERS.values())
    assert json.dumps(sorted(PROVIDERS))  # plain names, usable as metric labels
