"""`GetTransport` against hostile or broken servers: what one tenant's answer may never do is
reach another tenant's request.

Every server here is a raw socket on 127.0.0.1 that writes byte-exact HTTP, scripted per
connection. The rule each test holds the transport to: an answer is either read exactly (and
its connection kept only when nothing at all follows it), or refused with httpx's own error and
its connection closed; the next GET, whoever's key it carries, gets its own answer. Bytes that
must not be read by the next GET are written in the same `sendall` as the answer before them,
or the test waits until they have arrived before it sends the next GET: a keep-alive client
cannot tell bytes that arrive after its next request went out from that request's answer.
"""

from __future__ import annotations

import contextlib
import random
import re
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from reconciler.tls import ssl_context
from reconciler.vapi.client import VapiReader, http_client
from reconciler.vapi.transport import GetTransport
from tests.helpers import FAST_RETRY

ORG_A = "Bearer org-a-key"
ORG_B = "Bearer org-b-key"
SLOTS = 4
FORGED = (  # a whole answer carrying org A's data: what org B must never read
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Echo: Bearer org-a-key /secret\r\n"
    b"Content-Length: 28\r\n\r\nBearer org-a-key /secret !!!"
)
CLOSE = object()  # a step: close the connection (FIN)
RESET = object()  # a step: reset the connection (RST)
Step = Any  # bytes to send, CLOSE, RESET, a float (seconds to wait) or a function to call


def tag_of(head: bytes) -> bytes:
    """`<Authorization> <target>` of a request's head: what an answer to it carries."""
    found = re.search(rb"\r\nAuthorization: ([^\r\n]*)", head)
    auth = found.group(1) if found else b"-"
    return auth + b" " + head.split(b" ")[1]


def ok(body: bytes, *extra: bytes, tag: bytes | None = None) -> bytes:
    echo = b"X-Echo: %s\r\n" % (body if tag is None else tag)
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + echo + b"".join(extra)
    return head + b"Content-Length: %d\r\n\r\n" % len(body) + body


def chunked(
    body: bytes, ext: bytes = b"", trailer: bytes = b"", *, tag: bytes | None = None
) -> bytes:
    echo = body if tag is None else tag
    head = b"HTTP/1.1 200 OK\r\nX-Echo: %s\r\nTransfer-Encoding: chunked\r\n\r\n" % echo
    half = len(body) // 2
    parts = [body[:half], body[half:]]
    out = b"".join(b"%x%s\r\n%s\r\n" % (len(p), ext, p) for p in parts if p)
    return head + out + b"0" + ext + b"\r\n" + trailer + b"\r\n"


class Conn:
    """One accepted connection, as the script for it sees it."""

    def __init__(self, server: RawServer, sock: socket.socket, index: int) -> None:
        self.server = server
        self.sock = sock
        self.index = index  # the n-th connection the server accepted
        self.served = 0  # requests read on this connection so far
        self.buf = b""

    def request(self) -> bytes | None:
        """The next request's head (a GET has no body), or None at the end of the stream."""
        while b"\r\n\r\n" not in self.buf:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return None
            if not data:
                return None
            self.buf += data
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        self.served += 1
        self.server.record(self.index, head + b"\r\n\r\n")
        return head + b"\r\n\r\n"

    def play(self, steps: list[Step]) -> bool:
        """Plays the steps (after a close, only its waits and calls); False once the
        connection is closed."""
        open_ = True
        for step in steps:
            if step is CLOSE or step is RESET:
                if step is RESET:
                    linger = struct.pack("ii", 1, 0)
                    self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                self.sock.close()
                open_ = False
            elif isinstance(step, float):
                if open_ or step < 1:
                    time.sleep(step)
            elif callable(step):
                step()
            elif open_:
                self.sock.sendall(step)
        return open_

    def serve_tagged(self) -> None:
        """Answers every request, each with its own tag, until the client closes."""
        while (head := self.request()) is not None:
            self.sock.sendall(ok(tag_of(head)))


class RawServer:
    """A listener on 127.0.0.1 whose every connection is handed to `script(conn)`."""

    def __init__(self, script: Callable[[Conn], None]) -> None:
        self.script = script
        self.heads: list[bytes] = []
        self.tags_by_conn: dict[int, list[bytes]] = {}
        self.accepted = 0
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        self._listener.settimeout(0.02)
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def record(self, index: int, head: bytes) -> None:
        with self._lock:
            self.heads.append(head)
            self.tags_by_conn.setdefault(index, []).append(tag_of(head))

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # writes as scripted
            with self._lock:
                index = self.accepted
                self.accepted += 1
                self._socks.append(sock)
            conn = Conn(self, sock, index)
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn: Conn) -> None:
        try:
            self.script(conn)
        except OSError:
            pass  # the client went away mid-script (it refused what it read): fine
        finally:
            conn.sock.close()

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept at once
        self._listener.close()
        self._thread.join(2)
        with self._lock:
            socks = list(self._socks)
        for sock in socks:
            sock.close()


