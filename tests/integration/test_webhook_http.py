"""`POST /webhooks/vapi` over HTTP against real Postgres: every answer for both auth modes, the
body limit on a real server, forwarding to a real downstream, the middleware in a user's app,
cache invalidation across processes (LISTEN/NOTIFY) and what the logs may hold."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.to_thread
import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from reconciler.metrics import ORG_WEBHOOKS, REGISTRY
from reconciler.netpolicy import ForwardPolicy
from reconciler.secrets.crypto import MasterKey
from reconciler.state.db import open_pool
from reconciler.state.store import StateReader, StateWriter
from reconciler.webhooks.http import (
    TIMEOUT_MESSAGE,
    TOO_LARGE_ANSWER_MESSAGE,
    UNKNOWN_MESSAGE,
    UNREACHABLE_MESSAGE,
    VapiWebhookMiddleware,
    webhook_app,
)
from reconciler.webhooks.listen import LISTENER_NAME, CacheListener
from reconciler.webhooks.resolver import MAX_BODY_BYTES, ResolvedWebhook, WebhookResolver
from tests.helpers import ROOT, SlowReader, listening_socket, run_python, served
from tests.helpers.netproxy import cuttable
from tests.integration.test_resolver import (
    REFUSALS,
    Org,
    body,
    last_used,
    seed_org,
    signed,
    store_secret,
)

PATH = "/webhooks/vapi"
LOCAL = ForwardPolicy.from_setting("127.0.0.0/8")
"""The downstreams here listen on 127.0.0.1: org forward URLs there are allowed explicitly."""


def outcomes() -> dict[str, float]:
    """The webhook counter by outcome, as Prometheus would scrape it."""
    found: dict[str, float] = {}
    for metric in REGISTRY.collect():
        if metric.name == "reconciler_webhook_requests":
            for sample in metric.samples:
                if sample.name.endswith("_total"):
                    found[sample.labels["outcome"]] = sample.value
    return found


def counted(before: dict[str, float]) -> dict[str, float]:
    """What the counter gained since `before`."""
    return {k: v - before.get(k, 0.0) for k, v in outcomes().items() if v != before.get(k, 0.0)}


@contextmanager
def http_to(app: Any) -> Iterator[httpx.Client]:
    """A keep-alive client to `app` served for real (lifespan included)."""
    with served(app) as url, httpx.Client(base_url=url, timeout=10) as http:
        yield http


@pytest.fixture
def two(state: StateWriter, master_key: MasterKey) -> tuple[Org, Org]:
    return seed_org(state, master_key, "acme"), seed_org(state, master_key, "globex")


@pytest.fixture
def resolver(state: StateWriter, master_key: MasterKey) -> WebhookResolver:
    return WebhookResolver(state, master_key)


@pytest.fixture
def client(resolver: WebhookResolver) -> Iterator[httpx.Client]:
    with http_to(webhook_app(resolver)) as http:
        yield http


# --- verification ----------------------------------------------------------------------------


def test_good_secret_and_signatures_are_accepted(
    two: tuple[Org, Org], client: httpx.Client
) -> None:
    acme, globex = two
    before = outcomes()
    raw = body(acme.inbound)
    for headers in (
        {"x-vapi-secret": acme.secret},
        signed(acme.secret, raw),
        signed(acme.secret, raw, ms=True),
        signed(acme.secret, raw, prefix="sha256="),
        {"x-vapi-secret": acme.secret, **signed(acme.secret, raw)},
    ):
        resp = client.post(PATH, content=raw, headers=headers)
        assert resp.status_code == 200
        assert resp.json() == {"orgId": acme.org_id, "slug": "acme"}
    resp = client.post(
        PATH, content=body(globex.outbound), headers={"x-vapi-secret": globex.secret}
    )
    assert resp.json() == {"orgId": globex.org_id, "slug": "globex"}
    assert counted(before) == {"accepted": 6}


@pytest.mark.parametrize("warm", [False, True], ids=["cold", "warm"])
@pytest.mark.parametrize("case", list(REFUSALS))
def test_refusals_are_401_with_a_fixed_message(
    case: str, warm: bool, two: tuple[Org, Org], client: httpx.Client
) -> None:
    acme, globex = two
    make, expected = REFUSALS[case]
    raw = body(acme.inbound)
    if warm:
        assert client.post(PATH, content=raw, headers={"x-vapi-secret": acme.secret}).is_success
    before = outcomes()
    headers = make(acme, globex, raw)
    resp = client.post(PATH, content=raw, headers=headers)
    assert resp.status_code == 401
    assert resp.headers["content-type"] == "application/json"
    message = resp.json()["error"]
    assert message in {
        "bad or missing x-vapi-secret",
        "missing x-vapi-secret or x-signature",
        "bad x-signature",
        "x-timestamp missing or not within 5 minutes of now",
    }
    assert "acme" not in resp.text
    assert counted(before) == {expected.outcome: 1}


def test_each_orgs_outcomes_are_counted_for_its_template_rollout(
    two: tuple[Org, Org], client: httpx.Client
) -> None:
    """A rollout halts a wave whose orgs' webhooks start failing: each outcome is counted for
    the org it resolved to (a bad secret too), and for no other."""
    acme, _ = two
    before = ORG_WEBHOOKS.counts("acme", 600), ORG_WEBHOOKS.counts("globex", 600)
    raw = body(acme.inbound)
    assert client.post(PATH, content=raw, headers={"x-vapi-secret": acme.secret}).is_success
    wrong = client.post(PATH, content=raw, headers={"x-vapi-secret": "not-the-secret"})
    assert wrong.status_code == 401
    ok, failed = ORG_WEBHOOKS.counts("acme", 600)
    assert (ok - before[0][0], failed - before[0][1]) == (1, 1)
    assert ORG_WEBHOOKS.counts("globex", 600) == before[1]


def test_an_org_without_a_credential_refuses_everything(
    two: tuple[Org, Org], state: StateWriter, client: httpx.Client
) -> None:
    acme, _ = two
    state.credentials.deactivate(acme.org_id, "vapi")
    raw = body(acme.inbound)
    for headers in ({"x-vapi-secret": acme.secret}, signed(acme.secret, raw)):
        resp = client.post(PATH, content=raw, headers=headers)
        assert (resp.status_code, resp.json()) == (
            401,
            {"error": "no active webhook secret for this assistant"},
        )


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"",
        b"[]",
        b'{"message": 3}',
        b'{"message": {"type": "assistant-request", "call": {}}}',
        b'{"assistantId": "asst-1", "message": {"type": "status-update"}}',  # root: not read
        b'{"message": {"call": {"assistantId": "a b"}}}',
        b"\xff\xfe",
    ],
)
def test_malformed_bodies_are_400(
    raw: bytes, state: StateWriter, client: httpx.Client, two: tuple[Org, Org]
) -> None:
    before, queries = outcomes(), state.queries
    resp = client.post(PATH, content=raw, headers={"x-vapi-secret": two[0].secret})
    assert resp.status_code == 400
    assert set(resp.json()) == {"error"}
    assert "\n" not in resp.json()["error"]
    assert counted(before) == {"malformed": 1}
    assert state.queries == queries


def test_auth_header_given_twice_is_400(two: tuple[Org, Org], client: httpx.Client) -> None:
    acme, _ = two
    raw = body(acme.inbound)
    headers = [("x-vapi-secret", acme.secret), ("X-Vapi-Secret", acme.secret)]
    resp = client.post(PATH, content=raw, headers=headers)
    assert (resp.status_code, resp.json()) == (400, {"error": "x-vapi-secret given more than once"})


def test_only_post_is_answered(client: httpx.Client) -> None:
    assert client.get(PATH).status_code == 405


def test_unknown_assistant_is_404_and_a_flood_costs_one_query(
    two: tuple[Org, Org], state: StateWriter, client: httpx.Client
) -> None:
    raw = body(f"asst-{uuid.uuid4()}")
    before, queries = outcomes(), state.queries
    for _ in range(1000):
        resp = client.post(PATH, content=raw, headers={"x-vapi-secret": two[0].secret})
        assert (resp.status_code, resp.json()) == (404, {"error": UNKNOWN_MESSAGE})
    assert state.queries - queries == 1
    assert counted(before) == {"unknown_assistant": 1000}


def test_concurrent_requests_for_one_unknown_id_cost_one_query(
    two: tuple[Org, Org], state: StateWriter, master_key: MasterKey
) -> None:
    reader = SlowReader(state.pool)
    app = webhook_app(WebhookResolver(reader, master_key))
    raw = body(f"asst-{uuid.uuid4()}")

    async def flood() -> list[int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            statuses: list[int] = []

            async def one() -> None:
                resp = await http.post(PATH, content=raw, headers={"x-vapi-secret": "s"})
                statuses.append(resp.status_code)

            async with anyio.create_task_group() as tg:
                for _ in range(200):
                    tg.start_soon(one)
            return statuses

    assert anyio.run(flood) == [404] * 200
    assert reader.queries == 1


def test_a_cache_hit_stays_on_the_event_loop(
    two: tuple[Org, Org], client: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    acme, _ = two
    hops: list[str] = []
    real = anyio.to_thread.run_sync

    async def spy(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        hops.append(getattr(func, "__name__", "?"))
        return await real(func, *args, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", spy)
    raw = body(acme.inbound)
    for _ in range(20):
        assert client.post(PATH, content=raw, headers={"x-vapi-secret": acme.secret}).is_success
        assert client.post(PATH, content=raw, headers=signed(acme.secret, raw)).is_success
    assert hops == ["verify"]  # the one miss; 39 hits answered without a thread
    big = json.dumps(
        {"message": {"call": {"assistantId": acme.inbound}, "transcript": "x" * 100_000}}
    ).encode()
    assert client.post(PATH, content=big, headers={"x-vapi-secret": acme.secret}).is_success
    assert hops == ["verify", "parse_webhook"]  # a large body is parsed off the loop


class BrokenResolver(WebhookResolver):
    def verify_cached(self, webhook: Any) -> ResolvedWebhook | None:
        raise RuntimeError(f"bug holding {webhook.body!r}")


def test_an_unexpected_error_is_a_fixed_503_and_one_line(
    state: StateWriter, master_key: MasterKey, caplog: pytest.LogCaptureFixture
) -> None:
    raw = body("asst-1")
    with (
        caplog.at_level(logging.DEBUG, "reconciler.webhooks"),
        http_to(webhook_app(BrokenResolver(state, master_key))) as http,
    ):
        resp = http.post(PATH, content=raw, headers={"x-vapi-secret": "s"})
    assert (resp.status_code, resp.json()) == (503, {"error": "cannot verify this webhook now"})
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("reconciler.webhooks")]
    assert lines == ["webhook refused (503 unavailable, org -): unexpected RuntimeError"]
    assert all(r.exc_info is None for r in caplog.records)


# --- the database down -----------------------------------------------------------------------


def test_closed_pool_is_503(database_url: str, master_key: MasterKey) -> None:
    pool = open_pool(database_url, max_size=1, name="webhook-http-closed")
    pool.close()
    app = webhook_app(WebhookResolver(StateReader(pool), master_key))
    before = outcomes()
    with http_to(app) as http:
        resp = http.post(PATH, content=body("asst-1"), headers={"x-vapi-secret": "s"})
    assert (resp.status_code, resp.json()) == (503, {"error": "cannot verify this webhook now"})
    assert counted(before) == {"unavailable": 1}


def test_database_going_down_is_503_for_uncached_ids_only(
    two: tuple[Org, Org], database_url: str, master_key: MasterKey
) -> None:
    acme, globex = two
    with cuttable(database_url) as proxy:
        pool = open_pool(proxy.url(database_url), max_size=2, name="webhook-http-cut")
        pool.timeout = 1.0  # a test need not wait out the 10 s default
        try:
            with http_to(webhook_app(WebhookResolver(StateReader(pool), master_key))) as http:
                cached = body(acme.inbound)
                assert http.post(PATH, content=cached, headers={"x-vapi-secret": acme.secret})
                proxy.cut(stay_down=True)
                resp = http.post(PATH, content=cached, headers={"x-vapi-secret": acme.secret})
                assert resp.status_code == 200  # a hit needs no database
                resp = http.post(PATH, content=cached, headers={"x-vapi-secret": "wrong"})
                assert resp.status_code == 401
                resp = http.post(
                    PATH, content=body(globex.inbound), headers={"x-vapi-secret": globex.secret}
                )
                assert (resp.status_code, resp.json()) == (
                    503,
                    {"error": "cannot verify this webhook now"},
                )
                proxy.restore()
        finally:
            pool.close()


# --- a real server: the body limit -----------------------------------------------------------


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def read_answer(sock: socket.socket) -> bytes:
    """One whole HTTP answer (head and content-length body) from a raw socket."""
    data = b""
    while b"\r\n\r\n" not in data and (chunk := sock.recv(65536)):
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"content-length: (\d+)", head, re.IGNORECASE)[1])  # type: ignore[index]
    while len(rest) < length and (chunk := sock.recv(65536)):
        rest += chunk
    return head + b"\r\n\r\n" + rest


@pytest.fixture
def server(resolver: WebhookResolver) -> Iterator[str]:
    with served(webhook_app(resolver)) as url:
        yield url


def test_body_up_to_the_limit_is_accepted(two: tuple[Org, Org], server: str) -> None:
    acme, _ = two
    raw = body(acme.inbound)
    exactly = raw + b" " * (MAX_BODY_BYTES - len(raw))
    resp = httpx.post(server + PATH, content=exactly, headers={"x-vapi-secret": acme.secret})
    assert resp.status_code == 200


def test_declared_length_over_the_limit_is_413_before_any_body(server: str) -> None:
    before = outcomes()
    port = int(server.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        # 10 GB announced, none sent: the answer cannot wait for the body
        sock.sendall(
            f"POST {PATH} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            "content-length: 10000000000\r\n\r\n".encode()
        )
        answer = read_answer(sock)
    assert status_of(answer) == 413
    assert b"connection: close" in answer  # the server must not go on reading
    assert answer.endswith(b'{"error": "body is larger than 1048576 bytes"}')
    assert counted(before) == {"too_large": 1}


def test_chunked_body_over_the_limit_is_413_without_reading_the_rest(server: str) -> None:
    before = outcomes()
    port = int(server.rsplit(":", 1)[1])
    sent = [0]
    limit = 64 * MAX_BODY_BYTES

    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            f"POST {PATH} HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n".encode()
        )

        def stream() -> None:  # 64 KiB chunks for as long as the server reads (up to 64 MiB)
            chunk = b"10000\r\n" + b" " * 0x10000 + b"\r\n"
            try:
                while sent[0] < limit:
                    sock.sendall(chunk)
                    sent[0] += 0x10000
            except OSError:
                pass

        writer = threading.Thread(target=stream, daemon=True)
        writer.start()
        answer = read_answer(sock)
        writer.join(10)
    assert status_of(answer) == 413
    assert b"connection: close" in answer
    assert sent[0] < limit // 4  # answered, and the connection dropped, long before the end
    assert counted(before) == {"too_large": 1}


# --- forwarding ------------------------------------------------------------------------------


@dataclass
class Received:
    path: str
    headers: list[tuple[str, str]]
    body: bytes
    client_port: int

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k == name]


@pytest.fixture(scope="module")
def downstream() -> Iterator[tuple[str, list[Received]]]:
    """A small real service that webhooks are forwarded to: it records what it got and
    answers by path."""
    received: list[Received] = []

    async def hook(request: Request) -> Response:
        raw = await request.body()
        path = request.url.path
        headers = [(k.decode(), v.decode()) for k, v in request.headers.raw]
        assert request.client is not None
        received.append(Received(path, headers, raw, request.client.port))
        if path == "/slow":
            await anyio.sleep(1.5)
        if path == "/redirect":
            return Response(status_code=307, headers={"location": "/tools"})
        if path == "/empty":
            return Response(status_code=204)
        if path == "/huge":
            return Response(b"x" * (MAX_BODY_BYTES + 1), media_type="application/octet-stream")
        if path == "/text":
            return PlainTextResponse("plain answer", status_code=202)
        if path.startswith("/cookie"):  # a target with sessions: each answer sets one
            slug = request.headers.get("x-reconciler-org-slug", "")
            answer = Response(b"{}", status_code=200, media_type="application/json")
            answer.set_cookie("session", f"of-{slug}", path="/")
            return answer
        return Response(
            b'{"results": [{"toolCallId": "t1", "result": "ok"}]}',
            status_code=201,
            media_type="application/vnd.tools+json",
        )

    app = Starlette(routes=[Route("/{path:path}", hook, methods=["POST"])])
    with served(app) as url:
        yield url, received


@pytest.fixture
def target(downstream: tuple[str, list[Received]]) -> tuple[str, list[Received]]:
    downstream[1].clear()
    return downstream


def tool_call_body(assistant_id: str) -> bytes:
    """Not what json.dumps would write back: odd spacing, escapes and raw UTF-8."""
    head = '{ "message" :{"type":"tool-calls","call": {"assistantId":"ASSISTANT"},'
    tail = '"toolCallList":[{"id":"t1","function":{"name":"f","arguments":"{\\"a\\": 1}"}}],'
    return (
        (head + tail + '"note": "caf\u00e9 \\u00e9"}  }\n')
        .replace("ASSISTANT", assistant_id)
        .encode()
    )


def test_verified_webhooks_are_forwarded_and_answers_relayed(
    state: StateWriter,
    master_key: MasterKey,
    target: tuple[str, list[Received]],
) -> None:
    url, received = target
    acme = seed_org(state, master_key, "acme", forward_url=f"{url}/acme-tools")
    globex = seed_org(state, master_key, "globex")  # none of its own: the global one
    app = webhook_app(
        WebhookResolver(state, master_key), forward_url=f"{url}/global", forward_policy=LOCAL
    )
    before = outcomes()
    with http_to(app) as http:
        raw = tool_call_body(acme.outbound)
        resp = http.post(
            PATH,
            content=raw,
            headers={
                "content-type": "application/json; charset=utf-8",
                "x-vapi-secret": acme.secret,
                **signed(acme.secret, raw),
            },
        )
        assert resp.status_code == 201
        assert resp.content == b'{"results": [{"toolCallId": "t1", "result": "ok"}]}'
        assert resp.headers["content-type"] == "application/vnd.tools+json"
        raw2 = body(globex.inbound, "end-of-call-report")
        resp2 = http.post(PATH, content=raw2, headers=signed(globex.secret, raw2))
        assert resp2.status_code == 201
    got, got2 = received
    assert (got.path, got2.path) == ("/acme-tools", "/global")
    assert got.body == raw  # the same bytes
    assert got2.body == raw2
    assert got.header("content-type") == ["application/json; charset=utf-8"]
    assert got2.header("content-type") == []  # none sent, none made up
    assert got.header("x-reconciler-org-id") == [acme.org_id]
    assert got.header("x-reconciler-org-slug") == ["acme"]
    assert got.header("x-reconciler-assistant-role") == ["outbound"]
    assert got.header("x-reconciler-assistant-id") == [acme.outbound]
    assert got2.header("x-reconciler-org-slug") == ["globex"]
    for forwarded in (got, got2):
        names = {k for k, _ in forwarded.headers}
        assert not names & {"x-vapi-secret", "x-signature", "x-timestamp"}
        text = json.dumps(forwarded.headers)
        assert acme.secret not in text
        assert globex.secret not in text
    assert counted(before) == {"forwarded": 2}


@pytest.mark.parametrize(
    ("path", "status", "content", "content_type"),
    [
        ("/text", 202, b"plain answer", "text/plain; charset=utf-8"),
        ("/empty", 204, b"", None),
        ("/redirect", 307, b"", None),  # relayed, not followed
    ],
)
def test_downstream_answers_are_relayed_as_they_are(
    path: str,
    status: int,
    content: bytes,
    content_type: str | None,
    two: tuple[Org, Org],
    resolver: WebhookResolver,
    target: tuple[str, list[Received]],
) -> None:
    url, received = target
    acme, _ = two
    with http_to(webhook_app(resolver, forward_url=url + path)) as http:
        resp = http.post(
            PATH,
            content=body(acme.inbound),
            headers={"x-vapi-secret": acme.secret},
            follow_redirects=False,
        )
    assert (resp.status_code, resp.content) == (status, content)
    assert resp.headers.get("content-type") == content_type
    assert [r.path for r in received] == [path]  # a redirect is not followed


def test_a_cookie_one_orgs_target_sets_never_rides_on_another_orgs_forward(
    state: StateWriter,
    master_key: MasterKey,
    target: tuple[str, list[Received]],
) -> None:
    """Both pooled clients: the orgs' own URLs (here two orgs on one host) and the operator's
    one URL that every org's webhooks go to."""
    url, received = target
    acme = seed_org(state, master_key, "acme", forward_url=f"{url}/cookie-acme")
    globex = seed_org(state, master_key, "globex", forward_url=f"{url}/cookie-globex")
    initech = seed_org(state, master_key, "initech")  # none of its own: the operator's
    hooli = seed_org(state, master_key, "hooli")
    app = webhook_app(
        WebhookResolver(state, master_key), forward_url=f"{url}/cookie-all", forward_policy=LOCAL
    )
    with http_to(app) as http:
        for org in (acme, globex, acme, initech, hooli, initech):
            raw = body(org.inbound)
            assert http.post(PATH, content=raw, headers=signed(org.secret, raw)).is_success
    assert [r.path for r in received] == [
        "/cookie-acme",
        "/cookie-globex",
        "/cookie-acme",
        "/cookie-all",
        "/cookie-all",
        "/cookie-all",
    ]
    assert [r.header("cookie") for r in received] == [[]] * 6


