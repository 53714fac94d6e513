"""Webhook resolution: cache hits vs misses (one query + one AES-GCM decrypt each).

python -m bench.bench_resolver --assistants 2000 [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import uuid
from pathlib import Path

from bench.report import table, write_section
from reconciler.secrets.crypto import MasterKey
from reconciler.state.db import open_pool, temporary_embedded
from reconciler.state.migrate import migrate
from reconciler.state.store import StateWriter
from reconciler.webhooks.resolver import WebhookResolver


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--assistants", type=int, default=2000)
    ap.add_argument("--write", type=Path)
    args = ap.parse_args()
    key = MasterKey.generate()
    with tempfile.TemporaryDirectory() as tmp, temporary_embedded(Path(tmp)) as url:
        pool = open_pool(url, max_size=4)
        migrate(pool)
        state = StateWriter(pool)
        bodies = []
        for i in range(args.assistants // 2):
            org_id = str(uuid.uuid4())
            state.orgs.upsert(org_id, f"org-{i}", f"Org {i}")
            config = {"apiKey": "k", "webhookSecret": f"secret-{i}"}
            state.credentials.store(
                org_id, "vapi", key.encrypt(config, aad=f"{org_id}:vapi"), key.fingerprint(config)
            )
            for role in ("inbound", "outbound"):
                vid = str(uuid.uuid4())
                state.assistants.record(org_id, role, vid, role, {})
                body = {"message": {"type": "status-update", "call": {"assistantId": vid}}}
                bodies.append(({"x-vapi-secret": f"secret-{i}"}, json.dumps(body).encode()))
        resolver = WebhookResolver(state, key)
        rows = []
        for label in ("cold (miss)", "warm (hit)"):
            q0, t0 = state.queries, time.perf_counter()
            for headers, body in bodies:
                resolver.resolve(headers, body)
            took = time.perf_counter() - t0
            rows.append(
                [
                    label,
                    str(len(bodies)),
                    f"{took / len(bodies) * 1e6:.0f}",
                    str(state.queries - q0),
                ]
            )
        pool.close()
    body = table(["pass", "webhooks", "µs per webhook", "queries"], rows)
    ratio = float(rows[0][2]) / max(1.0, float(rows[1][2]))
    body += f"\n\nA cache hit is {ratio:.0f}x cheaper than a miss (same run) and sends no query."
    print(body)
    if args.write:
        write_section(
            args.write,
            "bench_resolver",
            "Webhook resolver",
            f"python -m bench.bench_resolver --assistants {args.assistants}",
            body,
        )


if __name__ == "__main__":
    main()