@pytest.fixture
def serve() -> Iterator[Callable[[Callable[[Conn], None]], RawServer]]:
    servers: list[RawServer] = []

    def start(script: Callable[[Conn], None]) -> RawServer:
        servers.append(RawServer(script))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def first_then_tagged(first: Callable[[Conn], None]) -> Callable[[Conn], None]:
    """The first connection runs `first`; every later one answers each GET with its tag."""

    def script(conn: Conn) -> None:
        if conn.index == 0:
            first(conn)
        else:
            conn.serve_tagged()

    return script


def transport(slots: int = SLOTS) -> GetTransport:
    limits = httpx.Limits(max_connections=slots, max_keepalive_connections=slots)
    return GetTransport(verify=ssl_context(), limits=limits)


def client(server: RawServer, tr: GetTransport, timeout: float = 1.0) -> httpx.Client:
    return httpx.Client(base_url=server.url, transport=tr, timeout=timeout)


def get(http: httpx.Client, key: str, path: str) -> httpx.Response:
    return http.get(path, headers={"Authorization": key})


def assert_own(http: httpx.Client, key: str, path: str) -> None:
    """The GET gets the answer the server made for it, and nothing of any other."""
    answer = get(http, key, path)
    own = f"{key} {path}".encode()
    assert (answer.status_code, answer.content, answer.headers.get("X-Echo")) == (
        200,
        own,
        own.decode(),
    )


def assert_settled(tr: GetTransport, slots: int = SLOTS) -> None:
    """Every slot back, and no connection kept that holds unread bytes."""
    assert tr._slots is not None and tr._slots.free == slots
    for pool in tr._idle.values():
        assert all(not conn.buf for conn in pool)


def assert_refused_then_own(
    server: RawServer, error: type[Exception], *, match: str | None = None, timeout: float = 1.0
) -> GetTransport:
    """Org A's GET fails with `error`; org B's next GET through the same transport gets its
    own answer, and the transport is settled (its slot back, no dirty connection kept).
    Returns the transport."""
    tr = transport()
    with client(server, tr, timeout=timeout) as http:
        with pytest.raises(error, match=match):
            get(http, ORG_A, "/a")
        assert_own(http, ORG_B, "/b")
        assert_settled(tr)
    return tr


# -- bytes past the end of an answer --------------------------------------------------------------


@pytest.mark.parametrize(
    "stray",
    [
        pytest.param(FORGED, id="a-whole-forged-answer"),
        pytest.param(b"\r\n", id="a-lone-crlf"),
        pytest.param(b"x", id="one-byte"),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Le", id="half-a-head"),
        pytest.param(b"!" * 70_000, id="more-than-one-read"),
    ],
)
@pytest.mark.parametrize("split", [False, True], ids=["one-write", "body-in-a-second-write"])
def test_bytes_past_the_content_length_never_reach_the_next_request(
    serve: Callable[..., RawServer], stray: bytes, split: bool
) -> None:
    def first(conn: Conn) -> None:
        head = conn.request()
        assert head is not None
        answer = ok(tag_of(head))
        steps = [answer[:40], 0.02, answer[40:] + stray] if split else [answer + stray]
        conn.play([*steps, 5.0])  # then holds the connection open

    server = serve(first_then_tagged(first))
    tr = transport()
    with client(server, tr) as http:
        assert_own(http, ORG_A, "/a")
        assert_own(http, ORG_B, "/b")
        assert_own(http, ORG_B, "/c")
        assert_settled(tr)
    assert tr.connections_made == 2
    assert server.tags_by_conn[1] == [b"Bearer org-b-key /b", b"Bearer org-b-key /c"]


def test_a_content_length_of_zero_followed_by_an_answer_is_not_two_answers(
    serve: Callable[..., RawServer],
) -> None:
    def first(conn: Conn) -> None:
        assert conn.request() is not None
        empty = b"HTTP/1.1 200 OK\r\nX-Echo: -\r\nContent-Length: 0\r\n\r\n"
        conn.play([empty + FORGED, 5.0])

    server = serve(first_then_tagged(first))
    tr = transport()
    with client(server, tr) as http:
        assert get(http, ORG_A, "/a").content == b""
        assert_own(http, ORG_B, "/b")
    assert tr.connections_made == 2


