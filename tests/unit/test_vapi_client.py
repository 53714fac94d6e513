"""The Vapi client: retries, refusals and odd answers (httpx.MockTransport), masked messages
(hypothesis), paging over a fake list, and a local echo server in a thread. Against the emulator:
tests/integration/test_vapi_client.py."""

from __future__ import annotations

import email.utils
import gzip
import http.server
import json
import random
import re
import threading
import time
import unicodedata
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.redact import is_sensitive_key
from reconciler.vapi.client import (
    DEFINITE_REFUSALS,
    MAX_BODY_BYTES,
    RetryPolicy,
    VapiAmbiguousWrite,
    VapiAuthError,
    VapiError,
    VapiNotFound,
    VapiRateLimited,
    VapiReader,
    VapiRejected,
    VapiWriter,
    http_client,
)
from tests.helpers import FAST_RETRY

API_KEY = "sk-live-7d3f0c9e-SUPERSECRET"
BASE = "https://api.vapi.test"

Reply = httpx.Response | Exception | Callable[[httpx.Request], httpx.Response]


class Script:
    """A MockTransport handler answering from a list, recording every request."""

    def __init__(self, *replies: Reply, then: Reply | None = None) -> None:
        self.replies = list(replies)
        self.then = then
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        reply = self.replies.pop(0) if self.replies else self.then
        if reply is None:
            raise AssertionError(f"unexpected request {request.method} {request.url}")
        if isinstance(reply, Exception):
            raise reply
        if isinstance(reply, httpx.Response):
            return reply
        return reply(request)


def ok(body: Any = None, status: int = 200) -> httpx.Response:
    return httpx.Response(status, json=[] if body is None else body)


def fail(status: int, headers: dict[str, str] | None = None) -> httpx.Response:
    body = {"message": f"boom {status}", "error": "Error", "statusCode": status}
    return httpx.Response(status, json=body, headers=headers)


class Client:
    def __init__(self, script: Script, attempts: int = 4, **limits: Any) -> None:
        self.script = script
        self.sleeps: list[float] = []
        self.policy = RetryPolicy(
            attempts=attempts, base_s=0.001, cap_s=0.01, sleep=self.sleeps.append, **limits
        )
        self.http = httpx.Client(base_url=BASE, transport=httpx.MockTransport(script))
        self.vapi = VapiWriter(self.http, API_KEY, retry=self.policy)

    @property
    def sent(self) -> int:
        return len(self.script.requests)


@pytest.fixture
def make() -> Iterator[Callable[..., Client]]:
    made: list[Client] = []

    def factory(
        *replies: Reply, then: Reply | None = None, attempts: int = 4, **limits: Any
    ) -> Client:
        client = Client(Script(*replies, then=then), attempts, **limits)
        made.append(client)
        return client

    yield factory
    for client in made:
        client.http.close()


# -- retries ---------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503, 429])
def test_get_retried_on_transient_status_then_succeeds(
    make: Callable[..., Client], status: int
) -> None:
    c = make(fail(status), ok([{"id": "a", "createdAt": "t"}]))
    assert c.vapi.list_assistants() == [{"id": "a", "createdAt": "t"}]
    assert c.sent == 2
    assert len(c.sleeps) == 1
    assert 0 < c.sleeps[0] <= 0.001  # first backoff: jitter in [base/2, base]


def test_get_retried_through_several_failures(make: Callable[..., Client]) -> None:
    c = make(fail(503), fail(502), fail(429), ok({"id": "a"}))
    assert c.vapi.get_assistant("a") == {"id": "a"}
    assert c.sent == 4
    assert len(c.sleeps) == 3
    assert all(0 < s <= 0.01 for s in c.sleeps)  # capped exponential backoff


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_seconds_honoured(make: Callable[..., Client], status: int) -> None:
    c = make(fail(status, {"Retry-After": "2"}), ok())
    assert c.vapi.list_assistants() == []
    assert c.sleeps == [2.0]


def test_retry_after_http_date_parsed(make: Callable[..., Client]) -> None:
    when = email.utils.formatdate(time.time() + 8, usegmt=True)
    c = make(fail(429, {"Retry-After": when}), ok())
    c.vapi.list_assistants()
    [slept] = c.sleeps
    assert 5.0 < slept <= 8.0


def test_retry_after_in_the_past_is_zero(make: Callable[..., Client]) -> None:
    c = make(fail(503, {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}), ok())
    c.vapi.list_assistants()
    assert c.sleeps == [0.0]


def test_default_waits_are_short() -> None:
    # the caller holds the org's lock while it waits: seconds, not minutes
    policy = RetryPolicy()
    assert policy.max_retry_after_s == 10.0
    assert policy.max_total_wait_s == 20.0


def test_retry_after_at_the_cap_is_waited(make: Callable[..., Client]) -> None:
    c = make(fail(429, {"Retry-After": "10"}), ok())
    c.vapi.list_assistants()
    assert c.sleeps == [10.0]


@pytest.mark.parametrize(
    ("status", "asked", "says"),
    [
        (429, "120", "rate limited: Vapi asks to retry after 120 s; giving up for this run"),
        (429, "10.7", "rate limited: Vapi asks to retry after 11 s; giving up for this run"),
        (503, "3600", "Vapi answered 503 and asks to retry after 3600 s; giving up for this run"),
    ],
)
def test_retry_after_above_the_cap_fails_at_once(
    make: Callable[..., Client], status: int, asked: str, says: str
) -> None:
    c = make(fail(status, {"Retry-After": asked}), then=ok())
    with pytest.raises(VapiError) as info:
        c.vapi.list_assistants()
    assert type(info.value) is VapiError
    assert str(info.value) == f"GET /assistant: {says}"
    assert info.value.status == status
    assert c.sent == 1
    assert c.sleeps == []  # no wait at all, not a shortened one


def test_retry_after_http_date_above_the_cap_fails_at_once(make: Callable[..., Client]) -> None:
    when = email.utils.formatdate(time.time() + 120, usegmt=True)
    c = make(fail(429, {"Retry-After": when}), then=ok())
    with pytest.raises(VapiError, match=r"asks to retry after 1[12]\d s; giving up"):
        c.vapi.get_assistant("a")
    assert c.sleeps == []


