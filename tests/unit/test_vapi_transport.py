"""`reconciler.vapi.transport.GetTransport`: our own HTTP/1.1 for GETs, held to h11.

What it writes is compared byte for byte with what httpx's stock transport (h11) writes; what
it reads is compared with h11's reading of the same bytes, cut into the same pieces, over
generated answers; the rest runs against a scripted server on a local socket: keep-alive,
a connection closed while idle, bounds, timeouts, TLS, and what goes to httpx's own transport.
"""

from __future__ import annotations

import datetime
import gzip
import json
import random
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import h11
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.sharedhttp import SharedClient
from reconciler.tls import ssl_context
from reconciler.vapi.client import VapiError, VapiReader, _DirectGet, http_client
from reconciler.vapi.transport import HEAD_LIMIT, GetTransport, _Body, _Connection

CLOSE = object()  # a step: the server closes the connection
Step = Any  # bytes to send, CLOSE, a float (seconds to wait) or a function to call


def ok(body: bytes = b"[]", *extra: bytes) -> bytes:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + b"".join(extra)
    return head + b"Content-Length: %d\r\n\r\n" % len(body) + body


class Server:
    """A local HTTP/1.1 server whose answers are scripted: `answer(head, n)` gives the steps
    for the n-th request (over every connection)."""

    def __init__(self, answer: Callable[[bytes, int], list[Step]], tls: Any = None) -> None:
        self.answer = answer
        self.heads: list[bytes] = []
        self.accepted = 0
        self._tls = tls
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"{'https' if self._tls else 'http'}://localhost:{self.port}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.accepted += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            if self._tls is not None:
                conn = self._tls.wrap_socket(conn, server_side=True)
            buf = b""
            while not self._stop.is_set():
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                length = re.search(rb"(?i)\r\ncontent-length: *([0-9]+)", head)
                while length and len(buf) < int(length.group(1)):
                    buf += conn.recv(65536)
                buf = buf[int(length.group(1)) :] if length else buf
                with self._lock:
                    n = len(self.heads)
                    self.heads.append(head + b"\r\n\r\n")
                for step in self.answer(head, n):
                    if step is CLOSE:
                        return
                    if isinstance(step, float):
                        time.sleep(step)
                    elif callable(step):
                        step()
                    else:
                        conn.sendall(step)
        except (OSError, ssl.SSLError):
            return
        finally:
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
        self._thread.join(2)


@pytest.fixture
def serve() -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def start(answer: Callable[[bytes, int], list[Step]], tls: Any = None) -> Server:
        servers.append(Server(answer, tls))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def transport(**limits: Any) -> GetTransport:
    return GetTransport(verify=ssl_context(), limits=httpx.Limits(**limits))


def client(url: str, tr: GetTransport, **kw: Any) -> httpx.Client:
    return httpx.Client(base_url=url, transport=tr, timeout=kw.pop("timeout", 5.0), **kw)


# -- what it writes ---------------------------------------------------------------------------


def test_a_get_is_written_byte_for_byte_as_httpx_own_transport_writes_it(serve: Any) -> None:
    server = serve(lambda head, n: [ok()])
    headers = {"Authorization": "Bearer k-1", "X-Odd-Case": "a  b"}
    params = {"limit": 1000, "createdAtGe": "2026-12-07T10:00:00.000Z", "q": "a b/ü"}
    with client(server.url, transport()) as ours:
        ours.get("/assistant", params=params, headers=headers).raise_for_status()
    stock = httpx.HTTPTransport(verify=ssl_context())
    with client(server.url, stock) as theirs:  # type: ignore[arg-type]
        theirs.get("/assistant", params=params, headers=headers).raise_for_status()
    assert len(server.heads) == 2
    assert server.heads[0] == server.heads[1]
    assert server.heads[0].startswith(b"GET /assistant?limit=1000&createdAtGe=2026-12-07T10")
    assert server.heads[0].split(b"\r\n")[1] == b"Host: localhost:%d" % server.port


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer k\r\nX-Injected: 1"},
        {"Authorization": "Bearer k\nX: 1"},
        {"Authorization": "Bearer k\x00"},
        {"Bad Name": "v"},
        {"Authorization": " leading"},
    ],
)
def test_a_header_that_could_end_its_line_is_refused_before_anything_is_sent(
    serve: Any, headers: dict[str, str]
) -> None:
    server = serve(lambda head, n: [ok()])
    tr = transport()
    request = httpx.Request("GET", server.url + "/assistant", headers=headers)
    with pytest.raises(httpx.LocalProtocolError):
        tr.handle_request(request)
    assert tr.connections_made == 0 and server.heads == []


