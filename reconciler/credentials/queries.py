"""The credential store's queries: one per miss, one batched version check, the audit's batched
insert, its retention and its reads. A `StateReader` underneath, for its outage breaker (after
an outage is seen, statements fail at once for a few seconds) and its statement counter.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import psycopg
from psycopg import Connection
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from reconciler.redact import printable
from reconciler.state.store import StateReader

AuditRow = tuple[str | None, str, float, str]
"""(org id or None, provider, unix time of the read, outcome)"""

_CHECK_CREDENTIALS_SQL = """
SELECT k.org_id::text AS org_id, k.provider, md5(c.encrypted_config) AS digest,
  COALESCE(c.is_active AND o.retired_at IS NULL, false) AS active
FROM unnest(%s::uuid[], %s::text[]) AS k(org_id, provider)
LEFT JOIN org_credentials c ON c.org_id = k.org_id AND c.provider = k.provider
LEFT JOIN organizations o ON o.id = c.org_id
"""

_ASSISTANT_SQL = """
SELECT m.vapi_assistant_id, m.org_id::text, o.slug, m.assistant_role
FROM assistant_org_mapping m JOIN organizations o ON o.id = m.org_id
WHERE m.vapi_assistant_id = ANY(%s) AND (m.inactive_at IS NULL
  OR m.inactive_at > now() - make_interval(secs => %s))
"""

_READ_AUDIT_SQL = """
SELECT a.at, a.org_id::text AS org_id, o.slug, a.provider, a.caller, a.outcome
FROM credential_audit a LEFT JOIN organizations o ON o.id = a.org_id
WHERE (%(org)s::uuid IS NULL OR a.org_id = %(org)s::uuid)
  AND (%(since)s::timestamptz IS NULL OR a.at >= %(since)s::timestamptz)
ORDER BY a.at DESC, a.id DESC
LIMIT %(limit)s
"""


WAIT_S = 3.0
"""How long a statement waits for a connection: a miss during an outage fails in seconds (then
at once for a few seconds, by the breaker), not after the pool's 10 s."""


