"""What one org's trouble may cost the others, over real HTTP against real Postgres: the
per-org and total caps on forwards in flight (503 at once, never a wait behind another org),
the deadline of the whole request, bounded decompression of the forward target's answer, the
address policy of org forward URLs (resolved and checked at send time), stalled bodies (408),
and duplicated org-deciding keys (400)."""

from __future__ import annotations

import functools
import gzip
import ipaddress
import json
import logging
import socket
import threading
import time
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import anyio.to_thread
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from reconciler.netpolicy import ForwardPolicy
from reconciler.secrets.crypto import MasterKey
from reconciler.state.store import StateWriter
from reconciler.webhooks import guard
from reconciler.webhooks.http import (
    BODY_TIMEOUT_MESSAGE,
    BUSY_MESSAGE,
    ORG_BUSY_MESSAGE,
    REFUSED_TARGET_MESSAGE,
    TIMEOUT_MESSAGE,
    TOO_LARGE_ANSWER_MESSAGE,
    webhook_app,
)
from reconciler.webhooks.resolver import ResolvedWebhook, Webhook, WebhookResolver
from tests.helpers import served
from tests.integration.test_resolver import body, seed_org
from tests.integration.test_webhook_http import (
    LOCAL,
    PATH,
    counted,
    outcomes,
    read_answer,
    status_of,
)

MiB = 1024 * 1024


@functools.cache
def gzip_bomb() -> bytes:
    """Made on first use (once per process), not at import: every pytest-xdist worker
    imports this module, and the compression costs seconds."""
    return gzip.compress(b"\0" * (256 * MiB), 9)  # ~250 KB on the wire, 256 MiB inflated


class Downstream:
    """A forward target: `/hang` (and any path for a webhook of org `slow_slug`) never answers
    until released; `/bomb` answers a gzip bomb; anything else answers at once."""

    def __init__(self) -> None:
        self.released = threading.Event()
        self.slow_slug = ""
        self.hanging = 0

    async def handle(self, request: Request) -> Response:
        await request.body()
        slug = request.headers.get("x-reconciler-org-slug", "")
        if request.url.path == "/hang" or slug == self.slow_slug:
            self.hanging += 1
            try:
                while not self.released.is_set():
                    await anyio.sleep(0.05)
            finally:
                self.hanging -= 1
        if request.url.path == "/trickle":  # a byte now and then: each read is quick

            async def drip() -> AsyncIterator[bytes]:
                for _ in range(100):
                    yield b" "
                    await anyio.sleep(0.2)

            return StreamingResponse(drip(), media_type="application/json")
        if request.url.path == "/bomb":
            return Response(
                gzip_bomb(),
                headers={"content-encoding": "gzip", "content-type": "application/json"},
            )
        return Response(b'{"ok": true}', media_type="application/json")


@pytest.fixture
def downstream() -> Iterator[tuple[str, Downstream]]:
    target = Downstream()
    app = Starlette(routes=[Route("/{path:path}", target.handle, methods=["POST"])])
    with served(app) as url:
        try:
            yield url, target
        finally:
            target.released.set()  # the hanging requests end, so the server stops at once


def post_many(url: str, requests: list[tuple[bytes, dict[str, str]]]) -> list[tuple[int, float]]:
    """Sends every request at once (one connection each); (status, seconds) in order."""

    async def main() -> list[tuple[int, float]]:
        results: list[tuple[int, float]] = [(0, 0.0)] * len(requests)
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as http:

            async def one(i: int, raw: bytes, headers: dict[str, str]) -> None:
                started = time.monotonic()
                resp = await http.post(PATH, content=raw, headers=headers)
                results[i] = (resp.status_code, time.monotonic() - started)

            async with anyio.create_task_group() as tg:
                for i, (raw, headers) in enumerate(requests):
                    tg.start_soon(one, i, raw, headers)
        return results

    return anyio.run(main)


def wait_for(check: Any, within_s: float = 10.0) -> None:
    deadline = time.monotonic() + within_s
    while not check():
        assert time.monotonic() < deadline, "not in time"
        time.sleep(0.01)


def in_background(url: str, requests: list[tuple[bytes, dict[str, str]]]) -> threading.Thread:
    thread = threading.Thread(target=post_many, args=(url, requests), daemon=True)
    thread.start()
    return thread


