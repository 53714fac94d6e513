"""GETs on keep-alive HTTP/1.1 connections of our own; every other request through httpx's.

A no-op run is list calls, and httpx's stock transport (httpcore and h11) spent about 0.44 ms
of CPU on each small GET, of which the socket calls take 0.06 (a quiet day's figures): more than
the httpx client above it and the Vapi client's own reading of the answer together.
`GetTransport` speaks HTTP/1.1 itself for the one shape those calls have: a GET without a body,
over http or https, with no extension but a timeout. Everything else (writes, and any request
while an instrument such as vcrpy watches httpx's `HTTPTransport`) goes through a stock
`httpx.HTTPTransport`, unchanged; a client whose environment names a proxy is not given this
transport at all (`vapi.client.http_client`). docs/benchmarks.md has the figures.

Narrow on purpose, and no laxer than h11 anywhere: the head of an answer is bounded as h11
bounds it (16 KiB), and so are a chunk's size line and the trailers; only `chunked` or one
`Content-Length` frames a body, never both; a header h11 would refuse is refused; a header
line folded onto the next is refused too (h11 unfolds it), and so is a trailer that names a
framing header. As with h11, one Content-Length of several equal ones reaches httpx, and a
Transfer-Encoding in lower case. Anything unexpected is an
`httpx.RemoteProtocolError` (or the timeout or I/O error it was, as httpx's own types), and
the connection it came on is closed, never reused. A connection is reused only after an
answer read to its exact end with nothing after it, and only while it shows no sign of having
been closed; a GET whose reused connection turns out closed before any answer is sent once
more on a new one (a GET changes nothing: httpx's callers retry it anyway, after a sleep).

`tests/unit/test_vapi_transport.py` holds it to h11's reading of the same bytes.
"""

from __future__ import annotations

import collections
import contextlib
import re
import select
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx

__all__ = ["HEAD_LIMIT", "GetTransport"]

HEAD_LIMIT = 16 * 1024
"""The most an answer's head, a chunk's size line or its trailers may take (h11's bound)."""
_PIECE = 64 * 1024  # the most one read asks for
_STOCK = httpx.HTTPTransport.handle_request  # replaced when vcrpy (or another) watches it

_TOKEN = rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+"
_VALUE = rb"(?:[^\x00\s]+(?:[ \t]+[^\x00\s]+)*)?"
_NAME_RE = re.compile(_TOKEN)
_VALUE_RE = re.compile(_VALUE)
_TARGET_RE = re.compile(rb"[\x21-\x7e]+")
_FIELD_RE = re.compile(rb"(" + _TOKEN + rb"):[ \t]*(" + _VALUE + rb")[ \t]*")
_STATUS_RE = re.compile(rb"HTTP/1\.([01]) ([0-9]{3})(?: ((?:[ \t]|[^\x00\s])*))?")
_CHUNK_RE = re.compile(rb"([0-9A-Fa-f]{1,20})(?:;[^\r\n]*)?[ \t]*")
_BLANK_RE = re.compile(rb"\n\r?\n")
_DIGITS_RE = re.compile(rb"[0-9]{1,18}")
_NO_BODY = frozenset({204, 304})
_FRAMING = frozenset({b"content-length", b"transfer-encoding"})  # refused as trailers
_STALE = (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError)  # a kept one was closed
_Origin = tuple[str, str, int]


def _protocol(message: str, request: httpx.Request) -> httpx.RemoteProtocolError:
    return httpx.RemoteProtocolError(message, request=request)


