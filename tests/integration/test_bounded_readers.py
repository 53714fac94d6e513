"""Every reader of an HTTP answer decompresses it in bounded pieces (`reconciler.bounded`): a
gzip bomb from provider verification's endpoints or from Vapi costs the reader's limit, not
what the bomb inflates to. (The webhook forwarder's case is in test_webhook_limits.)"""

from __future__ import annotations

import functools
import gzip
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from reconciler.providers import verify as providers
from reconciler.vapi import client as vapi
from tests.helpers import served

MiB = 1024 * 1024


@functools.cache
def gzip_bomb() -> bytes:
    """Made on first use (once per process), not at import: every pytest-xdist worker
    imports this module, and the compression costs seconds."""
    return gzip.compress(b"\0" * (256 * MiB), 9)  # ~250 KB on the wire, 256 MiB inflated


@pytest.fixture(scope="module")
def bomb() -> Iterator[tuple[str, list[str]]]:
    """Answers every request with the bomb: 200 on /ok..., 500 on /fail...; records the
    accept-encoding asked for. The bomb is made here, before any test traces memory."""
    asked: list[str] = []
    body = gzip_bomb()

    async def answer(request: Request) -> Response:
        asked.append(request.headers.get("accept-encoding", ""))
        status = 500 if request.url.path.startswith("/fail") else 200
        return Response(
            body,
            status_code=status,
            headers={"content-encoding": "gzip", "content-type": "application/json"},
        )

    app = Starlette(routes=[Route("/{path:path}", answer, methods=["GET", "POST"])])
    with served(app) as url:
        yield url, asked


def peak_of(call: Callable[[], Any]) -> tuple[Any, int]:
    """What `call` returned (or raised) and the peak of traced memory meanwhile."""
    tracemalloc.start()
    try:
        try:
            result: Any = call()
        except Exception as exc:
            result = exc
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("path", ["/ok", "/fail"])
def test_provider_verification_reads_a_bomb_within_its_limit(
    bomb: tuple[str, list[str]], path: str
) -> None:
    url, asked = bomb
    with providers.http_client() as http:
        caller = providers.Caller(http, "resend", sleep=lambda _: None)
        caller.call("GET", url + "/warm")  # pools and imports, outside the measure
        answer, peak = peak_of(lambda: caller.call("GET", url + path))
    assert not isinstance(answer, Exception)
    assert answer.cut
    assert len(answer.body) <= providers.BODY_BYTES
    assert peak < 6 * MiB
    assert asked[-1] == "gzip, deflate"


def test_the_vapi_client_reads_a_bomb_within_its_limit(bomb: tuple[str, list[str]]) -> None:
    url, asked = bomb
    with vapi.http_client(url) as http:
        reader = vapi.VapiReader(http, "key-1", max_body_bytes=MiB)
        error, peak = peak_of(lambda: reader.get_assistant("a1"))
    assert isinstance(error, vapi.VapiError)
    assert "a body over 1 MiB" in str(error)
    assert peak < 6 * MiB
    assert asked[-1] == "gzip, deflate"


def test_the_vapi_clients_error_answers_are_read_within_64_kib(
    bomb: tuple[str, list[str]],
) -> None:
    url, _ = bomb
    with vapi.http_client(url) as http:
        reader = vapi.VapiReader(
            http, "key-1", retry=vapi.RetryPolicy(attempts=1, sleep=lambda _: None)
        )
        http.base_url = url + "/fail"
        error, peak = peak_of(lambda: reader.get_assistant("a1"))
    assert isinstance(error, vapi.VapiError)
    assert peak < 4 * MiB