# --- the bulkhead ------------------------------------------------------------------------------


@pytest.mark.parametrize("shared_target", [False, True], ids=["own forwardUrl", "global URL"])
def test_one_orgs_hanging_target_costs_other_orgs_nothing(
    state: StateWriter,
    master_key: MasterKey,
    downstream: tuple[str, Downstream],
    shared_target: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """acme's target hangs: acme's forwards fill its cap (4), its next webhooks get 503 at once
    with Retry-After; globex's go through at once meanwhile, whether each org has its own
    forwardUrl or both share the global one (slow for acme only)."""
    url, target = downstream
    if shared_target:
        target.slow_slug = "acme"
        acme = seed_org(state, master_key, "acme")
        globex = seed_org(state, master_key, "globex")
    else:
        acme = seed_org(state, master_key, "acme", forward_url=f"{url}/hang")
        globex = seed_org(state, master_key, "globex", forward_url=f"{url}/fast")
    app = webhook_app(
        WebhookResolver(state, master_key),
        forward_url=f"{url}/global",
        timeout_s=5.0,
        max_in_flight_per_org=4,
        max_in_flight=100,
        forward_policy=LOCAL,
    )
    acme_req = (body(acme.inbound), {"x-vapi-secret": acme.secret})
    globex_req = (body(globex.inbound), {"x-vapi-secret": globex.secret})
    caplog.set_level(logging.WARNING, logger="reconciler.webhooks")
    with served(app) as server:
        before = outcomes()
        hung = in_background(server, [acme_req] * 4)
        wait_for(lambda: target.hanging == 4)
        with httpx.Client(base_url=server, timeout=10) as http:
            started = time.monotonic()
            over = http.post(PATH, content=acme_req[0], headers=acme_req[1])
            refused_in = time.monotonic() - started
        assert (over.status_code, over.json()) == (503, {"error": ORG_BUSY_MESSAGE})
        assert over.headers["retry-after"] == "1"
        assert refused_in < 3.0  # at once, not after the 5 s deadline (slack for a loaded CI)
        others = []
        with httpx.Client(base_url=server, timeout=10) as http:
            for _ in range(20):
                started = time.monotonic()
                resp = http.post(PATH, content=globex_req[0], headers=globex_req[1])
                others.append((resp.status_code, time.monotonic() - started))
        assert [status for status, _ in others] == [200] * 20
        assert max(took for _, took in others) < 3.0  # not behind acme's forwards (5 s)
        assert target.hanging == 4  # acme's were still hanging all along
        hung.join(10)  # acme's four end at the 5 s deadline: 504
    gained = counted(before)
    assert gained == {"busy": 1, "forwarded": 20, "forward_failed": 4}
    busy = [r.getMessage() for r in caplog.records if "503 busy" in r.getMessage()]
    assert busy == ["webhook of org acme refused (503 busy): 4 forwards of this org in flight"]


def test_the_total_cap_answers_503_at_once_for_every_org(
    state: StateWriter, master_key: MasterKey, downstream: tuple[str, Downstream]
) -> None:
    url, target = downstream
    acme = seed_org(state, master_key, "acme")
    globex = seed_org(state, master_key, "globex")
    app = webhook_app(
        WebhookResolver(state, master_key),
        forward_url=f"{url}/hang",
        timeout_s=3.0,
        max_in_flight_per_org=10,
        max_in_flight=3,
    )
    with served(app) as server:
        hung = in_background(server, [(body(acme.inbound), {"x-vapi-secret": acme.secret})] * 3)
        wait_for(lambda: target.hanging == 3)
        with httpx.Client(base_url=server, timeout=10) as http:
            resp = http.post(
                PATH, content=body(globex.inbound), headers={"x-vapi-secret": globex.secret}
            )
        assert (resp.status_code, resp.json()) == (503, {"error": BUSY_MESSAGE})
        assert resp.headers["retry-after"] == "1"
        hung.join(10)


# --- the deadline ------------------------------------------------------------------------------


def test_the_deadline_holds_for_many_concurrent_forwards_to_a_silent_target(
    state: StateWriter, master_key: MasterKey, downstream: tuple[str, Downstream]
) -> None:
    """200 webhooks at once to a target that accepts and never answers: every one is
    answered by the deadline (1 s here), none later. The answer is 504, or 408 for a request
    whose body the loaded event loop had not taken in before the deadline passed (the deadline
    covers the whole request, the body included): both are the deadline's answers."""
    url, _ = downstream
    acme = seed_org(state, master_key, "acme")
    app = webhook_app(
        WebhookResolver(state, master_key),
        forward_url=f"{url}/hang",
        timeout_s=1.0,
        max_in_flight_per_org=1000,
        max_in_flight=1000,
    )
    request = (body(acme.inbound), {"x-vapi-secret": acme.secret})
    with served(app) as server:
        # one first, so the 200 verify from the cache: this test is about the forward's
        # deadline (a lookup queued past it is 503, `test_the_deadline_covers_verification_too`)
        assert [status for status, _ in post_many(server, [request])] == [504]
        results = post_many(server, [request] * 200)
    statuses = [status for status, _ in results]
    assert len(statuses) == 200 and set(statuses) <= {504, 408}, statuses
    assert statuses.count(504) >= 100, statuses  # the forwards' deadline, at scale
    # 1 s, plus the slack of 200 clients on a loaded 2-core machine (2.8 s seen under load);
    # without a deadline nothing would answer before the clients' own 30 s
    assert max(took for _, took in results) < 6.0


def test_the_deadline_holds_for_a_target_that_trickles_its_answer(
    state: StateWriter, master_key: MasterKey, downstream: tuple[str, Downstream]
) -> None:
    """A byte every 0.2 s: no single read ever times out, the deadline still does."""
    url, _ = downstream
    acme = seed_org(state, master_key, "acme")
    app = webhook_app(
        WebhookResolver(state, master_key), forward_url=f"{url}/trickle", timeout_s=1.0
    )
    with served(app) as server, httpx.Client(base_url=server, timeout=30) as http:
        started = time.monotonic()
        resp = http.post(PATH, content=body(acme.inbound), headers={"x-vapi-secret": acme.secret})
        took = time.monotonic() - started
    assert (resp.status_code, resp.json()) == (504, {"error": TIMEOUT_MESSAGE})
    assert took < 8.0  # 1 s deadline; the trickle alone would last 20 s


class SlowVerify(WebhookResolver):
    """A resolver whose lookups (in worker threads) take 4 s: the deadline must cover them."""

    def verify_cached(self, webhook: Webhook) -> ResolvedWebhook | None:
        return None

    def verify(self, webhook: Webhook) -> ResolvedWebhook:
        time.sleep(4.0)
        return super().verify(webhook)


def test_the_deadline_covers_verification_too(
    state: StateWriter, master_key: MasterKey, downstream: tuple[str, Downstream]
) -> None:
    url, _ = downstream
    acme = seed_org(state, master_key, "acme")
    app = webhook_app(SlowVerify(state, master_key), forward_url=f"{url}/fast", timeout_s=0.5)
    with served(app) as server, httpx.Client(base_url=server, timeout=10) as http:
        started = time.monotonic()
        resp = http.post(PATH, content=body(acme.inbound), headers={"x-vapi-secret": acme.secret})
        took = time.monotonic() - started
    assert (resp.status_code, resp.json()) == (503, {"error": "cannot verify this webhook now"})
    assert took < 3.0  # 0.5 s deadline; the lookup alone takes 4 s


# --- bounded decompression ---------------------------------------------------------------------


def test_a_gzip_bomb_answer_is_502_and_memory_stays_bounded(
    state: StateWriter, master_key: MasterKey, downstream: tuple[str, Downstream]
) -> None:
    """The target answers ~250 KB of gzip that inflates to 256 MiB: refused past 1 MiB of
    output. The server runs in this process: tracemalloc sees what it allocates."""
    url, _ = downstream
    acme = seed_org(state, master_key, "acme")
    app = webhook_app(WebhookResolver(state, master_key), forward_url=f"{url}/bomb")
    with served(app) as server, httpx.Client(base_url=server, timeout=10) as http:
        raw, headers = body(acme.inbound), {"x-vapi-secret": acme.secret}
        http.post(PATH, content=raw, headers=headers)  # warm: pools, caches, imports
        tracemalloc.start()
        try:
            resp = http.post(PATH, content=raw, headers=headers)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert (resp.status_code, resp.json()) == (502, {"error": TOO_LARGE_ANSWER_MESSAGE})
    assert peak < 8 * MiB  # the 256 MiB are never held (the BOMB constant itself is ~250 KB)


# --- where a forward may go --------------------------------------------------------------------


def fake_dns(monkeypatch: pytest.MonkeyPatch, names: dict[str, str]) -> list[str]:
    """`names` resolve as given in the guard (standing in for a DNS server); returns the
    names looked up."""
    asked: list[str] = []
    real = anyio.getaddrinfo

    async def getaddrinfo(host: str, port: int, **kwargs: Any) -> Any:
        asked.append(host)
        if host in names:
            family = socket.AF_INET6 if ":" in names[host] else socket.AF_INET
            return [(family, socket.SOCK_STREAM, 6, "", (names[host], port))]
        return await real(host, port, **kwargs)

    monkeypatch.setattr(guard.anyio, "getaddrinfo", getaddrinfo)
    return asked


@pytest.mark.parametrize(
    ("host", "resolves_to"),
    [
        ("127.0.0.1", None),
        ("[::ffff:127.0.0.1]", None),
        ("169.254.169.254", None),
        ("localhost", None),
        ("metadata.example.test", "169.254.169.254"),  # a name cannot smuggle one in
        ("rebind.example.test", "127.0.0.1"),
        ("mapped.example.test", "::ffff:169.254.169.254"),
    ],
)
def test_org_forward_urls_to_internal_addresses_are_refused_at_send_time(
    state: StateWriter,
    master_key: MasterKey,
    downstream: tuple[str, Downstream],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    host: str,
    resolves_to: str | None,
) -> None:
    url, _ = downstream
    port = url.rsplit(":", 1)[1]
    if resolves_to is not None:
        fake_dns(monkeypatch, {host: resolves_to})
    acme = seed_org(
        state, master_key, "acme", forward_url=f"http://{host}:{port}/fast?token=tok-77e1"
    )
    caplog.set_level(logging.DEBUG, logger="reconciler.webhooks")
    app = webhook_app(WebhookResolver(state, master_key), forward_url=f"{url}/global")
    with served(app) as server, httpx.Client(base_url=server, timeout=10) as http:
        before = outcomes()
        resp = http.post(PATH, content=body(acme.inbound), headers={"x-vapi-secret": acme.secret})
    assert (resp.status_code, resp.json()) == (502, {"error": REFUSED_TARGET_MESSAGE})
    assert counted(before) == {"forward_refused": 1}
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("reconciler.webhooks")]
    assert len(lines) == 1
    assert lines[0].startswith("webhook of org acme not forwarded (502): its forward URL is")
    assert host.strip("[]") not in lines[0] and "tok-77e1" not in lines[0]


