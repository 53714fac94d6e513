"""Every query the reconciler makes. `StateReader` only reads (for `plan` and the resolver);
`StateWriter` adds the writes, each in one transaction with what it describes.

A database error surfaces as one `StateError` line (the first line of Postgres's message, which
names constraints, never values), so a database that dies mid-run fails the orgs in hand with
a clear reason instead of an internal error.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import Connection
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool, PoolTimeout

from reconciler.errors import MasterKeyRefused, ReconcilerError
from reconciler.redact import printable
from reconciler.secrets.crypto import token_key_id

_OBSERVE_SQL = """
SELECT o.id::text AS id, o.slug, o.name, o.vapi_account_id,
  o.webhook_forward_url AS forward_url, o.outbound_phone_number AS outbound_number,
  (SELECT k.key_id FROM master_key k WHERE k.id) AS master_key_id,
  (SELECT k.key_check FROM master_key k WHERE k.id) AS master_key_check,
  COALESCE((SELECT json_agg(json_build_object(
      'provider', c.provider, 'fingerprint', c.fingerprint, 'is_active', c.is_active,
      'key_id', reconciler_token_key_id(c.encrypted_config)))
    FROM org_credentials c WHERE c.org_id = o.id), '[]') AS credentials,
  COALESCE((SELECT json_agg(json_build_object(
      'role', a.role, 'vapi_assistant_id', a.vapi_assistant_id, 'status', a.status,
      'desired_config', a.desired_config, 'applied_config', a.applied_config,
      'last_patch', a.last_patch,
      'pending_s', EXTRACT(EPOCH FROM now() - a.create_started_at)))
    FROM assistants a WHERE a.org_id = o.id), '[]') AS assistants,
  COALESCE((SELECT json_agg(json_build_object(
      'vapi_assistant_id', m.vapi_assistant_id, 'role', m.assistant_role,
      'name', m.assistant_name))
    FROM assistant_org_mapping m WHERE m.org_id = o.id AND m.inactive_at IS NULL), '[]')
    AS mappings,
  COALESCE((SELECT json_agg(json_build_object(
      'kind', r.kind, 'name', r.name, 'vapi_id', r.vapi_id, 'status', r.status,
      'desired_config', r.desired_config, 'applied_config', r.applied_config,
      'last_patch', r.last_patch,
      'pending_s', EXTRACT(EPOCH FROM now() - r.create_started_at)))
    FROM vapi_resources r WHERE r.org_id = o.id), '[]') AS resources
FROM organizations o WHERE o.id = ANY(%s::uuid[])
"""


_FINISH_ORGS_SQL = """
WITH s AS (
  SELECT * FROM jsonb_to_recordset(%s) AS s(id uuid, status text, message text,
    conditions jsonb, revision text, applied bool, account text, changes jsonb)
)
UPDATE organizations o SET
  status = s.status, status_message = s.message, conditions = s.conditions,
  status_changed_at = CASE WHEN o.conditions IS DISTINCT FROM s.conditions
    THEN now() ELSE o.status_changed_at END,
  last_attempted_revision = COALESCE(s.revision, o.last_attempted_revision),
  last_applied_revision = CASE WHEN s.applied
    THEN COALESCE(s.revision, o.last_applied_revision) ELSE o.last_applied_revision END,
  vapi_account_id = COALESCE(s.account, o.vapi_account_id),
  last_reconciled_at = now()
FROM s
WHERE o.id = s.id AND (
  o.conditions IS DISTINCT FROM s.conditions
  OR o.status IS DISTINCT FROM s.status
  OR o.status_message IS DISTINCT FROM s.message
  OR (s.revision IS NOT NULL AND o.last_attempted_revision IS DISTINCT FROM s.revision)
  OR (s.applied AND s.revision IS NOT NULL
      AND o.last_applied_revision IS DISTINCT FROM s.revision)
  OR (s.account IS NOT NULL AND o.vapi_account_id IS DISTINCT FROM s.account)
  OR s.changes <> '{}'::jsonb
  OR o.last_reconciled_at IS NULL
  OR o.last_reconciled_at < now() - make_interval(secs => %s))
RETURNING o.id
"""


_STATUS_SQL = """
SELECT o.id::text AS id, o.slug, o.name, o.status, o.status_message AS message, o.conditions,
  o.status_changed_at, o.last_reconciled_at, o.last_attempted_revision,
  o.last_applied_revision, o.vapi_account_id, o.webhook_forward_url IS NOT NULL AS forwards,
  COALESCE((SELECT json_agg(json_build_object('role', a.role,
      'vapi_assistant_id', a.vapi_assistant_id, 'status', a.status) ORDER BY a.role)
    FROM assistants a WHERE a.org_id = o.id), '[]') AS assistants,
  COALESCE((SELECT json_agg(json_build_object('provider', c.provider,
      'active', c.is_active, 'last_verified_at', c.last_verified_at,
      'verification_error', c.verification_error) ORDER BY c.provider)
    FROM org_credentials c WHERE c.org_id = o.id), '[]') AS credentials,
  COALESCE((SELECT json_agg(json_build_object('kind', v.kind, 'name', v.name,
      'vapi_id', v.vapi_id, 'status', v.status,
      'provider', v.desired_config->>'provider', 'type', v.desired_config->>'type')
      ORDER BY v.kind, v.name)
    FROM vapi_resources v WHERE v.org_id = o.id), '[]') AS resources,
  o.outbound_phone_number AS outbound_number,
  (SELECT v.vapi_id FROM vapi_resources v WHERE v.org_id = o.id AND v.kind = 'phoneNumber'
    AND v.name = o.outbound_phone_number) AS outbound_number_id,
  COALESCE((SELECT json_agg(json_build_object('at', r.at, 'outcome', r.outcome,
      'revision', r.revision, 'changes', r.changes, 'message', r.message) ORDER BY r.id DESC)
    FROM (SELECT * FROM org_runs WHERE org_id = o.id ORDER BY id DESC LIMIT %(runs)s) r),
    '[]') AS runs
