"""`reconciler audit`: who read which org's credentials, and when (never a value).

Reads the `credential_audit` table that `reconciler.credentials.CredentialStore` writes: one
line per read, newest first. Needs the database only: no master key, no migration (a read-only
role is enough). Its parser is in `parsers.py`: this module is imported only when the command
runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from typing import Any

EXIT_OK, EXIT_ERROR = 0, 1


def cmd_audit(args: argparse.Namespace) -> int:
    from reconciler.config import load_settings
    from reconciler.credentials.queries import CredentialQueries
    from reconciler.redact import printable
    from reconciler.state.connect import database_url
    from reconciler.state.db import open_pool
    from reconciler.state.migrate import check_schema

    pool = open_pool(database_url(load_settings()), max_size=2, name="reconciler-audit")
    try:
        check_schema(pool)
        queries = CredentialQueries(pool)
        org_id = None
        if args.org is not None:
            org_id = queries.org_for_slug(args.org)
            if org_id is None:
                print(f"error: no org with slug {printable(args.org, 80)}", file=sys.stderr)
                return EXIT_ERROR
        rows = queries.read_audit(org_id=org_id, since=args.since, limit=args.limit)
    finally:
        pool.close()
    entries = [_entry(r) for r in rows]
    if args.format == "json":
        print(json.dumps({"version": 1, "entries": entries}, indent=2, ensure_ascii=False))
        return EXIT_OK
    if not entries:
        print("no credential reads recorded" + (" in that window" if args.since else ""))
    for e in entries:
        org = e["slug"] or e["org_id"] or "-"
        print(
            f"{e['at']}  {printable(org, 64):<24} {e['provider']:<16} "
            f"{printable(e['caller'], 64):<24} {e['outcome']}"
        )
    return EXIT_OK


def _entry(row: dict[str, Any]) -> dict[str, Any]:
    at: datetime = row["at"]
    return {
        "at": at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "org_id": row["org_id"],
        "slug": row["slug"],
        "provider": row["provider"],
        "caller": row["caller"],
        "outcome": row["outcome"],
    }
