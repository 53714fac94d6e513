"""Vapi accounts (`organizations.vapi_account_id`): which org an account's webhooks belong to,
and what an org leaves behind when its key reaches another account."""

from __future__ import annotations

from typing import Any

from psycopg import Connection

from reconciler.state._base import Repository


class AccountReader(Repository):
    def resolve(self, vapi_account_id: str) -> dict[str, Any] | None:
        """As `AssistantReader.resolve`, for a webhook that names no assistant (an
        `assistant-request` of a phone number without one): the one org whose Vapi account
        (`orgId`) this is; None when no org, or more than one, was last seen in it."""
        with self._db.read() as cur:
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


class AccountWriter(AccountReader):
    def leave(self, org_id: str) -> None:
        """The org's key reaches another Vapi account now: the old account's mappings go
        inactive (late webhooks still resolve), its assistant and object state goes."""
        with self._db.tx(5) as conn:
            drop_account_state(conn, org_id)
            conn.execute("UPDATE organizations SET vapi_account_id = NULL WHERE id = %s", (org_id,))


def drop_account_state(conn: Connection[Any], org_id: str) -> None:
    """Four statements in the caller's transaction: the org's mappings go inactive (late
    webhooks still resolve), its assistant and object rows go. Shared by leaving an account
    and retiring the org, which both let go of everything the org held in Vapi."""
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
