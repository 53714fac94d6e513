"""Every query the reconciler makes. `StateReader` only reads (for `plan` and the resolver);
`StateWriter` adds the writes, each in one transaction with what it describes."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import Connection
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from reconciler.errors import ReconcilerError

_OBSERVE_SQL = """
SELECT o.id::text AS id, o.slug, o.name,
  COALESCE((SELECT json_agg(json_build_object(
      'provider', c.provider, 'fingerprint', c.fingerprint, 'is_active', c.is_active))
    FROM org_credentials c WHERE c.org_id = o.id), '[]') AS credentials,
  COALESCE((SELECT json_agg(json_build_object(
      'role', a.role, 'vapi_assistant_id', a.vapi_assistant_id, 'status', a.status,
      'applied_config', a.applied_config,
      'pending_s', EXTRACT(EPOCH FROM now() - a.create_started_at)))
    FROM assistants a WHERE a.org_id = o.id), '[]') AS assistants,
  COALESCE((SELECT json_agg(json_build_object(
      'vapi_assistant_id', m.vapi_assistant_id, 'role', m.assistant_role,
      'name', m.assistant_name))
    FROM assistant_org_mapping m WHERE m.org_id = o.id), '[]') AS mappings
FROM organizations o WHERE o.id = ANY(%s::uuid[])
"""


class StateReader:
    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool
        self._lock = threading.Lock()
        self.queries = 0  # statements sent, for benchmarks

    def _count(self, n: int = 1) -> None:
        with self._lock:
            self.queries += n

    def observe(self, org_ids: list[str]) -> dict[str, dict[str, Any]]:
        """Org row, credentials, assistants and mappings of many orgs, in one query."""
        self._count()
        with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            rows = cur.execute(_OBSERVE_SQL, (org_ids,)).fetchall()
        return {r["id"]: r for r in rows}

    def resolve_assistant(self, vapi_assistant_id: str) -> dict[str, Any] | None:
        """Org of an assistant id, with the org's encrypted Vapi credential."""
        self._count()
        with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            return cur.execute(
                "SELECT m.org_id::text AS org_id, o.slug, m.assistant_role AS role,"
                " c.encrypted_config"
                " FROM assistant_org_mapping m JOIN organizations o ON o.id = m.org_id"
                " LEFT JOIN org_credentials c"
                "   ON c.org_id = m.org_id AND c.provider = 'vapi' AND c.is_active"
                " WHERE m.vapi_assistant_id = %s",
                (vapi_assistant_id,),
            ).fetchone()

    def org_ids_by_slug(self) -> dict[str, str]:
        self._count()
        with self.pool.connection() as conn:
            return {s: i for i, s in conn.execute("SELECT id::text, slug FROM organizations")}

    def last_runs(self, limit: int = 5) -> list[dict[str, Any]]:
        self._count()
        with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            return cur.execute(
                "SELECT * FROM reconcile_runs ORDER BY id DESC LIMIT %s", (limit,)
            ).fetchall()


class OrgLock:
    def __init__(self, conn: Connection[Any], held: bool, count: Callable[[], None]) -> None:
        self._conn = conn
        self.held = held
        self._count = count

    def check(self) -> None:
        """Raises unless the lock's session is still alive (and so the lock still held)."""
        self._count()
        try:
            self._conn.execute("SELECT 1")
        except psycopg.Error:
            raise ReconcilerError("lost the org lock (database session ended); stopping") from None


def _lock_key(org_id: str) -> int:
    # a signed 64-bit key from the uuid; a collision only serialises two orgs, never corrupts
    return int.from_bytes(uuid.UUID(org_id).bytes[:8], "big", signed=True)


