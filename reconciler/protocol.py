"""Names fixed by Vapi's webhook protocol, shared by the side that sets them on assistants
(`engine`) and the side that checks them (`webhooks`), so neither imports the other."""

WEBHOOK_SECRET_HEADER = "x-vapi-secret"  # noqa: S105 - a header name
SIGNATURE_HEADER = "x-signature"
TIMESTAMP_HEADER = "x-timestamp"
WEBHOOK_CHANNEL = "reconciler_webhooks"
"""Postgres NOTIFY channel: an assistant id, or `org:<uuid>`, whose cached resolution changed."""
