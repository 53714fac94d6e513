"""Reading an HTTP answer's body with a bound on what it decompresses to.

httpx's `iter_bytes` decompresses each raw chunk whole: a 10 KB gzip chunk that inflates to a
gigabyte becomes one gigabyte-long `bytes` before anyone can count it. These readers take the
raw stream (`iter_raw` / `aiter_raw`) and decode `gzip`, `deflate` and identity themselves with
`zlib.decompressobj().decompress(data, max_length)`, so output comes in pieces of at most
`PIECE` bytes and is counted as it is produced; past the limit they stop (`AnswerTooLarge`,
or a cut answer). Any other content-encoding (`br`, `zstd`, a chain) is refused
(`UndecodableAnswer`): clients send `ACCEPT_ENCODING`, so a server that answers with one
anyway is misbehaving.

Pure (zlib and httpx's response type only), so every layer that reads answers (the webhook
forwarder, provider verification, the Vapi client) uses the same reader.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Protocol

import httpx

ACCEPT_ENCODING = "gzip, deflate"
"""What our clients send as `accept-encoding`: only what these readers decode."""
PIECE = 64 * 1024
"""The most one decompression step produces, whatever the input inflates to."""


class AnswerTooLarge(Exception):
    """The decoded body is longer than the limit; reading stopped there."""


class UndecodableAnswer(Exception):
    """An unsupported content-encoding, or data that does not decompress."""


class _Decoder(Protocol):
    def feed(self, data: bytes, room: int) -> Iterator[bytes]: ...


class _Identity:
    def feed(self, data: bytes, room: int) -> Iterator[bytes]:
        if data:
            yield data


class _Zlib:
    """gzip (`wbits` 16+15) or deflate: zlib-wrapped as the RFC says, raw as some servers send
    (tried when the zlib header is wrong, as httpx does)."""

    def __init__(self, gzip: bool) -> None:
        self._gzip = gzip
        self._started = False
        self._obj = zlib.decompressobj(16 + zlib.MAX_WBITS if gzip else zlib.MAX_WBITS)

    def feed(self, data: bytes, room: int) -> Iterator[bytes]:
        """The output of `data`, in pieces of at most `min(PIECE, room + 1)` bytes: never all
        at once (`room`: how much more the caller accepts; one byte past it tells it)."""
        while not self._obj.eof:
            size = max(1, min(PIECE, room + 1))
            try:
                out = self._obj.decompress(data, size)
            except zlib.error:
                if self._gzip or self._started:
                    raise UndecodableAnswer("the answer does not decompress") from None
                self._obj = zlib.decompressobj(-zlib.MAX_WBITS)  # raw deflate
                self._started = True
                continue
            self._started = True
            data = self._obj.unconsumed_tail
            if out:
                room -= len(out)
                yield out
            if not data and len(out) < size:  # all input in, no output held back
                return


def _decoder(response: httpx.Response) -> _Decoder:
    encoding = response.headers.get("content-encoding", "").strip().lower()
    if encoding in ("", "identity"):
        return _Identity()
    if encoding in ("gzip", "x-gzip"):
        return _Zlib(gzip=True)
    if encoding == "deflate":
        return _Zlib(gzip=False)
    raise UndecodableAnswer("the answer has an unsupported content-encoding")


def _already_read(response: httpx.Response) -> bytes | None:
    """The body of an answer that was read whole before we got it (built in memory, as a
    mock transport's are); None for a stream, the normal case."""
    try:
        return response.content
    except httpx.ResponseNotRead:
        return None


class _Collector:
    """The decoded pieces so far, up to `limit` bytes."""

    def __init__(self, response: httpx.Response, limit: int) -> None:
        self.decoder = _decoder(response)
        self.limit = limit
        self.chunks: list[bytes] = []
        self.size = 0

    def take(self, raw: bytes) -> bool:
        """Adds what `raw` decodes to; False once past the limit (the rest is not decoded)."""
        for piece in self.decoder.feed(raw, self.limit - self.size):
            self.size += len(piece)
            if self.size > self.limit:
                self.chunks.append(piece[: len(piece) - (self.size - self.limit)])
                self.size = self.limit
                return False
            self.chunks.append(piece)
        return True

    def body(self) -> bytes:
        return b"".join(self.chunks)


def read_at_most(
    response: httpx.Response, limit: int, *, each: Callable[[], None] | None = None
) -> tuple[bytes, bool]:
    """At most `limit` decoded bytes of a streamed answer, and whether there was more.
    `each` is called after every raw chunk (e.g. to raise past a deadline)."""
    content = _already_read(response)
    if content is not None:
        return content[:limit], len(content) > limit
    collector = _Collector(response, limit)
    for raw in response.iter_raw():
        if not collector.take(raw):
            return collector.body(), True
        if each is not None:
            each()
    return collector.body(), False


async def aread_at_most(response: httpx.Response, limit: int) -> tuple[bytes, bool]:
    """`read_at_most` for an async streamed answer."""
    content = _already_read(response)
    if content is not None:
        return content[:limit], len(content) > limit
    collector = _Collector(response, limit)
    stream: AsyncIterator[bytes] = response.aiter_raw()
    async for raw in stream:
        if not collector.take(raw):
            return collector.body(), True
    return collector.body(), False


def read_limited(response: httpx.Response, limit: int) -> bytes:
    """The whole decoded answer; `AnswerTooLarge` past `limit` bytes (reading stops there)."""
    body, cut = read_at_most(response, limit)
    if cut:
        raise AnswerTooLarge(f"the answer is larger than {limit} bytes")
    return body


async def aread_limited(response: httpx.Response, limit: int) -> bytes:
    """`read_limited` for an async streamed answer."""
    body, cut = await aread_at_most(response, limit)
    if cut:
        raise AnswerTooLarge(f"the answer is larger than {limit} bytes")
    return body
