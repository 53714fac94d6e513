"""Vapi objects of the kinds beyond assistants (`vapi_resources`, one row per org, kind and
name) and the mappings that route their webhooks (`resource_org_mapping`)."""

from __future__ import annotations

from typing import Any

from reconciler.errors import ReconcilerError
from reconciler.state._base import Repository, config_jsonb


class ResourceReader(Repository):
    def held_by(self, kind: str, names: list[str]) -> dict[str, tuple[str, str]]:
        """name -> (org id, slug) of the live org whose `kind` object `name` is (one org per
        number: `validate` checks the files, this the database). One query."""
        if not names:
            return {}
        with self._db.read() as cur:
            rows = cur.execute(
                "SELECT r.name, r.org_id::text AS org_id, o.slug FROM vapi_resources r"
                " JOIN organizations o ON o.id = r.org_id"
                " WHERE r.kind = %s AND r.name = ANY(%s) AND o.retired_at IS NULL",
                (kind, names),
            ).fetchall()
        self._db.count()
        return {r["name"]: (r["org_id"], r["slug"]) for r in rows}

    def resolve(self, vapi_id: str) -> dict[str, Any] | None:
        """The org of a Vapi object of a kind beyond assistants (a phone number's id in
        `call.phoneNumberId`), as `AssistantReader.resolve` does for assistants."""
        with self._db.read() as cur:
            row = cur.execute(
                "SELECT m.org_id::text AS org_id, m.kind, m.name, m.inactive_at,"
                " o.slug FROM resource_org_mapping m JOIN organizations o ON o.id = m.org_id"
                " WHERE m.vapi_id = %s",
                (vapi_id,),
            ).fetchone()
        self._db.count()
        return row

    def resolve_number(self, vapi_phone_number_id: str) -> dict[str, Any] | None:
        """As `AssistantReader.resolve`, for a webhook that names no assistant but a phone
        number (`call.phoneNumberId` of an `assistant-request`): the org whose number this is,
        by `resource_org_mapping` (kind `phoneNumber` only), with the org's Vapi credential. A
        released or replaced number's mapping resolves for `mapping_retention_s` after it went
        inactive, as an assistant's does. `role` is ''."""
        with self._db.read() as cur:
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
                (vapi_phone_number_id, self._db.mapping_retention_s),
            ).fetchone()


class ResourceWriter(ResourceReader):
    def begin_create(self, org_id: str, kind: str, name: str, desired: dict[str, Any]) -> None:
        """As `AssistantWriter.begin_create`, for any kind: committed before the POST."""
        with self._db.tx(2) as conn:
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

    def abort_create(self, org_id: str, kind: str, name: str) -> None:
        """Vapi refused the create outright: nothing exists, the next run creates at once."""
        with self._db.tx(1) as conn:
            conn.execute(
                "DELETE FROM vapi_resources WHERE org_id = %s AND kind = %s AND name = %s"
                " AND status = 'creating' AND vapi_id IS NULL",
                (org_id, kind, name),
            )

    def record(
        self,
        org_id: str,
        kind: str,
        name: str,
        vapi_id: str,
        desired: dict[str, Any],
        applied: dict[str, Any] | None = None,
        last_patch: dict[str, Any] | None = None,
    ) -> None:
        """State row and mapping row together, in one transaction (as
        `AssistantWriter.record`)."""
        with self._db.tx(3) as conn:
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

    def forget(self, org_id: str, kind: str, name: str, vapi_id: str | None) -> None:
        with self._db.tx(2) as conn:
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
