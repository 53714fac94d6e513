"""One cheap, read-only, documented call per provider: does this stored credential still work?

- `vapi`: `GET {VAPI_BASE_URL}/assistant?limit=1`, Bearer key;
- `twilio`: `GET {twilio}/2010-04-01/Accounts/{AccountSid}.json`, basic auth SID:token;
- `resend`: `GET {resend}/domains`, Bearer key;
- `elevenlabs`: `GET {elevenlabs}/v1/user`, header `xi-api-key`;
- `google_calendar`: `POST {oauth}` (grant_type=refresh_token, form-encoded), then
  `GET {calendar}/users/me/calendarList?maxResults=1` with the access token (held in memory for
  that one call: never stored, logged or shown).

Outcomes: `ok`; `rejected` (the provider answered and refused: 4xx, or an account that is not
active); `unavailable` (no verdict: 429, 5xx, a timeout, no connection, a redirect, an answer
that is not the documented JSON); `unreadable` (the stored credential cannot be used as it is:
a field missing, a value no HTTP header can carry). A key that authenticates but may not read
what we ask (a Resend sending-only key, an ElevenLabs key without `user_read`) is `ok`, with a
note: it is valid, and its restriction is what it was issued for.

Waits: each exchange at most `CALL_TIMEOUT_S` (connect `CONNECT_TIMEOUT_S`) including its
body; a 429 or 5xx is retried once, after its Retry-After when that is at most
`MAX_RETRY_AFTER_S` (else not retried), or after `DEFAULT_RETRY_S`. Timeouts and lost
connections are not retried (the next verification is the retry). Redirects are never
followed: a credential goes only to the configured host.

A reason is one line, `"<provider>: <status> <provider's message>"`, at most `REASON_LIMIT`
characters: the message is read from the provider's documented error shape, then masked (the
org's secrets, the Google access token, secret-looking keys and bearer tokens), escaped and
cut. Nothing we send (URL, headers, body) is ever quoted.
"""

from __future__ import annotations

import email.utils
import json
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx

from reconciler.bounded import ACCEPT_ENCODING, UndecodableAnswer, read_at_most
from reconciler.redact import printable, redact_text, redact_tree
from reconciler.sharedhttp import SharedClient
from reconciler.tls import ssl_context
from reconciler.twilio import API as TWILIO_API
from reconciler.twilio import account_url, mask_account_in_logs

if TYPE_CHECKING:
    from reconciler.config import Settings

VAPI, TWILIO, GOOGLE_CALENDAR, RESEND, ELEVENLABS = (
    "vapi",
    "twilio",
    "google_calendar",
    "resend",
    "elevenlabs",
)
PROVIDERS = (VAPI, TWILIO, GOOGLE_CALENDAR, RESEND, ELEVENLABS)
"""Postgres provider names, in the order a report lists them."""

OK, REJECTED, UNAVAILABLE, UNREADABLE = "ok", "rejected", "unavailable", "unreadable"
OUTCOMES = (OK, REJECTED, UNAVAILABLE, UNREADABLE)

CONNECT_TIMEOUT_S = 5.0
CALL_TIMEOUT_S = 10.0
"""One exchange, from connecting to the last byte of the answer we read."""
MAX_RETRY_AFTER_S = 5.0
"""A 429/5xx whose Retry-After asks for longer is not retried (and says so)."""
DEFAULT_RETRY_S = 1.0
BODY_BYTES = 1024 * 1024
"""Of a 2xx answer only this much is read (we need its shape, or Google's token)."""
ERROR_BODY_BYTES = 64 * 1024
"""Of an error answer only this much is read, for its message."""
REASON_LIMIT = 200
USER_AGENT = "vapi-reconciler/0.1 (credential verification)"


@dataclass(frozen=True)
class Check:
    """The verdict on one credential."""

    outcome: str  # one of OUTCOMES
    reason: str | None = None  # one line, masked; None when ok
    note: str | None = None  # an ok with a caveat (a restricted key)

    @property
    def ok(self) -> bool:
        return self.outcome == OK


