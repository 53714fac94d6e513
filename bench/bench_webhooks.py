"""The webhook endpoint over HTTP on a warm cache: requests per second and latency of the
`x-vapi-secret` and HMAC (`x-signature`) paths.

uvicorn serves `app_from_url` (resolver, NOTIFY listener, `last_used_at` flusher) in a process
of its own, against a scratch database (created on `--database-url`'s server, seeded with
`--orgs` orgs of 2 assistants, dropped at the end). Load comes from `--clients` processes on
the same machine, each holding `--connections` keep-alive HTTP/1.1 connections in a closed
loop (send, read the whole answer, send the next), cycling over every assistant. Latency is
what a client saw, so it includes the client's own scheduling on a shared CPU.

python -m bench.bench_webhooks --orgs 200 --seconds 10 [--database-url URL] [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from psycopg import sql

from bench.report import table, write_section
from reconciler.secrets.crypto import MasterKey
from reconciler.state.db import open_pool
from reconciler.state.migrate import migrate
from reconciler.state.store import StateWriter

ROOT = Path(__file__).resolve().parent.parent
PATH = "/webhooks/vapi"
DEFAULT_URL = os.environ.get(
    "RECONCILER_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
SERVER = """
import os, socket, sys
import uvicorn
from reconciler.webhooks.http import app_from_url