# -- chunked answers --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "after",
    [
        pytest.param(FORGED, id="a-forged-answer"),
        pytest.param(b"0\r\n\r\n", id="a-second-last-chunk"),
        pytest.param(b"garbage", id="garbage"),
    ],
)
def test_bytes_after_the_last_chunk_never_reach_the_next_request(
    serve: Callable[..., RawServer], after: bytes
) -> None:
    def first(conn: Conn) -> None:
        head = conn.request()
        assert head is not None
        conn.play([chunked(tag_of(head)) + after, 5.0])

    server = serve(first_then_tagged(first))
    tr = transport()
    with client(server, tr) as http:
        assert_own(http, ORG_A, "/a")
        assert_own(http, ORG_B, "/b")
        assert_settled(tr)
    assert tr.connections_made == 2


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"zz\r\nab\r\n0\r\n\r\n", id="not-hex"),
        pytest.param(b"-2\r\nab\r\n0\r\n\r\n", id="negative"),
        pytest.param(b"0x2\r\nab\r\n0\r\n\r\n", id="0x-prefix"),
        pytest.param(b" 2\r\nab\r\n0\r\n\r\n", id="leading-space"),
        pytest.param(b"2\nab\r\n0\r\n\r\n", id="bare-lf"),
        pytest.param(b"\r\nab\r\n0\r\n\r\n", id="empty"),
        pytest.param(b"1" * 21 + b"\r\nab\r\n0\r\n\r\n", id="21-hex-digits"),
        pytest.param(b"2\r\nabcd\r\n0\r\n\r\n", id="longer-than-its-size"),
        pytest.param(b"4\r\nab\r\n0\r\n\r\n", id="shorter-than-its-size"),
        pytest.param(b"2\r\nab\r\n0\r\nContent-Length: 5\r\n\r\n", id="a-framing-trailer"),
        pytest.param(b"2\r\nab\r\n0\r\nnot a trailer\r\n\r\n", id="a-trailer-not-a-header"),
        pytest.param(b"2;a\x00b\r\nab\r\n0\r\n\r\n" + FORGED, id="a-nul-then-forged"),
    ],
)
def test_a_malformed_chunk_is_refused_and_its_connection_dropped(
    serve: Callable[..., RawServer], body: bytes
) -> None:
    def first(conn: Conn) -> None:
        assert conn.request() is not None
        conn.play([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body, 5.0])

    server = serve(first_then_tagged(first))
    tr = transport()
    with client(server, tr, timeout=0.3) as http:
        try:
            answer = get(http, ORG_A, "/a")
        except (httpx.RemoteProtocolError, httpx.ReadTimeout):
            pass  # refused, or waiting for bytes that never come: either way no answer
        else:  # a chunk extension may hold any byte but CR and LF (h11 takes it too)
            assert body.startswith(b"2;a\x00b") and answer.content == b"ab"
        assert_own(http, ORG_B, "/b")
        assert_settled(tr)
    assert tr.connections_made == 2


def test_chunk_extensions_and_trailers_are_read_and_the_connection_kept(
    serve: Callable[..., RawServer],
) -> None:
    def script(conn: Conn) -> None:
        while (head := conn.request()) is not None:
            ext = b';name="quoted; value";x' if conn.served % 2 else b" \t"
            conn.play([chunked(tag_of(head), ext, trailer=b"X-Checksum: 1\r\n")])

    server = serve(script)
    tr = transport()
    with client(server, tr) as http:
        for n in range(4):
            assert_own(http, ORG_A if n % 2 else ORG_B, f"/{n}")
        assert_settled(tr)
    assert tr.connections_made == 1  # a clean chunked answer leaves a reusable connection


@pytest.mark.parametrize(
    "size_line",
    [
        pytest.param(b"0" * 20_000 + b"2\r\n", id="20k-leading-zeros"),
        pytest.param(b"2;" + b"e" * 20_000 + b"\r\n", id="a-20k-extension"),
        pytest.param(b"2" + b" " * 20_000 + b"\r\n", id="20k-spaces"),
    ],
)
def test_a_huge_chunk_size_line_is_refused_at_the_bound(
    serve: Callable[..., RawServer], size_line: bytes
) -> None:
    def first(conn: Conn) -> None:
        assert conn.request() is not None
        head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        conn.play([head + size_line + b"ab\r\n0\r\n\r\n", 5.0])

    server = serve(first_then_tagged(first))
    assert_refused_then_own(server, httpx.RemoteProtocolError, match="KiB")