def test_total_wait_of_one_call_is_bounded(make: Callable[..., Client]) -> None:
    c = make(then=fail(503, {"Retry-After": "8"}), attempts=10)
    with pytest.raises(VapiError) as info:
        c.vapi.update_assistant("a", {"name": "y"})
    assert c.sleeps == [8.0, 8.0]  # a third 8 s wait would pass max_total_wait_s (20 s)
    assert c.sent == 3
    assert type(info.value) is VapiError
    assert info.value.status == 503
    assert str(info.value) == (
        "PATCH /assistant/a: Vapi answered 503: boom 503; giving up for this run after waiting 16 s"
    )


def test_total_wait_counts_backoff_after_lost_connections(make: Callable[..., Client]) -> None:
    c = make(then=httpx.ReadError("reset"), attempts=50, max_total_wait_s=0.05)
    with pytest.raises(VapiError, match="ReadError; giving up for this run after waiting"):
        c.vapi.get_assistant("a")
    assert sum(c.sleeps) <= 0.05
    assert c.sent < 50


def test_retry_after_unparseable_falls_back_to_backoff(make: Callable[..., Client]) -> None:
    c = make(fail(429, {"Retry-After": "soon"}), ok())
    c.vapi.list_assistants()
    [slept] = c.sleeps
    assert 0.0005 <= slept <= 0.001


@pytest.mark.parametrize("status", [500, 503, 429])
def test_attempts_exhausted_raise_with_status(make: Callable[..., Client], status: int) -> None:
    c = make(then=fail(status), attempts=3)
    with pytest.raises(VapiError) as info:
        c.vapi.list_assistants()
    assert type(info.value) is VapiError
    assert info.value.status == status
    assert str(info.value) == (
        f"GET /assistant: Vapi answered {status}: boom {status}; gave up after 3 attempts"
    )
    assert c.sent == 3
    assert len(c.sleeps) == 2  # no sleep after the last attempt


def test_get_timeouts_retried_then_exhausted(make: Callable[..., Client]) -> None:
    c = make(then=httpx.ReadTimeout("slow"), attempts=3)
    with pytest.raises(VapiError, match="timed out") as info:
        c.vapi.get_assistant("a")
    assert not isinstance(info.value, VapiAmbiguousWrite)
    assert info.value.status is None
    assert c.sent == 3


def test_get_transport_error_retried(make: Callable[..., Client]) -> None:
    c = make(httpx.RemoteProtocolError("reset"), httpx.ConnectError("refused"), ok({"id": "a"}))
    assert c.vapi.get_assistant("a") == {"id": "a"}
    assert c.sent == 3


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_post_5xx_is_ambiguous_and_never_retried(make: Callable[..., Client], status: int) -> None:
    c = make(fail(status), then=ok({"id": "dup"}, 201))
    with pytest.raises(VapiAmbiguousWrite) as info:
        c.vapi.create_assistant({"name": "x"})
    assert info.value.status == status
    assert c.sent == 1
    assert c.sleeps == []


@pytest.mark.parametrize(
    ("headers", "retry_after", "says"),
    [
        ({"Retry-After": "30"}, 30.0, "rate limited, Retry-After 30 s"),
        ({"Retry-After": "0.5"}, 0.5, "rate limited, Retry-After 0.5 s"),
        ({"Retry-After": "3600"}, 3600.0, "rate limited, Retry-After 3600 s"),
        ({"Retry-After": "soon"}, None, "rate limited"),
        (None, None, "rate limited"),
    ],
)
def test_post_429_never_sleeps(
    make: Callable[..., Client],
    headers: dict[str, str] | None,
    retry_after: float | None,
    says: str,
) -> None:
    # A 429 should mean "not processed", but a limiter after the handler breaks that promise:
    # no sleep (the caller holds the org's lock), no retry; the caller's tag lookup decides.
    c = make(fail(429, headers), then=ok({"id": "dup"}, 201))
    with pytest.raises(VapiRateLimited) as info:
        c.vapi.create_assistant({"name": "x"})
    exc = info.value
    assert isinstance(exc, VapiAmbiguousWrite)
    assert not isinstance(exc, VapiRejected)
    assert exc.status == 429
    assert exc.retry_after_s == retry_after
    assert str(exc) == (
        f"POST /assistant: Vapi answered 429 ({says}), outcome unknown; "
        "not retried in this run: the next run looks for it before creating again"
    )
    assert c.sent == 1
    assert c.sleeps == []


def test_post_429_with_http_date(make: Callable[..., Client]) -> None:
    when = email.utils.formatdate(time.time() + 60, usegmt=True)
    c = make(fail(429, {"Retry-After": when}))
    with pytest.raises(VapiRateLimited) as info:
        c.vapi.create_assistant({"name": "x"})
    assert info.value.retry_after_s is not None
    assert 57.0 < info.value.retry_after_s <= 60.0
    assert c.sleeps == []


@pytest.mark.parametrize("status", sorted(DEFINITE_REFUSALS))
def test_post_definite_refusal_is_not_ambiguous(make: Callable[..., Client], status: int) -> None:
    c = make(fail(status), then=ok({"id": "dup"}, 201))
    with pytest.raises(VapiRejected) as info:
        c.vapi.create_assistant({"name": "x"})
    exc = info.value
    assert not isinstance(exc, VapiAmbiguousWrite)
    assert exc.status == status
    assert exc.reason == f"boom {status}"
    assert "nothing was created" in str(exc)
    assert str(exc).endswith(f": boom {status}")
    assert isinstance(exc, VapiAuthError) == (status in (401, 403))
    assert isinstance(exc, VapiNotFound) == (status == 404)
    assert c.sent == 1
    assert c.sleeps == []