async def bare(scope, receive, send):  # the server's own ceiling: read, answer, nothing else
    while (await receive()).get("more_body"):
        pass
    body = b'{"orgId": "00000000-0000-0000-0000-000000000000", "slug": "org-0"}'
    await send({"type": "http.response.start", "status": 200, "headers": [
        (b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})

sock = socket.socket(fileno=int(sys.argv[1]))
if sys.argv[2] == "bare":
    app, lifespan = bare, "off"
else:
    app = app_from_url(os.environ["BENCH_DATABASE_URL"], os.environ["BENCH_MASTER_KEY"])
    lifespan = "on"
config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan=lifespan)
config.load()
print(f"uvicorn {uvicorn.__version__} with {config.http_protocol_class.__name__}", flush=True)
uvicorn.Server(config).run(sockets=[sock])
"""
ROWS = [
    ("none: a bare ASGI app (the server's ceiling)", "bare", "x-vapi-secret"),
    ("x-vapi-secret", "webhooks", "x-vapi-secret"),
    ("x-signature (HMAC)", "webhooks", "x-signature"),
]


@contextmanager
def scratch_database(server_url: str) -> Iterator[str]:
    name = f"reconciler_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    info = psycopg.conninfo.conninfo_to_dict(server_url)
    info["dbname"] = name
    try:
        yield psycopg.conninfo.make_conninfo(**info)
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def seed(url: str, key: MasterKey, orgs: int) -> list[tuple[str, str]]:
    """`orgs` orgs with a Vapi credential and 2 assistants each: (assistant id, secret)."""
    pool = open_pool(url, max_size=4)
    try:
        migrate(pool)
        state = StateWriter(pool)
        out = []
        for i in range(orgs):
            org_id = str(uuid.uuid4())
            state.orgs.upsert(org_id, f"org-{i}", f"Org {i}")
            secret = f"whsec-{i}-{uuid.uuid4().hex}"
            config = {"apiKey": f"key-{i}", "webhookSecret": secret}
            state.credentials.store(
                org_id, "vapi", key.encrypt(config, aad=f"{org_id}:vapi"), key.fingerprint(config)
            )
            for role in ("inbound", "outbound"):
                vid = str(uuid.uuid4())
                state.assistants.record(org_id, role, vid, role, {})
                out.append((vid, secret))
        return out
    finally:
        pool.close()


def requests(assistants: list[tuple[str, str]], mode: str) -> list[bytes]:
    """Whole HTTP/1.1 requests, built once: a status-update per assistant."""
    out = []
    for vid, secret in assistants:
        raw = json.dumps(
            {"message": {"type": "status-update", "status": "ended", "call": {"assistantId": vid}}}
        ).encode()
        if mode == "x-vapi-secret":
            auth = f"x-vapi-secret: {secret}\r\n"
        else:
            stamp = str(int(time.time() * 1000))
            digest = hmac.new(secret.encode(), f"{stamp}.".encode() + raw, hashlib.sha256)
            auth = f"x-signature: {digest.hexdigest()}\r\nx-timestamp: {stamp}\r\n"
        head = (
            f"POST {PATH} HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\n"
            f"content-length: {len(raw)}\r\n{auth}\r\n"
        )
        out.append(head.encode() + raw)
    return out


async def _connection(
    port: int, reqs: list[bytes], offset: int, start: float, stop: float, lat: list[float]
) -> int:
    """One keep-alive connection in a closed loop; latencies of requests sent in
    [start, stop); returns the number of answers that were not 200."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    errors = 0
    i = offset
    try:
        while (sent := time.perf_counter()) < stop:
            writer.write(reqs[i % len(reqs)])
            i += 1
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            if sent >= start:
                lat.append(time.perf_counter() - sent)
                errors += head[9:12] != b"200"
    finally:
        writer.close()
    return errors


def _client(
    port: int,
    reqs: list[bytes],
    connections: int,
    start: float,
    stop: float,
    seat: int,
    out: multiprocessing.Queue,  # type: ignore[type-arg]
) -> None:
    async def run() -> tuple[list[float], int]:
        lat: list[float] = []
        spread = len(reqs) // max(1, connections)
        counts = await asyncio.gather(
            *(
                _connection(port, reqs, (seat * connections + c) * spread, start, stop, lat)
                for c in range(connections)
            )
        )
        return lat, sum(counts)

    out.put(asyncio.run(run()))


def load(
    port: int, reqs: list[bytes], clients: int, connections: int, warmup_s: float, seconds: float
) -> tuple[int, float, float, float, int]:
    """Requests measured, req/s, p50 and p99 (ms), non-200 answers."""
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    start = time.perf_counter() + warmup_s
    stop = start + seconds
    procs = [
        ctx.Process(target=_client, args=(port, reqs, connections, start, stop, seat, out))
        for seat in range(clients)
    ]
    for p in procs:
        p.start()
    results = [out.get(timeout=warmup_s + seconds + 60) for _ in procs]
    for p in procs:
        p.join()
    lat = sorted(x for r in results for x in r[0])
    errors = sum(r[1] for r in results)
    n = len(lat)
    return n, n / seconds, lat[n // 2] * 1000, lat[min(n - 1, int(n * 0.99))] * 1000, errors


def listening_socket() -> socket.socket:
    # IPPROTO_TCP named: asyncio sets TCP_NODELAY only on such sockets (else ~40 ms stalls)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    return sock


@contextmanager
def servers(app: str, count: int, env: dict[str, str]) -> Iterator[tuple[int, str]]:
    """`count` uvicorn processes serving `app` on one shared listening socket."""
    sock = listening_socket()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SERVER, str(sock.fileno()), app],
            pass_fds=[sock.fileno()],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(count)
    ]
    try:
        versions = {p.stdout.readline().strip() for p in procs if p.stdout is not None}
        yield sock.getsockname()[1], ", ".join(sorted(versions))
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)
        sock.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--database-url", default=DEFAULT_URL, help="a server we may create on")
    ap.add_argument("--orgs", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--clients", type=int, default=2, help="load-generating processes")
    ap.add_argument("--connections", type=int, default=4, help="connections per client")
    ap.add_argument("--servers", type=int, default=1, help="uvicorn processes (one socket)")
    ap.add_argument("--write", type=Path)
    args = ap.parse_args()
    key = MasterKey.generate()
    rows = []
    versions = ""
    with scratch_database(args.database_url) as url:
        assistants = seed(url, key, args.orgs)
        env = {**os.environ, "BENCH_DATABASE_URL": url, "BENCH_MASTER_KEY": key.to_b64()}
        for label, app, mode in ROWS:
            with servers(app, args.servers, env) as (port, versions):
                reqs = requests(assistants, mode)
                n, rps, p50, p99, errors = load(
                    port, reqs, args.clients, args.connections, args.warmup, args.seconds
                )
            rows.append(
                [
                    label,
                    str(args.clients * args.connections),
                    str(n),
                    f"{rps:.0f}",
                    f"{p50:.2f}",
                    f"{p99:.2f}",
                    str(errors),
                ]
            )
    body = table(["auth", "connections", "requests", "req/s", "p50 ms", "p99 ms", "not 200"], rows)
    body += (
        f"\n\n{args.orgs} orgs, {len(assistants)} assistants, every one cached (the warm-up"
        f" pass of {args.warmup:.0f} s is not counted), {args.seconds:.0f} s per row."
        f" {args.servers} server process(es) ({versions}) and {args.clients} load processes"
        f" share this machine's {os.cpu_count()} cores, so the figures are a floor for the"
        " server alone. Answers are 200 `{orgId, slug}` (no forward URL): the verification"
        " path, not a downstream's. The first row is the same server answering without any"
        " framework or verification: the rest is what the endpoint costs on top."
    )
    print(body)
    if args.write:
        write_section(
            args.write,
            "bench_webhooks",
            "Webhook endpoint over HTTP (warm cache)",
            f"python -m bench.bench_webhooks --orgs {args.orgs} --seconds {args.seconds:.0f}"
            f" --clients {args.clients} --connections {args.connections}"
            f" --servers {args.servers}",
            body,
        )


if __name__ == "__main__":
    main()
