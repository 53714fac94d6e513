"""Assistants (`assistants`, one row per org and role) and the mappings that route their
webhooks (`assistant_org_mapping`, kept inactive for the retention window)."""

from __future__ import annotations

from typing import Any

from reconciler.errors import ReconcilerError
from reconciler.state._base import Repository, config_jsonb, holdable


class AssistantReader(Repository):
    def resolve(self, vapi_assistant_id: str) -> dict[str, Any] | None:
        """Org of an assistant id, with the org's encrypted Vapi credential (and, while a
        webhook secret is being rotated, the one it replaced: `previous_left_s` is NULL until
        the rotation completes, then the seconds of grace left) and its forward URL. The mapping
        of a deleted assistant resolves for `mapping_retention_s` after it went inactive (late
        webhooks of its last calls), and a retired org's webhook secret as long."""
        with self._db.read() as cur:
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
                (vapi_assistant_id, self._db.mapping_retention_s),
            ).fetchone()

    def owner(self, vapi_assistant_id: str) -> dict[str, Any] | None:
        """For `reconciler resolve`: the org an assistant id is mapped to, with when the org
        was retired (`retired_at`, NULL while live) and when the mapping went inactive (the
        assistant replaced or deleted). Unlike `resolve`, which routes webhooks, a retired
        org is answered as such as long as its mapping row is kept."""
        if not holdable(vapi_assistant_id):
            return None
        with self._db.read() as cur:
            return cur.execute(
                "SELECT m.org_id::text AS org_id, o.slug, m.assistant_role AS role,"
                " o.retired_at, m.inactive_at"
                " FROM assistant_org_mapping m JOIN organizations o ON o.id = m.org_id"
                " WHERE m.vapi_assistant_id = %s",
                (vapi_assistant_id,),
            ).fetchone()

    def mapped_to_others(self, org_id: str, vapi_ids: list[str]) -> frozenset[str]:
        """Which of these assistant ids Postgres maps to an org other than `org_id`."""
        with self._db.read() as cur:
            rows = cur.execute(
                "SELECT vapi_assistant_id FROM assistant_org_mapping"
                " WHERE vapi_assistant_id = ANY(%s) AND org_id <> %s AND inactive_at IS NULL",
                (vapi_ids, org_id),
            ).fetchall()
        return frozenset(r["vapi_assistant_id"] for r in rows)


class AssistantWriter(AssistantReader):
    def begin_create(self, org_id: str, role: str, desired: dict[str, Any]) -> None:
        """Create-pending, committed before the POST: a crash after it is seen next run."""
        with self._db.tx(2) as conn:
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
        with self._db.tx(1) as conn:
            conn.execute(
                "DELETE FROM assistants WHERE org_id = %s AND role = %s"
                " AND status = 'creating' AND vapi_assistant_id IS NULL",
                (org_id, role),
            )

    def record(
        self,
        org_id: str,
        role: str,
        vapi_id: str,
        name: str,
        desired: dict[str, Any],
        applied: dict[str, Any] | None = None,
        last_patch: dict[str, Any] | None = None,
        template: str | None = None,
    ) -> None:
        """State row and mapping row together, in one transaction. `desired` is what we asked
        for, `applied` what Vapi answered, `last_patch` what a PATCH sent and replaced (all
        with secret leaves fingerprinted); `template` the `name@version` it was rendered
        from (None: written in full)."""
        with self._db.tx(3) as conn:
            conn.execute(
                "INSERT INTO assistants (org_id, role, vapi_assistant_id, status, desired_config,"
                " applied_config, last_patch, template)"
                " VALUES (%s, %s, %s, 'ready', %s, %s, %s, %s)"
                " ON CONFLICT (org_id, role) DO UPDATE SET"
                " vapi_assistant_id = EXCLUDED.vapi_assistant_id, status = 'ready',"
                " desired_config = EXCLUDED.desired_config,"
                " applied_config = EXCLUDED.applied_config, last_patch = EXCLUDED.last_patch,"
                " template = EXCLUDED.template, create_started_at = NULL, updated_at = now()",
                (
                    org_id,
                    role,
                    vapi_id,
                    config_jsonb(desired),
                    config_jsonb(applied or desired),
                    config_jsonb(last_patch) if last_patch else None,
                    template,
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

    def set_template(self, org_id: str, role: str, vapi_id: str, template: str | None) -> None:
        """The assistant `vapi_id` of the role is now made from `template` (the new version
        renders it as it was: nothing else changes). Raises when the row is not that one."""
        with self._db.tx(1) as conn:
            cur = conn.execute(
                "UPDATE assistants SET template = %s, updated_at = now()"
                " WHERE org_id = %s AND role = %s AND vapi_assistant_id = %s",
                (template, org_id, role, vapi_id),
            )
            if cur.rowcount != 1:
                raise ReconcilerError(
                    f"{role}: its assistant {vapi_id} is no longer the one in Postgres: "
                    "the next run plans it again"
                )

    def forget(self, org_id: str, role: str, vapi_id: str | None) -> None:
        with self._db.tx(2) as conn:
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

    def touch_mappings(self, vapi_assistant_ids: list[str]) -> None:
        """`last_used_at` of the mappings (assistants', and phone numbers' in
        `resource_org_mapping`) that resolved webhooks, in one statement (batched by the
        resolver, off the request path; it announces nothing)."""
        if not vapi_assistant_ids:
            return
        with self._db.tx(1) as conn:
            conn.execute(  # a phone number's id (number-routed webhooks) too: one statement
                "WITH numbers AS (UPDATE resource_org_mapping SET last_used_at = now()"
                "   WHERE vapi_id = ANY(%(ids)s))"
                " UPDATE assistant_org_mapping SET last_used_at = now()"
                " WHERE vapi_assistant_id = ANY(%(ids)s)",
                {"ids": sorted(set(vapi_assistant_ids))},
            )
