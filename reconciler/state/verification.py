"""The queries of credential verification: which stored credentials to check, and what their
providers answered.

- `reconciler verify` reads the active credentials of live orgs (`select_credentials`);
- each `serve` replica claims the rows that are due (`claim_due`: last attempt older than the
  interval, or older than the row's last change), stamping `verification_attempted_at` in the
  same statement (`FOR UPDATE SKIP LOCKED`), so replicas never verify one row twice in an
  interval and never wait on each other;
- `record` writes every result in one statement: a success sets `last_verified_at = now()` and
  clears `verification_error`; a failure sets `verification_error` and keeps the last success.
  A row changed (or deactivated) while it was being verified is left alone: the answer was
  about its old value, and its change makes it due again.

Every database error is one `StateError` line (as in `state.store`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from reconciler.state.store import state_error

_COLUMNS = """c.id::text AS id, c.org_id::text AS org_id, o.slug, c.provider,
  c.encrypted_config, c.updated_at"""

_SELECT_SQL = f"""
SELECT {_COLUMNS}
FROM org_credentials c JOIN organizations o ON o.id = c.org_id
WHERE c.is_active AND o.retired_at IS NULL
  AND (%(slugs)s::text[] IS NULL OR o.slug = ANY(%(slugs)s::text[]))
  AND (%(orgs)s::uuid[] IS NULL OR c.org_id = ANY(%(orgs)s::uuid[]))
  AND (%(providers)s::text[] IS NULL OR c.provider = ANY(%(providers)s::text[]))
ORDER BY o.slug, c.provider
"""

_CLAIM_SQL = f"""
WITH due AS (
  SELECT c.id FROM org_credentials c JOIN organizations o ON o.id = c.org_id
  WHERE c.is_active AND o.retired_at IS NULL
    AND (%(providers)s::text[] IS NULL OR c.provider = ANY(%(providers)s::text[]))
    AND (c.verification_attempted_at IS NULL
      OR c.verification_attempted_at < now() - make_interval(secs => %(interval_s)s)
      OR c.verification_attempted_at < c.updated_at)
  ORDER BY c.verification_attempted_at NULLS FIRST
  LIMIT %(limit)s
  FOR UPDATE OF c SKIP LOCKED
)
UPDATE org_credentials c SET verification_attempted_at = now()
FROM due, organizations o
WHERE c.id = due.id AND o.id = c.org_id
RETURNING {_COLUMNS}
"""

_RECORD_SQL = """
UPDATE org_credentials c SET
  last_verified_at = CASE WHEN v.ok THEN now() ELSE c.last_verified_at END,
  verification_error = CASE WHEN v.ok THEN NULL ELSE v.error END,
  verification_attempted_at = now()
FROM unnest(%s::uuid[], %s::timestamptz[], %s::bool[], %s::text[]) AS v(id, seen, ok, error)
WHERE c.id = v.id AND c.updated_at = v.seen AND c.is_active
"""


@dataclass(frozen=True)
class StoredCredential:
    """One active credential row, still sealed (AAD `org_id:provider`)."""

    row_id: str
    org_id: str
    slug: str
    provider: str  # Postgres provider name: vapi, twilio, google_calendar, resend, elevenlabs
    encrypted_config: str
    updated_at: dt.datetime  # the row's version: a result is recorded only onto it

    def __repr__(self) -> str:  # never the ciphertext, even in a traceback
        return f"StoredCredential({self.slug}:{self.provider})"


@dataclass(frozen=True)
class Verified:
    """What to record for one row."""

    credential: StoredCredential
    ok: bool
    error: str | None = None  # one line, no secret; None when ok


@contextmanager
def _cursor(pool: ConnectionPool) -> Iterator[psycopg.Cursor[dict[str, Any]]]:
    try:
        with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            yield cur
    except (PoolTimeout, psycopg.Error) as exc:
        raise state_error(exc) from None


def _credential(row: dict[str, Any]) -> StoredCredential:
    return StoredCredential(
        row["id"],
        row["org_id"],
        row["slug"],
        row["provider"],
        row["encrypted_config"],
        row["updated_at"],
    )


def _array(values: Iterable[str] | None) -> list[str] | None:
    return None if values is None else sorted(set(values))


def select_credentials(
    pool: ConnectionPool,
    *,
    slugs: Iterable[str] | None = None,
    org_ids: Iterable[str] | None = None,
    providers: Iterable[str] | None = None,
) -> list[StoredCredential]:
    """The active credentials of live orgs (of these slugs, of these org ids, of these
    providers), by slug and provider."""
    params = {"slugs": _array(slugs), "orgs": _array(org_ids), "providers": _array(providers)}
    with _cursor(pool) as cur:
        rows = cur.execute(_SELECT_SQL, params).fetchall()
    return [_credential(r) for r in rows]


def live_slugs(pool: ConnectionPool, slugs: Iterable[str]) -> set[str]:
    """Which of these slugs name a live org."""
    with _cursor(pool) as cur:
        rows = cur.execute(
            "SELECT slug FROM organizations WHERE retired_at IS NULL AND slug = ANY(%s::text[])",
            (sorted(set(slugs)),),
        ).fetchall()
    return {r["slug"] for r in rows}


def claim_due(
    pool: ConnectionPool,
    *,
    interval_s: float,
    limit: int,
    providers: Iterable[str] | None = None,
) -> list[StoredCredential]:
    """Claims up to `limit` due rows (never attempted, last attempted more than `interval_s`
    ago, or changed since their last attempt), oldest attempt first, in one statement: their
    `verification_attempted_at` is now, so no other replica takes them this interval."""
    params = {"interval_s": interval_s, "limit": limit, "providers": _array(providers)}
    with _cursor(pool) as cur:
        rows = cur.execute(_CLAIM_SQL, params).fetchall()
    return sorted((_credential(r) for r in rows), key=lambda c: (c.slug, c.provider))


def release(pool: ConnectionPool, credentials: Sequence[StoredCredential]) -> None:
    """Claimed rows that were not verified (the process is stopping): due again at once, for
    whichever replica comes first."""
    if not credentials:
        return
    with _cursor(pool) as cur:
        cur.execute(
            "UPDATE org_credentials SET verification_attempted_at = NULL"
            " WHERE id = ANY(%s::uuid[])",
            ([c.row_id for c in credentials],),
        )


def record(pool: ConnectionPool, results: Sequence[Verified]) -> int:
    """Every result in one statement; returns the rows written (a row changed or deactivated
    since it was read is skipped)."""
    if not results:
        return 0
    with _cursor(pool) as cur:
        cur.execute(
            _RECORD_SQL,
            (
                [r.credential.row_id for r in results],
                [r.credential.updated_at for r in results],
                [r.ok for r in results],
                [None if r.ok else (r.error or "verification failed") for r in results],
            ),
        )
        return cur.rowcount
