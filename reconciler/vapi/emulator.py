"""A local emulator of Vapi's API for assistants, phone numbers and tools, for tests,
benchmarks and users' CI.

It behaves like `https://api.vapi.ai` for `/assistant`: one account per bearer token (isolated:
foreign ids answer 404; `POST /_emulator/keys` gives an account more tokens), 201 on create, a
bare JSON array newest first on list (`limit` default 100, max 1000, `createdAt*`/`updatedAt*`
filters), PATCH replacing each named top-level field wholesale (`null` clears it), and
NestJS-shaped errors. Bodies are validated against the CreateAssistantDTO / UpdateAssistantDTO
trees of Vapi's OpenAPI document (`assistant_schema.json`, see `emulator_schema.py`).

Phone numbers and tools behave the same way, per account, from the table `KINDS` (a new kind is
a few lines there): `/phone-number` and `/tool` (create, v1 list, get, PATCH, delete) and
`/v2/phone-number`, pages of `{"results", "metadata": {"itemsPerPage", "totalItems",
"currentPage", "totalPages", "hasNextPage", "sortOrder"}}` with `page` (from 1), `limit` (default
100, max 1000), `search` (partial, case-insensitive, over name, number and SIP URI),
`sortOrder` (`DESC` default) and the date filters. Their bodies are validated with `jsonschema`
against the request schemas of Vapi's OpenAPI document (`openapi_kinds.json`, vendored by
scripts/vendor_openapi.py): the member of the `oneOf` is chosen by `provider` (numbers) or
`type` (tools), on a PATCH by the stored record's (a PATCH cannot change it), and unknown
properties are refused as Vapi's NestJS pipes refuse them. The handoff tool is not vendored
(400). Decisions where no source settles the behaviour, each the stricter case for a client:

- a second import of a number already in the account gives a second record (the document
  declares no uniqueness; nothing but the client's discipline prevents duplicates);
- Twilio's `twilioAuthToken` and `twilioApiSecret` are stored but never answered (the document
  lists them as optional answer fields; a client must not rely on reading a secret back);
- an assistant's dynamic credentials (`credentials`) are stored whole but answered without their
  secret values (`DYNAMIC_CREDENTIAL_SECRETS`: the properties of the `Create*CredentialDTO`s
  that the document describes as "This is not returned in the API."), `provider`, `name` and
  the rest kept;
- a `vapi` number created without `sipUri` gets a made-up number `+1<area code or 555><7 digits>`;
- answers add `status: "active"` to phone numbers; `normalise` applies to assistants only.

Numbers behave as in Node.js, which Vapi (a NestJS service) runs on, so that the reconciler's
tests see what a real Vapi does to numbers that do not survive a round trip through a double:
every JSON number in a request body is parsed as an IEEE double (9007199254740993 is stored as
9007199254740992; `1e400` as Infinity, and `NaN`/`Infinity` literals are invalid JSON), and every
number in a Vapi route's answer is written as JavaScript's `JSON.stringify` writes it (`1.0` as
`1`, `2.50` as `2.5`, `1e21` as `1e+21`, `1e-7` as `1e-7`, `0.00001` as `0.00001`, a non-finite
number as `null`). Stored assistants keep the doubles, so GET, list and PATCH show the same
numbers. `create_app(js_numbers=False)` keeps Python's `json` behaviour instead (the admin API
always uses it).

`normalise=True` (off by default; `--normalise` on the command line) stores and answers
assistants the way Vapi's answers look, so that a client that would PATCH every run because of
what Vapi adds or reorders (a perpetual diff) shows it in tests:

- server defaults filled in (`SERVER_DEFAULTS` in `emulator_schema.py`, each with its source):
  on create, `firstMessageInterruptionsEnabled: false`, `firstMessageMode:
  "assistant-speaks-first"` and `maxDurationSeconds: 600` when the body leaves them out; and
  whenever a create or a PATCH sets `voice`, `transcriber`, `model` or `server`, the sub-field
  defaults that object leaves out: `voice.cachingEnabled: true` (every provider), provider ones
  such as `voice.speed: 1` (vapi) or `transcriber.mipOptOut: false` (deepgram),
  `model.maxTokens: 250`, `server.timeoutSeconds: 20`. A value the body gives always wins; a
  field sent as null stays unset, and a PATCH never puts a default back;
- `isServerUrlSecretSet: false` added, the computed field `vapi-api.md` says GET returns (a body
  that sends it back is rejected, as by Vapi);
- top-level keys in the order of Vapi's published answers (`id, orgId, name, voice, createdAt,
  updatedAt, model, firstMessage, ...`, `isServerUrlSecretSet` last) and nested keys in Postgres
  jsonb order (shorter first, then bytewise: `{"voiceId", "provider"}`), not the request's order.

Numbers are normalised by `js_numbers` in either mode. Nothing is masked: no source says Vapi
masks a field of an assistant.

Under `/_stubs/` it also answers the credential checks of Twilio, Resend, ElevenLabs and
Google (`stubs.py`), for `RECONCILER_PROVIDER_STUBS`: a local trial that reaches no third party.

An admin API (no auth) under `/_emulator/`: `GET stats`, `GET accounts`, `POST keys`,
`POST reset`, and `GET/POST/DELETE faults`; the Twilio stub's `POST twilio/numbers` and
`POST twilio/outage` (`stubs.py`).

- `GET stats`: `{"requests": {<"METHOD /route">: count}, "assistants_total",
  "phone_numbers_total", "tools_total"}` (records in all accounts).
- `GET accounts`: one entry per account, keyed by the fingerprint (`fingerprint()`) of the first
  token that reached it: `{"orgId", "assistants": <count>, "keys": [<fingerprint of each token>]}`.
- `POST keys` with `{"token": <a token>, "new_token": <another token>}`: a second private key for
  one account, as a real Vapi org can have several. `new_token` then authenticates as the same
  account as `token` (same `orgId`, same assistants); the account of `token` is created if that
  token was never used. Answers 201 `{"orgId", "account": <the account's fingerprint>}` (also
  when `new_token` already reaches that account); 400 (NestJS-shaped) when the body is not a JSON
  object, has other properties, or a field is not a non-empty string without surrounding
  whitespace, or starts with a rejected prefix (it could never authenticate); 409 when
  `new_token` already belongs to a different account (accounts are never merged).
- `POST reset`: forget every account (with its records of every kind), key, fault and request
  count.
- `GET/POST/DELETE faults`: list, add, clear faults.

A fault is
`{"method", "path": a route ("/assistant", "/v2/phone-number", "/tool/{id}": any id) or a
concrete "/tool/<id>", "mode": see below,
"status": 500, "times": 1 (null: forever), "delay_ms": 0, "retry_after": "0" (default for 429;
null: no header), "body": <optional JSON to answer instead of the NestJS error>}`; the first
matching fault applies, and each match uses up one of its `times`. `status` must be a known HTTP
status from 400 to 599; `times` and `delay_ms` must be integers (not booleans). Modes:

- `error`: wait `delay_ms`, then answer `status` without doing any work.
- `error_after_commit`: wait `delay_ms`, do the work, then answer `status` instead of the result
  (the change happened, the answer is lost).
- `delay`: wait `delay_ms`, then handle the request normally (`status` is ignored). If the client
  has disconnected meanwhile (e.g. its timeout fired), the request is dropped without doing the
  work: a slow queue in front of the backend.
- `late_commit`: wait `delay_ms`, then do the work even if the client has disconnected meanwhile,
  and answer normally, or with `status` if one is given (default: none). A slow backend that
  commits after the client gave up: the client sees a timeout, the change lands later.

Every Vapi route reads the whole request body before any waiting (global latency or a fault's
`delay_ms`), so a client that times out during a wait never breaks the request half-read, and
answers to a client that has gone are dropped quietly (no traceback in the log).

The module is standalone: stdlib, starlette, uvicorn and jsonschema (and its own
`emulator_schema.py`).

Run it with `python -m reconciler.vapi.emulator --port 8787`, or in tests with `running_emulator()`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import http
import json
import math
import operator
import random
import socket
import threading
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from json.encoder import encode_basestring
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from reconciler.vapi.emulator_schema import AssistantValidator, KindValidator, VapiNormaliser
from reconciler.vapi.stubs import STUB_KEYS, ProviderStubs

INVALID_KEY_MESSAGE = (
    "Invalid Key. Hot tip, you may be using the private key instead of the public key,"
    " or vice versa."
)


@dataclass(frozen=True)
class Kind:
    """A kind of Vapi resource the emulator serves: its routes are `GET/POST path` (the list is
    a bare array newest first, `limit` and `createdAt*`/`updatedAt*` filters) and
    `GET/PATCH/DELETE path/{id}`, plus `GET paged_path` when set (`{results, metadata}` pages
    with `page`, `limit`, `search`, `sortOrder`). Bodies are checked by the assistant validator
    (`/assistant`) or against the kind's request schemas in `openapi_kinds.json`. `secret_fields`
    are stored but never answered; `added` are fields Vapi's answers carry that no body sets."""

    name: str  # "assistants": the key of its count in stats ("assistants_total")
    path: str
    noun: str  # "Couldn't find <noun> <id>."
    paged_path: str | None = None
    search_fields: tuple[str, ...] = ()
    secret_fields: tuple[str, ...] = ()
    # list fields whose items are dynamic credentials: answered without their secret values
    credential_lists: tuple[str, ...] = ()
    added: tuple[tuple[str, Any], ...] = ()

    @property
    def item_path(self) -> str:
        return f"{self.path}/{{id}}"

    @property
    def route_keys(self) -> tuple[str, ...]:
        paged = (f"GET {self.paged_path}",) if self.paged_path else ()
        item = self.item_path
        return (
            f"GET {self.path}",
            f"POST {self.path}",
            *paged,
            *(f"{m} {item}" for m in ("GET", "PATCH", "DELETE")),
        )