@dataclass(frozen=True)
class Endpoints:
    """Where each provider is reached: the real APIs by default, local stubs in tests."""

    vapi: str = "https://api.vapi.ai"
    twilio: str = TWILIO_API
    resend: str = "https://api.resend.com"
    elevenlabs: str = "https://api.elevenlabs.io"
    google_oauth: str = "https://oauth2.googleapis.com/token"  # the token URL itself
    google_calendar: str = "https://www.googleapis.com/calendar/v3"

    @classmethod
    def from_settings(cls, settings: Settings) -> Endpoints:
        return cls(
            vapi=settings.vapi_base_url.rstrip("/"),
            twilio=settings.twilio_base_url.rstrip("/"),
            resend=settings.resend_base_url.rstrip("/"),
            elevenlabs=settings.elevenlabs_base_url.rstrip("/"),
            google_oauth=settings.google_oauth_url,
            google_calendar=settings.google_calendar_base_url.rstrip("/"),
        )


def http_client(
    *, max_connections: int = 16, transport: httpx.BaseTransport | None = None
) -> httpx.Client:
    """One pooled client for every provider and org: no cookies kept (a cookie of one tenant
    must never ride on another's request), no redirects followed, bounded waits. `transport`
    replaces the network (tests)."""
    mask_account_in_logs()
    return SharedClient(
        transport=transport,
        follow_redirects=False,
        verify=ssl_context(),  # one per process (`reconciler.tls`)
        timeout=httpx.Timeout(CALL_TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
        limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=16),
        headers={
            "User-Agent": USER_AGENT,
            "Accept": "application/json",
            "Accept-Encoding": ACCEPT_ENCODING,
        },
    )


class _Stop(Exception):
    """Ends a check early with its verdict (internal to this module)."""

    def __init__(self, check: Check) -> None:
        super().__init__(check.reason or check.outcome)
        self.check = check


@dataclass(frozen=True)
class _Answer:
    status: int
    headers: httpx.Headers
    body: bytes
    cut: bool  # the body was longer than what was read