def test_what_is_not_a_bodiless_get_goes_through_httpx_own_transport(serve: Any) -> None:
    server = serve(lambda head, n: [ok(b"{}")])
    tr = transport()
    with client(server.url, tr) as http:
        http.post("/assistant", json={"name": "x"}).raise_for_status()
        http.patch("/assistant/1", json={"name": "y"}).raise_for_status()
        http.delete("/assistant/1").raise_for_status()
        http.request("GET", "/assistant", content=b"x").raise_for_status()
        http.get("/assistant", extensions={"sni_hostname": "localhost"}).raise_for_status()
        assert tr.connections_made == 0  # all of them on httpx's own pool
        http.get("/assistant").raise_for_status()
    assert tr.connections_made == 1
    assert [h.split(b" ")[0] for h in server.heads] == [
        b"POST",
        b"PATCH",
        b"DELETE",
        b"GET",
        b"GET",
        b"GET",
    ]


def test_a_watched_stock_transport_sees_the_gets_too(
    serve: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """vcrpy records and replays by replacing `httpx.HTTPTransport.handle_request`: while it
    does, GETs go there, so a cassette holds the whole conversation."""
    server = serve(lambda head, n: [ok()])
    seen: list[str] = []
    stock = httpx.HTTPTransport.handle_request

    def watched(self: httpx.HTTPTransport, request: httpx.Request) -> httpx.Response:
        seen.append(request.method)
        return stock(self, request)

    tr = transport()
    monkeypatch.setattr(httpx.HTTPTransport, "handle_request", watched)
    with client(server.url, tr) as http:
        http.get("/assistant").raise_for_status()
    assert seen == ["GET"] and tr.connections_made == 0


# -- what it reads, against h11 -----------------------------------------------------------------


class Pieces:
    """A socket that gives these pieces, then the end of the stream."""

    def __init__(self, pieces: list[bytes]) -> None:
        self._pieces = list(pieces)

    def recv(self, size: int) -> bytes:
        while self._pieces:
            piece = self._pieces.pop(0)
            if piece:
                if len(piece) > size:
                    self._pieces.insert(0, piece[size:])
                return piece[:size]
        return b""

    def close(self) -> None:
        pass


def ours(pieces: list[bytes]) -> tuple[int, bytes, list[tuple[bytes, bytes]], bytes, bool]:
    tr = transport()
    request = httpx.Request("GET", "http://example.test/")
    conn = _Connection(Pieces(pieces))  # type: ignore[arg-type]
    head = tr._read_head(conn, request)
    body = _Body(tr, ("http", "example.test", 80), conn, head, request)
    data = b"".join(body)
    unread = conn.sock._pieces  # type: ignore[attr-defined]
    # on a socket, bytes past the answer are seen when the connection would be reused
    reusable = body._done and head.keep and not conn.buf and not any(unread)
    return head.status, head.reason, head.headers, data, reusable


def h11s(pieces: list[bytes]) -> tuple[int, bytes, list[tuple[bytes, bytes]], bytes, bool]:
    """h11's reading; the connection reusable when h11 could start a next exchange on it
    without having needed the end of the stream."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("Host", "example.test")]))
    conn.send(h11.EndOfMessage())
    response: Any = None
    body = b""
    queue = [piece for piece in pieces if piece]  # an empty piece is the end, for h11
    ended = False
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            ended = not queue
            conn.receive_data(queue.pop(0) if queue else b"")
            continue
        if isinstance(event, h11.Response):
            response = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            break
    raw = [(name, value) for name, _, value in response.headers._full_items]
    unread = queue or conn.trailing_data[0]
    reusable = not ended and not unread and conn.their_state is h11.DONE
    return response.status_code, response.reason, raw, body, reusable


def cut(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


_names = st.sampled_from(
    [b"Content-Type", b"X-Request-Id", b"cf-ray", b"Set-Cookie", b"Vary", b"Server", b"ETag"]
)
_values = st.binary(min_size=0, max_size=40).map(
    lambda b: bytes(c for c in b if 0x21 <= c <= 0x7E or c in (0x20, 0x09)).strip(b" \t")
)


@st.composite
def answers(draw: st.DrawFn) -> bytes:
    """An HTTP/1.x answer as servers write them: framed by Content-Length, by chunks or by the
    close, maybe after 1xx interim answers, maybe with odd spacing, a reason or none."""
    status = draw(st.sampled_from([200, 201, 204, 304, 404, 429, 500, 503]))
    minor = draw(st.sampled_from([1, 1, 1, 0]))
    reason = draw(st.sampled_from([b" OK", b" ", b"", b" Some Reason", b" \xe9t\xe9"]))
    eol = draw(st.sampled_from([b"\r\n", b"\r\n", b"\n"]))
    body = draw(st.binary(max_size=300))
    headers = draw(st.lists(st.tuples(_names, _values), max_size=6))
    framing = draw(st.sampled_from(["length", "chunked", "close"]))
    if minor == 1 and draw(st.booleans()):
        headers.append((b"Connection", draw(st.sampled_from([b"close", b"keep-alive"]))))
    if framing == "length":
        headers.append((b"Content-Length", b"%d" % len(body)))
    elif framing == "chunked":
        headers.append((b"Transfer-Encoding", draw(st.sampled_from([b"chunked", b"Chunked"]))))
    space = draw(st.sampled_from([b"", b" ", b"  ", b"\t"]))
    out = b""
    for _ in range(draw(st.integers(0, 2))):
        out += b"HTTP/1.1 100 Continue" + eol + eol
    out += b"HTTP/1.%d %d" % (minor, status) + reason + eol
    out += b"".join(n + b":" + space + v + space + eol for n, v in headers) + eol
    if status in (204, 304):
        return out
    if framing != "chunked":
        return out + body
    sizes = draw(st.lists(st.integers(1, 64), max_size=8))
    rest = body
    for size in sizes:
        if not rest:
            break
        piece, rest = rest[:size], rest[size:]
        ext = draw(st.sampled_from([b"", b";name=value", b" "]))
        out += b"%x" % len(piece) + ext + b"\r\n" + piece + b"\r\n"
    if rest:
        out += b"%X\r\n" % len(rest) + rest + b"\r\n"
    trailer = draw(st.sampled_from([b"", b"X-Trailer: 1\r\n"]))
    return out + b"0\r\n" + trailer + b"\r\n"


_PROPERTY = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_PROPERTY
@given(answers(), st.lists(st.integers(0, 10_000), max_size=12))
def test_every_answer_is_read_as_h11_reads_it(answer: bytes, cuts: list[int]) -> None:
    pieces = cut(answer, cuts)
    assert ours(pieces) == h11s(pieces)


@_PROPERTY
@given(answers(), st.lists(st.integers(0, 10_000), max_size=6), st.data())
def test_a_damaged_answer_is_refused_or_read_as_h11_reads_it(
    answer: bytes, cuts: list[int], data: st.DataObject
) -> None:
    """One byte changed, dropped or added anywhere: whatever we read, h11 reads the same
    (and keeps the connection as we do, or reads less); what h11 refuses, we refuse."""
    at = data.draw(st.integers(0, max(0, len(answer) - 1)))
    byte = data.draw(st.sampled_from(b"\r\n :;\t\x0b\x0c0aZ\x00\x7f\xff"))
    how = data.draw(st.sampled_from(["replace", "drop", "insert"]))
    if how == "replace":
        answer = answer[:at] + bytes([byte]) + answer[at + 1 :]
    elif how == "drop":
        answer = answer[:at] + answer[at + 1 :]
    else:
        answer = answer[:at] + bytes([byte]) + answer[at:]
    pieces = cut(answer, cuts)
    try:
        theirs = h11s(pieces)
    except (h11.RemoteProtocolError, h11.LocalProtocolError):
        theirs = None
    try:
        mine = ours(pieces)
    except (httpx.RemoteProtocolError, httpx.ReadError):
        return  # refused: never laxer than h11, sometimes stricter (folded lines, TE and CL)
    assert theirs is not None, f"we read {answer!r}, which h11 refuses"
    assert mine[:4] == theirs[:4]
    assert not mine[4] or theirs[4]  # we reuse a connection only where h11 would


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"2\r\n[]\r\n0\r\n\r\n",
            "both",
        ),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", "other"),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "",
        ),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n", "conflict"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "negative"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1234567890123456789\r\n\r\n", "19 digits"),
        (b"HTTP/1.1 200 OK\r\nX-A: 1\r\n folded\r\nContent-Length: 0\r\n\r\n", "folded"),
        (b"HTTP/1.1 200 OK\r\nX A: 1\r\nContent-Length: 0\r\n\r\n", "bad name"),
        (b"HTTP/2 200 OK\r\nContent-Length: 0\r\n\r\n", "version"),
        (b"HTTP/1.1 101 Switching\r\n\r\n", "101"),
        (b"HTTP/1.1 099 Low\r\n\r\n", "below 100"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXY0\r\n\r\n", "crlf"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "chunk size"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", "short"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", "short chunk"),
        (b"", "nothing"),
        (b"HTTP/1.1 200 O\x0bK\r\nContent-Length: 0\r\n\r\n", "a vertical tab"),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nContent-Length: x\r\n\r\n",
            "",
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nContent-Length: 0\r\n\r\n",
            "",
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nTransfer-Encoding: gzip\r\n\r\n",
            "",
        ),
    ],
)
def test_a_wrong_answer_is_a_protocol_error(answer: bytes, why: str) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        ours([answer])


def test_httpx_sees_one_content_length_and_a_lower_case_transfer_encoding_as_h11_gives() -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\nX: y\r\ncontent-length: 2\r\n\r\n[]"
    assert ours([answer])[2] == [(b"Content-Length", b"2"), (b"X", b"y")] == h11s([answer])[2]
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: CHUNKED\r\n\r\n2\r\n[]\r\n0\r\n\r\n"
    assert ours([answer])[2] == [(b"Transfer-Encoding", b"chunked")] == h11s([answer])[2]


def test_the_head_chunk_lines_and_trailers_are_bounded_and_endless_input_stops() -> None:
    class Endless:
        def __init__(self, first: bytes, then: bytes) -> None:
            self.first, self.then, self.read = first, then, 0

        def recv(self, size: int) -> bytes:
            self.read += 1
            if self.read > 100:  # a reader without its bound ends here, not in the KiB error
                return b""
            if self.first:
                out, self.first = self.first, b""
                return out
            return self.then

    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    cases = [
        (b"HTTP/1.1 200 OK\r\n", b"X-A: " + b"a" * 1000 + b"\r\n"),  # headers without end
        (b"HTTP/1.1 200 OK\r\nX-A: ", b"a" * 1000),  # one endless header line
        (chunked, b"0" * 1000),  # an endless chunk size line
        (chunked + b"0\r\n", b"X-T: " + b"t" * 1000 + b"\r\n"),  # endless trailers
    ]
    for first, then in cases:
        sock = Endless(first, then)
        with pytest.raises(httpx.RemoteProtocolError, match="KiB"):
            ours_sock(sock)
        assert sock.read < 3 * HEAD_LIMIT // 1000, first  # stopped near the bound


def ours_sock(sock: Any) -> bytes:
    tr = transport()
    request = httpx.Request("GET", "http://example.test/")
    conn = _Connection(sock)
    head = tr._read_head(conn, request)
    return b"".join(_Body(tr, ("http", "example.test", 80), conn, head, request))


# -- connections ------------------------------------------------------------------------------


def test_one_connection_carries_every_get_while_the_server_keeps_it(serve: Any) -> None:
    server = serve(lambda head, n: [ok(b'[{"n": %d}]' % n)])
    tr = transport()
    with client(server.url, tr) as http:
        got = [http.get("/assistant").json() for _ in range(20)]
    assert got == [[{"n": n}] for n in range(20)]
    assert tr.connections_made == 1 and server.accepted == 1


def test_a_connection_the_server_closed_while_idle_is_replaced_without_an_error(
    serve: Any,
) -> None:
    server = serve(lambda head, n: [ok(), CLOSE] if n == 0 else [ok()])
    tr = transport()
    with client(server.url, tr) as http:
        http.get("/a").raise_for_status()
        time.sleep(0.2)  # the server's close has arrived: seen before sending
        http.get("/b").raise_for_status()
    assert tr.connections_made == 2 and len(server.heads) == 2


def test_an_idle_connection_the_server_wrote_on_is_never_reused(serve: Any) -> None:
    """Servers answer an idle connection with a 408 before they close it: that is not the
    answer to our next GET, which goes on a new connection."""
    late = b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    written = threading.Event()
    server = serve(lambda head, n: [ok(), late, written.set, 2.0] if n == 0 else [ok(b"[2]")])
    tr = transport()
    with client(server.url, tr) as http:
        http.get("/a").raise_for_status()
        assert written.wait(5)
        time.sleep(0.05)  # on loopback the bytes are ours once written; a margin all the same
        assert http.get("/b").json() == [2]
    assert tr.connections_made == 2


def test_a_reused_connection_closed_before_any_answer_is_tried_once_more(serve: Any) -> None:
    """The close can cross our request on the wire: the GET goes once more, on a new
    connection. On a new connection the same close is an error."""
    server = serve(lambda head, n: [CLOSE] if n in (1, 3, 4) else [ok()])
    tr = transport()
    with client(server.url, tr) as http:
        http.get("/a").raise_for_status()  # 0
        http.get("/b").raise_for_status()  # 1 closed unanswered, 2 answered on a new one
        assert tr.connections_made == 2
        with pytest.raises(httpx.RemoteProtocolError, match="before answering"):
            http.get("/c")  # 3 on the kept connection, then 4 on a new one: both closed
    assert [h.split(b" ")[1] for h in server.heads] == [b"/a", b"/b", b"/b", b"/c", b"/c"]


def test_a_connection_is_kept_only_after_an_answer_read_to_its_exact_end(serve: Any) -> None:
    answers = {
        0: [ok(b"[1]", b"Connection: close\r\n")],
        1: [b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n[]"],
        2: [b"HTTP/1.1 200 OK\r\n\r\n[]", CLOSE],  # framed by the close
        3: [ok(b"[]") + b"HTTP/1.1 200 OK\r\n"],  # bytes past the answer
        4: [ok(b"[" + b"0," * 50_000 + b"0]")[:1000], 0.3, b"0," * 50_000 + b"0]"],
        5: [ok()],
        6: [ok()],
    }
    server = serve(lambda head, n: answers[n])
    tr = transport()
    with client(server.url, tr) as http:
        for _ in range(4):
            http.get("/").raise_for_status()
            assert tr._idle_count == 0
        with http.stream("GET", "/") as resp:
            next(resp.iter_raw())  # what came with the head; the rest is late
        assert tr._idle_count == 0  # closed before its end
        http.get("/").raise_for_status()
        assert tr._idle_count == 1
        http.get("/").raise_for_status()
    assert tr.connections_made == 6  # a new one after each of the first five, then kept


def test_many_threads_on_one_transport_each_read_their_own_answer(serve: Any) -> None:
    """One client serves every tenant: whatever the server does (answers in pieces, after a
    1xx, chunked, closes after answering or without answering), no GET reads an answer
    meant for another, and every slot comes back."""
    lock = threading.Lock()
    rng = random.Random(16)

    def answer(head: bytes, n: int) -> list[Step]:
        found = re.search(rb"(?i)\r\nauthorization: (\S+)", head)
        assert found is not None
        body = found.group(1) + b" " + head.split(b" ")[1]
        with lock:
            roll, split = rng.random(), rng.randint(1, 40)
        if roll < 0.1:
            return [ok(body, b"Connection: close\r\n"), CLOSE]
        if roll < 0.2:
            chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            return [
                b"HTTP/1.1 100 Continue\r\n\r\n"
                + chunked
                + b"%x\r\n" % len(body)
                + body
                + b"\r\n0\r\n\r\n"
            ]
        if roll < 0.25:
            return [CLOSE]
        whole = ok(body)
        return [whole[:split], 0.001, whole[split:]]

    server = serve(answer)
    tr = transport(max_connections=4, max_keepalive_connections=2)
    wrong: list[Any] = []
    failures: set[str] = set()

    http = client(server.url, tr)

    def tenant(t: int) -> None:
        for i in range(40):
            key, path = f"tenant-{t}", f"/assistant/{t}/{i}"
            try:
                got = http.get(path, headers={"Authorization": key})
            except httpx.HTTPError as exc:
                failures.add(type(exc).__name__)
                continue
            if got.content != f"{key} {path}".encode():
                wrong.append((key, path, got.status_code, got.content))

    threads = [threading.Thread(target=tenant, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    reused = len(server.heads) - tr.connections_made
    http.close()
    assert wrong == []
    assert reused > 100  # most GETs went on a kept connection
    assert failures <= {"RemoteProtocolError"}  # a close without an answer, on a new one
    assert tr._slots is not None and tr._slots.free == 4
    assert tr._idle_count <= 2
    assert len(server.heads) >= 8 * 40


def test_the_gets_in_flight_are_bounded_and_a_wait_past_the_pool_timeout_fails(
    serve: Any,
) -> None:
    server = serve(lambda head, n: [ok()])
    tr = transport(max_connections=1)
    with client(server.url, tr, timeout=httpx.Timeout(5.0, pool=0.2)) as http:
        with http.stream("GET", "/") as held:
            with pytest.raises(httpx.PoolTimeout):
                http.get("/")
            held.read()
        http.get("/").raise_for_status()  # the slot came back with the body's close
    assert tr.connections_made == 1


def test_failures_are_httpx_own_errors(serve: Any) -> None:
    slow = serve(lambda head, n: [1.0, ok()])
    with client(slow.url, transport(), timeout=0.2) as http, pytest.raises(httpx.ReadTimeout):
        http.get("/")
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    refused = client(f"http://127.0.0.1:{port}", transport())
    with refused as http, pytest.raises(httpx.ConnectError):
        http.get("/")
    over = serve(lambda head, n: [b"HTTP/1.1 200 OK\r\nX-Big: " + b"b" * (HEAD_LIMIT + 10)])
    tr = transport()
    with client(over.url, tr) as http:
        with pytest.raises(httpx.RemoteProtocolError, match="over 16 KiB"):
            http.get("/")
        assert tr._idle_count == 0


def test_the_vapi_client_reads_bounded_gzip_answers_through_it(serve: Any) -> None:
    items = [{"id": f"a{i}", "createdAt": f"2026-12-07T00:00:{i:02d}.000Z"} for i in range(3)]
    body = gzip.compress(json.dumps(items).encode())
    server = serve(lambda head, n: [ok(body, b"Content-Encoding: gzip\r\n")])
    with http_client(server.url, timeout_s=5) as http:
        assert isinstance(http._transport, GetTransport)
        assert VapiReader(http, "k").list_objects("/assistant") == items
        bomb = gzip.compress(b"[" + b" " * 5_000_000 + b"]")
        server.answer = lambda head, n: [ok(bomb, b"Content-Encoding: gzip\r\n")]
        with pytest.raises(VapiError, match="a body over 1 MiB"):
            VapiReader(http, "k", max_body_bytes=1024 * 1024).list_objects("/assistant")


def test_the_vapi_clients_gets_skip_the_client_and_send_what_it_would_send(
    serve: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A list call goes straight to the transport (`_DirectGet`): the same request, byte for
    byte, as the client sends for the same GET, and the client's response hooks see it."""
    item = b'[{"id": "a1", "createdAt": "2026-12-07T00:00:00.000Z"}]'
    server = serve(lambda head, n: [ok(item)])
    sent: list[str] = []
    send = httpx.Client.send

    def counted(self: httpx.Client, request: httpx.Request, **kw: Any) -> httpx.Response:
        sent.append(request.method)
        return send(self, request, **kw)

    monkeypatch.setattr(httpx.Client, "send", counted)
    seen: list[tuple[str, str, int]] = []
    hook = lambda r: seen.append((r.request.method, r.request.url.path, r.status_code))  # noqa: E731
    with http_client(server.url, timeout_s=5, on_response=hook) as http:
        reader = VapiReader(http, "k-1")
        assert reader.list_objects("/assistant")[0]["id"] == "a1"
        assert sent == []  # not through the client
        answer = http.get(
            "/assistant", params={"limit": 1000}, headers={"Authorization": "Bearer k-1"}
        )
        assert answer.status_code == 200 and sent == ["GET"]
    assert len(server.heads) == 2 and server.heads[0] == server.heads[1]
    assert b"\r\nAuthorization: Bearer k-1\r\n" in server.heads[0]
    assert seen == [("GET", "/assistant", 200)] * 2
    # each request its own extensions, with the client's timeouts
    direct = _DirectGet.of(http, {"Authorization": "Bearer k"})
    assert direct is not None
    made: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        made.append(request)
        return httpx.Response(200)

    direct.transport = httpx.MockTransport(record)  # type: ignore[assignment]
    direct.send(httpx.URL("http://x/a")).close()
    direct.send(httpx.URL("http://x/a")).close()
    assert made[0].extensions is not made[1].extensions
    assert made[0].extensions["timeout"] is not made[1].extensions["timeout"]
    assert made[0].extensions == {"timeout": http.timeout.as_dict()}


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8123/assistant?limit=1000", "https://api.vapi.ai/tool", "http://h/"]
)
def test_a_direct_get_is_the_request_the_client_builds(url: str) -> None:
    """Its headers are made once per host (`_DirectGet.by_host`), the rest as httpx does."""
    with http_client("https://api.vapi.ai", timeout_s=5) as http:
        own = {"Authorization": "Bearer k-1"}
        direct = _DirectGet.of(http, own)
        assert direct is not None
        built = http.build_request("GET", url, headers=own)
        for _ in range(2):  # made, then kept
            made = direct._request(httpx.URL(url))
            assert made.headers.raw == built.headers.raw
            assert (made.method, made.url, made.content) == (built.method, built.url, b"")
            assert type(made.stream) is type(built.stream) is httpx.ByteStream
        assert list(direct.by_host) == [built.url.netloc]