def test_definite_refusal_messages(make: Callable[..., Client]) -> None:
    nest = {
        "message": [
            "name must be shorter than or equal to 40 characters",
            "property x should not exist",
        ],
        "error": "Bad Request",
        "statusCode": 400,
    }
    c = make(httpx.Response(400, json=nest), fail(401), fail(404), fail(422))
    with pytest.raises(VapiRejected) as info:
        c.vapi.create_assistant({"name": "x" * 41, "x": 1})
    assert str(info.value) == (
        "POST /assistant: Vapi refused it (400), nothing was created: "
        "name must be shorter than or equal to 40 characters; property x should not exist"
    )
    assert info.value.reason == (
        "name must be shorter than or equal to 40 characters; property x should not exist"
    )
    with pytest.raises(VapiAuthError, match=r"^POST /assistant: Vapi rejected the API key \(401\)"):
        c.vapi.create_assistant({})
    with pytest.raises(VapiNotFound, match=r"^GET /assistant/nope: not found \(404\): boom 404$"):
        c.vapi.get_assistant("nope")
    with pytest.raises(VapiRejected, match=r"^PATCH /assistant/a: Vapi refused it \(422\)"):
        c.vapi.update_assistant("a", {})
    assert c.sleeps == []


def test_every_auth_error_is_a_definite_refusal() -> None:
    assert issubclass(VapiAuthError, VapiRejected)
    assert issubclass(VapiNotFound, VapiRejected)
    assert issubclass(VapiRateLimited, VapiAmbiguousWrite)
    assert not issubclass(VapiRejected, VapiAmbiguousWrite)


@pytest.mark.parametrize("status", [408, 409, 410, 418, 425, 431, 451, 499, 300, 302, 304, 307])
def test_post_other_answers_stay_ambiguous(make: Callable[..., Client], status: int) -> None:
    c = make(fail(status), then=ok({"id": "dup"}, 201))
    with pytest.raises(VapiAmbiguousWrite) as info:
        c.vapi.create_assistant({"name": "x"})
    assert not isinstance(info.value, VapiRejected | VapiRateLimited)
    assert info.value.status == status
    assert "outcome unknown" in str(info.value)
    assert c.sent == 1
    assert c.sleeps == []


@pytest.mark.parametrize("status", [408, 409, 410, 302])
def test_get_other_answers_are_plain_errors_not_retried(
    make: Callable[..., Client], status: int
) -> None:
    c = make(fail(status), then=ok())
    with pytest.raises(VapiError) as info:
        c.vapi.list_assistants()
    assert type(info.value) is VapiError
    assert info.value.status == status
    assert c.sent == 1


def test_patch_and_delete_429_retried(make: Callable[..., Client]) -> None:
    c = make(fail(429, {"Retry-After": "1"}), ok({"id": "a"}), fail(429), ok({"id": "a"}))
    assert c.vapi.update_assistant("a", {"name": "y"}) == {"id": "a"}
    c.vapi.delete_assistant("a")
    assert c.sent == 4
    assert c.sleeps[0] == 1.0


@pytest.mark.parametrize(
    "exc", [httpx.ConnectError("refused"), httpx.ConnectTimeout("connect"), httpx.PoolTimeout("p")]
)
def test_post_not_sent_is_retried(make: Callable[..., Client], exc: Exception) -> None:
    c = make(exc, ok({"id": "made"}, 201))
    assert c.vapi.create_assistant({"name": "x"}) == {"id": "made"}
    assert c.sent == 2


@pytest.mark.parametrize(
    "exc",
    [
        httpx.ReadTimeout("read"),
        httpx.WriteTimeout("write"),
        httpx.RemoteProtocolError("closed"),
        httpx.ReadError("reset"),
    ],
)
def test_post_maybe_sent_is_ambiguous(make: Callable[..., Client], exc: Exception) -> None:
    c = make(exc, then=ok({"id": "dup"}, 201))
    with pytest.raises(VapiAmbiguousWrite):
        c.vapi.create_assistant({"name": "x"})
    assert c.sent == 1


def test_patch_5xx_is_retried(make: Callable[..., Client]) -> None:
    c = make(fail(500), httpx.ReadTimeout("slow"), ok({"id": "a", "name": "y"}))
    assert c.vapi.update_assistant("a", {"name": "y"}) == {"id": "a", "name": "y"}
    assert c.sent == 3
    assert all(r.method == "PATCH" for r in c.script.requests)


def test_post_4xx_not_retried(make: Callable[..., Client]) -> None:
    c = make(fail(400), then=ok({}, 201))
    with pytest.raises(VapiRejected, match="boom 400") as info:
        c.vapi.create_assistant({"bogus": 1})
    assert not isinstance(info.value, VapiAmbiguousWrite)
    assert info.value.status == 400
    assert c.sent == 1


@pytest.mark.parametrize("status", [401, 403])
def test_auth_error_never_shows_the_key(make: Callable[..., Client], status: int) -> None:
    c = make(fail(status), then=ok())
    with pytest.raises(VapiAuthError) as info:
        c.vapi.list_assistants()
    exc = info.value
    assert exc.status == status
    assert c.sent == 1  # not retried
    assert c.script.requests[0].headers["Authorization"] == f"Bearer {API_KEY}"
    for text in (str(exc), repr(exc), repr(c.vapi), str(c.vapi), repr(c.policy)):
        assert API_KEY not in text
        assert "SUPERSECRET" not in text
    assert BASE in repr(c.vapi)


WEBHOOK_SECRET = "whsec-9f8e7d6c5b4a-WEBHOOKSECRET"
# pieces of the secrets: a message cut short must not show part of one either
FRAGMENTS = ("7d3f0c9e", "SUPERSEC", "9f8e7d6c", "5b4a-WEB", "WEBHOOK")


def assert_no_secret(text: str) -> None:
    for piece in (API_KEY, WEBHOOK_SECRET, *FRAGMENTS):
        assert piece not in text, text


def echo(status: int, shape: str) -> Callable[[httpx.Request], httpx.Response]:
    """A hostile server: its error message echoes our Authorization header and our body."""

    def answer(request: httpx.Request) -> httpx.Response:
        auth = request.headers.get("Authorization", "")
        sent = request.content.decode()
        if shape == "text":
            return httpx.Response(status, text=f"denied\nAuthorization: {auth}\r\nbody: {sent}")
        if shape == "list":
            message: Any = [f"bad key {auth}", f"body was {sent}", {"authorization": auth}]
        elif shape == "json":
            return httpx.Response(
                status, json={"request": {"headers": {"authorization": auth}, "body": sent}}
            )
        else:
            message = f"key {auth.removeprefix('Bearer ')} rejected for {sent}"
        body = {"message": message, "statusCode": status}
        return httpx.Response(status, json=body)

    return answer