def test_an_endless_chunk_size_line_is_refused_without_waiting_for_its_end(
    serve: Callable[..., RawServer],
) -> None:
    def first(conn: Conn) -> None:
        assert conn.request() is not None
        conn.play([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"])
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # until the client hangs up
            conn.sock.sendall(b"0" * 4096)

    server = serve(first_then_tagged(first))
    tr = transport()
    with client(server, tr, timeout=5.0) as http:
        started = time.monotonic()
        with pytest.raises(httpx.RemoteProtocolError, match="KiB"):
            get(http, ORG_A, "/a")
        assert time.monotonic() - started < 2
        assert_own(http, ORG_B, "/b")


def test_a_chunk_size_of_twenty_hex_digits_is_only_as_long_as_what_comes(
    serve: Callable[..., RawServer],
) -> None:
    """2**80 - 1 bytes announced: the reader takes what comes and the close is an error (the
    Vapi client's own bound stops it long before); the connection is never kept."""

    def first(conn: Conn) -> None:
        assert conn.request() is not None
        head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        conn.play([head + b"F" * 20 + b"\r\n" + b"x" * 10_000 + FORGED, CLOSE])

    server = serve(first_then_tagged(first))
    tr = assert_refused_then_own(server, httpx.RemoteProtocolError, match="inside the body")
    assert tr.connections_made == 2


# -- answers cut short --------------------------------------------------------------------------


@pytest.mark.parametrize("end", [CLOSE, RESET], ids=["fin", "rst"])
@pytest.mark.parametrize(
    "partial",
    [
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n[1, 2", id="length"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n[1, 2", id="mid-chunk"
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n[]\r\n", id="no-last-chunk"
        ),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Len", id="mid-head"),
    ],
)
def test_an_answer_cut_short_is_an_error_and_the_next_request_gets_its_own(
    serve: Callable[..., RawServer], partial: bytes, end: object
) -> None:
    def first(conn: Conn) -> None:
        assert conn.request() is not None
        conn.play([partial, 0.02, end])

    server = serve(first_then_tagged(first))
    tr = transport()
    with client(server, tr) as http:
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            get(http, ORG_A, "/a")
        assert_own(http, ORG_B, "/b")
        assert_own(http, ORG_A, "/c")
        assert_settled(tr)
    assert tr.connections_made == 2


def test_a_body_that_stalls_times_out_and_its_late_rest_reaches_no_one(
    serve: Callable[..., RawServer],
) -> None:
    written = threading.Event()

    def first(conn: Conn) -> None:
        assert conn.request() is not None
        stalled = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n[1,"
        conn.play([stalled, 0.3, written.set, b"2]" + FORGED, 5.0])

    server = serve(first_then_tagged(first))
    tr = transport()
    with client(server, tr, timeout=0.15) as http:
        with pytest.raises(httpx.ReadTimeout):
            get(http, ORG_A, "/a")
        assert written.wait(2)  # the rest, and a forged answer, sent: on a connection no one holds
        time.sleep(0.05)
        assert_own(http, ORG_B, "/b")
        assert_settled(tr)
    assert tr.connections_made == 2


# -- framing by the close, Connection: close, HTTP/1.0 ----------------------------------------------


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: %d\r\n",
        b"HTTP/1.1 200 OK\r\nConnection: keep-alive, CLOSE\r\nContent-Length: %d\r\n",
        b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nConnection: close\r\nContent-Length: %d\r\n",
        b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: %d\r\n",
    ],
    ids=["close", "close-in-a-list", "close-in-a-second-header", "http-1.0-keep-alive"],
)
@pytest.mark.parametrize("then", ["writes-on", "answers-on-with-forged-answers"])
def test_an_answer_that_ends_its_connection_is_never_followed_by_another_read(
    serve: Callable[..., RawServer], head: bytes, then: str
) -> None:
    """The server says it is done with the connection, yet keeps it open, and writes on, or
    answers what comes next on it with another org's answer: the connection is not kept."""

    def first(conn: Conn) -> None:
        got = conn.request()
        assert got is not None
        body = tag_of(got)
        answer = head % len(body) + b"X-Echo: " + body + b"\r\n\r\n" + body
        if then == "writes-on":
            conn.play([answer, 0.05, FORGED, 5.0])
            return
        conn.play([answer])
        while conn.request() is not None:
            conn.play([FORGED])

    server = serve(first_then_tagged(first))
    tr = transport()
    with client(server, tr) as http:
        assert_own(http, ORG_A, "/a")
        time.sleep(0.1)  # what the server writes on has arrived
        assert_own(http, ORG_B, "/b")
        assert_settled(tr)
    assert tr.connections_made == 2
    assert server.tags_by_conn[0] == [b"Bearer org-a-key /a"]


@pytest.mark.parametrize("version", [b"1.0", b"1.1"])
def test_an_answer_without_framing_is_read_to_the_close(
    serve: Callable[..., RawServer], version: bytes
) -> None:
    def first(conn: Conn) -> None:
        got = conn.request()
        assert got is not None
        body = tag_of(got)
        head = b"HTTP/%s 200 OK\r\nX-Echo: %s\r\n\r\n" % (version, body)
        conn.play([head + body[:5], 0.02, body[5:], 0.02, CLOSE])

    server = serve(first_then_tagged(first))
    tr = transport()
    with client(server, tr) as http:
        assert_own(http, ORG_A, "/a")
        assert_own(http, ORG_B, "/b")
        assert_settled(tr)
    assert tr.connections_made == 2


def test_an_answer_read_to_the_close_that_never_closes_times_out(
    serve: Callable[..., RawServer],
) -> None:
    def first(conn: Conn) -> None:
        assert conn.request() is not None
        conn.play([b"HTTP/1.0 200 OK\r\n\r\n[1", 5.0])

    server = serve(first_then_tagged(first))
    assert_refused_then_own(server, httpx.ReadTimeout, timeout=0.2)


# -- answers without a body, interim answers, a HEAD's answer to a GET ------------------------------


@pytest.mark.parametrize("status", [b"204 No Content", b"304 Not Modified"])
@pytest.mark.parametrize("framing", [b"Content-Length: %d\r\n", b"Transfer-Encoding: chunked\r\n"])
@pytest.mark.parametrize("late", [False, True], ids=["same-write", "body-arrives-while-idle"])
def test_a_body_after_a_204_or_304_never_reaches_the_next_request(
    serve: Callable[..., RawServer], status: bytes, framing: bytes, late: bool
) -> None:
    arrived = threading.Event()

    def first(conn: Conn) -> None:
        got = conn.request()
        assert got is not None
        head = b"HTTP/1.1 %s\r\nX-Echo: %s\r\n" % (status, tag_of(got))
        head += (framing % len(FORGED) if b"%d" in framing else framing) + b"\r\n"
        steps = [head, 0.05, FORGED] if late else [head + FORGED]
        conn.play([*steps, arrived.set, 5.0])

    server = serve(first_then_tagged(first))
    tr = transport()
    with client(server, tr) as http:
        answer = get(http, ORG_A, "/a")
        assert answer.content == b"" and answer.headers["X-Echo"] == "Bearer org-a-key /a"
        assert arrived.wait(2)
        time.sleep(0.05)
        assert_own(http, ORG_B, "/b")
        assert_settled(tr)
    assert tr.connections_made == 2


def test_interim_answers_are_skipped_and_the_final_one_read(
    serve: Callable[..., RawServer],
) -> None:
    interim = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n"
        b"HTTP/1.1 102 Processing\r\nContent-Length: 5\r\n\r\n"  # no body, whatever it says
    )

    def script(conn: Conn) -> None:
        while (head := conn.request()) is not None:
            answer = interim + ok(tag_of(head))
            conn.play([answer[:30], 0.005, answer[30:]])

    server = serve(script)
    tr = transport()
    with client(server, tr) as http:
        assert_own(http, ORG_A, "/a")
        assert_own(http, ORG_B, "/b")
        assert_settled(tr)
    assert tr.connections_made == 1