class CredentialQueries(StateReader):
    """Reads credentials and mappings; writes and reads the audit table (nothing else)."""

    def __init__(self, pool: ConnectionPool, *, wait_s: float = WAIT_S, **options: Any) -> None:
        super().__init__(pool, **options)
        self.wait_s = wait_s

    @contextmanager
    def _cursor(self) -> Iterator[psycopg.Cursor[dict[str, Any]]]:
        self._db.count()
        with (
            self._db.breaker.guard(),
            self.pool.connection(timeout=self.wait_s) as conn,
            conn.cursor(row_factory=dict_row) as cur,
        ):
            yield cur

    def load_credential(self, org_id: str, provider: str) -> tuple[str, bool] | None:
        """The org's sealed config of this provider and whether it is active (the row is, and
        the org is not retired); None without a row."""
        with self._cursor() as cur:
            row = cur.execute(
                "SELECT c.encrypted_config, c.is_active AND o.retired_at IS NULL AS active"
                " FROM org_credentials c JOIN organizations o ON o.id = c.org_id"
                " WHERE c.org_id = %s AND c.provider = %s",
                (org_id, provider),
            ).fetchone()
        return None if row is None else (row["encrypted_config"], bool(row["active"]))

    def check_credentials(
        self, keys: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], tuple[str, bool] | None]:
        """For each (org, provider): the md5 of its sealed config and whether it is active, or
        None without a row. One statement, whatever the number of keys."""
        if not keys:
            return {}
        with self._cursor() as cur:
            rows = cur.execute(
                _CHECK_CREDENTIALS_SQL, ([k[0] for k in keys], [k[1] for k in keys])
            ).fetchall()
        found: dict[tuple[str, str], tuple[str, bool] | None] = {}
        for row in rows:
            digest = row["digest"]
            found[(row["org_id"], row["provider"])] = (
                None if digest is None else (digest, bool(row["active"]))
            )
        return found

    def load_assistants(self, assistant_ids: Sequence[str]) -> dict[str, tuple[str, str, str]]:
        """The org (id, slug) and role of each assistant id that resolves now: its mapping is
        active, or went inactive less than `mapping_retention_s` ago (late webhooks of a
        deleted assistant's last calls), as the webhook resolver has it."""
        if not assistant_ids:
            return {}
        with self._cursor() as cur:
            rows = cur.execute(
                _ASSISTANT_SQL, (list(assistant_ids), self.mapping_retention_s)
            ).fetchall()
        return {r["vapi_assistant_id"]: (r["org_id"], r["slug"], r["assistant_role"]) for r in rows}

    def load_outbound(self, org_id: str) -> tuple[str, str | None] | None:
        """The live org's outbound number (`spec.outbound.phoneNumber`) and its Vapi id (None
        until the number exists in Vapi); None when the org declares none (or is unknown or
        retired). One indexed query."""
        with self._cursor() as cur:
            row = cur.execute(
                "SELECT o.outbound_phone_number AS number, v.vapi_id FROM organizations o"
                " LEFT JOIN vapi_resources v ON v.org_id = o.id AND v.kind = 'phoneNumber'"
                "   AND v.name = o.outbound_phone_number"
                " WHERE o.id = %s AND o.retired_at IS NULL"
                "   AND o.outbound_phone_number IS NOT NULL",
                (org_id,),
            ).fetchone()
        return None if row is None else (row["number"], row["vapi_id"])

    @contextmanager
    def _write(self, timeout_s: float | None) -> Iterator[Connection[Any]]:
        self._db.count()
        with (
            self._db.breaker.guard(),
            self.pool.connection(timeout=self.wait_s if timeout_s is None else timeout_s) as conn,
            conn.transaction(),
        ):
            yield conn

    def write_audit(
        self, rows: Sequence[AuditRow], caller: str, *, timeout_s: float | None = None
    ) -> None:
        """The rows in one statement."""
        if not rows:
            return
        with self._write(timeout_s) as conn:
            conn.execute(
                "INSERT INTO credential_audit (org_id, provider, caller, at, outcome)"
                " SELECT o, p, %s, to_timestamp(t), r"
                " FROM unnest(%s::uuid[], %s::text[], %s::float8[], %s::text[]) AS x(o, p, t, r)",
                (
                    caller,
                    [r[0] for r in rows],
                    [r[1] for r in rows],
                    [r[2] for r in rows],
                    [r[3] for r in rows],
                ),
            )

    def expire_audit(self, retention_s: float, limit: int) -> int:
        """Deletes at most `limit` audit rows older than `retention_s` (by the `at` index);
        returns how many."""
        with self._write(None) as conn:
            cur = conn.execute(
                "DELETE FROM credential_audit WHERE id IN (SELECT id FROM credential_audit"
                " WHERE at < now() - make_interval(secs => %s) LIMIT %s)",
                (retention_s, limit),
            )
            return cur.rowcount

    def read_audit(
        self, *, org_id: str | None, since: datetime | None, limit: int
    ) -> list[dict[str, Any]]:
        """Newest first: at, org_id, slug (None for an unknown org), provider, caller, outcome."""
        with self._cursor() as cur:
            return cur.execute(
                _READ_AUDIT_SQL, {"org": org_id, "since": since, "limit": limit}
            ).fetchall()

    def org_for_slug(self, slug: str) -> str | None:
        """The live org with this slug, else the one retired last that had it."""
        with self._cursor() as cur:
            row = cur.execute(
                "SELECT id::text AS org_id FROM organizations WHERE slug = %s"
                " ORDER BY retired_at IS NULL DESC, retired_at DESC LIMIT 1",
                (slug,),
            ).fetchone()
        return None if row is None else str(row["org_id"])


def one_line(exc: BaseException) -> str:
    """A failure in one line for a log: its type and the first line of its message, escaped
    and cut (psycopg's first line names servers and constraints, never a value)."""
    lines = str(exc).strip().splitlines()
    return printable(f"{type(exc).__name__}: {lines[0] if lines else ''}", 200)