def test_one_pooled_client_forwards_and_is_closed_on_shutdown(
    two: tuple[Org, Org], resolver: WebhookResolver, target: tuple[str, list[Received]]
) -> None:
    url, received = target
    acme, globex = two
    app = webhook_app(resolver, forward_url=url + "/hook")
    endpoint = app.routes[0].endpoint  # type: ignore[attr-defined]
    with http_to(app) as http:
        for org in (acme, globex, acme):
            raw = body(org.outbound)
            assert http.post(PATH, content=raw, headers={"x-vapi-secret": org.secret}).is_success
        client = endpoint._client
        assert client is not None
        assert not client.is_closed
    assert len({r.client_port for r in received}) == 1  # one kept-alive connection
    assert client.is_closed  # closed by the app's lifespan
    assert endpoint._client is None


def test_unreachable_downstream_is_502(two: tuple[Org, Org], resolver: WebhookResolver) -> None:
    acme, _ = two
    with socket.create_server(("127.0.0.1", 0)) as sock:
        port = sock.getsockname()[1]  # closed below: nothing listens there
    before = outcomes()
    app = webhook_app(resolver, forward_url=f"http://127.0.0.1:{port}/hook")
    with http_to(app) as http:
        resp = http.post(PATH, content=body(acme.inbound), headers={"x-vapi-secret": acme.secret})
    assert (resp.status_code, resp.json()) == (502, {"error": UNREACHABLE_MESSAGE})
    assert counted(before) == {"forward_failed": 1}