@pytest.mark.parametrize(
    "interim",
    [
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n" + FORGED,
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 101 Switching Protocols\r\n\r\n" + FORGED,
    ],
    ids=["101", "100-then-101"],
)
def test_a_switch_of_protocols_to_a_get_is_refused(
    serve: Callable[..., RawServer], interim: bytes
) -> None:
    def first(conn: Conn) -> None:
        assert conn.request() is not None
        conn.play([interim, 5.0])

    server = serve(first_then_tagged(first))
    assert_refused_then_own(server, httpx.RemoteProtocolError, match="101")


def test_a_flood_of_interim_answers_is_refused_at_the_head_bound(
    serve: Callable[..., RawServer],
) -> None:
    """The head of an answer is bounded (16 KiB) so that endless input ends in an error; a
    server that sends 1xx answers without end makes an endless head just the same: the
    GET (and its pool slot) never ends, and no read timeout fires since every read gets
    bytes. 64 KiB of them before the answer must be refused, as one 64 KiB head is."""
    flood = b"HTTP/1.1 100 Continue\r\n\r\n" * (64 * 1024 // 25)

    def first(conn: Conn) -> None:
        head = conn.request()
        assert head is not None
        conn.play([flood + ok(tag_of(head)), 5.0])

    server = serve(first_then_tagged(first))
    tr = transport()
    with client(server, tr) as http, pytest.raises(httpx.RemoteProtocolError):
        get(http, ORG_A, "/a")


def test_an_answer_as_to_a_head_stalls_the_get_and_the_next_one_gets_its_own(
    serve: Callable[..., RawServer],
) -> None:
    """The server answers the GET as if it were a HEAD (a Content-Length, no body), then
    writes the answer it means for some next request: the GET waits for its body and times
    out; that next answer reaches no one."""

    def first(conn: Conn) -> None:
        assert conn.request() is not None
        conn.play([b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (len(FORGED) + 20)])
        conn.play([0.05, FORGED, 5.0])

    server = serve(first_then_tagged(first))
    tr = assert_refused_then_own(server, httpx.ReadTimeout, timeout=0.3)
    assert tr.connections_made == 2


# -- heads that are too long or not HTTP --------------------------------------------------------------


@pytest.mark.parametrize(
    "head",
    [
        pytest.param(
            b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-H-%05d: v\r\n" % i for i in range(10_000)),
            id="10000-headers",
        ),
        pytest.param(b"HTTP/1.1 200 OK\r\nX-Long: " + b"a" * 100_000, id="a-line-without-end"),
        pytest.param(b"HTTP/1.1 200 OK" + b" " * 100_000, id="a-status-line-without-end"),
        pytest.param(b"\r" * 100_000, id="carriage-returns"),
    ],
)
def test_an_oversized_head_is_refused_at_the_bound(
    serve: Callable[..., RawServer], head: bytes
) -> None:
    def first(conn: Conn) -> None:
        assert conn.request() is not None
        conn.play([head, 5.0])

    server = serve(first_then_tagged(first))
    assert_refused_then_own(server, httpx.RemoteProtocolError, match="KiB", timeout=2.0)


def test_an_endless_stream_of_header_lines_is_refused_without_waiting_for_its_end(
    serve: Callable[..., RawServer],
) -> None:
    def first(conn: Conn) -> None:
        assert conn.request() is not None
        conn.play([b"HTTP/1.1 200 OK\r\n"])
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            conn.sock.sendall(b"X-More: yes\r\n" * 300)

    server = serve(first_then_tagged(first))
    tr = transport()
    with client(server, tr, timeout=5.0) as http:
        started = time.monotonic()
        with pytest.raises(httpx.RemoteProtocolError, match="KiB"):
            get(http, ORG_A, "/a")
        assert time.monotonic() - started < 2
        assert_own(http, ORG_B, "/b")


@pytest.mark.parametrize(
    "answer",
    [
        b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
        b"HTTP/2 200\r\ncontent-length: 0\r\n\r\n",
        b"HTTP/1.2 200 OK\r\nContent-Length: 0\r\n\r\n",
        b"http/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1  200 OK\r\nContent-Length: 0\r\n\r\n",
        b" HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        b"\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 O\x00K\r\nContent-Length: 0\r\n\r\n",
        b"<html><body>hello</body></html>\n\n",
        b"\x15\x03\x03\x00\x02\x02\x46\r\n\r\n",  # a TLS alert, then a blank line
        b"\x00\x00\x12\x04\x00\x00\x00\x00\x00\r\n\r\n",  # an HTTP/2 SETTINGS frame
    ],
    ids=[
        "ssh",
        "http2",
        "http1.2",
        "lower-case",
        "4-digit-status",
        "two-spaces",
        "leading-space",
        "leading-crlf",
        "nul-in-reason",
        "html",
        "tls-alert",
        "h2-settings",
    ],
)
def test_a_status_line_that_is_not_http_1_is_refused(
    serve: Callable[..., RawServer], answer: bytes
) -> None:
    def first(conn: Conn) -> None:
        assert conn.request() is not None
        conn.play([answer + FORGED, 5.0])

    server = serve(first_then_tagged(first))
    assert_refused_then_own(
        server, httpx.RemoteProtocolError, match=r"status line|head|not a header"
    )


def test_a_banner_without_a_blank_line_times_out(serve: Callable[..., RawServer]) -> None:
    def first(conn: Conn) -> None:
        assert conn.request() is not None
        conn.play([b"SSH-2.0-OpenSSH_9.6\r\n", 5.0])

    server = serve(first_then_tagged(first))
    assert_refused_then_own(server, httpx.ReadTimeout, timeout=0.2)


# -- answers nobody asked for yet -------------------------------------------------------------------


@pytest.mark.parametrize("read_first", [0, 5], ids=["before-reading", "after-5-bytes"])
def test_an_answer_sent_before_the_request_is_complete_reaches_no_later_request(
    serve: Callable[..., RawServer], read_first: int
) -> None:
    """The server answers a connection before it has the request (any client takes that for
    the answer to its first GET), then answers the request too: that second answer is not
    for the next GET, which goes on a new connection."""
    written = threading.Event()

    def first(conn: Conn) -> None:
        if read_first:
            conn.buf = conn.sock.recv(read_first)
        early = ok(b"early")
        conn.play([early])
        head = conn.request()
        assert head is not None
        conn.play([FORGED, written.set, 5.0])

    server = serve(first_then_tagged(first))
    tr = transport()
    with client(server, tr) as http:
        answer = get(http, ORG_A, "/a")
        assert answer.content == b"early"  # indistinguishable from an answer, on a new connection
        assert written.wait(2)
        time.sleep(0.05)
        assert_own(http, ORG_B, "/b")
        assert_settled(tr)
    assert tr.connections_made == 2


@pytest.mark.parametrize(
    "unsolicited",
    [
        pytest.param([FORGED], id="a-forged-answer"),
        pytest.param([FORGED[:20]], id="part-of-an-answer"),
        pytest.param([b"\r\n"], id="a-crlf"),
        pytest.param(
            [b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"],
            id="a-408",
        ),
        pytest.param([b"HTTP/1.1 100 Continue\r\n\r\n"], id="an-interim-answer"),
        pytest.param([FORGED, CLOSE], id="an-answer-then-the-close"),
        pytest.param([RESET], id="a-reset"),
    ],
)
def test_an_unsolicited_answer_on_an_idle_connection_is_never_read(
    serve: Callable[..., RawServer], unsolicited: list[Step]
) -> None:
    arrived = threading.Event()

    def first(conn: Conn) -> None:
        head = conn.request()
        assert head is not None
        conn.play([ok(tag_of(head)), 0.05, *unsolicited, arrived.set, 5.0])

    server = serve(first_then_tagged(first))
    tr = transport()
    with client(server, tr) as http:
        assert_own(http, ORG_A, "/a")
        assert tr._idle_count == 1  # kept: clean when it was put back
        assert arrived.wait(2)
        time.sleep(0.05)  # the unsolicited bytes (or the close) are in our socket
        assert_own(http, ORG_B, "/b")
        assert_own(http, ORG_A, "/c")
        assert_settled(tr)
    assert tr.connections_made == 2
    assert server.tags_by_conn[0] == [b"Bearer org-a-key /a"]  # /b was never sent on it


# -- many requests, two orgs -------------------------------------------------------------------------


def test_a_get_waiting_for_a_slot_is_not_starved_by_another_orgs_gets(
    serve: Callable[..., RawServer],
) -> None:
    """One slot, org A's GETs back to back on one thread: org B's GET waits for the one in
    flight (a millisecond), not until its pool timeout (2 s) runs out, as it did with a
    `threading.BoundedSemaphore` (10 of 10 tries)."""
    server = serve(lambda conn: conn.serve_tagged())
    tr = transport(1)
    http = httpx.Client(base_url=server.url, transport=tr, timeout=httpx.Timeout(5.0, pool=2.0))
    stop = threading.Event()

    def busy() -> None:
        i = 0
        while not stop.is_set():
            assert_own(http, ORG_A, f"/a/{i}")
            i += 1

    thread = threading.Thread(target=busy)
    thread.start()
    try:
        time.sleep(0.05)
        started = time.monotonic()
        assert_own(http, ORG_B, "/b")
        waited = time.monotonic() - started
    finally:
        stop.set()
        thread.join(5)
        http.close()
    assert waited < 1.0  # a millisecond or so; far under the pool timeout even under load


def _shape(tag: bytes, served: int, n: int, body: bytes | None = None) -> list[Step]:
    """The n-th answer of the adversarial server, to a request tagged `tag` (its key and
    target) and the `served`-th on its connection: every answer carries the tag (and `body`,
    the tag unless given); what must not be read by the next GET goes in the same write."""
    body = tag if body is None else body
    # one in three answers is hostile (each kind in turn), the others clean ones that keep
    # their connection: kept connections go from one org to the other
    kind = (n // 3) % 12 if n % 3 == 0 else (0, 1, 3, 4)[n % 4]
    if kind == 1:
        whole = ok(body, tag=tag)
        return [whole[: 7 + n % 30], 0.001, whole[7 + n % 30 :]]
    if kind == 2:
        return [ok(body, tag=tag) + FORGED]  # a forged answer tagged for org A, right after
    if kind == 3:
        interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\n\r\n"
        return [interim + ok(body, tag=tag)]
    if kind == 4:
        return [chunked(body, b";ext=1", b"X-T: 1\r\n", tag=tag)]
    if kind == 5:
        return [chunked(body, tag=tag) + FORGED]
    if kind == 6 and body == tag:  # no body: its tag in the head only
        return [b"HTTP/1.1 204 No Content\r\nX-Echo: %s\r\n\r\n%s" % (tag, FORGED)]
    if kind == 7:
        return [ok(body, b"Connection: close\r\n", tag=tag) + FORGED, CLOSE]
    if kind == 8:
        return [b"HTTP/1.0 200 OK\r\nX-Echo: %s\r\n\r\n%s" % (tag, body), CLOSE]
    if kind == 9 and served > 1:
        return [CLOSE]  # closed unanswered on a kept connection: the GET goes again
    if kind == 10 and served > 1:
        return [RESET]
    if kind == 11:
        return [ok(body, tag=tag), CLOSE]  # a keep-alive answer, then the idle close
    return [ok(body, tag=tag)]


def _adversarial_server(serve: Callable[..., RawServer]) -> RawServer:
    lock = threading.Lock()
    count = [0]

    def script(conn: Conn) -> None:
        while (head := conn.request()) is not None:
            with lock:
                n = count[0]
                count[0] += 1
            if not conn.play(_shape(tag_of(head), conn.served, n)):
                return

    return serve(script)


@pytest.mark.parametrize("slots", [1, 2, SLOTS])
def test_two_orgs_on_two_threads_each_read_only_their_own_answers(
    serve: Callable[..., RawServer], slots: int
) -> None:
    server = _adversarial_server(serve)
    tr = transport(slots)
    # a wait for a slot is not what this test is about (see the fairness test above)
    http = httpx.Client(base_url=server.url, transport=tr, timeout=httpx.Timeout(1.0, pool=15))
    wrong: list[tuple[str, str, int, bytes, str | None]] = []
    errors: list[str] = []

    def org(key: str) -> None:
        rng = random.Random(key)
        for i in range(150):
            time.sleep(rng.random() / 1000)  # so the kept connections go from org to org
            path = f"/{key[7:12]}/{i}"
            try:
                answer = get(http, key, path)
            except httpx.HTTPError as exc:
                errors.append(f"{key} {path}: {exc!r}")
                continue
            own = f"{key} {path}"
            echo = answer.headers.get("X-Echo")
            body = answer.content.decode()
            if echo != own or body not in (own, ""):
                wrong.append((key, path, answer.status_code, answer.content, echo))
            if answer.status_code == 200 and body != own:
                wrong.append((key, path, answer.status_code, answer.content, echo))

    threads = [threading.Thread(target=org, args=(key,)) for key in (ORG_A, ORG_B)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    http.close()
    assert time.monotonic() - started < 20
    assert wrong == []
    assert errors == []  # every close of a kept connection was retried on a new one
    assert len(server.heads) >= 300
    shared = [
        tags for tags in server.tags_by_conn.values() if len({t.split()[1] for t in tags}) > 1
    ]
    assert shared, "no connection carried both orgs' GETs: the test proved nothing"
    assert_settled(tr, slots)


def test_two_vapi_readers_sharing_one_client_each_read_their_own_account(
    serve: Callable[..., RawServer],
) -> None:
    """As in production: one client for every org, a `VapiReader` per org, its GETs straight
    to the transport (`_DirectGet`)."""

    lock = threading.Lock()
    count = [0]

    def script(conn: Conn) -> None:
        while (head := conn.request()) is not None:
            with lock:
                n = count[0]
                count[0] += 1
            tag = tag_of(head)
            body = b'{"id": "%s", "createdAt": "2026-01-01T00:00:00.000Z"}' % tag
            if not conn.play(_shape(tag, conn.served, n, body)):
                return

    server = serve(script)
    with http_client(server.url, timeout_s=1.0, max_connections=SLOTS) as http:
        assert isinstance(http._transport, GetTransport)
        readers = {key: VapiReader(http, key[7:], retry=FAST_RETRY) for key in (ORG_A, ORG_B)}
        wrong: list[tuple[str, str, object]] = []

        def org(key: str) -> None:
            for i in range(60):
                got = readers[key].get_assistant(f"{key[7:12]}-{i}")
                if got.get("id") != f"{key} /assistant/{key[7:12]}-{i}":
                    wrong.append((key, str(i), got))

        threads = [threading.Thread(target=org, args=(key,)) for key in readers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(20)
    assert wrong == []


def test_slots_serve_waiters_in_order_and_refuse_a_release_too_many() -> None:
    """The slot count alone: a released slot goes to the first waiter (not to whoever asks
    next), a waiter that times out leaves the queue, and a slot given back twice is a bug."""
    from reconciler.vapi.transport import _Slots

    slots = _Slots(1)
    assert slots.acquire(0) and slots.free == 0
    got: list[str] = []

    def wait(name: str) -> None:
        if slots.acquire(5.0):
            got.append(name)

    first = threading.Thread(target=wait, args=("first",))
    first.start()
    while not slots._waiting:  # first is queued
        time.sleep(0.001)
    assert not slots.acquire(0.01)  # a late comer waits its turn, and times out
    assert len(slots._waiting) == 1  # and leaves the queue
    slots.release()  # handed to first, not back to the count
    first.join(5)
    assert got == ["first"] and slots.free == 0
    slots.release()
    assert slots.free == 1
    with pytest.raises(ValueError, match="released more often than taken"):
        slots.release()


def test_a_waiter_interrupted_leaves_no_slot_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C in a GET waiting for a slot: the waiter leaves the queue, and a slot handed to
    it just before goes on to the count, so no slot is lost."""
    from reconciler.vapi import transport as transport_module

    class Interrupted(BaseException):
        pass

    for handed_first in (False, True):
        slots = transport_module._Slots(1)
        assert slots.acquire(0)

        def interrupted(event: threading.Event, timeout: float | None = None) -> bool:
            if handed_first:  # noqa: B023 - read while this loop's round runs
                slots.release()  # noqa: B023 - handed over just as the interruption comes
            raise Interrupted

        with monkeypatch.context() as patch:
            patch.setattr(threading.Event, "wait", interrupted)
            with pytest.raises(Interrupted):
                slots.acquire(5.0)
        assert not slots._waiting
        if not handed_first:
            slots.release()  # the GET that held it ends
        assert slots.free == 1