@pytest.mark.parametrize("shape", ["string", "list", "json", "text"])
@pytest.mark.parametrize("status", [400, 401, 403, 422, 500, 503])
def test_echoed_key_and_body_never_shown(
    make: Callable[..., Client], status: int, shape: str
) -> None:
    c = make(then=echo(status, shape), attempts=2)
    body = {
        "name": "x",
        "server": {"url": "https://h.example", "headers": {"x-vapi-secret": WEBHOOK_SECRET}},
    }
    calls: list[Callable[[], object]] = [
        lambda: c.vapi.create_assistant(body),
        lambda: c.vapi.update_assistant("a", body),
        lambda: c.vapi.list_assistants(),
    ]
    for call in calls:
        with pytest.raises(VapiError) as info:
            call()
        exc = info.value
        for text in (str(exc), repr(exc), getattr(exc, "reason", "")):
            assert_no_secret(text)
            assert "\n" not in text
            assert "\r" not in text
        assert len(str(exc)) <= 300
    assert c.script.requests[0].headers["Authorization"] == f"Bearer {API_KEY}"
    assert WEBHOOK_SECRET in c.script.requests[0].content.decode()  # it was really echoed


def test_transport_errors_never_show_the_key(make: Callable[..., Client]) -> None:
    c = make(then=httpx.ConnectError("refused"), attempts=2)
    with pytest.raises(VapiError) as info:
        c.vapi.list_assistants()
    assert API_KEY not in str(info.value)
    assert API_KEY not in repr(info.value)


def test_404_is_not_found(make: Callable[..., Client]) -> None:
    c = make(fail(404), fail(404), then=fail(500))
    with pytest.raises(VapiNotFound) as info:
        c.vapi.get_assistant("nope")
    assert info.value.status == 404
    with pytest.raises(VapiNotFound):
        c.vapi.update_assistant("nope", {"name": "x"})
    assert c.sent == 2


def test_delete_404_is_success(make: Callable[..., Client]) -> None:
    c = make(fail(404), ok({"id": "a"}))
    assert c.vapi.delete_assistant("gone") is None
    assert c.vapi.delete_assistant("a") is None
    assert c.sent == 2
    assert [r.url.path for r in c.script.requests] == ["/assistant/gone", "/assistant/a"]


def test_delete_other_errors_raise(make: Callable[..., Client]) -> None:
    c = make(then=fail(401))
    with pytest.raises(VapiAuthError):
        c.vapi.delete_assistant("a")


def test_delete_of_a_pinned_assistant_is_a_clear_error(make: Callable[..., Client]) -> None:
    pinned = {"error": "assistant_pinned", "message": "Assistant is pinned to a phone number"}
    c = make(httpx.Response(409, json=pinned), then=httpx.Response(409, json={"message": "x"}))
    with pytest.raises(VapiError) as caught:
        c.vapi.delete_assistant("asst-1")
    text = str(caught.value)
    assert "asst-1 is pinned" in text and "unpin it" in text and caught.value.status == 409
    with pytest.raises(VapiError) as other:  # another 409 keeps Vapi's own words
        c.vapi.delete_assistant("asst-2")
    assert "pinned" not in str(other.value) and "409" in str(other.value)


# -- paging over a fake list endpoint with shared timestamps --------------------------------


def stamp(n: int) -> str:
    return f"2026-03-01T10:00:{n // 1000:02d}.{n % 1000:03d}Z"


def dataset(groups: list[int]) -> list[dict[str, Any]]:
    """Assistants in groups sharing one createdAt each, groups[i] of them at time i."""
    return [
        {"id": f"a{t}-{j}", "createdAt": stamp(t)}
        for t, size in enumerate(groups)
        for j in range(size)
    ]


