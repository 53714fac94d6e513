"""The public shape of an org's status: the status API and `reconciler status --format json`
print the same thing. Never a secret value: credentials say only whether they are configured
and how their last verification went."""

from __future__ import annotations

from typing import Any


def _iso(value: Any) -> Any:
    return value.isoformat() if hasattr(value, "isoformat") else value


def org_view(row: dict[str, Any]) -> dict[str, Any]:
    """The public shape of one org's status (API and `reconciler status --format json`).
    `outbound` is null without `spec.outbound`; its `phoneNumberId` is null until the number
    exists in Vapi (the outbound service places calls from that id)."""
    resources = row["resources"]
    return {
        "id": row["id"],
        "slug": row["slug"],
        "name": row["name"],
        "status": row["status"],
        "message": row["message"],
        "conditions": row["conditions"],
        "statusChangedAt": _iso(row["status_changed_at"]),
        "lastReconciledAt": _iso(row["last_reconciled_at"]),
        "lastAttemptedRevision": row["last_attempted_revision"],
        "lastAppliedRevision": row["last_applied_revision"],
        "vapiAccountId": row["vapi_account_id"],
        "forwardsWebhooks": row["forwards"],
        "assistants": [
            {
                "role": a["role"],
                "vapiAssistantId": a["vapi_assistant_id"],
                "status": a["status"],
                "template": a.get("template"),
            }
            for a in row["assistants"]
        ],
        "phoneNumbers": [
            {
                "number": r["name"],
                "provider": r["provider"],
                "vapiPhoneNumberId": r["vapi_id"],
                "status": r["status"],
            }
            for r in resources
            if r["kind"] == "phoneNumber"
        ],
        "tools": [
            {
                "name": r["name"],
                "type": r["type"],
                "vapiToolId": r["vapi_id"],
                "status": r["status"],
            }
            for r in resources
            if r["kind"] == "tool"
        ],
        "outbound": (
            None
            if row["outbound_number"] is None
            else {"phoneNumber": row["outbound_number"], "phoneNumberId": row["outbound_number_id"]}
        ),
        "credentials": {
            c["provider"]: {
                "configured": bool(c["active"]),
                "lastVerifiedAt": c["last_verified_at"],
                "verificationError": c["verification_error"],
            }
            for c in row["credentials"]
        },
        "runs": row["runs"],
    }
