"""Local stubs of the providers' verification calls, served by the Vapi emulator under
`/_stubs/` so that a local trial (`RECONCILER_PROVIDER_STUBS=http://127.0.0.1:8787`) sends
nothing to a third party. Each answers the call `reconciler.providers.verify` makes, in the
shape its provider documents (the same shapes the tests stub):

- Twilio, `GET /_stubs/twilio/2010-04-01/Accounts/{sid}.json`, basic auth SID:token:
  `{"sid", "status": "active"}`; else 401 `{"code": 20003, "message": "Authenticate",
  "more_info", "status": 401}`;
- Resend, `GET /_stubs/resend/domains`, Bearer key: `{"object": "list", "data": []}`; else 400
  `{"statusCode": 400, "name": "validation_error", "message": "API key is invalid"}`;
- ElevenLabs, `GET /_stubs/elevenlabs/v1/user`, `xi-api-key`: `{"subscription": {...}}`; else 401
  `{"detail": {"status": "invalid_api_key", "message": "Invalid API key"}}`;
- Google, `POST /_stubs/google/token` (form, grant_type=refresh_token with client_id,
  client_secret and refresh_token): `{"access_token", "expires_in", "token_type"}`; else 400
  `{"error": "invalid_grant", "error_description"}`; then
  `GET /_stubs/google/calendar/v3/users/me/calendarList` with an access token it issued:
  `{"kind": "calendar#calendarList", "items": [...]}`; else 401 `{"error": {"code", "message",
  "status": "UNAUTHENTICATED"}}`.

A credential is refused when it is empty or starts with one of the emulator's rejected prefixes
(`invalid` by default), as the emulator refuses a Vapi key: a way to try a failing check.
Every stub request is counted in `/_emulator/stats` under its route (`GET /_stubs/twilio`, ...).
Standalone: stdlib and starlette only.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import secrets
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

PREFIX = "/_stubs"
STUB_KEYS = (
    "GET /_stubs/twilio",
    "GET /_stubs/twilio/IncomingPhoneNumbers",
    "GET /_stubs/resend",
    "GET /_stubs/elevenlabs",
    "POST /_stubs/google/token",
    "GET /_stubs/google/calendar",
)
MAX_ISSUED = 10_000
"""Google access tokens remembered (the oldest are forgotten past it)."""


class ProviderStubs:
    def __init__(self, rejected_prefixes: Sequence[str], count: Callable[[str], None]) -> None:
        self.rejected_prefixes = tuple(rejected_prefixes)
        self.count = count
        self.issued: dict[str, None] = {}  # Google access tokens, in issue order
        self.numbers: dict[str, str] = {}  # Twilio: E.164 number -> the account SID owning it
        self.outage: tuple[int, int | None] | None = None  # Twilio listing: (status, times)

    def reset(self) -> None:
        self.issued.clear()
        self.numbers.clear()
        self.outage = None

    def accepts(self, value: str | None) -> bool:
        return bool(value) and not str(value).startswith(self.rejected_prefixes)

    async def twilio(self, request: Request) -> Response:
        sid = request.path_params["sid"]
        user, token = _basic(request)
        if user == sid and self.accepts(sid) and self.accepts(token):
            return JSONResponse({"sid": sid, "status": "active", "type": "Full"})
        return JSONResponse(
            {
                "code": 20003,
                "message": "Authenticate",
                "more_info": "https://www.twilio.com/docs/errors/20003",
                "status": 401,
            },
            401,
        )

    async def twilio_numbers(self, request: Request) -> Response:
        sid = request.path_params["sid"]
        if self.outage is not None:
            status, times = self.outage
            if times is not None:
                self.outage = (status, times - 1) if times > 1 else None
            return JSONResponse(
                {
                    "code": 20500,
                    "message": "Internal Server Error",
                    "more_info": "https://www.twilio.com/docs/errors/20500",
                    "status": status,
                },
                status,
            )
        user, token = _basic(request)
        if not (user == sid and self.accepts(sid) and self.accepts(token)):
            return await self.twilio(request)  # the same 401
        wanted = request.query_params.get("PhoneNumber", "")
        listed = [
            {
                "sid": "PN" + hashlib.sha256(number.encode()).hexdigest()[:32],
                "account_sid": sid,
                "phone_number": number,
                "friendly_name": _friendly(number),
                "status": "in-use",
            }
            for number, owner in sorted(self.numbers.items())
            if owner == sid and wanted in number
        ]
        return JSONResponse(
            {
                "incoming_phone_numbers": listed,
                "page": 0,
                "page_size": 50,
                "start": 0,
                "end": max(0, len(listed) - 1),
                "first_page_uri": str(request.url.path),
                "next_page_uri": None,
                "previous_page_uri": None,
                "uri": str(request.url.path),
            }
        )

    async def register_number(self, request: Request) -> Response:
        """`POST /_emulator/twilio/numbers` `{"accountSid", "phoneNumber"}` (admin)."""
        data = await _json_object(request)
        sid, number = data.get("accountSid"), data.get("phoneNumber")
        if not (isinstance(sid, str) and sid and isinstance(number, str) and number):
            return JSONResponse({"message": "accountSid and phoneNumber are needed"}, 400)
        self.numbers[number] = sid
        return JSONResponse({"phoneNumber": number, "registered": True}, 201)

    async def twilio_outage(self, request: Request) -> Response:
        """`POST /_emulator/twilio/outage` `{"status": 503, "times": 1}` (admin)."""
        data = await _json_object(request)
        status, times = data.get("status"), data.get("times", 1)
        if status is None:
            self.outage = None
        elif (
            not isinstance(status, int)
            or not 400 <= status <= 599
            or not (times is None or (isinstance(times, int) and times >= 1))
        ):
            return JSONResponse({"message": "status 400..599 (or null), times >= 1 or null"}, 400)
        else:
            self.outage = (status, times)
        return JSONResponse({"status": status, "times": times}, 201)

    async def resend(self, request: Request) -> Response:
        if self.accepts(_bearer(request)):
            return JSONResponse({"object": "list", "data": []})
        return JSONResponse(
            {"statusCode": 400, "name": "validation_error", "message": "API key is invalid"}, 400
        )

    async def elevenlabs(self, request: Request) -> Response:
        if self.accepts(request.headers.get("xi-api-key")):
            return JSONResponse({"subscription": {"tier": "free"}, "is_new_user": False})
        return JSONResponse(
            {"detail": {"status": "invalid_api_key", "message": "Invalid API key"}}, 401
        )

    async def google_token(self, request: Request) -> Response:
        form = {
            k: v[0] for k, v in parse_qs((await request.body()).decode("utf-8", "replace")).items()
        }
        if form.get("grant_type") == "refresh_token" and all(
            self.accepts(form.get(name)) for name in ("client_id", "client_secret", "refresh_token")
        ):
            access = f"ya29.stub-{secrets.token_hex(16)}"
            self.issued[access] = None
            while len(self.issued) > MAX_ISSUED:
                del self.issued[next(iter(self.issued))]
            return JSONResponse(
                {"access_token": access, "expires_in": 3599, "token_type": "Bearer"}
            )
        return JSONResponse(
            {"error": "invalid_grant", "error_description": "Token has been expired or revoked."},
            400,
        )

    async def google_calendars(self, request: Request) -> Response:
        if _bearer(request) in self.issued:
            return JSONResponse(
                {"kind": "calendar#calendarList", "items": [{"id": "primary", "primary": True}]}
            )
        return JSONResponse(
            {"error": {"code": 401, "message": "Invalid Credentials", "status": "UNAUTHENTICATED"}},
            401,
        )

    def routes(self) -> list[Route]:
        handlers: list[tuple[str, str, str, Callable[[Request], Awaitable[Response]]]] = [
            ("GET", "/twilio/2010-04-01/Accounts/{sid}.json", STUB_KEYS[0], self.twilio),
            (
                "GET",
                "/twilio/2010-04-01/Accounts/{sid}/IncomingPhoneNumbers.json",
                STUB_KEYS[1],
                self.twilio_numbers,
            ),
            ("GET", "/resend/domains", STUB_KEYS[2], self.resend),
            ("GET", "/elevenlabs/v1/user", STUB_KEYS[3], self.elevenlabs),
            ("POST", "/google/token", STUB_KEYS[4], self.google_token),
            (
                "GET",
                "/google/calendar/v3/users/me/calendarList",
                STUB_KEYS[5],
                self.google_calendars,
            ),
        ]
        admin = [
            Route("/_emulator/twilio/numbers", self.register_number, methods=["POST"]),
            Route("/_emulator/twilio/outage", self.twilio_outage, methods=["POST"]),
        ]
        return [
            Route(PREFIX + path, self._counted(key, handler), methods=[method])
            for method, path, key, handler in handlers
        ] + admin

    def _counted(
        self, key: str, handler: Callable[[Request], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            self.count(key)
            return await handler(request)

        return endpoint


def _friendly(number: str) -> str:
    """Twilio's default friendly name of a number: `(415) 555-0100` for a NANP number."""
    digits = number.removeprefix("+1")
    if number.startswith("+1") and len(digits) == 10 and digits.isdigit():
        return f"({digits[:3]}) {digits[3:6]}-{digits[6:]}"
    return number


async def _json_object(request: Request) -> dict[str, Any]:
    try:
        data = json.loads(await request.body())
    except ValueError:  # UnicodeDecodeError included
        return {}
    return data if isinstance(data, dict) else {}


def _bearer(request: Request) -> str | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def _basic(request: Request) -> tuple[str, str]:
    scheme, _, blob = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return "", ""
    try:
        user, _, password = base64.b64decode(blob.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return "", ""
    return user, password