FROM organizations o WHERE %(slug)s::text IS NULL OR o.slug = %(slug)s
ORDER BY o.slug
"""


class StateError(ReconcilerError):
    """Postgres failed or is unreachable; the message is one line and holds no value."""


def state_error(exc: Exception) -> StateError:
    if isinstance(exc, PoolTimeout):
        return StateError("database unavailable: no connection within the pool timeout")
    lines = str(exc).strip().splitlines()
    first = lines[0].strip() if lines else type(exc).__name__
    kind = "database unavailable" if _is_outage(exc) else "database error"
    return StateError(f"{kind}: {printable(first, 200)}")


_EXACT_FLOAT_LIMIT = float(1 << 53)


def exact_numbers(value: Any) -> Any:
    """`value` with every integral float past 2**53 as the integer it exactly is. jsonb keeps
    numbers as decimals and gives back the digits it was sent: Python writes the float 1e100
    as `1e+100`, which comes back as the integer 10**100, not the float's exact value, so a
    config read back from Postgres would no longer equal the spec's (a perpetual update).
    Written as its exact integer it comes back equal."""
    if isinstance(value, float) and value.is_integer() and abs(value) >= _EXACT_FLOAT_LIMIT:
        return int(value)
    if isinstance(value, dict):
        return {k: exact_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [exact_numbers(v) for v in value]
    return value


def config_jsonb(config: dict[str, Any]) -> Jsonb:
    """An assistant config for a jsonb column, every number coming back equal to itself."""
    return Jsonb(exact_numbers(config))


def holdable(text: str) -> bool:
    """Can Postgres hold `text` in a text column (no NUL byte, encodable as UTF-8)? A name
    that cannot be stored names no row: look-ups answer "not found" without asking, rather than
    fail with the database's own error."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate
        return False
    return True


def _is_outage(exc: Exception) -> bool:
    return isinstance(exc, PoolTimeout | psycopg.OperationalError | psycopg.InterfaceError)


class _Breaker:
    """After the database was found unreachable, fail at once for a moment instead of making
    every org wait out the pool timeout: a database that is down for good costs a run seconds,
    not minutes, and one that restarts is tried again shortly after."""

    def __init__(self, pause_s: float) -> None:
        self.pause_s = pause_s
        self._until = 0.0
        self._reason = ""

    @contextmanager
    def guard(self, *, patient: bool = False) -> Iterator[None]:
        """`patient` (the run's own record at its end): wait out the pause, then try."""
        wait = self._until - time.monotonic()
        if wait > 0 and patient:
            time.sleep(wait)
        elif wait > 0:
            raise StateError(f"{self._reason} (not retried for a few seconds)")
        try:
            yield
        except (PoolTimeout, psycopg.Error) as exc:
            error = state_error(exc)
            if _is_outage(exc):
                self._reason = str(error)
                self._until = time.monotonic() + self.pause_s
            raise error from None


@dataclass(frozen=True)
class OrgIndexRow:
    org_id: str
    slug: str
    vapi_account_id: str | None


@dataclass(frozen=True)
class OrgStatus:
    """What a run learned about one org, written with every other org's in one statement."""

    org_id: str
    status: str  # 'Ready' | 'Failed' | 'Stalled': the summary of `conditions`
    message: str | None
    conditions: tuple[dict[str, str], ...] = ()  # {type, status, reason, message}
    revision: str | None = None  # the spec revision (git commit) this run worked from
    applied: bool = False  # the org converged to `revision`
    changes: dict[str, int] = field(default_factory=dict)  # what this run did (non-zero only)
    vapi_account_id: str | None = None  # set when known and not shared
    vapi_verified: bool | None = None  # True: the key listed the account; False: rejected
    vapi_error: str | None = None


STATUS_HEARTBEAT_S = 600
"""An org's unchanged status is written again at most this often (a no-op loop writes none)."""
RUNS_KEPT = 10
"""Runs of history kept per org."""
RUN_ROWS_KEPT = 10_000
"""`reconcile_runs` rows kept (a serve replica adds about one per interval)."""
PREVIOUS_KEPT = 3
"""Replaced Vapi credentials kept while rotations overlap (each still possibly on an assistant)."""
SECRET_GRACE_S = 300
"""How long a replaced webhook secret stays valid once every assistant carries the new one."""

OUTAGE_PAUSE_S = 3.0
MAPPING_RETENTION_S = 30 * 86400
"""How long the mapping of a deleted assistant (and a retired org's webhook secret) still
resolves webhooks: the late end-of-call reports of its last calls."""


_STORE_CREDENTIAL_SQL = f"""
WITH pin AS (SELECT key_id, key_check FROM master_key WHERE id FOR SHARE)
INSERT INTO org_credentials (org_id, provider, encrypted_config, fingerprint)
SELECT %(org)s::uuid, %(provider)s::text, %(sealed)s::text, %(fp)s::text
FROM pin WHERE pin.key_id = %(kid)s
  AND (pin.key_check IS NULL OR %(check)s::text IS NULL OR pin.key_check = %(check)s::text)
ON CONFLICT (org_id, provider) DO UPDATE SET
  previous_encrypted_config = CASE WHEN org_credentials.provider = 'vapi'
    AND org_credentials.is_active
    AND org_credentials.fingerprint <> EXCLUDED.fingerprint
    THEN CASE WHEN org_credentials.previous_valid_until IS NULL
      AND org_credentials.previous_encrypted_config IS NOT NULL
      THEN array_to_string((string_to_array(
        org_credentials.previous_encrypted_config || ' '
        || org_credentials.encrypted_config, ' '))[greatest(1, cardinality(
        string_to_array(org_credentials.previous_encrypted_config, ' '))
        + 2 - {PREVIOUS_KEPT}):], ' ')
      ELSE org_credentials.encrypted_config END
    ELSE org_credentials.previous_encrypted_config END,
  previous_valid_until = CASE WHEN org_credentials.provider = 'vapi'
    AND org_credentials.is_active
    AND org_credentials.fingerprint <> EXCLUDED.fingerprint
    THEN NULL ELSE org_credentials.previous_valid_until END,
  encrypted_config = EXCLUDED.encrypted_config,
  fingerprint = EXCLUDED.fingerprint, is_active = true,
  webhook_only_until = NULL,
  last_verified_at = NULL, verification_error = NULL, updated_at = now()
WHERE reconciler_token_key_id(org_credentials.encrypted_config) = ANY(%(held)s)
RETURNING 1
"""
"""A credential upsert guarded by the active master key (`master_key`, held FOR SHARE) and by
the key id of the row it replaces: no row returned, nothing written."""