def test_slow_downstream_is_504_within_the_timeout(
    two: tuple[Org, Org], resolver: WebhookResolver, target: tuple[str, list[Received]]
) -> None:
    url, _ = target
    acme, _ = two
    app = webhook_app(resolver, forward_url=f"{url}/slow", timeout_s=0.3)
    with http_to(app) as http:
        started = time.monotonic()
        resp = http.post(PATH, content=body(acme.inbound), headers={"x-vapi-secret": acme.secret})
        took = time.monotonic() - started
    assert (resp.status_code, resp.json()) == (504, {"error": TIMEOUT_MESSAGE})
    assert took < 1.4  # cut at 0.3 s, well before the downstream's 1.5 s


def test_a_downstream_answer_over_1_mib_is_502(
    two: tuple[Org, Org], resolver: WebhookResolver, target: tuple[str, list[Received]]
) -> None:
    url, _ = target
    acme, _ = two
    with http_to(webhook_app(resolver, forward_url=f"{url}/huge")) as http:
        resp = http.post(PATH, content=body(acme.inbound), headers={"x-vapi-secret": acme.secret})
    assert (resp.status_code, resp.json()) == (502, {"error": TOO_LARGE_ANSWER_MESSAGE})


def test_refused_webhooks_are_not_forwarded(
    two: tuple[Org, Org], resolver: WebhookResolver, target: tuple[str, list[Received]]
) -> None:
    url, received = target
    acme, globex = two
    with http_to(webhook_app(resolver, forward_url=url + "/hook")) as http:
        raw = body(acme.inbound)
        assert (
            http.post(PATH, content=raw, headers={"x-vapi-secret": globex.secret}).status_code
            == 401
        )
        assert http.post(PATH, content=raw, headers=signed(globex.secret, raw)).status_code == 401
    assert received == []


