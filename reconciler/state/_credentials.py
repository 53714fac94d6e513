"""Credentials (`org_credentials`) and the active master key (`master_key`): every credential
write is pinned to the key Postgres records as active."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from psycopg import Connection

from reconciler.errors import MasterKeyRefused
from reconciler.secrets.crypto import token_key_id
from reconciler.state._base import Db, Repository, StateError, writer_name

PREVIOUS_KEPT = 3
"""Replaced Vapi credentials kept while rotations overlap (each still possibly on an assistant)."""


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


class CredentialReader(Repository):
    def stored_vapi(self, org_ids: list[str]) -> dict[str, str]:
        """The sealed Vapi credential of each org that has an active one: what retiring an org
        whose spec is gone uses to reach its account."""
        with self._db.read() as cur:
            rows = cur.execute(
                "SELECT org_id::text AS org_id, encrypted_config FROM org_credentials"
                " WHERE org_id = ANY(%s::uuid[]) AND provider = 'vapi' AND is_active",
                (org_ids,),
            ).fetchall()
        return {r["org_id"]: r["encrypted_config"] for r in rows}

    def master_key(self) -> dict[str, Any] | None:
        """The active master key id Postgres records (`key_id`, `retired`, `set_by`,
        `set_at`), or None while none is (one indexed read)."""
        with self._db.read() as cur:
            return cur.execute(
                "SELECT key_id, key_check, retired, set_by, set_at FROM master_key WHERE id"
            ).fetchone()


class CredentialWriter(CredentialReader):
    def store(
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
        with self._db.tx(1) as conn:
            if conn.execute(_STORE_CREDENTIAL_SQL, params).fetchone() is not None:
                return
            check_master_key(self._db, conn, org_id, provider, kid, held, slug or org_id, key_check)
            self._db.count()
            if conn.execute(_STORE_CREDENTIAL_SQL, params).fetchone() is None:
                raise StateError(
                    f"credential {provider} of org {slug or org_id} was not written: "
                    "the active master key changed meanwhile; the next run tries again"
                )

    def deactivate(self, org_id: str, provider: str) -> None:
        with self._db.tx(1) as conn:
            conn.execute(
                "UPDATE org_credentials SET is_active = false, updated_at = now()"
                " WHERE org_id = %s AND provider = %s",
                (org_id, provider),
            )


def check_master_key(
    db: Db,
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
    this process holds every key id the stored rows use. A function, not a method: retiring
    an org seals its webhook secret, a credential write of the org's own transaction."""
    if provider is not None:
        row = db.exec(
            conn,
            "SELECT reconciler_token_key_id(encrypted_config) FROM org_credentials"
            " WHERE org_id = %s AND provider = %s",
            (org_id, provider),
        ).fetchone()
        if row is not None and row[0] not in held:
            raise MasterKeyRefused.missing(org, provider, row[0])
    recorded, check = _recorded_for_share(db, conn)
    if recorded is None:
        lacking = db.exec(
            conn,
            "SELECT o.slug, c.provider, reconciler_token_key_id(c.encrypted_config)"
            " FROM org_credentials c JOIN organizations o ON o.id = c.org_id"
            " WHERE reconciler_token_key_id(c.encrypted_config) <> ALL(%s) LIMIT 1",
            (held,),
        ).fetchone()
        if lacking is not None:
            raise MasterKeyRefused.missing(lacking[0], lacking[1], lacking[2])
        db.exec(
            conn,
            "INSERT INTO master_key (key_id, key_check, set_by) VALUES (%s, %s, %s)"
            " ON CONFLICT (id) DO NOTHING",
            (kid, key_check, f"first credential write ({writer_name()})"),
        )
        recorded, check = _recorded_for_share(db, conn)
    if recorded != kid:
        raise MasterKeyRefused.not_active(org, kid, recorded or "?", held)
    if check is not None and key_check is not None and check != key_check:
        raise MasterKeyRefused.wrong_key(org, kid)


def _recorded_for_share(db: Db, conn: Connection[Any]) -> tuple[str | None, str | None]:
    """The recorded active key id and its check value, held FOR SHARE."""
    row = db.exec(conn, "SELECT key_id, key_check FROM master_key WHERE id FOR SHARE").fetchone()
    return (str(row[0]), row[1]) if row else (None, None)