def _bypassed(http: httpx.Client) -> bool:
    return _DirectGet.of(http, {"Authorization": "Bearer k"}) is not None


@pytest.mark.parametrize(
    "extra",
    [
        {"auth": ("user", "password")},
        {"event_hooks": {"request": [lambda r: None]}},
        {"params": {"always": "1"}},
        {"follow_redirects": True},
        {"headers": {"authorization": "Bearer someone else"}},
        {"headers": {"Host": "vapi.example"}},  # httpx sends it instead of its own
    ],
)
def test_a_client_with_work_of_its_own_for_each_request_keeps_it(
    serve: Any, extra: dict[str, Any]
) -> None:
    server = serve(lambda head, n: [ok()])
    tr = transport()
    with SharedClient(direct=tr, transport=tr, base_url=server.url, timeout=5) as plain:
        assert _bypassed(plain)
    tr = transport()
    with SharedClient(direct=tr, transport=tr, base_url=server.url, timeout=5, **extra) as http:
        assert not _bypassed(http)
        assert VapiReader(http, "k").list_objects("/assistant") == []
    head = server.heads[-1]
    assert (b"Authorization: Basic " in head) is ("auth" in extra)
    assert (b"always=1" in head) is ("params" in extra)


def test_only_a_client_that_names_its_one_transport_is_bypassed(serve: Any) -> None:
    server = serve(lambda head, n: [ok()])
    with httpx.Client(base_url=server.url, transport=transport()) as unnamed:
        assert not _bypassed(unnamed)
    mock = httpx.MockTransport(lambda request: httpx.Response(200, json=[]))
    with http_client(server.url, transport=mock) as mocked:
        assert not _bypassed(mocked)
        assert VapiReader(mocked, "k").list_objects("/assistant") == []
    with http_client(f"http://u:p@localhost:{server.port}") as userinfo:  # basic auth
        assert not _bypassed(userinfo)
        assert VapiReader(userinfo, "k").list_objects("/assistant") == []
    assert b"Authorization: Basic dTpw" in server.heads[-1]
    tr = transport()
    with pytest.raises(ValueError, match="one transport"):
        SharedClient(direct=tr, transport=transport())
    with pytest.raises(ValueError, match="one transport"):
        SharedClient(direct=tr, transport=tr, mounts={"http://other": transport()})
    with pytest.raises(ValueError, match="one transport"):
        SharedClient(direct=tr, transport=tr, proxy="http://127.0.0.1:3128")