# --- the middleware in a user's app ----------------------------------------------------------


def users_app(resolver: WebhookResolver, calls: list[str]) -> Starlette:
    async def webhook(request: Request) -> Response:
        calls.append("webhook")
        hit: ResolvedWebhook = request.state.vapi_webhook
        raw = await request.body()
        return JSONResponse(
            {"slug": hit.slug, "role": hit.role, "type": hit.message_type, "body": raw.decode()}
        )

    async def other(request: Request) -> Response:
        calls.append("other")
        return PlainTextResponse((await request.body()).decode() or "ok")

    return Starlette(
        routes=[
            Route(PATH, webhook, methods=["POST"]),
            Route("/other", other, methods=["GET", "POST"]),
        ],
        middleware=[Middleware(VapiWebhookMiddleware, resolver=resolver)],
    )


def test_middleware_passes_verified_webhooks_with_the_org_and_the_body(
    two: tuple[Org, Org], resolver: WebhookResolver
) -> None:
    acme, _ = two
    calls: list[str] = []
    raw = tool_call_body(acme.outbound)
    before = outcomes()
    with http_to(users_app(resolver, calls)) as http:
        for headers in ({"x-vapi-secret": acme.secret}, signed(acme.secret, raw)):
            resp = http.post(PATH, content=raw, headers=headers)
            assert resp.status_code == 200
            assert resp.json() == {
                "slug": "acme",
                "role": "outbound",
                "type": "tool-calls",
                "body": raw.decode(),  # replayed unchanged
            }
    assert calls == ["webhook", "webhook"]
    assert counted(before) == {"accepted": 2}