@dataclass
class Caller:
    """The calls of one check: bounded waits, at most one retry, one-line masked reasons.

    `known`: every secret value of the org (masked wherever an answer we quote holds one); a
    secret learnt during the check (Google's access token) is added to it."""

    http: httpx.Client
    provider: str
    known: list[str] = field(default_factory=list)
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic

    # -- one exchange, with its single retry -------------------------------------------------

    def call(
        self,
        method: str,
        url: str,
        *,
        step: str = "",
        headers: dict[str, str] | None = None,
        params: dict[str, Any] | None = None,
        data: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
    ) -> _Answer:
        """The provider's answer, whatever its status; a 429 or 5xx is tried once more when
        the wait it asks for is short. No answer at all ends the check (`unavailable`)."""
        for attempt in range(2):
            answer = self._exchange(method, url, step, headers, params, data, auth)
            if attempt or not (answer.status == 429 or answer.status >= 500):
                return answer
            wait = _retry_after(answer.headers.get("Retry-After"))
            if wait is None:
                wait = random.uniform(DEFAULT_RETRY_S / 2, DEFAULT_RETRY_S)  # noqa: S311 - jitter
            if wait > MAX_RETRY_AFTER_S:
                return answer  # reported with the wait it asked for
            self.sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover

    def _exchange(
        self,
        method: str,
        url: str,
        step: str,
        headers: dict[str, str] | None,
        params: dict[str, Any] | None,
        data: dict[str, str] | None,
        auth: tuple[str, str] | None,
    ) -> _Answer:
        deadline = self.clock() + CALL_TIMEOUT_S
        try:
            with self.http.stream(
                method,
                url,
                headers=headers,
                params=params,
                data=data,
                auth=auth,
                timeout=httpx.Timeout(CALL_TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
            ) as resp:
                limit = BODY_BYTES if resp.is_success else ERROR_BODY_BYTES

                def in_time() -> None:
                    if self.clock() > deadline:  # a body trickling in: bounded all the same
                        raise httpx.ReadTimeout("the answer took too long")

                body, cut = read_at_most(resp, limit, each=in_time)
                return _Answer(resp.status_code, resp.headers, body, cut)
        except UndecodableAnswer:
            raise _Stop(self._check(UNAVAILABLE, step, "unreadable answer (encoding)")) from None
        except httpx.TimeoutException:
            reason = f"timed out after {CALL_TIMEOUT_S:g} s"
            raise _Stop(self._check(UNAVAILABLE, step, reason)) from None
        except httpx.ConnectError:
            raise _Stop(self._check(UNAVAILABLE, step, "cannot connect")) from None
        except httpx.TransportError as exc:
            reason = f"connection failed ({type(exc).__name__})"
            raise _Stop(self._check(UNAVAILABLE, step, reason)) from None
        except httpx.HTTPError as exc:  # e.g. a body that does not decompress
            reason = f"unreadable answer ({type(exc).__name__})"
            raise _Stop(self._check(UNAVAILABLE, step, reason)) from None

    # -- reading answers -----------------------------------------------------------------------

    def expect_success(self, answer: _Answer, step: str = "") -> None:
        """Ends the check unless the answer is a 2xx: a refusal (`rejected`), or no verdict
        (`unavailable`: 429, 5xx, anything else that is not a refusal)."""
        if 200 <= answer.status < 300:
            return
        raise _Stop(self.failure(answer, step))

    def failure(self, answer: _Answer, step: str = "") -> Check:
        code = answer.status
        text = f"{code} {self.message(answer)}"
        if code == 429 or code >= 500:
            wait = _retry_after(answer.headers.get("Retry-After"))
            if wait is not None and wait > MAX_RETRY_AFTER_S:
                text += f" (asks to retry after {_seconds(wait)} s)"
            return self._check(UNAVAILABLE, step, text)
        return self._check(REJECTED if 400 <= code < 500 else UNAVAILABLE, step, text)

    def message(self, answer: _Answer) -> str:
        """The provider's message in an error answer (its documented shape), masked."""
        if answer.cut:
            return f"(a body over {ERROR_BODY_BYTES // 1024} KiB, not shown)"
        text = answer.body.decode("utf-8", errors="replace").strip()
        try:
            parsed = json.loads(text)
        except RecursionError:
            text = "(a JSON body nested too deeply to show)"
        except ValueError:
            pass  # not JSON: the text itself
        else:
            # secret-looking keys masked first, so their values never reach the text
            text = _json_message(redact_tree(parsed))
        text = " ".join(text.split())
        return text or (httpx.codes.get_reason_phrase(answer.status) or "(no message)")

    def json(self, answer: _Answer, step: str = "") -> Any:
        """The JSON of a 2xx answer; anything else ends the check (`unavailable`: whatever
        answered, it was not the provider's API as documented)."""
        if answer.cut:
            raise _Stop(self._check(UNAVAILABLE, step, f"{answer.status} with a body too large"))
        try:
            return json.loads(answer.body.decode("utf-8-sig"))
        except (ValueError, RecursionError):
            raise _Stop(
                self._check(UNAVAILABLE, step, f"{answer.status} with a body that is not JSON")
            ) from None

    def _check(self, outcome: str, step: str, text: str) -> Check:
        return Check(outcome, self.reason(f"{step} {text}" if step else text))

    def reason(self, text: str) -> str:
        """`<provider>: <text>`, masked, on one line, at most REASON_LIMIT characters."""
        masked = redact_text(text, known=self.known)
        return printable(f"{self.provider}: {masked}", REASON_LIMIT)


def _coded(message: object, code: object) -> str:
    """`message (code)`: the provider's words first, its machine-readable code after. (Not
    `code: message`, which reads as a `key: value` pair and would be masked under a code such
    as `invalid_api_key`.)"""
    text = message.strip() if isinstance(message, str) else ""
    name = code.strip() if isinstance(code, str) else ""
    if text and name:
        return f"{text} ({name})"
    return text or name


def _json_message(body: Any) -> str:
    """The message in a provider's JSON error, by the shapes they document:

    - Google APIs: `{"error": {"code", "message", "status"}}`
    - OAuth token endpoint: `{"error": "invalid_grant", "error_description": "..."}`
    - ElevenLabs: `{"detail": {"status": "invalid_api_key", "message": "..."}}` (or a string,
      or FastAPI's list of `{"msg": ...}`)
    - Resend: `{"statusCode", "name": "validation_error", "message"}`
    - Twilio: `{"code": 20003, "message": "Authenticate", "more_info", "status"}`
    - Vapi (NestJS): `{"message": "..." or [...], "error": "Unauthorized", "statusCode"}`
    """
    if not isinstance(body, dict):
        return json.dumps(body, ensure_ascii=False)
    error, detail, message = body.get("error"), body.get("detail"), body.get("message")
    if isinstance(error, dict):
        return _coded(error.get("message"), error.get("status")) or json.dumps(error)
    if isinstance(error, str) and "error_description" in body:
        return _coded(body.get("error_description"), error)
    if isinstance(detail, dict):
        return _coded(detail.get("message"), detail.get("status")) or json.dumps(detail)
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list) and detail:
        return "; ".join(
            str(d.get("msg")) if isinstance(d, dict) and "msg" in d else json.dumps(d)
            for d in detail
        )
    if isinstance(message, list):
        message = "; ".join(m if isinstance(m, str) else json.dumps(m) for m in message)
    if isinstance(message, str) and message.strip():
        code = body.get("code")
        if isinstance(code, int) and "more_info" in body:  # Twilio's error code
            return f"{message.strip()} (error {code})"
        return _coded(message, body.get("name"))
    if isinstance(error, str):
        return error
    return json.dumps(body, ensure_ascii=False)