# The `Create*CredentialDTO` properties Vapi's document describes as "This is not returned in
# the API." (every member of `CreateAssistantDTO.credentials`): stored, never answered.
DYNAMIC_CREDENTIAL_SECRETS = frozenset(
    {
        "apiKey",
        "apiSecret",
        "authToken",
        "awsSecretAccessKey",
        "ocpApimSubscriptionKey",
        "openAIKey",
        "webhookUrl",
    }
)
ASSISTANTS = Kind("assistants", "/assistant", "assistant", credential_lists=("credentials",))
PHONE_NUMBERS = Kind(
    "phone_numbers",
    "/phone-number",
    "phone number",
    paged_path="/v2/phone-number",
    # "search phone numbers by name, number, or SIP URI (partial match, case-insensitive)"
    search_fields=("name", "number", "sipUri"),
    # Twilio's token and API secret: what a client sent cannot be read back (see the docstring)
    secret_fields=("twilioAuthToken", "twilioApiSecret"),
    added=(("status", "active"),),
)
TOOLS = Kind("tools", "/tool", "tool")
KINDS = (ASSISTANTS, PHONE_NUMBERS, TOOLS)
ROUTE_KEYS = tuple(key for kind in KINDS for key in kind.route_keys)
PAGED_SORT_ORDERS = ("ASC", "DESC")
PAGED_SORT_BY = ("createdAt", "duration", "cost")  # as the document lists; all sort by createdAt
SEARCH_MAX_LENGTH = 100
LIST_DEFAULT_LIMIT = 100
LIST_MAX_LIMIT = 1000
COMPARISONS = {"Gt": operator.gt, "Lt": operator.lt, "Ge": operator.ge, "Le": operator.le}
DATE_FILTERS = {
    f"{field}{op}": (field, compare)
    for field in ("createdAt", "updatedAt")
    for op, compare in COMPARISONS.items()
}
FAULT_MODES = ("error", "error_after_commit", "delay", "late_commit")
AFTER_WORK_MODES = ("error_after_commit", "late_commit")  # modes answering `status` after the work
FAULT_KEYS = {"method", "path", "mode", "status", "times", "delay_ms", "retry_after", "body"}
KEY_FIELDS = ("token", "new_token")
JS_MAX_SAFE_INTEGER = 2**53  # a Python int beyond it is written as the double JS would hold