class FakeList:
    """GET /assistant like Vapi: `limit`, `createdAtGe/Le`; ties in any order. Vapi's order
    is unverified, so the fake lists newest first or oldest first."""

    def __init__(
        self, items: list[dict[str, Any]], seed: int = 0, newest_first: bool = True
    ) -> None:
        self.items = items
        self.newest_first = newest_first
        self.rng = random.Random(seed)
        self.calls: list[dict[str, str]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.method == "GET"
        assert request.url.path == "/assistant"
        params = dict(request.url.params)
        self.calls.append(params)
        assert set(params) <= {"limit", "createdAtLe", "createdAtGe"}
        limit = int(params["limit"])
        le, ge = params.get("createdAtLe"), params.get("createdAtGe")
        rows = [
            a
            for a in self.items
            if (le is None or a["createdAt"] <= le) and (ge is None or a["createdAt"] >= ge)
        ]
        ties = {a["id"]: self.rng.random() for a in rows}  # tie order differs per request
        rows.sort(key=lambda a: (a["createdAt"], ties[a["id"]]), reverse=self.newest_first)
        return httpx.Response(200, json=rows[:limit])


def list_with(fake: FakeList, limit: int) -> list[dict[str, Any]]:
    with httpx.Client(base_url=BASE, transport=httpx.MockTransport(fake)) as http:
        return VapiReader(http, API_KEY, retry=FAST_RETRY).list_assistants(limit=limit)


def test_shared_timestamps_at_page_boundaries() -> None:
    # limit 5: groups of 4 sharing a createdAt straddle every page boundary
    items = dataset([1, 4, 4, 2, 4, 3, 4, 1, 4, 4])
    fake = FakeList(items)
    got = list_with(fake, 5)
    ids = [a["id"] for a in got]
    assert len(ids) == len(set(ids)) == len(items)
    assert set(ids) == {a["id"] for a in items}
    assert len(fake.calls) > 2
    assert all(c["limit"] == "5" for c in fake.calls)
    assert "createdAtLe" not in fake.calls[0]


@settings(max_examples=150, deadline=None)
@given(
    limit=st.integers(2, 7),
    data=st.data(),
    seed=st.integers(0, 2**16),
    newest_first=st.booleans(),
)
def test_paging_never_skips_or_duplicates(
    limit: int, data: st.DataObject, seed: int, newest_first: bool
) -> None:
    groups = data.draw(st.lists(st.integers(1, limit - 1), max_size=12))
    items = dataset(groups)
    got = list_with(FakeList(items, seed, newest_first), limit)
    ids = [a["id"] for a in got]
    assert len(ids) == len(set(ids))
    assert sorted(ids) == sorted(a["id"] for a in items)


@pytest.mark.parametrize("extra", [0, 3])
def test_too_many_shared_timestamps_raise_instead_of_skipping(extra: int) -> None:
    # a full page all at one createdAt: the client cannot page past it without risking a skip
    items = dataset([2, 5 + extra, 3])
    with pytest.raises(VapiError, match="share a createdAt"):
        list_with(FakeList(items), 5)


def test_list_rejects_non_array(make: Callable[..., Client]) -> None:
    c = make(ok({"results": []}))
    with pytest.raises(VapiError, match="unexpected response shape"):
        c.vapi.list_assistants()


# -- odd answers: always a one-line VapiError naming the call --------------------------------


def raw(
    status: int, content: bytes, headers: dict[str, str] | None = None
) -> Callable[[httpx.Request], httpx.Response]:
    """An answer sent as is: the client decodes it (Content-Encoding) as it reads it."""

    def answer(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, stream=httpx.ByteStream(content), headers=headers)

    return answer


DEEP = b"[" * 20_000 + b"]" * 20_000  # deeper than Python's json can parse; under 64 KiB


def assert_one_line(exc: BaseException, names: str) -> None:
    text = str(exc)
    assert text.startswith(names), text
    assert len(text.splitlines()) == 1
    assert len(text) <= 300
    assert API_KEY not in text


@pytest.mark.parametrize(
    ("reply", "says"),
    [
        (raw(200, b"<html>hello</html>"), "a body that is not JSON"),
        (raw(200, b""), "a body that is not JSON"),
        (raw(200, b"[1, 2"), "a body that is not JSON"),
        (raw(200, b'[{"id": "\xff\xfe", "createdAt": "t"}]'), "not valid UTF-8"),
        (raw(200, DEEP), "JSON nested too deeply"),
        (raw(200, b"1" * 5000), "a body that is not JSON"),  # int beyond Python's digit limit
        (ok({"results": []}), "unexpected response shape"),
        (ok([1, 2]), "unexpected response shape"),
        (ok([{"id": 1, "createdAt": "t"}]), "unexpected response shape"),
        (ok([{"id": "a"}]), "unexpected response shape"),
        (ok([{"id": "a", "createdAt": "t"}, {"id": "b", "createdAt": 5}]), "unexpected response"),
        (ok([{"id": "a", "createdAt": "t"}, None]), "unexpected response shape"),
        (raw(200, b"[]", {"Content-Encoding": "gzip"}), "unreadable answer (DecodingError)"),
    ],
)
def test_odd_list_answers(make: Callable[..., Client], reply: Reply, says: str) -> None:
    c = make(reply, then=ok())
    with pytest.raises(VapiError) as info:
        c.vapi.list_assistants()
    assert type(info.value) is VapiError
    assert says in str(info.value)
    assert_one_line(info.value, "GET /assistant: ")
    assert c.sent == 1  # an odd 2xx answer is not retried


def _nested(levels: int) -> Any:
    """An assistant whose `metadata` nests so that the listed page has `levels` levels,
    through objects and lists in turn."""
    value: Any = "leaf"
    for i in range(levels - 2):  # the page (a list) and the assistant (an object) are two
        value = {"k": value} if i % 2 else [value]
    return [{"id": "a", "createdAt": "t", "metadata": value}]


@pytest.mark.parametrize("levels", [2, 3, 63, 64])
def test_an_answer_nested_up_to_the_bound_is_read(make: Callable[..., Client], levels: int) -> None:
    c = make(ok(_nested(levels)))
    assert [a["id"] for a in c.vapi.list_assistants()] == ["a"]


@pytest.mark.parametrize("levels", [65, 66, 200])
def test_an_answer_nested_past_the_bound_is_refused(
    make: Callable[..., Client], levels: int
) -> None:
    c = make(ok(_nested(levels)), then=ok())
    with pytest.raises(VapiError) as info:
        c.vapi.list_assistants()
    assert "JSON nested deeper than 64 levels" in str(info.value)
    assert_one_line(info.value, "GET /assistant: ")


@pytest.mark.parametrize(
    ("reply", "says"),
    [
        (raw(201, b"created!"), "a body that is not JSON"),
        (raw(201, b'{"id": "\xff"}'), "not valid UTF-8"),
        (raw(201, DEEP), "JSON nested too deeply"),
        (ok([], 201), "no assistant"),
        (ok({"name": "x"}, 201), "no assistant"),
        (ok({"id": 7}, 201), "no assistant"),
        (ok("id", 201), "no assistant"),
        (raw(201, b"{}", {"Content-Length": str(MAX_BODY_BYTES + 1)}), "a body over 64 MiB"),
        (raw(201, b"garbage", {"Content-Encoding": "gzip"}), "unreadable answer"),
    ],
)
def test_odd_create_answers_are_ambiguous(
    make: Callable[..., Client], reply: Reply, says: str
) -> None:
    # a 2xx to a POST most likely created it, but gave no usable id: the caller looks for it
    c = make(reply, then=ok({"id": "dup"}, 201))
    with pytest.raises(VapiAmbiguousWrite) as info:
        c.vapi.create_assistant({"name": "x"})
    assert says in str(info.value)
    assert "outcome unknown" in str(info.value)
    assert_one_line(info.value, "POST /assistant: ")
    assert c.sent == 1


ODD_OBJECT_ANSWERS = [
    raw(200, b"not json"),
    raw(200, b"\x80"),
    raw(200, DEEP),
    ok([]),
    ok("text"),
    raw(200, b"{}", {"Content-Length": str(MAX_BODY_BYTES + 1)}),
]


@pytest.mark.parametrize("reply", [*ODD_OBJECT_ANSWERS, ok({"name": "no id"}), ok({"id": 5})])
def test_odd_get_answers(make: Callable[..., Client], reply: Reply) -> None:
    c = make(reply, then=ok({"id": "a"}))
    with pytest.raises(VapiError) as info:
        c.vapi.get_assistant("a")
    assert type(info.value) is VapiError
    assert_one_line(info.value, "GET /assistant/a: Vapi answered 200 with ")
    assert c.sent == 1


@pytest.mark.parametrize("reply", ODD_OBJECT_ANSWERS)
def test_odd_patch_answers(make: Callable[..., Client], reply: Reply) -> None:
    c = make(reply, then=ok({"id": "a"}))
    with pytest.raises(VapiError) as info:
        c.vapi.update_assistant("a", {"name": "y"})
    assert type(info.value) is VapiError
    assert_one_line(info.value, "PATCH /assistant/a: ")
    assert c.sent == 1


def test_delete_ignores_the_body_of_a_success(make: Callable[..., Client]) -> None:
    huge = raw(200, b"{}", {"Content-Length": str(MAX_BODY_BYTES + 1)})
    c = make(raw(200, b"deleted"), raw(204, b""), raw(200, DEEP), huge)
    for _ in range(4):
        assert c.vapi.delete_assistant("a") is None


def test_huge_body_without_length_is_refused_while_read(make: Callable[..., Client]) -> None:
    chunks = {"read": 0}

    def endless() -> Iterator[bytes]:
        chunk = b" " * (1024 * 1024)
        for _ in range(70):
            chunks["read"] += 1
            yield chunk

    c = make(lambda _r: httpx.Response(200, content=endless()))
    with pytest.raises(
        VapiError, match=r"^GET /assistant: Vapi answered 200 with a body over 64 MiB$"
    ):
        c.vapi.list_assistants()
    assert chunks["read"] == 65  # stopped just past the limit, not read to the end


def test_body_limit_is_configurable() -> None:
    body = json.dumps([{"id": f"a{i}", "createdAt": "t"} for i in range(50)]).encode()
    replies = Script(raw(200, body), raw(200, gzip.compress(body), {"Content-Encoding": "gzip"}))
    with httpx.Client(base_url=BASE, transport=httpx.MockTransport(replies)) as http:
        vapi = VapiReader(http, API_KEY, retry=FAST_RETRY, max_body_bytes=1000)
        with pytest.raises(VapiError, match="a body over"):
            vapi.list_assistants()
        with pytest.raises(VapiError, match="a body over"):  # decompressed size counts
            vapi.list_assistants()


def test_huge_error_body_gives_a_short_reason(make: Callable[..., Client]) -> None:
    big = json.dumps({"message": "x" * 100_000, "apiKey": API_KEY}).encode()
    c = make(raw(400, big))
    with pytest.raises(VapiRejected) as info:
        c.vapi.create_assistant({})
    assert info.value.reason == "(a body over 64 KiB, not shown)"
    assert_one_line(info.value, "POST /assistant: ")


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"message": "Invalid Key", "error": "Unauthorized"}', "Invalid Key"),
        (b'{"message": ["a", "b"]}', "a; b"),
        (
            b'{"message": ["a", {"field": "name", "token": "t0k3n-LEAK"}]}',
            'a; {"field": "name", "token": "(sensitive)"}',
        ),
        (
            b'{"message": {"why": "nope", "secret": "LEAK"}}',
            '{"why": "nope", "secret": "(sensitive)"}',
        ),
        (b'{"error": "teapot", "apiKey": "LEAK"}', '{"error": "teapot", "apiKey": "(sensitive)"}'),
        (b'{"message": ""}', '{"message": ""}'),
        (b'["no", "message"]', '["no", "message"]'),
        (b'"just a string"', '"just a string"'),
        (b"plain text\nsecond line\x1b[31m", "plain text\\x0asecond line\\x1b[31m"),
        (b"token=LEAK and password: LEAK", "token=(sensitive) password: (sensitive)"),
        (b"bad \xff\xfe bytes", "bad \ufffd\ufffd bytes"),
        (b"", "Bad Request"),
        (b"   ", "Bad Request"),
        (DEEP, "(a JSON body nested too deeply to show)"),
    ],
)
def test_error_reasons_are_masked_and_escaped(
    make: Callable[..., Client], body: bytes, reason: str
) -> None:
    c = make(raw(400, body))
    with pytest.raises(VapiRejected) as info:
        c.vapi.create_assistant({})
    assert info.value.reason == reason
    assert "LEAK" not in str(info.value)
    assert_one_line(info.value, "POST /assistant: ")