def _error_name(answer: _Answer) -> str | None:
    """The machine-readable error name of a small JSON error: Resend's `name`, ElevenLabs'
    `detail.status`."""
    if answer.cut:
        return None
    try:
        body = json.loads(answer.body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(body, dict):
        return None
    detail = body.get("detail")
    name = detail.get("status") if isinstance(detail, dict) else body.get("name")
    return name if isinstance(name, str) else None


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), or None."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, OverflowError, IndexError):
            return None
    return max(0.0, seconds) if seconds == seconds else None  # NaN: unreadable


def _seconds(value: float) -> str:
    return f"{value:.3g}" if value >= 1e6 else f"{value:.0f}"


def _field(config: dict[str, Any], name: str, provider: str) -> str:
    """A string field of a stored config that can travel in an HTTP header (or a basic-auth
    pair): printable ASCII, not empty. Anything else is `unreadable`, named by field only."""
    value = config.get(name)
    if not isinstance(value, str) or not value.strip():
        raise _Stop(Check(UNREADABLE, f"{provider}: the stored credential has no {name}"))
    if not (value.isascii() and value.isprintable()):
        raise _Stop(
            Check(
                UNREADABLE,
                f"{provider}: the stored {name} has characters an HTTP header cannot carry",
            )
        )
    return value


# -- one function per provider ------------------------------------------------------------------


def check_vapi(caller: Caller, config: dict[str, Any], ep: Endpoints) -> Check:
    key = _field(config, "apiKey", VAPI)
    # List Assistants, one item: https://docs.vapi.ai/api-reference/assistants/list
    answer = caller.call("GET", f"{ep.vapi}/assistant", params={"limit": 1}, headers=_bearer(key))
    caller.expect_success(answer)
    if not isinstance(caller.json(answer), list):
        return Check(UNAVAILABLE, caller.reason(f"{answer.status} but not a list of assistants"))
    return Check(OK)


def check_twilio(caller: Caller, config: dict[str, Any], ep: Endpoints) -> Check:
    sid = _field(config, "accountSid", TWILIO)
    token = _field(config, "authToken", TWILIO)
    # Fetch an Account resource, HTTP basic auth AccountSid:AuthToken:
    # https://www.twilio.com/docs/iam/api/account#fetch-an-account-resource
    # (a refusal is error 20003: https://www.twilio.com/docs/api/errors/20003)
    url = account_url(ep.twilio, sid)
    answer = caller.call("GET", url, auth=(sid, token))
    caller.expect_success(answer)
    account = caller.json(answer)
    if not isinstance(account, dict):
        return Check(UNAVAILABLE, caller.reason(f"{answer.status} but not an account"))
    status = account.get("status")
    if isinstance(status, str) and status != "active":  # suspended or closed: calls fail
        return Check(REJECTED, caller.reason(f"{answer.status} the account is {status}"))
    return Check(OK)