Json = dict[str, Any]


def _iso(ts: datetime) -> str:
    """ISO 8601 UTC with milliseconds and `Z`, as Vapi writes it: 2026-11-25T19:54:52.123Z."""
    return ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


def _stamp_after(previous: datetime | None) -> datetime:
    """Now to the millisecond, or 1 ms after `previous` if the clock has not moved past it."""
    now = datetime.now(UTC)
    now = now.replace(microsecond=now.microsecond // 1000 * 1000)
    return now if previous is None or now > previous else previous + timedelta(milliseconds=1)


def _parse_iso(value: str) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _error(
    status: int, message: str | list[str], headers: dict[str, str] | None = None
) -> JSONResponse:
    """A NestJS-shaped error body: {"message": ..., "error": <reason phrase>, "statusCode": n}."""
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    body = {"message": message, "error": phrase, "statusCode": status}
    return JSONResponse(body, status_code=status, headers=headers)


def _bad_request(messages: list[str]) -> JSONResponse:
    return _error(400, messages)


def _is_error_status(value: object) -> bool:
    """True for an int (not a bool) that is a known HTTP status from 400 to 599."""
    if not isinstance(value, int) or isinstance(value, bool) or not 400 <= value <= 599:
        return False
    try:
        http.HTTPStatus(value)
    except ValueError:
        return False
    return True


def _is_item_path(path: str, collection: str) -> bool:
    """True for `<collection>/<one segment>`, e.g. "/tool/abc" of "/tool"."""
    rest = path.removeprefix(collection + "/")
    return rest != path and bool(rest) and "/" not in rest


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _client_gone() -> Response:
    """The answer to a client that has disconnected: the server drops it unsent."""
    return Response(status_code=499)


def js_number(value: float) -> str:
    """`value` as JavaScript's JSON.stringify writes a number: Number.prototype.toString's
    shortest round-trip digits (Python's repr finds the same ones) in JS's layout: plain decimals
    from 1e-6 up to below 1e21 (`1.0` → `1`, `1e20` → `100000000000000000000`), an exponent
    otherwise (`1e+21`, `1.5e-7`), `-0` as `0`, and a non-finite number as `null`."""
    if not math.isfinite(value):
        return "null"
    if value == 0:
        return "0"
    if value < 0:
        return "-" + js_number(-value)
    mantissa, _, exponent = repr(value).partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = whole + fraction
    point = int(exponent or 0) + len(whole)  # value = 0.<digits> * 10**point
    significant = digits.lstrip("0")
    point -= len(digits) - len(significant)
    digits = significant.rstrip("0")
    count = len(digits)
    if count <= point <= 21:
        return digits + "0" * (point - count)
    if 0 < point <= 21:
        return f"{digits[:point]}.{digits[point:]}"
    if -6 < point <= 0:
        return "0." + "0" * -point + digits
    power = point - 1
    head = digits[0] + (f".{digits[1:]}" if count > 1 else "")
    return f"{head}e{'+' if power >= 0 else '-'}{abs(power)}"


def js_dumps(value: Any) -> str:
    """Compact JSON like starlette's JSONResponse writes it, but numbers as JSON.stringify does:
    a float by `js_number`, an int beyond 2**53 as the double it would be in JavaScript."""
    if isinstance(value, str):
        return encode_basestring(value)
    if isinstance(value, dict):
        items = (f"{encode_basestring(str(k))}:{js_dumps(v)}" for k, v in value.items())
        return "{" + ",".join(items) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join([js_dumps(v) for v in value]) + "]"
    if value is None or isinstance(value, bool):
        return "null" if value is None else "true" if value else "false"
    if isinstance(value, float):
        return js_number(float(value))
    if isinstance(value, int):
        in_range = -JS_MAX_SAFE_INTEGER <= value <= JS_MAX_SAFE_INTEGER
        return str(int(value)) if in_range else js_number(float(value))
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _invalid_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def js_loads(raw: bytes | str) -> Any:
    """JSON as JavaScript's JSON.parse reads it: every number an IEEE double (an integer beyond
    2**53 rounds to the nearest double), and no NaN/Infinity literals."""
    return json.loads(raw, parse_int=float, parse_constant=_invalid_constant)


class JSNumbersResponse(JSONResponse):
    """A JSON answer written by `js_dumps`, as a Node.js server would write it."""

    def render(self, content: Any) -> bytes:
        return js_dumps(content).encode("utf-8")


def fingerprint(token: str) -> str:
    """How the admin API names an account: the first 8 hex chars of sha256(token)."""
    return hashlib.sha256(token.encode()).hexdigest()[:8]


@dataclass(eq=False)  # an account is itself, not its contents
class Account:
    keys: list[str]  # fingerprints of the tokens that reach it, the first one names it
    org_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    # kind name -> id -> record, in creation order
    records: dict[str, dict[str, Json]] = field(
        default_factory=lambda: {kind.name: {} for kind in KINDS}
    )
    last_created: datetime | None = None

    @property
    def assistants(self) -> dict[str, Json]:
        return self.records[ASSISTANTS.name]

    @property
    def fingerprint(self) -> str:
        return self.keys[0]


@dataclass
class Fault:
    method: str
    path: str  # a route: "/tool", "/tool/{id}" (any id) or a concrete "/tool/<id>"
    mode: str
    status: int | None = 500  # None (late_commit only): answer the handler's own response
    times: int | None = 1  # None: every matching request, forever
    delay_ms: int = 0
    retry_after: str | None = None
    body: Any = None

    def matches(self, method: str, path: str) -> bool:
        if self.method != method:
            return False
        if self.path.endswith("/{id}"):
            return _is_item_path(path, self.path.removesuffix("/{id}"))
        return self.path == path

    def response(self, response_class: type[JSONResponse] = JSONResponse) -> Response:
        status = 500 if self.status is None else self.status
        headers = {"Retry-After": self.retry_after} if self.retry_after is not None else {}
        if self.body is not None:
            return response_class(self.body, status_code=status, headers=headers or None)
        phrase = http.HTTPStatus(status).phrase
        return _error(status, f"Emulated fault: {phrase}", headers)

    def as_json(self) -> Json:
        return dataclasses.asdict(self)

    @classmethod
    def parse(cls, data: Any) -> Fault | list[str]:
        """A fault from the admin API's JSON, or the list of what is wrong with it."""
        if not isinstance(data, dict):
            return ["fault must be a JSON object"]
        errors = [f"property {k} should not exist" for k in data if k not in FAULT_KEYS]
        method = str(data.get("method", "")).upper()
        path = str(data.get("path", "")).rstrip("/")
        mode = data.get("mode")
        status = data.get("status", None if mode == "late_commit" else 500)
        times, delay_ms = data.get("times", 1), data.get("delay_ms", 0)
        if f"{method} {path}" not in ROUTE_KEYS and not (
            method in ("GET", "PATCH", "DELETE")
            and any(_is_item_path(path, kind.path) for kind in KINDS)
        ):
            routes = ", ".join(p for k in KINDS for p in (k.path, k.item_path, k.paged_path) if p)
            errors.append(f"no route {method} {path}; use one of {routes}")
        if mode not in FAULT_MODES:
            errors.append(f"mode must be one of the following values: {', '.join(FAULT_MODES)}")
        if not (_is_error_status(status) or (mode == "late_commit" and status is None)):
            errors.append("status must be a known HTTP status code from 400 to 599")
        if times is not None and (not _is_int(times) or times < 1):
            errors.append("times must be a positive integer or null (forever)")
        if not _is_int(delay_ms) or delay_ms < 0:
            errors.append("delay_ms must be a non-negative integer")
        if errors:
            return errors
        retry_after = data.get("retry_after", "0" if status == 429 else None)
        return cls(
            method=method,
            path=path,
            mode=str(mode),
            status=status,
            times=times,
            delay_ms=delay_ms,
            retry_after=None if retry_after is None else str(retry_after),
            body=data.get("body"),
        )


def _free_number(area_code: Any) -> str:
    """A number for a free Vapi number (`provider: vapi` without `sipUri`): +1, the desired
    area code (or 555), seven random digits. Not a real number; unique enough for tests."""
    area = area_code if isinstance(area_code, str) and area_code.isdigit() else "555"
    return f"+1{area}{random.randrange(10**7):07d}"  # noqa: S311 (not a secret)


@dataclass
class _ListQuery:
    """The query of a list route: v1 (`limit`, date filters) or v2 (also `page`, `search`,
    `sortOrder`, `sortBy`), checked as Vapi's NestJS pipes do (unknown parameters: 400)."""

    errors: list[str] = field(default_factory=list)
    limit: int = LIST_DEFAULT_LIMIT
    page: int = 1
    search: str | None = None
    sort_order: str = "DESC"
    bounds: list[tuple[str, Callable[[datetime, datetime], bool], datetime]] = field(
        default_factory=list
    )

    @classmethod
    def parse(cls, items: Sequence[tuple[str, str]], *, paged: bool) -> _ListQuery:
        query = cls()
        errors = query.errors
        for name, value in items:
            if name == "limit":
                number = _number(value)
                if not math.isfinite(number):
                    errors.append("limit must be a number conforming to the specified constraints")
                elif number < 0:
                    errors.append("limit must not be less than 0")
                elif number > LIST_MAX_LIMIT:
                    errors.append(f"limit must not be greater than {LIST_MAX_LIMIT}")
                else:
                    query.limit = int(number)
            elif name in DATE_FILTERS:
                parsed = _parse_iso(value)
                if parsed is None:
                    errors.append(f"{name} must be a valid ISO 8601 date string")
                else:
                    query.bounds.append((*DATE_FILTERS[name], parsed))
            elif paged and name == "page":
                number = _number(value)
                if not math.isfinite(number):
                    errors.append("page must be a number conforming to the specified constraints")
                elif number < 1:
                    errors.append("page must not be less than 1")
                else:
                    query.page = int(number)
            elif paged and name == "search":
                if len(value) > SEARCH_MAX_LENGTH:
                    errors.append(
                        f"search must be shorter than or equal to {SEARCH_MAX_LENGTH} characters"
                    )
                query.search = value
            elif paged and name == "sortOrder":
                if value not in PAGED_SORT_ORDERS:
                    allowed = ", ".join(PAGED_SORT_ORDERS)
                    errors.append(f"sortOrder must be one of the following values: {allowed}")
                query.sort_order = value
            elif paged and name == "sortBy":
                if value not in PAGED_SORT_BY:
                    allowed = ", ".join(PAGED_SORT_BY)
                    errors.append(f"sortBy must be one of the following values: {allowed}")
            else:
                errors.append(f"property {name} should not exist")
        return query

    def select(self, records: Iterable[Json], search_fields: Sequence[str]) -> list[Json]:
        """The records that match, newest first (oldest first for `sortOrder=ASC`)."""
        ordered = sorted(
            records, key=lambda r: str(r["createdAt"]), reverse=self.sort_order == "DESC"
        )
        needle = (self.search or "").casefold()
        return [
            r
            for r in ordered
            if all(compare(datetime.fromisoformat(r[f]), b) for f, compare, b in self.bounds)
            and (
                not needle
                or any(needle in str(r.get(f, "")).casefold() for f in search_fields if f in r)
            )
        ]


def _number(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        return math.nan


@dataclass
class EmulatorState:
    accounts: dict[str, Account] = field(default_factory=dict)  # token -> account (keys share)
    faults: list[Fault] = field(default_factory=list)
    requests: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys((*ROUTE_KEYS, *STUB_KEYS), 0)
    )

    def take_fault(self, method: str, path: str) -> Fault | None:
        """The first registered fault matching the request, used up by one."""
        for fault in self.faults:
            if fault.matches(method, path):
                if fault.times is not None:
                    fault.times -= 1
                    if fault.times == 0:
                        self.faults.remove(fault)
                return fault
        return None

    def unique_accounts(self) -> list[Account]:
        """Each account once (several tokens may reach one), in the order they were created."""
        return list({id(account): account for account in self.accounts.values()}.values())


Handler = Callable[[Request, Account], Awaitable[Response]]


class Emulator:
    """The state and the route handlers. Handlers never await in the middle of a mutation (the
    body is read first, then the change is made synchronously), so one event loop needs no lock."""

    def __init__(
        self,
        latency_ms: int = 0,
        rejected_prefixes: Sequence[str] = ("invalid",),
        *,
        js_numbers: bool = True,
        normalise: bool = False,
    ):
        self.latency_ms = latency_ms
        self.rejected_prefixes = tuple(rejected_prefixes)
        self.js_numbers = js_numbers
        self.json_response: type[JSONResponse] = JSNumbersResponse if js_numbers else JSONResponse
        self.loads: Callable[[bytes], Any] = js_loads if js_numbers else json.loads
        self.state = EmulatorState()
        self.validator = AssistantValidator.load()
        self.kind_validator = KindValidator.load()  # phone numbers and tools
        # None: store bodies as sent (see the module docstring for what normalising does)
        self.normaliser = VapiNormaliser(self.validator) if normalise else None
        self.on_reset: list[Callable[[], None]] = []  # what else `POST /_emulator/reset` clears

    # -- the request pipeline shared by every Vapi route -------------------------------------

    def vapi_route(self, key: str, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            self.state.requests[key] += 1
            try:
                # Read (and cache) the body before any wait: once the client has gone, the body
                # can no longer be read, and a late read would raise ClientDisconnect.
                await request.body()
            except ClientDisconnect:
                return _client_gone()  # nobody to answer; the request never fully arrived
            if self.latency_ms > 0:
                await asyncio.sleep(self.latency_ms / 1000)
            fault = self.state.take_fault(request.method, request.url.path.rstrip("/"))
            if fault is not None and fault.delay_ms > 0:
                await asyncio.sleep(fault.delay_ms / 1000)
                if fault.mode == "delay" and await request.is_disconnected():
                    return _client_gone()  # the client gave up while queued: drop the work
            if fault is not None and fault.mode == "error":
                return fault.response(self.json_response)
            account = self.authenticate(request)
            if account is None:
                response: Response = _error(401, INVALID_KEY_MESSAGE)
            else:
                response = await handler(request, account)
            if fault is not None and fault.mode in AFTER_WORK_MODES and fault.status is not None:
                return fault.response(self.json_response)  # the work is done, the answer lost
            return response

        return endpoint

    def count(self, key: str) -> None:
        """One more request of the route `key` (`/_emulator/stats`)."""
        self.state.requests[key] = self.state.requests.get(key, 0) + 1

    def authenticate(self, request: Request) -> Account | None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or token.startswith(self.rejected_prefixes):
            return None
        return self.account(token)

    def account(self, token: str) -> Account:
        """The account `token` reaches, created on first use."""
        account = self.state.accounts.get(token)
        if account is None:
            account = self.state.accounts[token] = Account(keys=[fingerprint(token)])
        return account

    async def read_object(self, request: Request) -> Json | JSONResponse:
        raw = await request.body()
        if not raw.strip():
            return {}
        try:
            body = self.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            return _error(400, f"Unexpected token in JSON: {exc}")
        if not isinstance(body, dict):
            return _bad_request(["request body must be a JSON object"])
        return body

    # -- the kinds: /assistant, /phone-number (and /v2/phone-number), /tool --------------------

    def answer(self, kind: Kind, record: Json) -> Json:
        """`record` as the API shows it: without the kind's secret fields, nor the secret
        values of its dynamic credentials."""
        out = {k: v for k, v in record.items() if k not in kind.secret_fields}
        for name in kind.credential_lists:
            if isinstance(out.get(name), list):
                out[name] = [
                    {k: v for k, v in item.items() if k not in DYNAMIC_CREDENTIAL_SECRETS}
                    if isinstance(item, dict)
                    else item
                    for item in out[name]
                ]
        return out

    def check(self, kind: Kind, body: Json, method: str, stored: Json | None = None) -> list[str]:
        """What is wrong with `body` as a create (`stored` None) or a PATCH of `stored`."""
        if kind is ASSISTANTS:
            return self.validator.validate(body, "create" if method == "post" else "update")
        path = kind.path if method == "post" else kind.item_path
        prop, _ = self.kind_validator.discriminator(path, method)
        return self.kind_validator.validate(
            body, path, method, None if stored is None else stored.get(prop)
        )

    async def create(self, kind: Kind, request: Request, account: Account) -> Response:
        body = await self.read_object(request)
        if isinstance(body, Response):
            return body
        if errors := self.check(kind, body, "post"):
            return _bad_request(errors)
        created = account.last_created = _stamp_after(account.last_created)  # strictly increasing
        record_id = str(uuid.uuid4())
        stamp = _iso(created)
        if kind is ASSISTANTS and self.normaliser is not None:
            record = self.normaliser.created(body)
        else:
            record = {k: v for k, v in body.items() if v is not None}
        if kind is PHONE_NUMBERS and record.get("provider") == "vapi" and "sipUri" not in record:
            record.setdefault("number", _free_number(record.get("numberDesiredAreaCode")))
        record.update(id=record_id, orgId=account.org_id, createdAt=stamp, updatedAt=stamp)
        for key, value in kind.added:
            record.setdefault(key, value)
        if kind is ASSISTANTS and self.normaliser is not None:
            record = self.normaliser.answer(record)
        account.records[kind.name][record_id] = record
        return self.json_response(self.answer(kind, record), status_code=201)

    async def list_all(self, kind: Kind, request: Request, account: Account) -> Response:
        """The v1 list: a bare array, newest first (`limit`, date filters)."""
        query = _ListQuery.parse(request.query_params.multi_items(), paged=False)
        if query.errors:
            return _bad_request(query.errors)
        matching = query.select(account.records[kind.name].values(), ())
        return self.json_response([self.answer(kind, r) for r in matching[: query.limit]])

    async def list_paged(self, kind: Kind, request: Request, account: Account) -> Response:
        """The v2 list: `{results, metadata}` pages (`page`, `limit`, `search`, `sortOrder`)."""
        query = _ListQuery.parse(request.query_params.multi_items(), paged=True)
        if query.errors:
            return _bad_request(query.errors)
        matching = query.select(account.records[kind.name].values(), kind.search_fields)
        start = (query.page - 1) * query.limit
        results = matching[start : start + query.limit]
        total = len(matching)
        pages = math.ceil(total / query.limit) if query.limit else 0
        metadata = {
            "itemsPerPage": query.limit,
            "totalItems": total,
            "currentPage": query.page,
            "totalPages": pages,
            "hasNextPage": query.page < pages,
            "sortOrder": query.sort_order,
        }
        return self.json_response(
            {"results": [self.answer(kind, r) for r in results], "metadata": metadata}
        )

    @staticmethod
    def _not_found(kind: Kind, record_id: str) -> JSONResponse:
        return _error(404, f"Couldn't find {kind.noun} {record_id}.")

    async def get(self, kind: Kind, request: Request, account: Account) -> Response:
        record_id = request.path_params["id"]
        record = account.records[kind.name].get(record_id)
        if record is None:
            return self._not_found(kind, record_id)
        return self.json_response(self.answer(kind, record))

    async def update(self, kind: Kind, request: Request, account: Account) -> Response:
        body = await self.read_object(request)
        if isinstance(body, Response):
            return body
        record_id = request.path_params["id"]
        record = account.records[kind.name].get(record_id)
        if kind is ASSISTANTS:  # NestJS pipes run first (a PATCH of a kind needs the record's
            errors = self.check(kind, body, "patch")  # discriminator to pick its schema)
            if errors:
                return _bad_request(errors)
        if record is None:
            return self._not_found(kind, record_id)
        if kind is not ASSISTANTS and (errors := self.check(kind, body, "patch", record)):
            return _bad_request(errors)
        for key, value in body.items():  # each named top-level field is replaced as a whole
            if value is None:
                record.pop(key, None)
            elif kind is ASSISTANTS and self.normaliser is not None:
                record[key] = self.normaliser.field_value(key, value)
            else:
                record[key] = value
        record["updatedAt"] = _iso(_stamp_after(datetime.fromisoformat(record["updatedAt"])))
        if kind is ASSISTANTS and self.normaliser is not None:
            record = account.records[kind.name][record_id] = self.normaliser.answer(record)
        return self.json_response(self.answer(kind, record))

    async def delete(self, kind: Kind, request: Request, account: Account) -> Response:
        record_id = request.path_params["id"]
        record = account.records[kind.name].pop(record_id, None)
        if record is None:
            return self._not_found(kind, record_id)
        return self.json_response(self.answer(kind, record))

    def handlers(self, kind: Kind) -> list[tuple[str, str, Handler]]:
        """The routes of `kind`: (method, path, handler)."""
        routes: list[tuple[str, str, Handler]] = [
            ("GET", kind.path, functools.partial(self.list_all, kind)),
            ("POST", kind.path, functools.partial(self.create, kind)),
            ("GET", kind.item_path, functools.partial(self.get, kind)),
            ("PATCH", kind.item_path, functools.partial(self.update, kind)),
            ("DELETE", kind.item_path, functools.partial(self.delete, kind)),
        ]
        if kind.paged_path is not None:
            routes.append(("GET", kind.paged_path, functools.partial(self.list_paged, kind)))
        return routes

    # -- /_emulator (admin, no auth) ---------------------------------------------------------

    async def stats(self, request: Request) -> Response:
        accounts = self.state.unique_accounts()
        totals = {
            f"{kind.name}_total": sum(len(a.records[kind.name]) for a in accounts) for kind in KINDS
        }
        return JSONResponse({"requests": dict(self.state.requests), **totals})

    async def accounts(self, request: Request) -> Response:
        return JSONResponse(
            {
                acc.fingerprint: {
                    "orgId": acc.org_id,
                    "assistants": len(acc.assistants),
                    "keys": list(acc.keys),
                }
                for acc in self.state.unique_accounts()
            }
        )

    async def keys(self, request: Request) -> Response:
        """`POST keys`: let `new_token` reach the account of `token` (see the module docstring)."""
        try:
            data = json.loads(await request.body())
        except ValueError:  # UnicodeDecodeError included
            return _bad_request(["body must be JSON"])
        if not isinstance(data, dict):
            return _bad_request(["body must be a JSON object"])
        errors = [f"property {k} should not exist" for k in data if k not in KEY_FIELDS]
        for name in KEY_FIELDS:
            value = data.get(name)
            if not isinstance(value, str) or not value.strip():
                errors.append(f"{name} must be a non-empty string")
            elif value != value.strip():
                errors.append(f"{name} must not start or end with whitespace")
            elif value.startswith(self.rejected_prefixes):
                errors.append(f"{name} starts with a rejected prefix, so it can never authenticate")
        if errors:
            return _bad_request(errors)
        token, new_token = data["token"], data["new_token"]
        holder, current = self.state.accounts.get(new_token), self.state.accounts.get(token)
        if holder is not None and holder is not current:
            return _error(409, f"new_token already belongs to account {holder.fingerprint}")
        account = self.account(token)
        if new_token not in self.state.accounts:  # else it already reaches this account
            self.state.accounts[new_token] = account
            account.keys.append(fingerprint(new_token))
        return JSONResponse({"orgId": account.org_id, "account": account.fingerprint}, 201)

    async def faults(self, request: Request) -> Response:
        if request.method == "GET":
            return JSONResponse([f.as_json() for f in self.state.faults])
        if request.method == "DELETE":
            cleared = len(self.state.faults)
            self.state.faults.clear()
            return JSONResponse({"cleared": cleared})
        try:
            fault = Fault.parse(json.loads(await request.body()))
        except ValueError:
            fault = ["body must be JSON"]
        if isinstance(fault, list):
            return _bad_request(fault)
        self.state.faults.append(fault)
        return JSONResponse(fault.as_json(), status_code=201)

    async def reset(self, request: Request) -> Response:
        self.state = EmulatorState()
        for forget in self.on_reset:
            forget()
        return JSONResponse({"reset": True})


async def _http_exception(request: Request, exc: Exception) -> Response:
    """Unknown routes answer like NestJS: 404 "Cannot GET /path" (also for a wrong method)."""
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    if status in (404, 405):
        return _error(404, f"Cannot {request.method} {request.url.path}")
    return _error(status, http.HTTPStatus(status).phrase)


def create_app(
    latency_ms: int = 0,
    *,
    rejected_prefixes: Sequence[str] = ("invalid",),
    js_numbers: bool = True,
    normalise: bool = False,
) -> Starlette:
    """The emulator as an ASGI app. `latency_ms` is added to every Vapi route; bearer tokens
    starting with any of `rejected_prefixes` are answered 401 like a wrong key; `js_numbers`
    reads and writes the Vapi routes' numbers as Node.js does (False: as Python's json does);
    `normalise` stores assistants with Vapi's defaults and key order (see the module docstring)."""
    emu = Emulator(latency_ms, rejected_prefixes, js_numbers=js_numbers, normalise=normalise)
    vapi_routes = [route for kind in KINDS for route in emu.handlers(kind)]
    routes = [
        Route(path, emu.vapi_route(f"{method} {path}", handler), methods=[method])
        for method, path, handler in vapi_routes
    ]
    routes += [
        Route("/_emulator/stats", emu.stats, methods=["GET"]),
        Route("/_emulator/accounts", emu.accounts, methods=["GET"]),
        Route("/_emulator/keys", emu.keys, methods=["POST"]),
        Route("/_emulator/faults", emu.faults, methods=["GET", "POST", "DELETE"]),
        Route("/_emulator/reset", emu.reset, methods=["POST"]),
    ]
    # the other providers' verification calls (RECONCILER_PROVIDER_STUBS), see `stubs.py`
    stubs = ProviderStubs(rejected_prefixes, emu.count)
    emu.on_reset.append(stubs.reset)
    routes += stubs.routes()
    app = Starlette(routes=routes, exception_handlers={HTTPException: _http_exception})
    app.state.emulator = emu
    return app


# An idle connection is kept longer than a client keeps it (httpx: 5 s), as load balancers in front
# of APIs do (60 s and more). At uvicorn's default of 5 s both sides close at the same moment, and a
# request sent on the closing connection fails with "connection reset": a race, not a Vapi fault.
KEEP_ALIVE_S = 75


def serve(
    host: str = "127.0.0.1",
    port: int = 8787,
    latency_ms: int = 0,
    *,
    js_numbers: bool = True,
    normalise: bool = False,
) -> None:
    """Run the emulator in the foreground (blocking) with uvicorn."""
    app = create_app(latency_ms, js_numbers=js_numbers, normalise=normalise)
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_keep_alive=KEEP_ALIVE_S)


@contextlib.contextmanager
def running_emulator(
    latency_ms: int = 0, *, js_numbers: bool = True, normalise: bool = False
) -> Iterator[str]:
    """Run the emulator on 127.0.0.1 and a free port in a daemon thread; yield its base URL."""
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY on accepted sockets only then (else each
    # request waits ~40 ms for a delayed ACK).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    app = create_app(latency_ms, js_numbers=js_numbers, normalise=normalise)
    config = uvicorn.Config(
        app, log_level="warning", lifespan="off", timeout_keep_alive=KEEP_ALIVE_S
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_emulator/stats", timeout=1) as answer:  # noqa: S310
                    if answer.status == 200:
                        break
            except OSError:
                if not thread.is_alive() or time.monotonic() > deadline:
                    raise RuntimeError(f"the Vapi emulator did not start on {url}") from None
                time.sleep(0.02)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=5)
        sock.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the Vapi API emulator.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8787)
    parser.add_argument("--latency-ms", type=int, default=0, help="added to every Vapi request")
    parser.add_argument(
        "--python-numbers",
        action="store_true",
        help="read and write numbers as Python's json does, not as Node.js (Vapi) does",
    )
    parser.add_argument(
        "--normalise",
        action="store_true",
        help="fill Vapi's server defaults and answer in Vapi's key order (see the docstring)",
    )
    args = parser.parse_args(argv)
    serve(
        args.host,
        args.port,
        args.latency_ms,
        js_numbers=not args.python_numbers,
        normalise=args.normalise,
    )


if __name__ == "__main__":
    main()