def test_middleware_answers_errors_itself(two: tuple[Org, Org], resolver: WebhookResolver) -> None:
    acme, globex = two
    calls: list[str] = []
    raw = body(acme.inbound)
    with http_to(users_app(resolver, calls)) as http:
        assert http.post(PATH, content=raw, headers={"x-vapi-secret": globex.secret}).json() == {
            "error": "bad or missing x-vapi-secret"
        }
        assert http.post(PATH, content=raw, headers=signed(globex.secret, raw)).status_code == 401
        assert http.post(PATH, content=b"[]").status_code == 400
        assert http.post(PATH, content=body("asst-nobody"), headers={}).status_code == 404
        assert http.post(PATH, content=b" " * (MAX_BODY_BYTES + 1)).status_code == 413
        assert calls == []  # none reached the app
        # other paths (and other methods) are the app's own, unverified
        assert http.post("/other", content=b"hello").text == "hello"
        assert http.get("/other").text == "ok"
    assert calls == ["other", "other"]


# --- logs ------------------------------------------------------------------------------------


def test_logs_hold_no_secret_signature_body_or_forward_url(
    state: StateWriter,
    master_key: MasterKey,
    database_url: str,
    target: tuple[str, list[Received]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    url, _ = target
    acme = seed_org(state, master_key, "acme", forward_url=f"{url}/slow?token=fwd-tok-5e1f")
    globex = seed_org(state, master_key, "globex")
    marker = "BODY-MARKER-91c2"
    raw = json.dumps(
        {"message": {"type": "transcript", "assistantId": acme.inbound, "transcript": marker}}
    ).encode()
    raw_g = json.dumps(
        {"message": {"call": {"assistantId": globex.inbound}, "note": marker}}
    ).encode()
    sig = signed(acme.secret, raw)
    wrong_sig = signed(globex.secret, raw)
    closed = open_pool(database_url, max_size=1, name="webhook-http-logs")
    closed.close()
    caplog.set_level(logging.DEBUG)
    resolver = WebhookResolver(state, master_key)
    with http_to(webhook_app(resolver, timeout_s=0.2, forward_policy=LOCAL)) as http:
        http.post(PATH, content=raw, headers={"x-vapi-secret": acme.secret})  # 504
        http.post(PATH, content=raw, headers=sig)  # 504
        http.post(PATH, content=raw, headers={"x-vapi-secret": globex.secret})  # 401
        http.post(PATH, content=raw, headers=wrong_sig)  # 401
        http.post(PATH, content=raw, headers={**sig, "x-timestamp": "1600000000"})  # 401
        http.post(PATH, content=raw_g, headers={"x-vapi-secret": globex.secret})  # 200
        http.post(PATH, content=marker.encode(), headers=sig)  # 400
        http.post(PATH, content=body("asst-unknown"), headers=sig)  # 404 (the id is logged)
    with http_to(webhook_app(WebhookResolver(StateReader(closed), master_key))) as http:
        http.post(PATH, content=raw, headers={"x-vapi-secret": acme.secret})  # 503
    with http_to(webhook_app(WebhookResolver(state, master_key))) as http:
        http.post(PATH, content=raw, headers={"x-vapi-secret": acme.secret})  # 502: loopback
    forbidden = [
        acme.secret,
        globex.secret,
        sig["x-signature"],
        wrong_sig["x-signature"],
        marker,
        "fwd-tok-5e1f",
        url,
    ]
    mine = [r for r in caplog.records if r.name.startswith("reconciler.webhooks")]
    assert {r.levelname for r in mine} >= {"WARNING", "DEBUG"}
    assert len(mine) >= 7
    for record in caplog.records:
        text = record.getMessage() + (record.exc_text or "")
        assert record.exc_info is None
        assert "\n" not in text
        for value in forbidden:
            assert value not in text, (record.name, text)


# --- invalidation across processes -----------------------------------------------------------

SERVER = """
import os, socket, sys
import uvicorn
from reconciler.webhooks.http import app_from_url

sock = socket.socket(fileno=int(sys.argv[1]))
app = app_from_url(
    os.environ["WEBHOOK_TEST_DATABASE_URL"],
    os.environ["WEBHOOK_TEST_MASTER_KEY"],
    ttl_s=300,
    negative_ttl_s=300,
    flush_every_s=0.2,
)
uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on")).run(sockets=[sock])
"""


@contextmanager
def server_process(database_url: str, master_key: MasterKey) -> Iterator[tuple[str, Any]]:
    """`app_from_url` under uvicorn in a process of its own (its own cache and listener)."""
    sock = listening_socket()
    env = {
        **os.environ,
        "WEBHOOK_TEST_DATABASE_URL": database_url,
        "WEBHOOK_TEST_MASTER_KEY": master_key.to_b64(),
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(sock.fileno())],
        pass_fds=[sock.fileno()],
        env=env,
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        # the socket listens already: the first request waits in its backlog until served
        assert httpx.get(url + PATH, timeout=30).status_code == 405
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        sock.close()


def poll(check: Callable[[], bool], within_s: float) -> float:
    """Seconds until `check()` held; fails after `within_s`."""
    started = time.monotonic()
    while time.monotonic() - started < within_s:
        if check():
            return time.monotonic() - started
        time.sleep(0.01)
    raise AssertionError(f"not within {within_s} s")


def test_changes_in_another_process_count_at_once(
    two: tuple[Org, Org], state: StateWriter, master_key: MasterKey, database_url: str
) -> None:
    acme, globex = two
    fresh = f"asst-{uuid.uuid4()}"

    def status(aid: str, secret: str) -> int:
        raw = body(aid)
        return httpx.post(url + PATH, content=raw, headers={"x-vapi-secret": secret}).status_code

    with server_process(database_url, master_key) as (url, proc):
        assert status(fresh, acme.secret) == 404  # now cached as unknown for 300 s
        assert status(acme.inbound, acme.secret) == 200  # cached for 300 s
        assert status(globex.inbound, globex.secret) == 200
        # a new assistant (replacing acme's inbound one): announced, the negative entry dropped
        state.assistants.record(acme.org_id, "inbound", fresh, "acme inbound", {})
        assert poll(lambda: status(fresh, acme.secret) == 200, within_s=1.0) < 1.0
        assert status(acme.inbound, acme.secret) == 200  # replaced: its late webhooks still count
        # a removed one: kept for late webhooks until the retention window ends, then gone
        state.assistants.forget(globex.org_id, "inbound", globex.inbound)
        assert status(globex.inbound, globex.secret) == 200
        with state.pool.connection() as conn:
            conn.execute(
                "UPDATE assistant_org_mapping SET inactive_at = now() - interval '31 days'"
                " WHERE vapi_assistant_id = %s",
                (globex.inbound,),
            )
        assert state.orgs.expire() == 1
        poll(lambda: status(globex.inbound, globex.secret) == 404, within_s=1.0)
        # a changed credential: the new secret counts at once (the old one too, while rotating)
        assert status(acme.outbound, acme.secret) == 200  # cached for 300 s
        store_secret(state, master_key, acme.org_id, "whsec-acme-rotated")
        poll(lambda: status(acme.outbound, "whsec-acme-rotated") == 200, within_s=1.0)
        assert status(acme.outbound, acme.secret) == 200
        state.credentials.deactivate(acme.org_id, "vapi")
        poll(lambda: status(acme.outbound, "whsec-acme-rotated") == 401, within_s=1.0)
        # last_used_at is written by the server's flusher, off the request path
        with state.pool.connection() as conn:

            def used() -> bool:
                row = conn.execute(
                    "SELECT last_used_at IS NOT NULL FROM assistant_org_mapping"
                    " WHERE vapi_assistant_id = %s",
                    (fresh,),
                ).fetchone()
                return bool(row and row[0])

            poll(used, within_s=5.0)
        proc.terminate()
        _, err = proc.communicate(timeout=15)
    assert proc.returncode in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it handled
    assert "Traceback" not in err
    for secret in (acme.secret, globex.secret, "whsec-acme-rotated"):
        assert secret not in err


# --- the listener ----------------------------------------------------------------------------


def test_listener_reconnects_and_clears_the_cache(
    two: tuple[Org, Org],
    state: StateWriter,
    master_key: MasterKey,
    database_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    acme, _ = two
    resolver = WebhookResolver(state, master_key, ttl_s=300, negative_ttl_s=300)
    fresh = f"asst-{uuid.uuid4()}"
    with cuttable(database_url) as proxy, caplog.at_level(logging.INFO, "reconciler.webhooks"):
        listener = CacheListener(resolver, proxy.url(database_url))
        try:
            assert listener.start(wait_s=5)
            assert resolver.resolve({"x-vapi-secret": acme.secret}, body(acme.inbound))
            misses = resolver.misses
            proxy.cut()  # the listener's session dies: what was announced meanwhile is lost
            poll(lambda: listener.connects == 2, within_s=5.0)
            assert resolver.resolve({"x-vapi-secret": acme.secret}, body(acme.inbound))
            assert resolver.misses == misses + 1  # the cache was cleared on reconnect
            with pytest.raises(Exception, match="no known org"):
                resolver.resolve({}, body(fresh))
            state.assistants.record(acme.org_id, "inbound", fresh, "acme inbound", {})

            def resolves() -> bool:
                try:
                    return resolver.resolve({"x-vapi-secret": acme.secret}, body(fresh)).slug == (
                        "acme"
                    )
                except Exception:
                    return False

            poll(resolves, within_s=1.0)  # notifications flow again
        finally:
            listener.close()
    assert not listener.listening.is_set()
    lines = [r.getMessage() for r in caplog.records if r.name == "reconciler.webhooks.listen"]
    assert len(lines) == 2
    assert lines[0].startswith("webhook cache listener: no connection (")
    assert lines[1] == "webhook cache listener: listening again"


def test_listener_without_a_database_keeps_trying_quietly(
    resolver: WebhookResolver, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        port = sock.getsockname()[1]
    url = f"postgresql://postgres:pw-8c1d@127.0.0.1:{port}/nowhere?connect_timeout=1"
    listener = CacheListener(resolver, url, backoff_cap_s=0.1)
    with caplog.at_level(logging.DEBUG, "reconciler.webhooks"):
        assert listener.start(wait_s=0.5) is False  # never raises
        time.sleep(0.5)  # several more attempts
        started = time.monotonic()
        listener.close()
    assert time.monotonic() - started < 2
    lines = [r.getMessage() for r in caplog.records if r.name == "reconciler.webhooks.listen"]
    assert len(lines) == 1  # one line, not one per attempt
    assert "pw-8c1d" not in lines[0]


def listener_sessions(state: StateWriter) -> int:
    with state.pool.connection() as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE application_name = %s AND datname = current_database()",
            (LISTENER_NAME,),
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_from_url_starts_everything_and_close_stops_it(
    two: tuple[Org, Org], state: StateWriter, master_key: MasterKey, database_url: str
) -> None:
    acme, _ = two
    resolver = WebhookResolver.from_url(database_url, master_key.to_b64(), flush_every_s=3600)
    try:
        assert listener_sessions(state) == 1  # a session of its own, not from the pool
        assert resolver.resolve({"x-vapi-secret": acme.secret}, body(acme.inbound)).slug == "acme"
        assert not last_used(state)[acme.inbound]
    finally:
        resolver.close()
    assert last_used(state)[acme.inbound]  # closing flushed
    poll(lambda: listener_sessions(state) == 0, within_s=5.0)
    resolver.close()  # twice is fine
    quiet = WebhookResolver.from_url(database_url, master_key, listen=False)
    try:
        assert listener_sessions(state) == 0  # behind a transaction pooler: TTLs only
        assert quiet.resolve({"x-vapi-secret": acme.secret}, body(acme.inbound)).slug == "acme"
    finally:
        quiet.close()


def test_the_webhook_path_never_imports_the_engine() -> None:
    code = (
        "import sys\n"
        "import reconciler.webhooks.http, reconciler.webhooks.listen, reconciler.state.db\n"
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('reconciler.'))))"
    )
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.split()
    allowed = (
        "errors",
        "protocol",
        "redact",
        "metrics",
        "secrets",
        "state",
        "webhooks",
        "bounded",  # the bounded answer reader, pure
        "netpolicy",  # the forward address policy, pure
        "sharedhttp",  # the jar that keeps no cookie (httpx only)
    )
    assert out
    assert [m for m in out if m.split(".")[1] not in allowed] == []
