"""`reconciler.bounded`: answers are decompressed in bounded pieces and counted as produced, so
a small gzip body that inflates to a gigabyte costs no more than the limit, in every reader
(the webhook forwarder, provider verification, the Vapi client)."""

from __future__ import annotations

import functools
import gzip
import tracemalloc
import zlib
from collections.abc import Iterator

import httpx
import pytest

from reconciler.bounded import (
    ACCEPT_ENCODING,
    AnswerTooLarge,
    UndecodableAnswer,
    aread_limited,
    read_at_most,
    read_limited,
)

DATA = b'{"results": [{"toolCallId": "t1", "result": "ok"}]}' * 500
MiB = 1024 * 1024


def answer(raw: bytes, encoding: str | None, chunk: int = 4096) -> httpx.Response:
    headers = {"content-encoding": encoding} if encoding else {}
    chunks = [raw[i : i + chunk] for i in range(0, len(raw), chunk)] or [b""]
    return httpx.Response(200, headers=headers, stream=httpx.ByteStream(b"".join(chunks)))


def chunked(raw: bytes, encoding: str, chunk: int = 16 * 1024) -> httpx.Response:
    class Stream(httpx.SyncByteStream):
        def __iter__(self) -> Iterator[bytes]:
            for i in range(0, len(raw), chunk):
                yield raw[i : i + chunk]

    return httpx.Response(200, headers={"content-encoding": encoding}, stream=Stream())


@pytest.mark.parametrize(
    ("encoding", "raw"),
    [
        (None, DATA),
        ("identity", DATA),
        ("gzip", gzip.compress(DATA, mtime=0)),
        ("x-gzip", gzip.compress(DATA, mtime=0)),
        ("deflate", zlib.compress(DATA)),  # zlib-wrapped, as the RFC says
        ("deflate", zlib.compress(DATA)[2:-4]),  # raw, as some servers send it
    ],
    # plain ids: every pytest-xdist worker must collect the same names (gzip's bytes held the
    # time of their making, and two workers a second apart collected different tests)
    ids=["none", "identity", "gzip", "x-gzip", "deflate-zlib", "deflate-raw"],
)
def test_every_supported_encoding_decodes_whole_and_cut(encoding: str | None, raw: bytes) -> None:
    assert read_at_most(answer(raw, encoding), MiB) == (DATA, False)
    assert read_at_most(answer(raw, encoding), 100) == (DATA[:100], True)
    assert read_at_most(answer(raw, encoding), len(DATA)) == (DATA, False)


@pytest.mark.parametrize("encoding", ["br", "zstd", "gzip, gzip", "compress"])
def test_unsupported_encodings_are_refused(encoding: str) -> None:
    with pytest.raises(UndecodableAnswer):
        read_at_most(answer(b"whatever", encoding), MiB)


def test_data_that_does_not_decompress_is_refused() -> None:
    with pytest.raises(UndecodableAnswer):
        read_at_most(answer(b"not gzip at all", "gzip"), MiB)


def test_we_ask_only_for_what_we_decode() -> None:
    assert ACCEPT_ENCODING == "gzip, deflate"


@functools.cache
def gzip_bomb() -> bytes:
    """Made on first use (once per process), not at import: every pytest-xdist worker
    imports this module, and the compression costs seconds."""
    return gzip.compress(b"\0" * (256 * MiB), 9)  # ~250 KB on the wire


def test_a_gzip_bomb_stops_at_the_limit_within_a_few_mib() -> None:
    """256 MiB of zeros in ~250 KB: read as it arrives, at most the limit is ever held.
    (httpx's own `iter_bytes` would hold the whole 256 MiB at once.)"""
    assert len(gzip_bomb()) < 300 * 1024
    tracemalloc.start()
    try:
        with pytest.raises(AnswerTooLarge):
            read_limited(chunked(gzip_bomb(), "gzip"), MiB)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * MiB


def test_the_async_reader_stops_at_the_limit_too() -> None:
    import anyio

    bomb = gzip_bomb()  # made before memory is traced

    class Stream(httpx.AsyncByteStream):
        async def __aiter__(self):  # type: ignore[no-untyped-def,override]
            for i in range(0, len(bomb), 16 * 1024):
                yield bomb[i : i + 16 * 1024]

    async def main() -> int:
        resp = httpx.Response(200, headers={"content-encoding": "gzip"}, stream=Stream())
        tracemalloc.start()
        try:
            with pytest.raises(AnswerTooLarge):
                await aread_limited(resp, MiB)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    assert anyio.run(main) < 4 * MiB
