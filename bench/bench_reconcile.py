"""Reconcile benchmark: N orgs against the emulator with simulated Vapi latency.

Counts Vapi requests (from the emulator) and Postgres statements (from the store), and times
a cold apply, a no-op apply and a plan, at concurrency 1 and at the default 16. A cold apply
into accounts that already hold an (untagged) assistant is timed too: there each account names
itself in the first listing, so first creates need not go one at a time (see
`controller/accounts.py`).

    python -m bench.bench_reconcile --orgs 200 --latency-ms 20 [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from bench.report import table, write_section
from reconciler.controller.run import Controller, pool_size
from reconciler.secrets.crypto import MasterKey
from reconciler.spec.loader import LoadResult, SpecFile
from reconciler.spec.models import Organization
from reconciler.state.db import embedded_url, open_pool
from reconciler.state.migrate import migrate
from reconciler.state.store import StateWriter
from reconciler.vapi.client import http_client
from reconciler.vapi.emulator import running_emulator


def bench_doc(slug: str) -> dict[str, Any]:
    """One org's spec as a benchmark uses it: its own key (`bench-<slug>`), two assistants."""
    return {
        "apiVersion": "reconciler/v1",
        "kind": "Organization",
        "metadata": {"id": str(uuid.uuid4()), "slug": slug, "name": slug},
        "spec": {
            "credentials": {"vapi": {"apiKey": f"bench-{slug}", "webhookSecret": "s"}},
            "assistants": {
                "inbound": {"name": f"{slug} in", "firstMessage": "Hi"},
                "outbound": {
                    "name": f"{slug} out",
                    "voice": {"provider": "11labs", "voiceId": "burt"},
                },
            },
        },
    }


def with_kinds(doc: dict[str, Any]) -> dict[str, Any]:
    """`doc` with every kind besides assistants: two tools its inbound assistant uses and a
    SIP number answered by it (no Twilio: nothing outside the emulator)."""
    slug = doc["metadata"]["slug"]
    spec = doc["spec"]
    spec["tools"] = {
        "book": {
            "type": "function",
            "function": {
                "description": "Book",
                "parameters": {"type": "object", "properties": {}},
            },
            "server": {"url": "https://hooks.example.com/vapi"},
        },
        "end_call": {"type": "endCall"},
    }
    spec["assistants"]["inbound"]["model"] = {"provider": "openai", "model": "gpt-4o"}
    spec["assistants"]["inbound"]["tools"] = ["book", "end_call"]
    spec["phoneNumbers"] = [
        {"provider": "vapi", "sipUri": f"sip:{slug}@sip.vapi.ai", "assistant": "inbound"}
    ]
    return doc


def specs(n: int) -> LoadResult:
    out = []
    for i in range(n):
        slug = f"org-{i:04d}"
        out.append(SpecFile(Path(f"{slug}.yaml"), Organization.model_validate(bench_doc(slug))))
    return LoadResult(out, [])


def requests(url: str) -> int:
    return sum(httpx.get(f"{url}/_emulator/stats").json()["requests"].values())


def seed_accounts(url: str, loaded: LoadResult) -> None:
    """One untagged assistant in each org's account, as an account in use would have."""
    with httpx.Client(base_url=url) as http:
        for spec in loaded.specs:
            vapi = spec.org.spec.credentials.vapi
            assert vapi is not None
            http.post(
                "/assistant",
                json={"name": "made by hand"},
                headers={"Authorization": f"Bearer {vapi.api_key.get_secret_value()}"},
            ).raise_for_status()


def measure(
    url: str, pool_url: str, orgs: int, concurrency: int, *, seeded: bool = False
) -> dict[str, float]:
    httpx.post(f"{url}/_emulator/reset").raise_for_status()
    pool = open_pool(pool_url, max_size=pool_size(concurrency))
    migrate(pool)
    with pool.connection() as conn:
        conn.execute(
            "TRUNCATE reconcile_runs, assistant_org_mapping, assistants, org_credentials,"
            " organizations, master_key CASCADE"  # each measure has a master key of its own
        )
    state = StateWriter(pool)
    loaded = specs(orgs)
    if seeded:
        seed_accounts(url, loaded)
    row: dict[str, float] = {}
    with http_client(url) as http:
        ctl = Controller(state, http, MasterKey.generate(), concurrency=concurrency)
        for name, run in (
            ("cold apply", lambda: ctl.apply(loaded)),
            ("no-op apply", lambda: ctl.apply(loaded)),
            ("plan", lambda: ctl.plan(loaded)),
        ):
            r0, q0, t0 = requests(url), state.queries, time.perf_counter()
            report = run()
            assert report.ok, [o.error for o in report.failed][:3]
            row[f"{name} s"] = time.perf_counter() - t0
            row[f"{name} vapi"] = requests(url) - r0
            row[f"{name} sql"] = state.queries - q0
    pool.close()
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--orgs", type=int, default=200)
    ap.add_argument("--latency-ms", type=int, default=20)
    ap.add_argument("--write", type=Path)
    args = ap.parse_args()
    import tempfile

    with tempfile.TemporaryDirectory() as tmp, running_emulator(latency_ms=args.latency_ms) as url:
        pg = embedded_url(Path(tmp), cleanup="delete")
        rows = {
            "1, empty accounts": measure(url, pg, args.orgs, 1),
            "16, empty accounts": measure(url, pg, args.orgs, 16),
            "16, accounts in use": measure(url, pg, args.orgs, 16, seeded=True),
        }
    first = next(iter(rows.values()))
    cols = list(first)
    cells = [
        [name] + [f"{row[k]:.2f}" if k.endswith(" s") else f"{int(row[k])}" for k in cols]
        for name, row in rows.items()
    ]
    cold = {name: row["cold apply s"] for name, row in rows.items()}
    body = table(["concurrency", *cols], cells)
    body += (
        f"\n\nCold apply, concurrency 16 vs 1: "
        f"{cold['1, empty accounts'] / cold['16, accounts in use']:.1f}x faster into accounts in "
        f"use, {cold['1, empty accounts'] / cold['16, empty accounts']:.1f}x into empty ones "
        "(same run). Into an empty account (its identity unknown: no listing shows it) each "
        "org's first create waits its turn, after a fresh listing when another create was "
        "answered since, so that two keys on one account leave at most one stray; an account "
        "is empty only before its org's first apply, and the rest of the apply runs "
        "concurrently.\n"
    )
    print(body)
    if args.write:
        write_section(
            args.write,
            "bench_reconcile",
            f"Reconcile: {args.orgs} orgs, 2 assistants each, emulator latency {args.latency_ms} ms",
            f"python -m bench.bench_reconcile --orgs {args.orgs} --latency-ms {args.latency_ms}",
            body,
        )


if __name__ == "__main__":
    main()
