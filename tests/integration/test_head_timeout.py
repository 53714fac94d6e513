"""`serve`'s uvicorn protocol bounds how long a request head may take (uvicorn has no such
bound): a client that connects and sends nothing, or stalls halfway through its headers, is
cut; a prompt request, and a kept-alive connection between requests, are not."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from reconciler.server.heads import head_timeout_protocol
from tests.helpers import listening_socket


@pytest.fixture
def port() -> Iterator[int]:
    async def hello(request: object) -> PlainTextResponse:
        return PlainTextResponse("hi")

    app = Starlette(routes=[Route("/", hello)])
    sock = listening_socket()
    config = uvicorn.Config(
        app, log_config=None, lifespan="off", http=head_timeout_protocol(0.5), timeout_keep_alive=5
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def closed_after(sock: socket.socket) -> float:
    """Seconds until the server closes `sock` (reads nothing else)."""
    started = time.monotonic()
    assert sock.recv(1024) == b""
    return time.monotonic() - started


@pytest.mark.parametrize("sent", [b"", b"GET / HTTP/1.1\r\nhost: x\r\nx-half: "])
def test_a_stalled_head_is_cut(port: int, sent: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(sent)
        assert 0.3 < closed_after(sock) < 4.0  # 0.5 s; never closed would hit the 5 s timeout


def test_prompt_requests_and_kept_alive_connections_are_left_alone(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        for i in range(3):
            if i:
                time.sleep(0.8)  # idle longer than the head timeout, between requests
            sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            answer = sock.recv(1024)
            assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"hi")
        sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n")  # a next head that stalls: cut too
        assert closed_after(sock) < 4.0
