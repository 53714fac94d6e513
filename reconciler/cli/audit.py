"""`reconciler audit`: who read which org's credentials, and when (never a value).

Reads the `credential_audit` table that `reconciler.credentials.CredentialStore` writes: one
line per read, newest first. Needs the database only: no master key, no migration (a read-only
role is enough). Only light modules are imported at start-up; the command imports the rest when
it runs.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

EXIT_OK, EXIT_ERROR = 0, 1
MAX_LIMIT = 100_000
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
_UNIT_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}


def since(text: str, *, now: datetime | None = None) -> datetime:
    """`--since`: a duration back from now (`90s`, `30m`, `1h`, `7d`, `2w`) or an ISO 8601
    date or time (`2024-05-01`, `2024-05-01T12:00:00+02:00`; without an offset, UTC)."""
    match = _DURATION.match(text)
    if match is not None:
        seconds = float(match.group(1)) * _UNIT_S[match.group(2)]
        try:
            return (now or datetime.now(UTC)) - timedelta(seconds=seconds)
        except OverflowError:
            raise argparse.ArgumentTypeError(f"{text!r} is too long ago") from None
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text[:40]!r} is neither a duration (1h, 7d, 30m, 90s, 2w) nor an ISO 8601 time"
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _limit(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
        raise argparse.ArgumentTypeError(f"{text[:20]!r} is not a whole number 1..{MAX_LIMIT}")
    return int(text)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "audit",
        help="credential reads by the platform's services (reconciler.credentials), newest first",
        description="Print the credential audit: one line per read of an org's credential "
        "through reconciler.credentials (time, org, provider, caller, outcome), newest first. "
        "Never a value.",
    )
    p.add_argument("--org", metavar="SLUG", help="only this org's reads")
    p.add_argument(
        "--since",
        type=since,
        metavar="WHEN",
        help="only reads since then: a duration back from now (1h, 7d) or an ISO 8601 time",
    )
    p.add_argument(
        "--limit", type=_limit, default=100, metavar="N", help="at most N lines (default 100)"
    )
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.set_defaults(func=cmd_audit)


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