def writer_name() -> str:
    """Who set the active key: host and process, for `keys status`."""
    return f"{socket.gethostname()} pid {os.getpid()}"


class StateReader:
    def __init__(
        self,
        pool: ConnectionPool,
        *,
        outage_pause_s: float = OUTAGE_PAUSE_S,
        mapping_retention_s: float = MAPPING_RETENTION_S,
    ) -> None:
        self.pool = pool
        self.mapping_retention_s = mapping_retention_s
        self._lock = threading.Lock()
        self._breaker = _Breaker(outage_pause_s)
        self.queries = 0  # statements sent, for benchmarks

    def _count(self, n: int = 1) -> None:
        with self._lock:
            self.queries += n

    @contextmanager
    def _read(self) -> Iterator[psycopg.Cursor[dict[str, Any]]]:
        self._count()
        with (
            self._breaker.guard(),
            self.pool.connection() as conn,
            conn.cursor(row_factory=dict_row) as cur,
        ):
            yield cur

    def observe(self, org_ids: list[str]) -> dict[str, dict[str, Any]]:
        """Org row, credentials, assistants and mappings of many orgs, in one query."""
        with self._read() as cur:
            rows = cur.execute(_OBSERVE_SQL, (org_ids,)).fetchall()
        return {r["id"]: r for r in rows}

    def resolve_assistant(self, vapi_assistant_id: str) -> dict[str, Any] | None:
        """Org of an assistant id, with the org's encrypted Vapi credential (and, while a
        webhook secret is being rotated, the one it replaced: `previous_left_s` is NULL until
        the rotation completes, then the seconds of grace left) and its forward URL. The mapping
        of a deleted assistant resolves for `mapping_retention_s` after it went inactive (late
        webhooks of its last calls), and a retired org's webhook secret as long."""
        with self._read() as cur:
            return cur.execute(
                "SELECT m.org_id::text AS org_id, o.slug, m.assistant_role AS role,"
                " c.encrypted_config, c.previous_encrypted_config,"
                " EXTRACT(EPOCH FROM c.previous_valid_until - now())::float8"
                "   AS previous_left_s,"
                " o.webhook_forward_url AS forward_url"
                " FROM assistant_org_mapping m JOIN organizations o ON o.id = m.org_id"
                " LEFT JOIN org_credentials c"
                "   ON c.org_id = m.org_id AND c.provider = 'vapi'"
                "   AND (c.is_active OR c.webhook_only_until > now())"
                " WHERE m.vapi_assistant_id = %s AND (m.inactive_at IS NULL"
                "   OR m.inactive_at > now() - make_interval(secs => %s))",
                (vapi_assistant_id, self.mapping_retention_s),
            ).fetchone()

    def assistant_owner(self, vapi_assistant_id: str) -> dict[str, Any] | None:
        """For `reconciler resolve`: the org an assistant id is mapped to, with when the org
        was retired (`retired_at`, NULL while live) and when the mapping went inactive (the
        assistant replaced or deleted). Unlike `resolve_assistant`, which routes webhooks, a
        retired org is answered as such as long as its mapping row is kept."""
        if not holdable(vapi_assistant_id):
            return None
        with self._read() as cur:
            return cur.execute(
                "SELECT m.org_id::text AS org_id, o.slug, m.assistant_role AS role,"
                " o.retired_at, m.inactive_at"
                " FROM assistant_org_mapping m JOIN organizations o ON o.id = m.org_id"
                " WHERE m.vapi_assistant_id = %s",
                (vapi_assistant_id,),
            ).fetchone()

    def resolve_account(self, vapi_account_id: str) -> dict[str, Any] | None:
        """As `resolve_assistant`, for a webhook that names no assistant (an
        `assistant-request` of a phone number without one): the one org whose Vapi account
        (`orgId`) this is; None when no org, or more than one, was last seen in it."""
        with self._read() as cur:
            rows = cur.execute(
                "SELECT o.id::text AS org_id, o.slug, '' AS role,"
                " c.encrypted_config, c.previous_encrypted_config,"
                " EXTRACT(EPOCH FROM c.previous_valid_until - now())::float8"
                "   AS previous_left_s,"
                " o.webhook_forward_url AS forward_url"
                " FROM organizations o LEFT JOIN org_credentials c"
                "   ON c.org_id = o.id AND c.provider = 'vapi' AND c.is_active"
                " WHERE o.vapi_account_id = %s AND o.retired_at IS NULL LIMIT 2",
                (vapi_account_id,),
            ).fetchall()
        return rows[0] if len(rows) == 1 else None

    def org_index(self) -> list[OrgIndexRow]:
        """Every live (not retired) org's id, slug and Vapi account: slug ownership, account
        claims and orphans, in one query."""
        with self._read() as cur:
            rows = cur.execute(
                "SELECT id::text AS org_id, slug, vapi_account_id FROM organizations"
                " WHERE retired_at IS NULL"
            ).fetchall()
        return [OrgIndexRow(r["org_id"], r["slug"], r["vapi_account_id"]) for r in rows]

    def mapped_to_others(self, org_id: str, vapi_ids: list[str]) -> frozenset[str]:
        """Which of these assistant ids Postgres maps to an org other than `org_id`."""
        with self._read() as cur:
            rows = cur.execute(
                "SELECT vapi_assistant_id FROM assistant_org_mapping"
                " WHERE vapi_assistant_id = ANY(%s) AND org_id <> %s AND inactive_at IS NULL",
                (vapi_ids, org_id),
            ).fetchall()
        return frozenset(r["vapi_assistant_id"] for r in rows)

    def held_by(self, kind: str, names: list[str]) -> dict[str, tuple[str, str]]:
        """name -> (org id, slug) of the live org whose `kind` object `name` is (one org per
        number: `validate` checks the files, this the database). One query."""
        if not names:
            return {}
        with self._read() as cur:
            rows = cur.execute(
                "SELECT r.name, r.org_id::text AS org_id, o.slug FROM vapi_resources r"
                " JOIN organizations o ON o.id = r.org_id"
                " WHERE r.kind = %s AND r.name = ANY(%s) AND o.retired_at IS NULL",
                (kind, names),
            ).fetchall()
        self._count()
        return {r["name"]: (r["org_id"], r["slug"]) for r in rows}

    def resolve_resource(self, vapi_id: str) -> dict[str, Any] | None:
        """The org of a Vapi object of a kind beyond assistants (a phone number's id in
        `call.phoneNumberId`), as `resolve_assistant` does for assistants."""
        with self._read() as cur:
            row = cur.execute(
                "SELECT m.org_id::text AS org_id, m.kind, m.name, m.inactive_at,"
                " o.slug FROM resource_org_mapping m JOIN organizations o ON o.id = m.org_id"
                " WHERE m.vapi_id = %s",
                (vapi_id,),
            ).fetchone()
        self._count()
        return row

    def resolve_number(self, vapi_phone_number_id: str) -> dict[str, Any] | None:
        """As `resolve_assistant`, for a webhook that names no assistant but a phone number
        (`call.phoneNumberId` of an `assistant-request`): the org whose number this is, by
        `resource_org_mapping` (kind `phoneNumber` only), with the org's Vapi credential. A
        released or replaced number's mapping resolves for `mapping_retention_s` after it went
        inactive, as an assistant's does. `role` is ''."""
        with self._read() as cur:
            return cur.execute(
                "SELECT m.org_id::text AS org_id, o.slug, '' AS role,"
                " c.encrypted_config, c.previous_encrypted_config,"
                " EXTRACT(EPOCH FROM c.previous_valid_until - now())::float8"
                "   AS previous_left_s,"
                " o.webhook_forward_url AS forward_url"
                " FROM resource_org_mapping m JOIN organizations o ON o.id = m.org_id"
                " LEFT JOIN org_credentials c"
                "   ON c.org_id = m.org_id AND c.provider = 'vapi'"
                "   AND (c.is_active OR c.webhook_only_until > now())"
                " WHERE m.vapi_id = %s AND m.kind = 'phoneNumber' AND (m.inactive_at IS NULL"
                "   OR m.inactive_at > now() - make_interval(secs => %s))",
                (vapi_phone_number_id, self.mapping_retention_s),
            ).fetchone()

    def stored_vapi_credentials(self, org_ids: list[str]) -> dict[str, str]:
        """The sealed Vapi credential of each org that has an active one: what retiring an org
        whose spec is gone uses to reach its account."""
        with self._read() as cur:
            rows = cur.execute(
                "SELECT org_id::text AS org_id, encrypted_config FROM org_credentials"
                " WHERE org_id = ANY(%s::uuid[]) AND provider = 'vapi' AND is_active",
                (org_ids,),
            ).fetchall()
        return {r["org_id"]: r["encrypted_config"] for r in rows}

    def live_org_id(self, slug: str) -> str | None:
        """The id of the live org with this slug, if any (for `org retire`)."""
        if not holdable(slug):
            return None
        with self._read() as cur:
            row = cur.execute(
                "SELECT id::text AS org_id FROM organizations"
                " WHERE slug = %s AND retired_at IS NULL",
                (slug,),
            ).fetchone()
        return row["org_id"] if row else None

    def master_key(self) -> dict[str, Any] | None:
        """The active master key id Postgres records (`key_id`, `retired`, `set_by`,
        `set_at`), or None while none is (one indexed read)."""
        with self._read() as cur:
            return cur.execute(
                "SELECT key_id, key_check, retired, set_by, set_at FROM master_key WHERE id"
            ).fetchone()

    def ping(self) -> None:
        """Raises `StateError` unless the database answers (for /readyz)."""
        with self._read() as cur:
            cur.execute("SELECT 1")

    def org_statuses(self, slug: str | None = None) -> list[dict[str, Any]]:
        """Conditions, revisions, assistants, tools and phone numbers (with the outbound
        number's Vapi id), credentials (never a value) and the last runs of every org (or of
        one), in one query: for `reconciler status` and the status API."""
        if slug is not None and not holdable(slug):
            return []  # no org has a slug Postgres cannot even hold
        with self._read() as cur:
            return cur.execute(_STATUS_SQL, {"slug": slug, "runs": RUNS_KEPT}).fetchall()

    def free_connections(self) -> int:
        """Connections the server can still accept from us (not counting reserved ones)."""
        with self._read() as cur:
            row = cur.execute(
                "SELECT current_setting('max_connections')::int"
                " - current_setting('superuser_reserved_connections')::int"
                " - (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')"
                " AS free"
            ).fetchone()
        return int(row["free"]) if row else 0


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
    def org_lock(self, org_id: str, *, wait_s: float = 0.0) -> Iterator[OrgLock]:
        """Holds a transaction-scoped advisory lock for the org while the block runs.

        Transaction-scoped (not session) so it cannot leak behind a transaction pooler, and a
        crashed replica's lock dies with its connection. The idle-in-transaction timeout is
        lifted for this transaction, and `OrgLock.check()` proves the lock still holds before
        each Vapi write (fail closed if the session was killed meanwhile). With `wait_s`, waits
        that long for another holder to finish (Postgres's `lock_timeout`), else gives up at once.
        A session that dies under the block is not an error of its own: the block's own work
        reports it.
        """
        self._count()
        with self._breaker.guard(), self.pool.connection() as conn:
            finished = False
            try:
                with conn.transaction():
                    held = self._take(conn, _lock_key(org_id), wait_s)
                    yield OrgLock(conn, held, self._count)
                    finished = True
            except (psycopg.OperationalError, psycopg.InterfaceError):
                if not finished:
                    raise
                # Only the lock's own commit failed (its session is gone): the block's work is
                # committed on other connections, and the lock went with the session.

    @staticmethod
    def _take(conn: Connection[Any], key: int, wait_s: float) -> bool:
        if wait_s <= 0:
            row = conn.execute(
                "SELECT set_config('idle_in_transaction_session_timeout', '0', true),"
                " pg_try_advisory_xact_lock(%s)",
                (key,),
            ).fetchone()
            return bool(row and row[1])
        conn.execute(
            "SELECT set_config('idle_in_transaction_session_timeout', '0', true),"
            " set_config('lock_timeout', %s, true)",
            (f"{max(1, int(wait_s * 1000))}ms",),
        )
        try:
            with conn.transaction():  # a savepoint: a timed-out wait leaves the lock tx usable
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (key,))
        except psycopg.errors.LockNotAvailable:
            return False
        finally:
            conn.execute("SELECT set_config('lock_timeout', '0', true)")
        return True

    @contextmanager
    def _tx(self, statements: int, *, patient: bool = False) -> Iterator[Connection[Any]]:
        self._count(statements)
        with (
            self._breaker.guard(patient=patient),
            self.pool.connection() as conn,
            conn.transaction(),
        ):
            yield conn

    def upsert_org(
        self,
        org_id: str,
        slug: str,
        name: str,
        forward_url: str | None = None,
        outbound_number: str | None = None,
    ) -> None:
        with self._tx(1) as conn:
            conn.execute(
                "INSERT INTO organizations (id, slug, name, webhook_forward_url,"
                " outbound_phone_number) VALUES (%s, %s, %s, %s, %s)"
                " ON CONFLICT (id) DO UPDATE SET slug = EXCLUDED.slug,"
                " name = EXCLUDED.name, webhook_forward_url = EXCLUDED.webhook_forward_url,"
                " outbound_phone_number = EXCLUDED.outbound_phone_number,"
                " retired_at = NULL, updated_at = now()",
                (org_id, slug, name, forward_url, outbound_number),
            )

    def store_credential(
        self,
        org_id: str,
        provider: str,
        encrypted: str,
        fingerprint: str,
        *,
        key_ids: Sequence[str] = (),
        slug: str = "",
        key_check: str | None = None,
    ) -> None:
        """A changed Vapi credential keeps the one it replaced (webhook secret rotation): the
        resolver accepts both until the org's assistants all carry the new one. Rotated again
        before that, the ones still in flight are kept too (the last `PREVIOUS_KEPT`,
        space-separated tokens): some assistants may carry any of them.

        Written only when `encrypted`'s key id is the active one Postgres records (held FOR
        SHARE in the same statement, so a concurrent `keys rotate` is either waited for or
        waits), and the row it replaces is under one of `key_ids` (the ids this process holds;
        default: `encrypted`'s own), and `key_check` (`KeyRing.check_value()`: None, not
        compared) is the recorded one; else `MasterKeyRefused`, and nothing is written. The
        steady state costs no extra statement; a refusal or the first write of a database
        with no active key recorded costs a few."""
        kid = token_key_id(encrypted)
        held = list(key_ids) or [kid]
        params = {
            "org": org_id,
            "provider": provider,
            "sealed": encrypted,
            "fp": fingerprint,
            "kid": kid,
            "held": held,
            "check": key_check,
        }
        with self._tx(1) as conn:
            if conn.execute(_STORE_CREDENTIAL_SQL, params).fetchone() is not None:
                return
            self._check_master_key(conn, org_id, provider, kid, held, slug or org_id, key_check)
            self._count()
            if conn.execute(_STORE_CREDENTIAL_SQL, params).fetchone() is None:
                raise StateError(
                    f"credential {provider} of org {slug or org_id} was not written: "
                    "the active master key changed meanwhile; the next run tries again"
                )

    def _check_master_key(
        self,
        conn: Connection[Any],
        org_id: str,
        provider: str | None,
        kid: str,
        held: list[str],
        org: str,
        key_check: str | None = None,
    ) -> None:
        """In the writer's transaction: raises `MasterKeyRefused` unless a credential sealed
        under `kid` may be written for the org (its row, if `provider`, under a held key id;
        `kid` the active one). With no active key recorded yet, records `kid`, conditionally
        (two first writers with different keys: one wins, the other is refused), provided
        this process holds every key id the stored rows use."""
        if provider is not None:
            row = self._exec(
                conn,
                "SELECT reconciler_token_key_id(encrypted_config) FROM org_credentials"
                " WHERE org_id = %s AND provider = %s",
                (org_id, provider),
            ).fetchone()
            if row is not None and row[0] not in held:
                raise MasterKeyRefused.missing(org, provider, row[0])
        recorded, check = self._recorded_for_share(conn)
        if recorded is None:
            lacking = self._exec(
                conn,
                "SELECT o.slug, c.provider, reconciler_token_key_id(c.encrypted_config)"
                " FROM org_credentials c JOIN organizations o ON o.id = c.org_id"
                " WHERE reconciler_token_key_id(c.encrypted_config) <> ALL(%s) LIMIT 1",
                (held,),
            ).fetchone()
            if lacking is not None:
                raise MasterKeyRefused.missing(lacking[0], lacking[1], lacking[2])
            self._exec(
                conn,
                "INSERT INTO master_key (key_id, key_check, set_by) VALUES (%s, %s, %s)"
                " ON CONFLICT (id) DO NOTHING",
                (kid, key_check, f"first credential write ({writer_name()})"),
            )
            recorded, check = self._recorded_for_share(conn)
        if recorded != kid:
            raise MasterKeyRefused.not_active(org, kid, recorded or "?", held)
        if check is not None and key_check is not None and check != key_check:
            raise MasterKeyRefused.wrong_key(org, kid)

    def _recorded_for_share(self, conn: Connection[Any]) -> tuple[str | None, str | None]:
        """The recorded active key id and its check value, held FOR SHARE."""
        row = self._exec(
            conn, "SELECT key_id, key_check FROM master_key WHERE id FOR SHARE"
        ).fetchone()
        return (str(row[0]), row[1]) if row else (None, None)

    def _exec(self, conn: Connection[Any], query: str, params: Any = None) -> Any:
        """One counted statement on the caller's connection."""
        self._count()
        return conn.execute(query, params)

    def deactivate_credential(self, org_id: str, provider: str) -> None:
        with self._tx(1) as conn:
            conn.execute(
                "UPDATE org_credentials SET is_active = false, updated_at = now()"
                " WHERE org_id = %s AND provider = %s",
                (org_id, provider),
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
                (org_id, role, config_jsonb(desired)),
            )
            conn.execute(
                "UPDATE assistant_org_mapping SET inactive_at = now() WHERE org_id = %s"
                " AND assistant_role = %s AND inactive_at IS NULL",
                (org_id, role),
            )

    def abort_create(self, org_id: str, role: str) -> None:
        """Vapi refused the create outright (a definite 4xx): nothing exists, nothing to wait
        for, so the next run creates at once."""
        with self._tx(1) as conn:
            conn.execute(
                "DELETE FROM assistants WHERE org_id = %s AND role = %s"
                " AND status = 'creating' AND vapi_assistant_id IS NULL",
                (org_id, role),
            )

    def record_assistant(
        self,
        org_id: str,
        role: str,
        vapi_id: str,
        name: str,
        desired: dict[str, Any],
        applied: dict[str, Any] | None = None,
        last_patch: dict[str, Any] | None = None,
    ) -> None:
        """State row and mapping row together, in one transaction. `desired` is what we asked
        for, `applied` what Vapi answered, `last_patch` what a PATCH sent and replaced (all
        with secret leaves fingerprinted)."""
        with self._tx(3) as conn:
            conn.execute(
                "INSERT INTO assistants (org_id, role, vapi_assistant_id, status, desired_config,"
                " applied_config, last_patch) VALUES (%s, %s, %s, 'ready', %s, %s, %s)"
                " ON CONFLICT (org_id, role) DO UPDATE SET"
                " vapi_assistant_id = EXCLUDED.vapi_assistant_id, status = 'ready',"
                " desired_config = EXCLUDED.desired_config,"
                " applied_config = EXCLUDED.applied_config, last_patch = EXCLUDED.last_patch,"
                " create_started_at = NULL, updated_at = now()",
                (
                    org_id,
                    role,
                    vapi_id,
                    config_jsonb(desired),
                    config_jsonb(applied or desired),
                    config_jsonb(last_patch) if last_patch else None,
                ),
            )
            conn.execute(  # the one it replaces stays, inactive, for its late webhooks
                "UPDATE assistant_org_mapping SET inactive_at = now() WHERE org_id = %s"
                " AND assistant_role = %s AND vapi_assistant_id <> %s AND inactive_at IS NULL",
                (org_id, role, vapi_id),
            )
            cur = conn.execute(
                "INSERT INTO assistant_org_mapping (vapi_assistant_id, org_id, assistant_role,"
                " assistant_name) VALUES (%s, %s, %s, %s)"
                " ON CONFLICT (vapi_assistant_id) DO UPDATE SET"
                " assistant_name = EXCLUDED.assistant_name,"
                " assistant_role = EXCLUDED.assistant_role, inactive_at = NULL,"
                " org_id = EXCLUDED.org_id"
                " WHERE assistant_org_mapping.org_id = EXCLUDED.org_id"
                "   OR assistant_org_mapping.inactive_at IS NOT NULL",
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
            conn.execute(  # kept, inactive, for the late webhooks of its last calls
                "UPDATE assistant_org_mapping SET inactive_at = now() WHERE org_id = %s"
                " AND assistant_role = %s AND (%s::text IS NULL OR vapi_assistant_id = %s)"
                " AND inactive_at IS NULL",
                (org_id, role, vapi_id, vapi_id),
            )

    def begin_create_resource(
        self, org_id: str, kind: str, name: str, desired: dict[str, Any]
    ) -> None:
        """As `begin_create`, for any kind: committed before the POST."""
        with self._tx(2) as conn:
            conn.execute(
                "INSERT INTO vapi_resources (org_id, kind, name, status, desired_config,"
                " create_started_at) VALUES (%s, %s, %s, 'creating', %s, now())"
                " ON CONFLICT (org_id, kind, name) DO UPDATE SET"
                " status = 'creating', vapi_id = NULL, applied_config = NULL, last_patch = NULL,"
                " desired_config = EXCLUDED.desired_config, create_started_at = now(),"
                " updated_at = now()",
                (org_id, kind, name, config_jsonb(desired)),
            )
            conn.execute(
                "UPDATE resource_org_mapping SET inactive_at = now() WHERE org_id = %s"
                " AND kind = %s AND name = %s AND inactive_at IS NULL",
                (org_id, kind, name),
            )

    def abort_create_resource(self, org_id: str, kind: str, name: str) -> None:
        """Vapi refused the create outright: nothing exists, the next run creates at once."""
        with self._tx(1) as conn:
            conn.execute(
                "DELETE FROM vapi_resources WHERE org_id = %s AND kind = %s AND name = %s"
                " AND status = 'creating' AND vapi_id IS NULL",
                (org_id, kind, name),
            )

    def record_resource(
        self,
        org_id: str,
        kind: str,
        name: str,
        vapi_id: str,
        desired: dict[str, Any],
        applied: dict[str, Any] | None = None,
        last_patch: dict[str, Any] | None = None,
    ) -> None:
        """State row and mapping row together, in one transaction (as `record_assistant`)."""
        with self._tx(3) as conn:
            conn.execute(
                "INSERT INTO vapi_resources (org_id, kind, name, vapi_id, status,"
                " desired_config, applied_config, last_patch)"
                " VALUES (%s, %s, %s, %s, 'ready', %s, %s, %s)"
                " ON CONFLICT (org_id, kind, name) DO UPDATE SET"
                " vapi_id = EXCLUDED.vapi_id, status = 'ready',"
                " desired_config = EXCLUDED.desired_config,"
                " applied_config = EXCLUDED.applied_config, last_patch = EXCLUDED.last_patch,"
                " create_started_at = NULL, updated_at = now()",
                (
                    org_id,
                    kind,
                    name,
                    vapi_id,
                    config_jsonb(desired),
                    config_jsonb(applied or desired),
                    config_jsonb(last_patch) if last_patch else None,
                ),
            )
            conn.execute(  # the one it replaces stays, inactive, for its late webhooks
                "UPDATE resource_org_mapping SET inactive_at = now() WHERE org_id = %s"
                " AND kind = %s AND name = %s AND vapi_id <> %s AND inactive_at IS NULL",
                (org_id, kind, name, vapi_id),
            )
            cur = conn.execute(
                "INSERT INTO resource_org_mapping (vapi_id, kind, org_id, name)"
                " VALUES (%s, %s, %s, %s)"
                " ON CONFLICT (vapi_id) DO UPDATE SET name = EXCLUDED.name,"
                " kind = EXCLUDED.kind, inactive_at = NULL, org_id = EXCLUDED.org_id"
                " WHERE resource_org_mapping.org_id = EXCLUDED.org_id"
                "   OR resource_org_mapping.inactive_at IS NOT NULL",
                (vapi_id, kind, org_id, name),
            )
            if cur.rowcount != 1:  # rolls the whole transaction back
                raise ReconcilerError(
                    f"{kind} {vapi_id} is already mapped to another org: "
                    "do two specs share one Vapi account?"
                )

    def forget_resource(self, org_id: str, kind: str, name: str, vapi_id: str | None) -> None:
        with self._tx(2) as conn:
            conn.execute(
                "DELETE FROM vapi_resources WHERE org_id = %s AND kind = %s AND name = %s"
                " AND (%s::text IS NULL OR vapi_id IS NULL OR vapi_id = %s)",
                (org_id, kind, name, vapi_id, vapi_id),
            )
            conn.execute(  # kept, inactive, for late webhooks
                "UPDATE resource_org_mapping SET inactive_at = now() WHERE org_id = %s"
                " AND kind = %s AND name = %s AND (%s::text IS NULL OR vapi_id = %s)"
                " AND inactive_at IS NULL",
                (org_id, kind, name, vapi_id, vapi_id),
            )

    def leave_account(self, org_id: str) -> None:
        """The org's key reaches another Vapi account now: the old account's mappings go
        inactive (late webhooks still resolve), its assistant and object state goes."""
        with self._tx(5) as conn:
            conn.execute(
                "UPDATE assistant_org_mapping SET inactive_at = now()"
                " WHERE org_id = %s AND inactive_at IS NULL",
                (org_id,),
            )
            conn.execute(
                "UPDATE resource_org_mapping SET inactive_at = now()"
                " WHERE org_id = %s AND inactive_at IS NULL",
                (org_id,),
            )
            conn.execute("DELETE FROM assistants WHERE org_id = %s", (org_id,))
            conn.execute("DELETE FROM vapi_resources WHERE org_id = %s", (org_id,))
            conn.execute("UPDATE organizations SET vapi_account_id = NULL WHERE id = %s", (org_id,))

    def retire_org(
        self,
        org_id: str,
        webhook_only: str | None,
        reason: str,
        *,
        key_ids: Sequence[str] = (),
        slug: str = "",
        key_check: str | None = None,
    ) -> None:
        """The org's row and history stay; its slug is freed; every credential is deactivated,
        the Vapi one replaced by `webhook_only` (its webhook secret alone, sealed), usable to
        verify late webhooks until the retention window ends. One transaction. A sealed
        `webhook_only` is a credential write: checked as `store_credential` checks it."""
        with self._tx(6) as conn:
            if webhook_only is not None:
                kid = token_key_id(webhook_only)
                held = list(key_ids) or [kid]
                self._check_master_key(conn, org_id, "vapi", kid, held, slug or org_id, key_check)
            conn.execute(
                "UPDATE assistant_org_mapping SET inactive_at = now()"
                " WHERE org_id = %s AND inactive_at IS NULL",
                (org_id,),
            )
            conn.execute(
                "UPDATE resource_org_mapping SET inactive_at = now()"
                " WHERE org_id = %s AND inactive_at IS NULL",
                (org_id,),
            )
            conn.execute("DELETE FROM assistants WHERE org_id = %s", (org_id,))
            conn.execute("DELETE FROM vapi_resources WHERE org_id = %s", (org_id,))
            conn.execute(
                "UPDATE org_credentials SET is_active = false, previous_encrypted_config = NULL,"
                " previous_valid_until = NULL, updated_at = now(),"
                " encrypted_config = CASE WHEN provider = 'vapi' AND %(sealed)s::text IS NOT NULL"
                "   THEN %(sealed)s ELSE encrypted_config END,"
                " webhook_only_until = CASE WHEN provider = 'vapi' AND %(sealed)s::text IS NOT NULL"
                "   THEN now() + make_interval(secs => %(keep)s) END"
                " WHERE org_id = %(org)s",
                {"org": org_id, "sealed": webhook_only, "keep": self.mapping_retention_s},
            )
            conn.execute(
                "UPDATE organizations SET retired_at = now(), status = 'Retired',"
                " status_message = %s, status_changed_at = now(), updated_at = now()"
                " WHERE id = %s",
                (reason, org_id),
            )

    def expire(self) -> int:
        """Removes what outlived the retention window: inactive mappings, and retired orgs'
        webhook secrets. Returns the mappings removed."""
        keep = self.mapping_retention_s
        with self._tx(2) as conn:
            cur = conn.execute(  # both mapping tables in one statement
                "WITH other AS (DELETE FROM resource_org_mapping"
                "   WHERE inactive_at < now() - make_interval(secs => %(keep)s))"
                " DELETE FROM assistant_org_mapping"
                " WHERE inactive_at < now() - make_interval(secs => %(keep)s)",
                {"keep": keep},
            )
            conn.execute(
                "DELETE FROM org_credentials WHERE NOT is_active AND webhook_only_until < now()"
            )
            return cur.rowcount

    def forget_org(self, org_id: str) -> None:
        """The org's row and everything hanging off it (credentials, state, mappings)."""
        with self._tx(1) as conn:
            conn.execute("DELETE FROM organizations WHERE id = %s", (org_id,))

    def finish_orgs(
        self,
        statuses: list[OrgStatus],
        *,
        run_id: int | None = None,
        secret_grace_s: float = SECRET_GRACE_S,
    ) -> list[str]:
        """Every org's status of a run in one transaction of a few statements, whatever the
        number of orgs. A row is written only when something changed (a condition, the
        revision, the account, a change made) or as a heartbeat every `STATUS_HEARTBEAT_S`;
        each written row adds a run to the org's history (the last `RUNS_KEPT` kept). The Vapi
        key's verification follows the same rule. A Ready org has finished any webhook-secret
        rotation: its old secret gets `secret_grace_s` more. Returns the org ids written."""
        if not statuses:
            return []
        rows = [
            {
                "id": s.org_id,
                "status": s.status,
                "message": s.message,
                "conditions": list(s.conditions),
                "revision": s.revision,
                "applied": s.applied,
                "account": s.vapi_account_id,
                "changes": {k: v for k, v in s.changes.items() if v},
            }
            for s in statuses
        ]
        checked = [s for s in statuses if s.vapi_verified is not None]
        ready = [s.org_id for s in statuses if s.status == "Ready"]
        with self._tx(4 + bool(checked) + bool(ready), patient=True) as conn:
            written = conn.execute(_FINISH_ORGS_SQL, (Jsonb(rows), STATUS_HEARTBEAT_S)).fetchall()
            ids = [str(r[0]) for r in written]
            if ids:
                conn.execute(
                    "INSERT INTO org_runs (org_id, run_id, outcome, revision, changes, message)"
                    " SELECT s.id, %s, s.status, s.revision, s.changes, s.message"
                    " FROM jsonb_to_recordset(%s) AS s(id uuid, status text, message text,"
                    "   revision text, changes jsonb) WHERE s.id = ANY(%s::uuid[])",
                    (run_id, Jsonb(rows), ids),
                )
                conn.execute(
                    "DELETE FROM org_runs r USING (SELECT id, row_number() OVER"
                    "   (PARTITION BY org_id ORDER BY id DESC) AS n"
                    "   FROM org_runs WHERE org_id = ANY(%s::uuid[])) x"
                    " WHERE r.id = x.id AND x.n > %s",
                    (ids, RUNS_KEPT),
                )
            if checked:
                conn.execute(
                    "UPDATE org_credentials c SET"
                    " last_verified_at = CASE WHEN v.ok THEN now() ELSE c.last_verified_at END,"
                    " verification_error = v.error"
                    " FROM unnest(%s::uuid[], %s::bool[], %s::text[]) AS v(id, ok, error)"
                    " WHERE c.org_id = v.id AND c.provider = 'vapi' AND ("
                    "   c.verification_error IS DISTINCT FROM v.error"
                    "   OR (v.ok AND (c.last_verified_at IS NULL"
                    "     OR c.last_verified_at < now() - make_interval(secs => %s))))",
                    (
                        [s.org_id for s in checked],
                        [s.vapi_verified for s in checked],
                        [s.vapi_error for s in checked],
                        STATUS_HEARTBEAT_S,
                    ),
                )
            if ready:
                conn.execute(
                    "UPDATE org_credentials SET"
                    " previous_valid_until = now() + make_interval(secs => %s)"
                    " WHERE provider = 'vapi' AND org_id = ANY(%s::uuid[])"
                    " AND previous_encrypted_config IS NOT NULL AND previous_valid_until IS NULL",
                    (secret_grace_s, ready),
                )
            conn.execute(  # only these orgs' rows: replicas never lock each other's
                "UPDATE org_credentials SET previous_encrypted_config = NULL,"
                " previous_valid_until = NULL WHERE previous_valid_until < now()"
                " AND org_id = ANY(%s::uuid[])",
                ([s.org_id for s in statuses],),
            )
        return ids

    def touch_mappings(self, vapi_assistant_ids: list[str]) -> None:
        """`last_used_at` of the mappings (assistants', and phone numbers' in
        `resource_org_mapping`) that resolved webhooks, in one statement (batched by the
        resolver, off the request path; it announces nothing)."""
        if not vapi_assistant_ids:
            return
        with self._tx(1) as conn:
            conn.execute(  # a phone number's id (number-routed webhooks) too: one statement
                "WITH numbers AS (UPDATE resource_org_mapping SET last_used_at = now()"
                "   WHERE vapi_id = ANY(%(ids)s))"
                " UPDATE assistant_org_mapping SET last_used_at = now()"
                " WHERE vapi_assistant_id = ANY(%(ids)s)",
                {"ids": sorted(set(vapi_assistant_ids))},
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
        self,
        run_id: int,
        *,
        orgs_failed: int,
        files_failed: int,
        orgs_skipped: int,
        changes: dict[str, int],
        errors: list[dict[str, str]],
    ) -> None:
        with self._tx(1, patient=True) as conn:
            conn.execute(
                "UPDATE reconcile_runs SET finished_at = now(), orgs_failed = %s,"
                " files_failed = %s, orgs_skipped = %s, changes = %s, errors = %s WHERE id = %s",
                (orgs_failed, files_failed, orgs_skipped, Jsonb(changes), Jsonb(errors), run_id),
            )
            if run_id % 100 == 0:  # now and then, by primary key: a cheap delete
                conn.execute("DELETE FROM reconcile_runs WHERE id <= %s", (run_id - RUN_ROWS_KEPT,))