def test_reason_is_cut_short(make: Callable[..., Client]) -> None:
    c = make(raw(422, json.dumps({"message": "why " * 200}).encode()))
    with pytest.raises(VapiRejected) as info:
        c.vapi.update_assistant("a" * 200, {})
    assert len(info.value.reason) == 200
    assert info.value.reason.endswith("...")
    assert len(str(info.value)) <= 300
    assert str(info.value).startswith("PATCH /assistant/aaaa")


def test_error_body_unreadable_keeps_a_definite_refusal(make: Callable[..., Client]) -> None:
    def broken(_request: httpx.Request) -> httpx.Response:
        def chunks() -> Iterator[bytes]:
            yield b'{"message": "bad'
            raise httpx.ReadError("reset")

        return httpx.Response(400, content=chunks())

    c = make(broken)
    with pytest.raises(VapiRejected) as info:
        c.vapi.create_assistant({})
    assert info.value.reason == "(body unreadable: ReadError)"


# -- every error answer: a VapiError, one short line, nothing secret (hypothesis) -----------

SECRET_KEYS = [
    "apiKey",
    "authorization",
    "Authorization",
    "token",
    "x-vapi-secret",
    "password",
    "clientSecret",
    "headers",
    "privateKey",
    "refresh_token",
    "webhookSecret",
    "cookie",
]
LEAK = "LEAK"  # every value under a secret-looking key carries it; nothing else does
LEAK_PART = LEAK[:3]  # what a value cut short would still show

