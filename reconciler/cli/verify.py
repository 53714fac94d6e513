"""`reconciler verify`: each stored credential checked against its provider, now.

One line per (org, provider), `ok` or `error` with the provider's one-line reason (every secret
of the org masked), then a summary; exit 0 when all are ok, 1 when any failed (or an `--org`
is unknown). What each provider answered is recorded in Postgres (`last_verified_at`, or
`verification_error` keeping the last success), as `serve` does on its schedule.

Its parser is in `parsers.py`: this module is imported only when the command runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from reconciler.providers.runner import Report

EXIT_OK, EXIT_ERROR = 0, 1


def cmd_verify(args: argparse.Namespace) -> int:
    from reconciler.config import load_settings
    from reconciler.errors import ReconcilerError
    from reconciler.providers.runner import Report, Verifier
    from reconciler.providers.verify import Endpoints, http_client
    from reconciler.redact import printable
    from reconciler.state.connect import database_url, master_keys
    from reconciler.state.db import open_pool
    from reconciler.state.migrate import migrate
    from reconciler.state.verification import live_slugs, select_credentials

    settings = load_settings()
    keys = master_keys(settings, create=False)  # verify encrypts nothing
    pool = open_pool(database_url(settings), max_size=4, name="reconciler-verify")
    try:
        migrate(pool)
        slugs = sorted(set(args.org or []))
        unknown = sorted(set(slugs) - live_slugs(pool, slugs)) if slugs else []
        for slug in unknown:
            print(f"error: no org with slug {printable(slug, 80)} in Postgres", file=sys.stderr)
        credentials = select_credentials(pool, slugs=slugs or None, providers=args.provider or None)
        report = Report()
        if credentials:
            with http_client(max_connections=max(4, settings.concurrency)) as http:
                verifier = Verifier(
                    pool,
                    keys,
                    Endpoints.from_settings(settings),
                    http,
                    concurrency=settings.concurrency,
                )
                report.results, _ = verifier.verify(credentials)
            try:
                verifier.record(report.results, credentials)
            except ReconcilerError as exc:  # the verdicts are still shown, and exit 1
                report.notes.append(f"the results were not recorded: {exc}")
    finally:
        pool.close()
    for note in report.notes:
        print(f"error: {note}", file=sys.stderr)
    if args.format == "json":
        print(json.dumps(_json(report, unknown), indent=2))
    else:
        _text(report)
    return EXIT_OK if report.ok and not unknown else EXIT_ERROR


def _text(report: Report) -> None:
    from reconciler.providers.runner import summary
    from reconciler.redact import printable

    if not report.results:
        print("no stored credential to verify")
        return
    width = max(len(r.slug) for r in report.results)
    for r in report.results:
        if r.ok:
            tail = f"  ({printable(r.check.note, 120)})" if r.check.note else ""
            print(f"{r.slug:<{width}}  {r.provider:<15}  ok{tail}")
        else:
            print(f"{r.slug:<{width}}  {r.provider:<15}  error  {r.check.reason}")
    print(summary(report))


def _json(report: Report, unknown: list[str]) -> dict[str, Any]:
    """`--format json`: results by org and provider, and the counts."""
    return {
        "results": [
            {
                "org": r.slug,
                "orgId": r.org_id,
                "provider": r.provider,
                "ok": r.ok,
                "outcome": r.outcome,
                "error": r.check.reason,
                "note": r.check.note,
            }
            for r in report.results
        ],
        "unknownOrgs": unknown,
        "summary": {
            "credentials": len(report.results),
            "orgs": report.orgs,
            "ok": len(report.results) - len(report.failed),
            "failed": len(report.failed),
            "byOutcome": report.counts(),
        },
    }