def test_a_closed_client_sends_nothing_more(serve: Any) -> None:
    """Its GETs are refused as the client refuses them: no new connection after the end."""
    server = serve(lambda head, n: [ok()])
    with http_client(server.url, timeout_s=5) as http:
        reader = VapiReader(http, "k")
        assert reader.list_objects("/assistant") == []
    with pytest.raises(RuntimeError, match="client has been closed"):
        reader.list_objects("/assistant")
    assert len(server.heads) == 1
    direct = _DirectGet.of(http, {"Authorization": "Bearer k"})
    assert direct is not None
    with pytest.raises(RuntimeError, match="transport has been closed"):
        direct.send(httpx.URL(f"{server.url}/assistant"))
    assert len(server.heads) == 1


def test_a_proxy_named_by_the_environment_is_honoured_by_httpx_own_transport(
    serve: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    item = b'[{"id": "via the proxy", "createdAt": "2026-12-07T00:00:00.000Z"}]'
    proxy = serve(lambda head, n: [ok(item)])
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
    with http_client("http://vapi.invalid", timeout_s=5) as http:
        assert not isinstance(http._transport, GetTransport) and not _bypassed(http)
        assert VapiReader(http, "k").list_objects("/assistant")[0]["id"] == "via the proxy"
    assert proxy.heads[0].startswith(b"GET http://vapi.invalid/assistant?limit=1000 HTTP/1.1")


# -- TLS ------------------------------------------------------------------------------------------


def _certificate(tmp: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost")]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    (tmp / "cert.pem").write_bytes(pem)
    (tmp / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp / "cert.pem", tmp / "key.pem")
    trusting = ssl.create_default_context(cafile=str(tmp / "cert.pem"))
    return server, trusting


def test_https_is_verified_and_kept_alive(serve: Any, tmp_path: Path) -> None:
    server_ctx, trusting = _certificate(tmp_path)
    server = serve(lambda head, n: [ok(b'["tls"]')], tls=server_ctx)
    tr = GetTransport(verify=trusting, limits=httpx.Limits())
    with client(server.url, tr) as http:
        assert [http.get("/").json() for _ in range(3)] == [["tls"]] * 3
    assert tr.connections_made == 1
    unknown = client(server.url, transport())  # certifi's roots do not know this one
    with unknown as http, pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        http.get("/")
    other_name = server.url.replace("localhost", "127.0.0.1")  # not a name the cert holds
    wrong = client(other_name, GetTransport(verify=trusting, limits=httpx.Limits()))
    with wrong as http, pytest.raises(httpx.ConnectError, match="mismatch"):
        http.get("/")