plain_text = st.text(max_size=40).filter(lambda t: LEAK_PART not in t and API_KEY not in t)
leak_value = st.integers(0, 10**6).map(lambda n: f"{LEAK}{n}x")
secret_tree = st.recursive(
    leak_value,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(plain_text, inner, max_size=3),
    max_leaves=6,
)
text_with_key = st.lists(
    st.one_of(
        plain_text,
        st.just(API_KEY),
        st.just(f"Bearer {API_KEY}"),
        st.builds(lambda k, v: f"{k}={v}", st.sampled_from(SECRET_KEYS), leak_value),
        st.builds(lambda k, v: f'"{k}": "{v}"', st.sampled_from(SECRET_KEYS), leak_value),
    ),
    max_size=6,
).map(" ".join)
json_tree = st.recursive(
    st.none() | st.booleans() | st.integers() | text_with_key,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(plain_text.filter(lambda k: not is_sensitive_key(k)), inner, max_size=4)
        | st.builds(
            lambda k, v, rest: {**rest, k: v},
            st.sampled_from(SECRET_KEYS),
            secret_tree,
            st.dictionaries(
                plain_text.filter(lambda k: not is_sensitive_key(k)), inner, max_size=2
            ),
        )
    ),
    max_leaves=12,
)
nest_body = st.builds(
    lambda msg, extra: {**extra, "message": msg, "error": "Error"},
    st.one_of(text_with_key, st.lists(st.one_of(text_with_key, json_tree), max_size=4), json_tree),
    st.dictionaries(st.sampled_from(SECRET_KEYS), secret_tree, max_size=2),
)
error_body = st.one_of(
    nest_body.map(lambda b: json.dumps(b).encode()),
    json_tree.map(lambda b: json.dumps(b).encode()),
    text_with_key.map(str.encode),
    st.binary(max_size=200).map(lambda b: b + API_KEY.encode()),
)
retry_after = st.one_of(
    st.none(),
    st.sampled_from(["0", "1", "10", "11", "120", "nan", "inf", "-5", "1e308", "soon"]),
    st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=30),
)
CALLS: dict[str, Callable[[VapiWriter], object]] = {
    "list": lambda v: v.list_assistants(),
    "get": lambda v: v.get_assistant("a1"),
    "create": lambda v: v.create_assistant({"name": "x", "apiKey": API_KEY}),
    "update": lambda v: v.update_assistant("a1", {"name": "y"}),
    "delete": lambda v: v.delete_assistant("a1"),
}


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    status=st.integers(400, 599),
    body=error_body,
    call=st.sampled_from(sorted(CALLS)),
    wait=retry_after,
)
def test_every_error_answer_is_a_short_masked_vapi_error(
    status: int, body: bytes, call: str, wait: str | None
) -> None:
    headers = {"Retry-After": wait} if wait is not None else None
    sleeps: list[float] = []
    policy = RetryPolicy(attempts=2, base_s=0.001, cap_s=0.01, sleep=sleeps.append)
    script = Script(then=lambda _r: httpx.Response(status, content=body, headers=headers))
    with httpx.Client(base_url=BASE, transport=httpx.MockTransport(script)) as http:
        vapi = VapiWriter(http, API_KEY, retry=policy)
        if call == "delete" and status == 404:
            assert vapi.delete_assistant("a1") is None
            return
        with pytest.raises(VapiError) as info:
            CALLS[call](vapi)
    exc = info.value
    for text in (str(exc), repr(exc), getattr(exc, "reason", "")):
        assert_no_secret(text)
        assert LEAK_PART not in text
    message = str(exc)
    assert len(message) <= 300
    assert len(message.splitlines()) == 1
    assert not any(unicodedata.category(ch) in ("Cc", "Zl", "Zp") for ch in message)
    if call == "create":
        assert len(script.requests) == 1  # a sent POST is never repeated
        assert sleeps == []  # and never waited on
        if status in DEFINITE_REFUSALS:
            assert isinstance(exc, VapiRejected)
        elif status == 429:
            assert isinstance(exc, VapiRateLimited)
        else:
            assert type(exc) is VapiAmbiguousWrite
    else:
        assert isinstance(exc, VapiRejected) == (status in DEFINITE_REFUSALS)
        assert not isinstance(exc, VapiAmbiguousWrite)
        assert sum(sleeps) <= policy.max_total_wait_s
        assert all(s <= policy.max_retry_after_s for s in sleeps)
    assert exc.status == status


odd_success_body = st.one_of(
    st.binary(max_size=100),
    json_tree.map(lambda b: json.dumps(b).encode()),
    st.lists(
        st.dictionaries(st.sampled_from(["id", "createdAt", "name"]), json_tree, max_size=3),
        max_size=3,
    ).map(lambda b: json.dumps(b).encode()),
    st.integers(1, 3000).map(lambda n: b"[" * n + b"]" * n),
    st.integers(1, 3000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    status=st.sampled_from([200, 201, 204]),
    body=odd_success_body,
    call=st.sampled_from(sorted(CALLS)),
)
def test_odd_success_answers_return_or_raise_vapi_errors(
    status: int, body: bytes, call: str
) -> None:
    script = Script(then=lambda _r: httpx.Response(status, content=body))
    with httpx.Client(base_url=BASE, transport=httpx.MockTransport(script)) as http:
        vapi = VapiWriter(http, API_KEY, retry=FAST_RETRY)
        failure: VapiError | None = None
        try:
            CALLS[call](vapi)
        except VapiError as exc:  # anything else fails the test
            failure = exc
    assert len(script.requests) == 1
    if failure is not None:
        assert len(str(failure)) <= 300
        assert len(str(failure).splitlines()) == 1
        if call == "create":
            assert isinstance(failure, VapiAmbiguousWrite)


# -- a real HTTP server that echoes secrets, or announces a huge body -------------------------


class EchoHandler(http.server.BaseHTTPRequestHandler):
    """Answers every request with an error echoing the Authorization header and the body
    (status 403, or the number ending the path); a path under /huge answers 200 with a
    Content-Length of 1 GiB and sends one byte."""

    def do_any(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        sent = self.rfile.read(length).decode()
        if self.path.startswith("/huge"):
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(2**30))
            self.end_headers()
            self.wfile.write(b"[")
            self.wfile.flush()
            return
        status = int(self.path.rsplit("/", 1)[-1]) if self.path[-3:].isdigit() else 403
        auth = self.headers.get("Authorization", "")
        body = json.dumps(
            {"message": [f"Invalid Key {auth}", f"you sent {sent}"], "statusCode": status}
        ).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PATCH = do_DELETE = do_any

    def log_message(self, *_args: Any) -> None:
        pass


@pytest.fixture
def echo_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), EchoHandler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("status", [401, 403, 400, 422, 409, 500])
def test_real_server_echoing_the_key_and_body(echo_server: str, status: int) -> None:
    body = {"name": "x", "server": {"headers": {"x-vapi-secret": WEBHOOK_SECRET}}}
    with http_client(echo_server, timeout_s=5) as http:
        vapi = VapiWriter(http, API_KEY, retry=FAST_RETRY)
        with pytest.raises(VapiError) as info:
            vapi.update_assistant(str(status), body)
        with pytest.raises(VapiError) as created:
            vapi.create_assistant(body)
    for exc in (info.value, created.value):
        for text in (str(exc), repr(exc), repr(vapi)):
            assert_no_secret(text)
        assert_one_line(exc, "")
    assert "Invalid Key Bearer (sensitive)" in str(created.value)
    assert re.search(r'"x-vapi-secret":"?\(sensitive\)', str(created.value)), str(created.value)
    assert isinstance(created.value, VapiAuthError)  # the default answer is 403