def check_resend(caller: Caller, config: dict[str, Any], ep: Endpoints) -> Check:
    key = _field(config, "apiKey", RESEND)
    # List Domains: https://resend.com/docs/api-reference/domains/list-domains
    answer = caller.call("GET", f"{ep.resend}/domains", headers=_bearer(key))
    if answer.status == 401 and _error_name(answer) == "restricted_api_key":
        # "This API key is restricted to only send emails" (401 restricted_api_key,
        # https://resend.com/docs/api-reference/errors): Resend knows the key, and sending is
        # all this org's key is for. An unknown key is a different error (validation_error /
        # invalid_api_key), so this is a valid key: ok, noted.
        return Check(OK, note="sending-only key: valid, cannot list domains")
    caller.expect_success(answer)
    caller.json(answer)
    return Check(OK)


def check_elevenlabs(caller: Caller, config: dict[str, Any], ep: Endpoints) -> Check:
    key = _field(config, "apiKey", ELEVENLABS)
    # Get user: https://elevenlabs.io/docs/api-reference/user/get (header xi-api-key)
    answer = caller.call("GET", f"{ep.elevenlabs}/v1/user", headers={"xi-api-key": key})
    if answer.status in (401, 403) and _error_name(answer) == "missing_permissions":
        # a key scoped without `user_read` (e.g. text-to-speech only): it authenticated
        return Check(OK, note="restricted key: valid, no user_read permission")
    caller.expect_success(answer)
    caller.json(answer)
    return Check(OK)


def check_google_calendar(caller: Caller, config: dict[str, Any], ep: Endpoints) -> Check:
    client_id = _field(config, "clientId", GOOGLE_CALENDAR)
    client_secret = _field(config, "clientSecret", GOOGLE_CALENDAR)
    refresh_token = _field(config, "refreshToken", GOOGLE_CALENDAR)
    # Refreshing an access token (form-encoded POST to the token endpoint):
    # https://developers.google.com/identity/protocols/oauth2/web-server#offline
    step = "refresh"
    answer = caller.call(
        "POST",
        ep.google_oauth,
        step=step,
        data={
            "grant_type": "refresh_token",
            "client_id": client_id,
            "client_secret": client_secret,
            "refresh_token": refresh_token,
        },
    )
    caller.expect_success(answer, step)
    grant = caller.json(answer, step)
    access = grant.get("access_token") if isinstance(grant, dict) else None
    if not isinstance(access, str) or not access or not (access.isascii() and access.isprintable()):
        return Check(UNAVAILABLE, caller.reason(f"{step} {answer.status} without an access token"))
    caller.known.append(access)  # kept in this call only: never stored, logged or shown
    # CalendarList: list, one entry:
    # https://developers.google.com/calendar/api/v3/reference/calendarList/list
    step = "calendar list"
    answer = caller.call(
        "GET",
        f"{ep.google_calendar}/users/me/calendarList",
        step=step,
        params={"maxResults": 1},
        headers=_bearer(access),
    )
    caller.expect_success(answer, step)
    caller.json(answer, step)
    return Check(OK)


Checker = Callable[[Caller, dict[str, Any], Endpoints], Check]
CHECKS: dict[str, Checker] = {
    VAPI: check_vapi,
    TWILIO: check_twilio,
    RESEND: check_resend,
    ELEVENLABS: check_elevenlabs,
    GOOGLE_CALENDAR: check_google_calendar,
}


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def secret_values(configs: Iterable[dict[str, Any]]) -> list[str]:
    """Every string value of these decrypted configs: what a reason must never show."""
    return [v for config in configs for v in config.values() if isinstance(v, str) and v]


def verify(
    http: httpx.Client,
    provider: str,
    config: dict[str, Any],
    endpoints: Endpoints,
    *,
    known: Iterable[str] = (),
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Check:
    """The verdict on one decrypted credential. Never raises: an unexpected error is an
    `unavailable` line naming its type only."""
    check = CHECKS.get(provider)
    if check is None:
        return Check(UNREADABLE, printable(f"{provider}: no verification for this provider", 200))
    caller = Caller(http, provider, [*known, *secret_values([config])], sleep=sleep, clock=clock)
    try:
        return check(caller, config, endpoints)
    except _Stop as stop:
        return stop.check
    except Exception as exc:  # a bug or a library surprise: one line, never its text
        return Check(UNAVAILABLE, f"{provider}: internal error ({type(exc).__name__})")
