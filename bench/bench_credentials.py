"""The credential API (`reconciler.credentials`): a cached getter, a miss (one query + one
AES-GCM decrypt), the version check and the audit's batched writes.

python -m bench.bench_credentials --orgs 1000 --reads 200000 [--database-url URL] [--write docs/benchmarks.md]

Each call is timed on its own (`perf_counter_ns` around it; the timer's own cost is in the
table), single thread, with the store's background threads running (the audit flusher writes
the reads meanwhile, as in a service).
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from bench.report import table, write_section
from reconciler.credentials import CredentialStore
from reconciler.credentials.queries import CredentialQueries
from reconciler.secrets.crypto import KeyRing, MasterKey
from reconciler.state.db import open_pool, temporary_embedded
from reconciler.state.migrate import migrate
from reconciler.state.store import StateWriter

PROVIDERS = {
    "vapi": {"apiKey": "vk", "webhookSecret": "ws"},
    "twilio": {"accountSid": "AC", "authToken": "tok"},
    "google_calendar": {"clientId": "c", "clientSecret": "s", "refreshToken": "r"},
    "resend": {"apiKey": "re"},
    "elevenlabs": {"apiKey": "el"},
}


@contextmanager
def scratch_database(server_url: str | None) -> Iterator[str]:
    """A fresh database on `server_url` (dropped after), else an embedded server's."""
    if server_url is None:
        with tempfile.TemporaryDirectory() as tmp, temporary_embedded(Path(tmp)) as url:
            yield url
        return
    name = f"reconciler_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    info = psycopg.conninfo.conninfo_to_dict(server_url) | {"dbname": name}
    try:
        yield psycopg.conninfo.make_conninfo(**info)
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def seed(url: str, key: KeyRing, orgs: int) -> list[str]:
    pool = open_pool(url, max_size=4)
    try:
        migrate(pool)
        state = StateWriter(pool)
        ids = []
        for i in range(orgs):
            org_id = str(uuid.uuid4())
            state.orgs.upsert(org_id, f"org-{i}", f"Org {i}")
            for provider, config in PROVIDERS.items():
                values = {k: f"{v}-{i}-{uuid.uuid4().hex}" for k, v in config.items()}
                state.credentials.store(
                    org_id,
                    provider,
                    key.encrypt(values, aad=f"{org_id}:{provider}"),
                    key.fingerprint(values),
                )
            ids.append(org_id)
        return ids
    finally:
        pool.close()


def timed(calls: int, call: Callable[[int], Any]) -> list[float]:
    """Microseconds of each call, timed on its own."""
    out = []
    clock = time.perf_counter_ns
    for i in range(calls):
        t0 = clock()
        call(i)
        out.append((clock() - t0) / 1000)
    return out