class StateWriter(StateReader):
    @contextmanager
    def org_lock(self, org_id: str) -> Iterator[OrgLock]:
        """Holds a transaction-scoped advisory lock for the org while the block runs.

        Transaction-scoped (not session) so it cannot leak behind a transaction pooler, and a
        crashed replica's lock dies with its connection. The idle-in-transaction timeout is
        lifted for this transaction, and `OrgLock.check()` proves the lock still holds before
        each Vapi write (fail closed if the session was killed meanwhile).
        """
        self._count(2)
        with self.pool.connection() as conn, conn.transaction():
            conn.execute("SET LOCAL idle_in_transaction_session_timeout = 0")
            got = conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (_lock_key(org_id),))
            row = got.fetchone()
            yield OrgLock(conn, bool(row and row[0]), self._count)

    @contextmanager
    def _tx(self, statements: int) -> Iterator[Connection[Any]]:
        self._count(statements)
        with self.pool.connection() as conn, conn.transaction():
            yield conn

    def upsert_org(self, org_id: str, slug: str, name: str) -> None:
        with self._tx(1) as conn:
            conn.execute(
                "INSERT INTO organizations (id, slug, name) VALUES (%s, %s, %s)"
                " ON CONFLICT (id) DO UPDATE SET slug = EXCLUDED.slug, name = EXCLUDED.name,"
                " updated_at = now()",
                (org_id, slug, name),
            )

    def store_credential(
        self, org_id: str, provider: str, encrypted: str, fingerprint: str
    ) -> None:
        with self._tx(1) as conn:
            conn.execute(
                "INSERT INTO org_credentials (org_id, provider, encrypted_config, fingerprint)"
                " VALUES (%s, %s, %s, %s) ON CONFLICT (org_id, provider) DO UPDATE SET"
                " encrypted_config = EXCLUDED.encrypted_config,"
                " fingerprint = EXCLUDED.fingerprint, is_active = true,"
                " last_verified_at = NULL, verification_error = NULL, updated_at = now()",
                (org_id, provider, encrypted, fingerprint),
            )

    def deactivate_credential(self, org_id: str, provider: str) -> None:
        with self._tx(1) as conn:
            conn.execute(
                "UPDATE org_credentials SET is_active = false, updated_at = now()"
                " WHERE org_id = %s AND provider = %s",
                (org_id, provider),
            )

    def mark_verified(self, org_id: str, provider: str, error: str | None) -> None:
        with self._tx(1) as conn:
            conn.execute(
                "UPDATE org_credentials SET last_verified_at = CASE WHEN %s::text IS NULL"
                " THEN now() ELSE last_verified_at END, verification_error = %s"
                " WHERE org_id = %s AND provider = %s",
                (error, error, org_id, provider),
            )

    def begin_create(self, org_id: str, role: str, desired: dict[str, Any]) -> None:
        """Create-pending, committed before the POST: a crash after it is seen next run."""
        with self._tx(2) as conn:
            conn.execute(
                "INSERT INTO assistants (org_id, role, status, desired_config, create_started_at)"
                " VALUES (%s, %s, 'creating', %s, now()) ON CONFLICT (org_id, role) DO UPDATE SET"
                " status = 'creating', vapi_assistant_id = NULL, applied_config = NULL,"
                " desired_config = EXCLUDED.desired_config, create_started_at = now(),"
                " updated_at = now()",
                (org_id, role, Jsonb(desired)),
            )
            conn.execute(
                "DELETE FROM assistant_org_mapping WHERE org_id = %s AND assistant_role = %s",
                (org_id, role),
            )

    def record_assistant(
        self, org_id: str, role: str, vapi_id: str, name: str, applied: dict[str, Any]
    ) -> None:
        """State row and mapping row together, in one transaction."""
        with self._tx(3) as conn:
            conn.execute(
                "INSERT INTO assistants (org_id, role, vapi_assistant_id, status, desired_config,"
                " applied_config) VALUES (%s, %s, %s, 'ready', %s, %s)"
                " ON CONFLICT (org_id, role) DO UPDATE SET"
                " vapi_assistant_id = EXCLUDED.vapi_assistant_id, status = 'ready',"
                " desired_config = EXCLUDED.desired_config,"
                " applied_config = EXCLUDED.applied_config, create_started_at = NULL,"
                " updated_at = now()",
                (org_id, role, vapi_id, Jsonb(applied), Jsonb(applied)),
            )
            conn.execute(
                "DELETE FROM assistant_org_mapping WHERE org_id = %s AND assistant_role = %s"
                " AND vapi_assistant_id <> %s",
                (org_id, role, vapi_id),
            )
            cur = conn.execute(
                "INSERT INTO assistant_org_mapping (vapi_assistant_id, org_id, assistant_role,"
                " assistant_name) VALUES (%s, %s, %s, %s)"
                " ON CONFLICT (vapi_assistant_id) DO UPDATE SET"
                " assistant_name = EXCLUDED.assistant_name,"
                " assistant_role = EXCLUDED.assistant_role"
                " WHERE assistant_org_mapping.org_id = EXCLUDED.org_id",
                (vapi_id, org_id, role, name),
            )
            if cur.rowcount != 1:  # rolls the whole transaction back
                raise ReconcilerError(
                    f"assistant {vapi_id} is already mapped to another org: "
                    "do two specs share one Vapi account?"
                )

    def forget_assistant(self, org_id: str, role: str, vapi_id: str | None) -> None:
        with self._tx(2) as conn:
            conn.execute(
                "DELETE FROM assistants WHERE org_id = %s AND role = %s"
                " AND (%s::text IS NULL OR vapi_assistant_id IS NULL OR vapi_assistant_id = %s)",
                (org_id, role, vapi_id, vapi_id),
            )
            conn.execute(
                "DELETE FROM assistant_org_mapping WHERE org_id = %s AND assistant_role = %s"
                " AND (%s::text IS NULL OR vapi_assistant_id = %s)",
                (org_id, role, vapi_id, vapi_id),
            )

    def set_status(self, org_id: str, status: str, message: str | None) -> None:
        with self._tx(1) as conn:
            conn.execute(
                "UPDATE organizations SET status = %s, status_message = %s,"
                " last_reconciled_at = now() WHERE id = %s",
                (status, message, org_id),
            )

    def start_run(self, command: str, orgs_total: int) -> int:
        with self._tx(1) as conn:
            row = conn.execute(
                "INSERT INTO reconcile_runs (command, orgs_total) VALUES (%s, %s) RETURNING id",
                (command, orgs_total),
            ).fetchone()
        assert row is not None
        return int(row[0])

    def finish_run(
        self, run_id: int, failed: int, changes: dict[str, int], errors: list[dict[str, str]]
    ) -> None:
        with self._tx(1) as conn:
            conn.execute(
                "UPDATE reconcile_runs SET finished_at = now(), orgs_failed = %s, changes = %s,"
                " errors = %s WHERE id = %s",
                (failed, Jsonb(changes), Jsonb(errors), run_id),
            )
