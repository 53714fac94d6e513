"""Organizations (`organizations`, `org_runs`): the rows a run reads whole (`observe`, one
query for every org in hand) and writes whole (`finish`, one transaction for every org's
status), the slug index, the per-org advisory lock, retirement and the retention sweep."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import Connection
from psycopg.types.json import Jsonb

from reconciler.errors import ReconcilerError
from reconciler.secrets.crypto import token_key_id
from reconciler.state._accounts import drop_account_state
from reconciler.state._base import Repository, holdable
from reconciler.state._credentials import check_master_key

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
      'last_patch', a.last_patch, 'template', a.template,
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
      'vapi_assistant_id', a.vapi_assistant_id, 'status', a.status, 'template', a.template)
      ORDER BY a.role)
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


@dataclass(frozen=True)
class OrgIndexRow:
    org_id: str
    slug: str
    vapi_account_id: str | None
    # role -> the template its assistant was last written from (None: written in full)
    templates: dict[str, str | None] = field(default_factory=dict)
    status: str | None = None  # its last status (Ready, Failed, ...)


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
SECRET_GRACE_S = 300
"""How long a replaced webhook secret stays valid once every assistant carries the new one."""


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


class OrgReader(Repository):
    def observe(self, org_ids: list[str], *, many: bool = False) -> dict[str, dict[str, Any]]:
        """Org row, credentials, assistants and mappings of many orgs, in one query. `many`:
        a run's read of all its orgs, planned without JIT (`Db.read`); one org's read never
        comes near the cost at which Postgres compiles, and is one statement."""
        with self._db.read(jit=not many) as cur:
            rows = cur.execute(_OBSERVE_SQL, (org_ids,)).fetchall()
        return {r["id"]: r for r in rows}

    def index(self) -> list[OrgIndexRow]:
        """Every live (not retired) org's id, slug and Vapi account: slug ownership, account
        claims and orphans, in one query."""
        with self._db.read() as cur:
            rows = cur.execute(
                "SELECT o.id::text AS org_id, o.slug, o.vapi_account_id, o.status,"
                " (SELECT json_object_agg(a.role, a.template ORDER BY a.role)::text"
                "   FROM assistants a WHERE a.org_id = o.id AND a.status = 'ready') AS templates"
                " FROM organizations o WHERE o.retired_at IS NULL"
            ).fetchall()
        # as text, each distinct one parsed once: most orgs have the same roles and templates
        # (a serve run reads this once per batch; json.loads of every row was 3 ms per 1,000)
        parsed: dict[str, dict[str, str | None]] = {}
        out = []
        for r in rows:
            text = r["templates"]
            templates = parsed.get(text) if text is not None else {}
            if templates is None:
                templates = parsed[text] = json.loads(text)
            out.append(
                OrgIndexRow(
                    r["org_id"], r["slug"], r["vapi_account_id"], dict(templates), r["status"]
                )
            )
        return out

    def live_id(self, slug: str) -> str | None:
        """The id of the live org with this slug, if any (for `org retire`)."""
        if not holdable(slug):
            return None
        with self._db.read() as cur:
            row = cur.execute(
                "SELECT id::text AS org_id FROM organizations"
                " WHERE slug = %s AND retired_at IS NULL",
                (slug,),
            ).fetchone()
        return row["org_id"] if row else None

    def statuses(self, slug: str | None = None) -> list[dict[str, Any]]:
        """Conditions, revisions, assistants, tools and phone numbers (with the outbound
        number's Vapi id), credentials (never a value) and the last runs of every org (or of
        one), in one query: for `reconciler status` and the status API."""
        if slug is not None and not holdable(slug):
            return []  # no org has a slug Postgres cannot even hold
        with self._db.read() as cur:
            return cur.execute(_STATUS_SQL, {"slug": slug, "runs": RUNS_KEPT}).fetchall()


class OrgWriter(OrgReader):
    @contextmanager
    def lock(self, org_id: str, *, wait_s: float = 0.0) -> Iterator[OrgLock]:
        """Holds a transaction-scoped advisory lock for the org while the block runs.

        Transaction-scoped (not session) so it cannot leak behind a transaction pooler, and a
        crashed replica's lock dies with its connection. The idle-in-transaction timeout is
        lifted for this transaction, and `OrgLock.check()` proves the lock still holds before
        each Vapi write (fail closed if the session was killed meanwhile). With `wait_s`, waits
        that long for another holder to finish (Postgres's `lock_timeout`), else gives up at once.
        A session that dies under the block is not an error of its own: the block's own work
        reports it.
        """
        self._db.count()
        with self._db.breaker.guard(), self._db.pool.connection() as conn:
            finished = False
            try:
                with conn.transaction():
                    held = self._take(conn, _lock_key(org_id), wait_s)
                    yield OrgLock(conn, held, self._db.count)
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

    def upsert(
        self,
        org_id: str,
        slug: str,
        name: str,
        forward_url: str | None = None,
        outbound_number: str | None = None,
    ) -> None:
        with self._db.tx(1) as conn:
            conn.execute(
                "INSERT INTO organizations (id, slug, name, webhook_forward_url,"
                " outbound_phone_number) VALUES (%s, %s, %s, %s, %s)"
                " ON CONFLICT (id) DO UPDATE SET slug = EXCLUDED.slug,"
                " name = EXCLUDED.name, webhook_forward_url = EXCLUDED.webhook_forward_url,"
                " outbound_phone_number = EXCLUDED.outbound_phone_number,"
                " retired_at = NULL, updated_at = now()",
                (org_id, slug, name, forward_url, outbound_number),
            )

    def retire(
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
        `webhook_only` is a credential write: checked as `CredentialWriter.store` checks it."""
        with self._db.tx(6) as conn:
            if webhook_only is not None:
                kid = token_key_id(webhook_only)
                held = list(key_ids) or [kid]
                check_master_key(
                    self._db, conn, org_id, "vapi", kid, held, slug or org_id, key_check
                )
            drop_account_state(conn, org_id)
            conn.execute(
                "UPDATE org_credentials SET is_active = false, previous_encrypted_config = NULL,"
                " previous_valid_until = NULL, updated_at = now(),"
                " encrypted_config = CASE WHEN provider = 'vapi' AND %(sealed)s::text IS NOT NULL"
                "   THEN %(sealed)s ELSE encrypted_config END,"
                " webhook_only_until = CASE WHEN provider = 'vapi' AND %(sealed)s::text IS NOT NULL"
                "   THEN now() + make_interval(secs => %(keep)s) END"
                " WHERE org_id = %(org)s",
                {"org": org_id, "sealed": webhook_only, "keep": self._db.mapping_retention_s},
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
        keep = self._db.mapping_retention_s
        with self._db.tx(2) as conn:
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

    def forget(self, org_id: str) -> None:
        """The org's row and everything hanging off it (credentials, state, mappings)."""
        with self._db.tx(1) as conn:
            conn.execute("DELETE FROM organizations WHERE id = %s", (org_id,))

    def finish(
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
        with self._db.tx(4 + bool(checked) + bool(ready), patient=True) as conn:
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
