"""The Vapi client: retries (httpx.MockTransport), paging and ambiguous writes (the emulator)."""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.engine.model import ownership_tag, tag_of
from reconciler.vapi.client import (
    PAGE_LIMIT,
    RetryPolicy,
    VapiAmbiguousWrite,
    VapiAuthError,
    VapiError,
    VapiNotFound,
    VapiReader,
    VapiWriter,
    http_client,
)
from tests.conftest import FAST_RETRY, emulator_stats

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
    def __init__(self, script: Script, attempts: int = 4) -> None:
        self.script = script
        self.sleeps: list[float] = []
        self.policy = RetryPolicy(
            attempts=attempts, base_s=0.001, cap_s=0.01, sleep=self.sleeps.append
        )
        self.http = httpx.Client(base_url=BASE, transport=httpx.MockTransport(script))
        self.vapi = VapiWriter(self.http, API_KEY, retry=self.policy)

    @property
    def sent(self) -> int:
        return len(self.script.requests)


@pytest.fixture
def make() -> Iterator[Callable[..., Client]]:
    made: list[Client] = []

    def factory(*replies: Reply, then: Reply | None = None, attempts: int = 4) -> Client:
        client = Client(Script(*replies, then=then), attempts)
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
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    c = make(fail(429, {"Retry-After": when}), ok())
    c.vapi.list_assistants()
    [slept] = c.sleeps
    assert 27.0 < slept <= 30.0


def test_retry_after_in_the_past_is_zero(make: Callable[..., Client]) -> None:
    c = make(fail(503, {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}), ok())
    c.vapi.list_assistants()
    assert c.sleeps == [0.0]


def test_retry_after_capped(make: Callable[..., Client]) -> None:
    c = make(fail(429, {"Retry-After": "3600"}), ok())
    c.vapi.list_assistants()
    assert c.sleeps == [c.policy.max_retry_after_s]


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
    assert f"boom {status}" in str(info.value)
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


def test_post_429_waits_then_is_ambiguous(make: Callable[..., Client]) -> None:
    # A 429 should mean "not processed", but a limiter after the handler breaks that promise:
    # the client honours Retry-After, then leaves the second POST to the caller's tag lookup.
    c = make(fail(429, {"Retry-After": "1"}), then=ok({"id": "dup"}, 201))
    with pytest.raises(VapiAmbiguousWrite) as info:
        c.vapi.create_assistant({"name": "x"})
    assert info.value.status == 429
    assert c.sent == 1
    assert c.sleeps == [1.0]


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
    with pytest.raises(VapiError, match="boom 400") as info:
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


# -- against the emulator --------------------------------------------------------------------


def expected_pages(n: int, limit: int) -> int:
    """Newest first (the emulator): each full page repeats one assistant at its older edge,
    and the first full page costs one more request for its newer side (which is empty)."""
    if n < limit:
        return 1
    return 3 + (n - limit) // (limit - 1)


N_ASSISTANTS = 2345


@pytest.fixture
def filled(emulator: str) -> tuple[str, set[str]]:
    token = "tenant-paging-key"
    with httpx.Client(
        base_url=emulator, headers={"Authorization": f"Bearer {token}"}, timeout=10
    ) as api:
        ids = set()
        for i in range(N_ASSISTANTS):
            resp = api.post("/assistant", json={"name": f"a{i}"})
            resp.raise_for_status()
            ids.add(resp.json()["id"])
    return token, ids


@pytest.mark.parametrize("limit", [PAGE_LIMIT, 100])
def test_paging_the_emulator_returns_each_once(
    emulator: str, filled: tuple[str, set[str]], limit: int
) -> None:
    token, ids = filled
    before = emulator_stats(emulator)["GET /assistant"]
    with http_client(emulator, timeout_s=10) as http:
        got = VapiReader(http, token, retry=FAST_RETRY).list_assistants(limit=limit)
    listed = [a["id"] for a in got]
    assert len(listed) == len(set(listed)) == N_ASSISTANTS
    assert set(listed) == ids
    pages = emulator_stats(emulator)["GET /assistant"] - before
    assert pages == expected_pages(N_ASSISTANTS, limit)
    assert pages == {1000: 4, 100: 25}[limit]