def test_real_server_announcing_a_huge_body(echo_server: str) -> None:
    with http_client(f"{echo_server}/huge", timeout_s=5) as http:
        vapi = VapiWriter(http, API_KEY, retry=FAST_RETRY)
        started = time.monotonic()
        with pytest.raises(VapiError, match=r"^GET /assistant/a: .* with a body over 64 MiB$"):
            vapi.get_assistant("a")
        with pytest.raises(VapiAmbiguousWrite, match="a body over 64 MiB, outcome unknown"):
            vapi.create_assistant({"name": "x"})
        assert time.monotonic() - started < 3  # refused at the headers, not read for 1 GiB


# -- input no HTTP header can carry, answers too deep to walk ---------------------------------


def test_an_api_key_no_header_can_carry_is_refused_before_sending() -> None:
    script = Script(then=ok())
    with httpx.Client(base_url=BASE, transport=httpx.MockTransport(script)) as http:
        for key in ("sk-café-123", "sk-with\nnewline", "sk-\u201cquoted\u201d"):
            with pytest.raises(VapiRejected) as exc:
                VapiWriter(http, key, retry=FAST_RETRY).create_assistant({"name": "x"})
            assert "printable ASCII" in str(exc.value)
            assert key not in str(exc.value)
    assert script.requests == []  # nothing was sent: a create refused here created nothing


@pytest.mark.parametrize("depth", [65, 600, 5000])
def test_an_answer_nested_too_deep_is_a_vapi_error(make: Callable[..., Client], depth: int) -> None:
    deep: Any = "leaf"
    for _ in range(depth):
        deep = [deep]
    page = [{"id": "a", "createdAt": "t", "model": {"messages": deep}}]
    c = make(httpx.Response(200, text=json.dumps(page) if depth < 900 else "[" * depth))
    with pytest.raises(VapiError) as exc:
        c.vapi.list_assistants()
    assert "nested" in str(exc.value) or "not JSON" in str(exc.value)


def test_secrets_sent_in_the_body_are_masked_when_an_error_echoes_them(
    make: Callable[..., Client],
) -> None:
    body = {"name": "x", "server": {"url": "u", "headers": {"x-custom": "SENT-SECRET-123"}}}
    echo = httpx.Response(400, json={"message": "bad value SENT-SECRET-123 in your request"})
    c = make(echo)
    with pytest.raises(VapiRejected) as exc:
        c.vapi.create_assistant(body)
    assert "SENT-SECRET-123" not in str(exc.value)
    assert "(sensitive)" in str(exc.value)


# -- the facts a caller acts on are typed, not read from the message ---------------------------


@pytest.mark.parametrize(
    ("reply", "created_nothing", "says_next_run"),
    [
        (fail(422), True, False),  # a definite refusal of a create
        (fail(401), True, False),
        (fail(500), False, False),  # a 5xx: the outcome is unknown
        (fail(429), False, True),  # rate limited: unknown, and the message says next run
        (ok({"no": "id"}, 201), False, True),  # an unreadable 2xx: unknown
    ],
)
def test_a_failed_create_carries_typed_facts(
    make: Callable[..., Client], reply: httpx.Response, created_nothing: bool, says_next_run: bool
) -> None:
    c = make(reply)
    with pytest.raises(VapiError) as raised:
        c.vapi.create_object("/tool", "tool", {"type": "endCall"})
    assert raised.value.nothing_created is created_nothing
    assert raised.value.says_next_run is says_next_run
    assert ("nothing was created" in str(raised.value)) is created_nothing
    assert c.sent == 1  # a POST is never sent twice


def test_a_refused_patch_created_nothing_to_speak_of(make: Callable[..., Client]) -> None:
    c = make(fail(422))
    with pytest.raises(VapiError) as raised:
        c.vapi.update_object("/tool", "t1", {"async": True})
    assert raised.value.nothing_created is False  # not a create: the fact does not apply


def test_the_orgs_secrets_are_found_once_and_only_when_an_answer_is_quoted() -> None:
    """`secrets` given as what finds them: a reader whose answers are all fine never asks (a
    converged org's list call walks no body for them); the first answer quoted asks once,
    and every secret it names is masked in the error, as a list of them would be."""
    asked: list[int] = []
    secret = "whsec-ECHOED-1234567890"

    def secrets() -> list[str]:
        asked.append(1)
        return [secret]

    answers = iter(
        [
            httpx.Response(200, json=[]),
            httpx.Response(400, json={"message": f"bad header {secret}"}),
            httpx.Response(400, json={"message": f"again {secret}"}),
        ]
    )
    with httpx.Client(
        base_url=BASE, transport=httpx.MockTransport(lambda request: next(answers))
    ) as http:
        reader = VapiReader(http, API_KEY, retry=FAST_RETRY, secrets=secrets)
        assert reader.list_assistants() == []
        assert asked == []
        for said in ("bad header", "again"):
            with pytest.raises(VapiError) as err:
                reader.list_assistants()
            assert said in str(err.value) and secret not in str(err.value)
    assert asked == [1]