def pct(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def row(label: str, samples: list[float], extra: str = "") -> list[str]:
    return [
        label,
        str(len(samples)),
        f"{statistics.median(samples):.2f}",
        f"{pct(samples, 0.99):.2f}",
        f"{pct(samples, 0.999):.2f}",
        extra,
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--orgs", type=int, default=1000)
    ap.add_argument("--reads", type=int, default=200_000)
    ap.add_argument("--misses", type=int, default=3000)
    ap.add_argument(
        "--database-url",
        default=os.environ.get("RECONCILER_TEST_DATABASE_URL"),
        help="a server we may create a scratch database on (default: an embedded one)",
    )
    ap.add_argument("--write", type=Path)
    args = ap.parse_args()
    key = KeyRing.single(MasterKey.generate())
    load = os.getloadavg()[0]
    rows: list[list[str]] = []
    with scratch_database(args.database_url) as url:
        orgs = seed(url, key, args.orgs)
        # room for every read of the run: the audit's throughput is measured, not its bound
        store = CredentialStore.from_url(
            url, key, caller="bench", audit_max_pending=4 * args.reads + 10 * args.misses
        )
        backend = store._backend
        assert isinstance(backend, CredentialQueries)
        try:
            n = len(orgs)
            # misses first, while Postgres has nothing else to do (no audit backlog yet)
            keys = [orgs[i % n] for i in range(args.misses)]
            for org in keys[:200]:  # warm the pool and the prepared statement
                store.resend(org)
            store.flush()
            loads0 = store._creds.stats.loads
            statements0 = backend.queries

            def miss(i: int) -> None:
                store.on_credential(keys[i], "resend")  # dropped: the read below is a miss
                store.resend(keys[i])

            misses = timed(len(keys), miss)
            loads = store._creds.stats.loads - loads0
            statements = backend.queries - statements0  # the audit's batched writes too
            with backend.pool.connection() as conn:
                tokens = conn.execute(
                    "SELECT org_id::text, encrypted_config FROM org_credentials"
                    " WHERE provider = 'resend' LIMIT 1000"
                ).fetchall()
            m = len(tokens)
            decrypt = timed(
                args.misses,
                lambda i: key.decrypt(tokens[i % m][1], aad=f"{tokens[i % m][0]}:resend"),
            )
            query = timed(args.misses, lambda i: backend.load_credential(keys[i], "resend"))

            rows.append(
                row("timer alone (perf_counter_ns pair)", timed(args.reads, lambda i: None))
            )
            one = orgs[0]
            store.twilio(one)
            gc.collect()
            hot = timed(args.reads, lambda i: store.twilio(one))
            rows.append(row("cached getter, one org (`twilio`)", hot))
            for org in orgs:  # every org's twilio cached
                store.twilio(org)
            spread = timed(args.reads, lambda i: store.twilio(orgs[i % n]))
            rows.append(row(f"cached getter, {n} orgs round robin", spread))
            upper = one.upper()
            store.twilio(upper)
            rows.append(
                row(
                    "cached getter, non-canonical id (upper case)",
                    timed(args.reads // 4, lambda i: store.twilio(upper)),
                )
            )
            rows.append(
                row(
                    "miss: one query + one AES-GCM decrypt (`resend`)",
                    misses,
                    f"{loads / len(keys):.2f} credential queries per miss"
                    f" ({statements - loads} audit writes meanwhile)",
                )
            )
            rows.append(row("of which: the decrypt alone", decrypt))
            rows.append(row("of which: the query alone (pool checkout included)", query))

            pending = store.stats()["audit_pending"]
            t0 = time.perf_counter()
            store.flush()  # what the flusher had not written yet, now: its throughput
            flush_s = time.perf_counter() - t0

            for org in orgs:
                for read in (store.vapi, store.google_calendar, store.elevenlabs):
                    read(org)
            entries = store.stats()["entries"]
            checks = timed(20, lambda i: store.check())
            rows.append(
                row(
                    f"version check of {entries} cached entries (listener down)",
                    checks,
                    "one statement, every `check_every_s`",
                )
            )
        finally:
            store.close()
        stats = store.stats()
    header = ["operation", "calls", "p50 µs", "p99 µs", "p99.9 µs", "note"]
    body = table(header, rows)
    p99 = float(rows[1][3])
    body += (
        f"\n\nA cached getter: p99 {p99:.2f} µs (target ≤ 5 µs), timer included; no query, "
        f"no decrypt. A miss costs {statistics.median(misses) / statistics.median(hot):.0f}x "
        "a hit (medians, same run). Audit: every read of the run written "
        f"({stats['audit_written']} rows, {stats['audit_dropped']} dropped), in batches of "
        f"1000 rows per statement; the {pending} still queued after the getter loops took "
        f"{flush_s:.2f} s to write ({pending / max(flush_s, 1e-9):,.0f} rows/s), which bounds "
        "the read rate that can be audited in full (past it the queue grows to its bound, "
        "100,000 by default, then drops and counts). "
        f"Machine: {os.cpu_count()} cores (load average {load:.1f} at the start: shared with "
        f"other work), Python {platform.python_version()}, {args.orgs} orgs x 5 providers. "
        "A miss is a round trip to Postgres plus a few µs of decrypt: its tail is the round "
        "trip's on a shared machine. The version check runs only while the listener cannot "
        "vouch for the cache, off the read path."
    )
    print(body)
    if args.write:
        db = "--database-url URL " if args.database_url else ""
        write_section(
            args.write,
            "bench_credentials",
            "Credential API: cached getter, miss, version check",
            f"python -m bench.bench_credentials --orgs {args.orgs} --reads {args.reads} "
            f"--misses {args.misses} {db}".rstrip(),
            body,
        )


if __name__ == "__main__":
    main()