def test_a_name_is_connected_to_at_the_address_that_was_checked(
    state: StateWriter,
    master_key: MasterKey,
    downstream: tuple[str, Downstream],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Allowed (the operator's sidecar network), a name resolved once is connected to at that
    address: the guard resolves it, not the connection (no second lookup to rebind)."""
    url, _ = downstream
    port = url.rsplit(":", 1)[1]
    asked = fake_dns(monkeypatch, {"sidecar.example.test": "127.0.0.1"})
    acme = seed_org(
        state, master_key, "acme", forward_url=f"http://sidecar.example.test:{port}/fast"
    )
    app = webhook_app(WebhookResolver(state, master_key), forward_policy=LOCAL)
    with served(app) as server, httpx.Client(base_url=server, timeout=10) as http:
        resp = http.post(PATH, content=body(acme.inbound), headers={"x-vapi-secret": acme.secret})
    assert (resp.status_code, resp.json()) == (200, {"ok": True})
    assert asked == ["sidecar.example.test"]


def test_the_services_own_address_is_refused_even_when_its_network_is_allowed(
    state: StateWriter, master_key: MasterKey
) -> None:
    resolver = WebhookResolver(state, master_key)
    with served(webhook_app(resolver)) as probe:
        port = int(probe.rsplit(":", 1)[1])
    acme = seed_org(state, master_key, "acme", forward_url=f"http://127.0.0.1:{port}/webhooks")
    policy = ForwardPolicy.from_setting("127.0.0.0/8", ["127.0.0.1"], port)
    assert policy.is_allowed(ipaddress.ip_address("127.0.0.1"))
    app = webhook_app(WebhookResolver(state, master_key), forward_policy=policy)
    with served(app) as server, httpx.Client(base_url=server, timeout=10) as http:
        resp = http.post(PATH, content=body(acme.inbound), headers={"x-vapi-secret": acme.secret})
    assert (resp.status_code, resp.json()) == (502, {"error": REFUSED_TARGET_MESSAGE})


def test_the_operators_global_url_is_trusted_as_set(
    state: StateWriter, master_key: MasterKey, downstream: tuple[str, Downstream]
) -> None:
    url, _ = downstream  # on 127.0.0.1, and no network allowed
    acme = seed_org(state, master_key, "acme")
    app = webhook_app(WebhookResolver(state, master_key), forward_url=f"{url}/fast")
    with served(app) as server, httpx.Client(base_url=server, timeout=10) as http:
        resp = http.post(PATH, content=body(acme.inbound), headers={"x-vapi-secret": acme.secret})
    assert resp.status_code == 200


# --- stalled bodies ----------------------------------------------------------------------------


def test_a_body_that_stalls_halfway_is_408_and_the_connection_closed(
    state: StateWriter, master_key: MasterKey
) -> None:
    acme = seed_org(state, master_key, "acme")
    raw = body(acme.inbound)
    app = webhook_app(WebhookResolver(state, master_key), body_timeout_s=0.5)
    with served(app) as server:
        port = int(server.rsplit(":", 1)[1])
        before = outcomes()
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(
                f"POST {PATH} HTTP/1.1\r\nhost: x\r\ncontent-length: {len(raw)}\r\n"
                f"x-vapi-secret: {acme.secret}\r\n\r\n".encode()
                + raw[: len(raw) // 2]
            )
            started = time.monotonic()
            answer = read_answer(sock)
            assert sock.recv(1) == b""  # then closed by the server
            took = time.monotonic() - started
    assert status_of(answer) == 408
    assert json.loads(answer.partition(b"\r\n\r\n")[2]) == {"error": BODY_TIMEOUT_MESSAGE}
    assert b"connection: close" in answer.lower()
    assert 0.4 < took < 4.0  # 0.5 s; without the timeout the socket's own 5 s would raise
    assert counted(before) == {"body_timeout": 1}


# --- one meaning per body ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        '{"message": {"call": {"assistantId": "%(b)s", "assistantId": "%(a)s"}}}',
        '{"message": {"call": {"assistantId": "%(a)s"}}, "message": {"call": {}}}',
        '{"message": {"type": "x", "call": {"assistantId": "%(a)s"}, "call": {}}}',
        '{"message": {"call": {"orgId": "x", "orgId": "y", "phoneNumberId": "p"}}}',
        '{"message": {"call": {"assistantId": "%(a)s", "phoneNumberId": "1",'
        ' "phoneNumberId": "2"}}}',
        '{"message": {"assistantId": "%(a)s", "assistant\\u0049d": "%(b)s"}}',  # escaped twin
    ],
)
def test_a_duplicated_org_key_is_400(state: StateWriter, master_key: MasterKey, raw: str) -> None:
    acme = seed_org(state, master_key, "acme")
    globex = seed_org(state, master_key, "globex")
    content = (raw % {"a": acme.inbound, "b": globex.inbound}).encode()
    app = webhook_app(WebhookResolver(state, master_key))
    with served(app) as server, httpx.Client(base_url=server, timeout=10) as http:
        resp = http.post(PATH, content=content, headers={"x-vapi-secret": acme.secret})
    assert resp.status_code == 400
    assert "more than once" in resp.json()["error"]


def test_other_duplicated_keys_are_left_alone(state: StateWriter, master_key: MasterKey) -> None:
    acme = seed_org(state, master_key, "acme")
    content = (
        '{"message": {"call": {"assistantId": "ASSISTANT"}, "note": 1, "note": 2}}'.replace(
            "ASSISTANT", acme.inbound
        )
    ).encode()
    app = webhook_app(WebhookResolver(state, master_key))
    with served(app) as server, httpx.Client(base_url=server, timeout=10) as http:
        resp = http.post(PATH, content=content, headers={"x-vapi-secret": acme.secret})
    assert resp.status_code == 200
