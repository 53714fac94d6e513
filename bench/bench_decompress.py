"""Reading a gzip bomb: a forward target (or provider, or Vapi) answers a small gzip body that
inflates to `--inflated-mib` of zeros. Peak traced memory (tracemalloc) and time of reading
it with a 1 MiB limit: httpx's own decoding (`aiter_bytes`, counting what it yields, as the
forwarder did before) against `reconciler.bounded` (raw stream, inflated in 64 KiB pieces).

The answer comes over real HTTP from a uvicorn server in a thread of this process.

python -m bench.bench_decompress [--inflated-mib 1024] [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import threading
import time
import tracemalloc
import zlib
from pathlib import Path

import anyio
import httpx
import uvicorn

from bench.report import table, write_section
from reconciler.bounded import ACCEPT_ENCODING, AnswerTooLarge, aread_limited

LIMIT = 1024 * 1024


def bomb(mib: int) -> bytes:
    """`mib` MiB of zeros, gzip level 9, compressed a MiB at a time (never held whole)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = b"\0" * (1024 * 1024)
    parts = [packer.compress(zeros) for _ in range(mib)]
    parts.append(packer.flush())
    return b"".join(parts)


async def httpx_way(url: str) -> str:
    async with (
        httpx.AsyncClient() as http,
        http.stream("GET", url, headers={"accept-encoding": ACCEPT_ENCODING}) as resp,
    ):
        size = 0
        async for chunk in resp.aiter_bytes():
            size += len(chunk)
            if size > LIMIT:
                return "refused past 1 MiB"
    return "read whole"


async def bounded_way(url: str) -> str:
    async with (
        httpx.AsyncClient() as http,
        http.stream("GET", url, headers={"accept-encoding": ACCEPT_ENCODING}) as resp,
    ):
        try:
            await aread_limited(resp, LIMIT)
        except AnswerTooLarge:
            return "refused past 1 MiB"
    return "read whole"


def measure(way: object, url: str) -> tuple[str, float, float]:
    tracemalloc.start()
    started = time.perf_counter()
    try:
        outcome = anyio.run(way, url)  # type: ignore[arg-type]
        took = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return outcome, peak / (1024 * 1024), took


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--inflated-mib", type=int, default=1024)
    ap.add_argument("--write", type=Path)
    args = ap.parse_args()
    body = bomb(args.inflated_mib)

    async def app(scope: dict, receive: object, send: object) -> None:  # type: ignore[type-arg]
        if scope["type"] != "http":
            return
        headers = [
            (b"content-encoding", b"gzip"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": body})  # type: ignore[operator]

    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    url = f"http://127.0.0.1:{port}/"
    rows = []
    for label, way in (
        ("httpx's decoding (aiter_bytes), counted", httpx_way),
        ("reconciler.bounded (aiter_raw, 64 KiB pieces)", bounded_way),
    ):
        measure(way, url)  # warm
        outcome, peak, took = measure(way, url)
        rows.append([label, outcome, f"{peak:.1f}", f"{took * 1000:.0f}"])
    server.should_exit = True
    thread.join(5)
    text = table(["reader", "outcome", "peak traced MiB", "ms"], rows)
    text += (
        f"\n\nThe answer: {len(body) / 1024:.0f} KiB of gzip inflating to "
        f"{args.inflated_mib} MiB, limit 1 MiB. The peak includes the reader's own buffers "
        "(and the server's copy of the compressed body, in this process). httpx inflates each "
        "raw chunk whole before anything can count it; the bounded reader never holds more "
        "than the limit plus one piece. Used by the webhook forwarder (1 MiB), provider "
        "verification (1 MiB, 64 KiB of an error) and the Vapi client (its own limits: 64 KiB "
        "of an error, 64 MiB of a list page)."
    )
    print(text)
    if args.write:
        command = f"python -m bench.bench_decompress --inflated-mib {args.inflated_mib}"
        write_section(args.write, "bench_decompress", "Reading a gzip bomb", command, text)


if __name__ == "__main__":
    main()