class _Connection:
    """One socket to one origin and the bytes read from it but not yet used."""

    __slots__ = ("buf", "idle_since", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.idle_since = 0.0

    def looks_closed(self) -> bool:
        """Whether an idle connection has something to read: the server's close (or bytes
        it should not have sent). Either way it cannot carry another exchange."""
        if self.buf:
            return True
        if isinstance(self.sock, ssl.SSLSocket) and self.sock.pending():
            return True
        try:
            poller = select.poll()
            poller.register(self.sock, select.POLLIN)
            return bool(poller.poll(0))
        except (OSError, ValueError):
            return True

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def recv(self, size: int, request: httpx.Request) -> bytes:
        try:
            return self.sock.recv(size)
        except TimeoutError:
            raise httpx.ReadTimeout("timed out reading the answer", request=request) from None
        except OSError as exc:  # ssl.SSLError included
            raise httpx.ReadError(f"reading the answer: {exc}", request=request) from None

    def fill(self, request: httpx.Request, what: str) -> None:
        """Read more into `buf`; the end of the stream here is a protocol error."""
        data = self.recv(_PIECE, request)
        if not data:
            raise _protocol(f"the server closed the connection {what}", request)
        self.buf += data

    def line(self, request: httpx.Request, what: str, *, crlf: bool = False) -> bytes:
        """The next line without its end (CRLF, or also LF unless `crlf`), at most
        HEAD_LIMIT long."""
        while True:
            end = self.buf.find(b"\n")
            if end >= 0:
                if end > HEAD_LIMIT:
                    break
                line = bytes(self.buf[:end])
                del self.buf[: end + 1]
                if line.endswith(b"\r"):
                    return line[:-1]
                if crlf:
                    raise _protocol(f"{what} does not end with CRLF", request)
                return line
            if len(self.buf) > HEAD_LIMIT:
                break
            self.fill(request, f"inside {what}")
        raise _protocol(f"{what} longer than {HEAD_LIMIT // 1024} KiB", request)


class _Head:
    __slots__ = ("chunked", "headers", "keep", "length", "minor", "reason", "status")

    def __init__(
        self, status: int, reason: bytes, minor: int, headers: list[tuple[bytes, bytes]]
    ) -> None:
        self.status = status
        self.reason = reason
        self.minor = minor
        self.headers = headers
        self.length: int | None = None  # None and not chunked: the body runs to the close
        self.chunked = False
        self.keep = False


def _parse_head(raw: bytes, request: httpx.Request) -> _Head:
    lines = raw.split(b"\n")
    first = lines[0][:-1] if lines[0].endswith(b"\r") else lines[0]
    status = _STATUS_RE.fullmatch(first)
    if status is None:
        raise _protocol("the answer does not start with an HTTP/1.x status line", request)
    headers: list[tuple[bytes, bytes]] = []
    lengths: set[bytes] = set()
    length_at = -1  # where the one Content-Length header is kept, as h11 keeps it
    codings: list[bytes] = []
    close = False
    for line in lines[1:]:
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line:
            continue  # the blank line that ends the head
        field = _FIELD_RE.fullmatch(line)
        if field is None:  # folded lines included: h11 unfolds them, we refuse them
            raise _protocol("the answer has a header line that is not a header", request)
        name, value = field.group(1), field.group(2)
        lower = name.lower()
        if lower == b"content-length":
            lengths.update(v.strip() for v in value.split(b","))
            if length_at >= 0:
                continue
            length_at = len(headers)
        elif lower == b"transfer-encoding":
            value = value.lower()
            codings.append(value)
        elif lower == b"connection":
            close = close or b"close" in (t.strip().lower() for t in value.split(b","))
        headers.append((name, value))
    head = _Head(int(status.group(2)), status.group(3) or b"", int(status.group(1)), headers)
    if codings:
        if lengths or codings != [b"chunked"]:
            raise _protocol(
                "the answer is framed by a Transfer-Encoding other than chunked, or by "
                "both Transfer-Encoding and Content-Length",
                request,
            )
        head.chunked = True
    elif lengths:
        value = lengths.pop()
        if lengths or _DIGITS_RE.fullmatch(value) is None:
            raise _protocol("the answer has a bad or conflicting Content-Length", request)
        head.length = int(value)
        headers[length_at] = (headers[length_at][0], value)
    if head.status in _NO_BODY:
        head.length, head.chunked = 0, False
    head.keep = head.minor == 1 and not close and (head.chunked or head.length is not None)
    return head


class _Body(httpx.SyncByteStream):
    """The raw body of one answer; closing it gives its connection back (or closes it)."""

    def __init__(
        self,
        owner: GetTransport,
        origin: _Origin,
        conn: _Connection,
        head: _Head,
        req: httpx.Request,
    ) -> None:
        self._owner = owner
        self._origin = origin
        self._conn: _Connection | None = conn
        self._head = head
        self._request = req
        self._done = False

    def __iter__(self) -> Iterator[bytes]:
        conn, head, request = self._conn, self._head, self._request
        if conn is None:
            raise httpx.StreamClosed()
        if head.chunked:
            yield from self._chunks(conn, request)
        elif head.length is not None:
            yield from self._counted(conn, head.length, request)
        else:
            if conn.buf:
                yield bytes(conn.buf)
                conn.buf.clear()
            while data := conn.recv(_PIECE, request):
                yield data
        self._done = True

    def _counted(self, conn: _Connection, left: int, request: httpx.Request) -> Iterator[bytes]:
        if conn.buf and left:
            piece = bytes(conn.buf[:left])
            del conn.buf[:left]
            left -= len(piece)
            yield piece
        while left:
            data = conn.recv(min(_PIECE, left), request)
            if not data:
                raise _protocol("the server closed the connection inside the body", request)
            left -= len(data)
            yield data

    def _chunks(self, conn: _Connection, request: httpx.Request) -> Iterator[bytes]:
        while True:
            size_line = _CHUNK_RE.fullmatch(conn.line(request, "a chunk's size line", crlf=True))
            if size_line is None:
                raise _protocol("the answer has a bad chunk size line", request)
            size = int(size_line.group(1), 16)
            if size == 0:
                break
            yield from self._counted(conn, size, request)
            while len(conn.buf) < 2:
                conn.fill(request, "inside a chunk")
            if conn.buf[:2] != b"\r\n":
                raise _protocol("a chunk of the answer does not end with CRLF", request)
            del conn.buf[:2]
        taken = 0
        while line := conn.line(request, "the trailers"):
            taken += len(line) + 2
            if taken > HEAD_LIMIT:
                raise _protocol(f"the answer's trailers are over {HEAD_LIMIT // 1024} KiB", request)
            field = _FIELD_RE.fullmatch(line)
            if field is None or field.group(1).lower() in _FRAMING:
                raise _protocol("the answer has a trailer that is not a header, or frames", request)

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            reuse = self._done and self._head.keep and not conn.buf
            self._owner._finish(self._origin, conn, reuse)


class _Slots:
    """A bounded count of GETs in flight whose waiters are served in the order they came: a
    released slot is handed to the longest-waiting GET, so one thread's GETs back to back
    (another org's) cannot take it again before that GET wakes, as they can a
    `threading.BoundedSemaphore`'s."""

    def __init__(self, n: int) -> None:
        self._lock = threading.Lock()
        self._free = self._size = n
        self._waiting: collections.deque[threading.Event] = collections.deque()

    def acquire(self, timeout: float | None) -> bool:
        with self._lock:
            if self._free and not self._waiting:
                self._free -= 1
                return True
            handed = threading.Event()
            self._waiting.append(handed)
        try:
            if handed.wait(timeout):
                return True
        except BaseException:  # interrupted (Ctrl-C): a slot handed over meanwhile goes on
            with self._lock:
                if handed.is_set():
                    self._give_back()
                else:
                    self._waiting.remove(handed)
            raise
        with self._lock:
            if handed.is_set():  # handed over as the wait ended
                return True
            self._waiting.remove(handed)
            return False

    @property
    def free(self) -> int:
        """Slots neither taken nor handed to a waiter (all of them once every GET ended)."""
        with self._lock:
            return self._free

    def release(self) -> None:
        with self._lock:
            self._give_back()

    def _give_back(self) -> None:
        """Under the lock: the slot to the first waiter, else to the count."""
        if self._waiting:
            self._waiting.popleft().set()  # the slot goes straight to it
        elif self._free < self._size:
            self._free += 1
        else:  # as a BoundedSemaphore: a slot given back twice is a bug, not a new slot
            raise ValueError("a GET slot was released more often than taken")


class GetTransport(httpx.BaseTransport):
    """httpx's transport for our clients: bodiless GETs on our own pooled HTTP/1.1
    connections, everything else through a stock `httpx.HTTPTransport` (`other`).

    `limits.max_connections` bounds the GETs in flight (a wait past the pool timeout is an
    `httpx.PoolTimeout`), `max_keepalive_connections` the idle connections kept, and
    `keepalive_expiry` how long one is kept idle; `verify` is the TLS context."""

    def __init__(self, *, verify: ssl.SSLContext, limits: httpx.Limits) -> None:
        self.other = httpx.HTTPTransport(verify=verify, limits=limits)
        self._tls = verify
        self._lock = threading.Lock()
        self._idle: dict[_Origin, list[_Connection]] = {}
        self._idle_count = 0
        self._keep = limits.max_keepalive_connections
        self._expiry = limits.keepalive_expiry
        cap = limits.max_connections
        self._slots = None if cap is None else _Slots(cap)
        self._closed = False
        self.connections_made = 0  # how many sockets this transport opened (tests, benches)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self._closed:  # as a closed httpx client refuses: no new connection
            raise RuntimeError("Cannot send a request, as the transport has been closed.")
        if not self._ours(request):
            return self.other.handle_request(request)
        timeouts = request.extensions.get("timeout") or {}
        if self._slots is not None and not self._slots.acquire(timeout=_wait(timeouts.get("pool"))):
            raise httpx.PoolTimeout("no connection free in time", request=request)
        try:
            return self._get(request, timeouts)
        except BaseException:
            if self._slots is not None:
                self._slots.release()
            raise

    @staticmethod
    def _ours(request: httpx.Request) -> bool:
        headers = request.headers
        return (
            request.method == "GET"
            and httpx.HTTPTransport.handle_request is _STOCK
            and request.url.scheme in ("http", "https")
            and type(request.stream) is httpx.ByteStream
            and "content-length" not in headers
            and "transfer-encoding" not in headers
            and all(key == "timeout" for key in request.extensions)
        )

    def _get(self, request: httpx.Request, timeouts: dict[str, Any]) -> httpx.Response:
        url = request.url
        host = url.raw_host.decode("ascii")
        origin = (url.scheme, host, url.port or (443 if url.scheme == "https" else 80))
        message = _request_bytes(request)
        conn = self._idle_connection(origin)
        reused = conn is not None
        while True:
            if conn is None:
                conn = self._connect(origin, timeouts, request)
            answered = False
            try:
                conn.sock.settimeout(timeouts.get("write"))
                _send(conn, message, request)
                conn.sock.settimeout(timeouts.get("read"))
                conn.fill(request, "before answering")
                answered = True
                head = self._read_head(conn, request)
            except BaseException as exc:
                conn.close()
                if reused and not answered and isinstance(exc, _STALE):
                    conn, reused = None, False  # closed while it was idle: once more, anew
                    continue
                raise
            stream = _Body(self, origin, conn, head, request)
            extensions = {"http_version": b"HTTP/1.%d" % head.minor, "reason_phrase": head.reason}
            return httpx.Response(
                head.status, headers=head.headers, stream=stream, extensions=extensions
            )

    def _read_head(self, conn: _Connection, request: httpx.Request) -> _Head:
        """The head of the final answer, past any interim (1xx) one. The interim heads count
        against the same bound: a server sending them without end is refused, as an endless
        head is (every read getting bytes, no read timeout would end it)."""
        interim = 0  # bytes of the interim heads read before this one
        while True:
            found = _BLANK_RE.search(conn.buf)
            while found is None:
                if len(conn.buf) > HEAD_LIMIT:
                    break
                conn.fill(request, "inside the head")
                found = _BLANK_RE.search(conn.buf)
            if found is None or found.end() > HEAD_LIMIT + 2:
                raise _protocol(f"the answer's head is over {HEAD_LIMIT // 1024} KiB", request)
            raw = bytes(conn.buf[: found.end()])
            del conn.buf[: found.end()]
            head = _parse_head(raw, request)
            if head.status >= 200:
                return head
            if head.status == 101 or head.status < 100:
                raise _protocol(f"the server answered {head.status} to a GET", request)
            interim += len(raw)
            if interim > HEAD_LIMIT:
                raise _protocol(f"interim answers over {HEAD_LIMIT // 1024} KiB", request)

    def _idle_connection(self, origin: _Origin) -> _Connection | None:
        """A kept connection to `origin` that shows no sign of being closed, if there is one.
        The lock is held only to take it: the check is a system call, and a thread that
        waits for the interpreter with the lock held stalls every other GET behind it."""
        now = time.monotonic()
        while True:
            with self._lock:
                pool = self._idle.get(origin)
                if not pool:
                    return None
                conn = pool.pop()
                self._idle_count -= 1
            expired = self._expiry is not None and now - conn.idle_since > self._expiry
            if not expired and not conn.looks_closed():
                return conn
            conn.close()

    def _connect(
        self, origin: _Origin, timeouts: dict[str, Any], request: httpx.Request
    ) -> _Connection:
        scheme, host, port = origin
        timeout = timeouts.get("connect")
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except TimeoutError:
            raise httpx.ConnectTimeout("timed out connecting", request=request) from None
        except OSError as exc:
            raise httpx.ConnectError(f"connecting: {exc}", request=request) from None
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if scheme == "https":
                sock = self._tls.wrap_socket(sock, server_hostname=host)
        except TimeoutError:
            sock.close()
            raise httpx.ConnectTimeout("timed out in the TLS handshake", request=request) from None
        except OSError as exc:  # ssl.SSLError (a certificate refused) included
            sock.close()
            raise httpx.ConnectError(f"TLS handshake: {exc}", request=request) from None
        with self._lock:
            self.connections_made += 1
        return _Connection(sock)

    def _finish(self, origin: _Origin, conn: _Connection, reuse: bool) -> None:
        """An answer's body was closed: keep its connection for the next GET, or close it;
        then give its slot back (a GET let in by that slot finds the connection kept)."""
        kept = False
        if reuse:
            conn.idle_since = time.monotonic()
            with self._lock:
                if (self._keep is None or self._idle_count < self._keep) and not self._closed:
                    self._idle.setdefault(origin, []).append(conn)
                    self._idle_count += 1
                    kept = True
        if not kept:
            conn.close()
        if self._slots is not None:
            self._slots.release()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle = [conn for pool in self._idle.values() for conn in pool]
            self._idle.clear()
            self._idle_count = 0
        for conn in idle:
            conn.close()
        self.other.close()


def _wait(timeout: Any) -> float | None:
    return None if timeout is None else float(timeout)


def _request_bytes(request: httpx.Request) -> bytes:
    """The request's head as h11 writes it (Host first), refusing what h11 refuses: a
    target or a header that would let one value end the line it is on."""
    target = request.url.raw_path
    if _TARGET_RE.fullmatch(target) is None:
        raise httpx.LocalProtocolError("illegal request target", request=request)
    raw = request.headers.raw
    hosts = [(n, v) for n, v in raw if n.lower() == b"host"]
    others = [(n, v) for n, v in raw if n.lower() != b"host"]
    parts = [b"GET ", target, b" HTTP/1.1\r\n"]
    for name, value in hosts + others:
        if _NAME_RE.fullmatch(name) is None or _VALUE_RE.fullmatch(value) is None:
            raise httpx.LocalProtocolError("illegal header name or value", request=request)
        parts += (name, b": ", value, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


def _send(conn: _Connection, message: bytes, request: httpx.Request) -> None:
    try:
        conn.sock.sendall(message)
    except TimeoutError:
        raise httpx.WriteTimeout("timed out sending the request", request=request) from None
    except OSError as exc:
        raise httpx.WriteError(f"sending the request: {exc}", request=request) from None