def test_paging_isolated_per_account(emulator: str) -> None:
    with http_client(emulator, timeout_s=10) as http:
        a = VapiWriter(http, "tenant-a", retry=FAST_RETRY)
        b = VapiWriter(http, "tenant-b", retry=FAST_RETRY)
        made = a.create_assistant({"name": "only-a"})
        assert [x["id"] for x in a.list_assistants()] == [made["id"]]
        assert b.list_assistants() == []
        with pytest.raises(VapiNotFound):
            b.get_assistant(made["id"])


def _fault(emulator: str, **fault: Any) -> None:
    httpx.post(f"{emulator}/_emulator/faults", json=fault).raise_for_status()


def test_ambiguous_create_after_commit(emulator: str) -> None:
    _fault(
        emulator, method="POST", path="/assistant", mode="error_after_commit", status=500, times=1
    )
    body = {"name": "tagged", "metadata": ownership_tag("org-1", "inbound")}
    with http_client(emulator, timeout_s=10) as http:
        vapi = VapiWriter(http, "tenant-ambiguous", retry=FAST_RETRY)
        with pytest.raises(VapiAmbiguousWrite) as info:
            vapi.create_assistant(body)
        assert info.value.status == 500
        [made] = vapi.list_assistants()
    assert tag_of(made) == ("org-1", "inbound")
    assert emulator_stats(emulator)["POST /assistant"] == 1  # never retried blindly


def test_ambiguous_create_that_did_not_happen(emulator: str) -> None:
    _fault(emulator, method="POST", path="/assistant", mode="error", status=502, times=1)
    with http_client(emulator, timeout_s=10) as http:
        vapi = VapiWriter(http, "tenant-ambiguous", retry=FAST_RETRY)
        with pytest.raises(VapiAmbiguousWrite):
            vapi.create_assistant({"name": "x"})
        assert vapi.list_assistants() == []
    assert emulator_stats(emulator)["POST /assistant"] == 1


def test_delete_whose_answer_was_lost_is_retried_and_succeeds(emulator: str) -> None:
    with http_client(emulator, timeout_s=10) as http:
        vapi = VapiWriter(http, "tenant-delete", retry=FAST_RETRY)
        made = vapi.create_assistant({"name": "x"})
        _fault(
            emulator,
            method="DELETE",
            path="/assistant/{id}",
            mode="error_after_commit",
            status=502,
            times=1,
        )
        vapi.delete_assistant(made["id"])  # 502 after the delete, then 404: the goal holds
        assert vapi.list_assistants() == []
    assert emulator_stats(emulator)["DELETE /assistant/{id}"] == 2


@pytest.mark.parametrize(("mode", "made"), [("error", 0), ("error_after_commit", 1)])
def test_throttled_create_is_ambiguous(emulator: str, mode: str, made: int) -> None:
    _fault(emulator, method="POST", path="/assistant", mode=mode, status=429, retry_after="1")
    sleeps: list[float] = []
    policy = RetryPolicy(attempts=3, sleep=sleeps.append)
    with http_client(emulator, timeout_s=10) as http:
        vapi = VapiWriter(http, "tenant-throttled", retry=policy)
        with pytest.raises(VapiAmbiguousWrite):
            vapi.create_assistant({"name": "x"})
        assert len(vapi.list_assistants()) == made  # never a duplicate
    assert sleeps == [1.0]
    assert emulator_stats(emulator)["POST /assistant"] == 1


def test_emulator_rejected_key(emulator: str) -> None:
    key = "invalid-key-ABC123SECRET"
    with http_client(emulator, timeout_s=10) as http:
        reader = VapiReader(http, key, retry=FAST_RETRY)
        with pytest.raises(VapiAuthError) as info:
            reader.list_assistants()
    assert info.value.status == 401
    assert key not in str(info.value)
    assert key not in repr(reader)
    assert emulator_stats(emulator)["GET /assistant"] == 1


def test_emulator_get_retried_after_server_error(emulator: str) -> None:
    _fault(emulator, method="GET", path="/assistant", mode="error", status=503, times=2)
    with http_client(emulator, timeout_s=10) as http:
        assert VapiReader(http, "tenant-x", retry=FAST_RETRY).list_assistants() == []
    assert emulator_stats(emulator)["GET /assistant"] == 3
