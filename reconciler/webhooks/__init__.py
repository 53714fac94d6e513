"""Vapi webhooks: `resolver` (which org sent it, and is it authentic), `http` (the endpoint as
a Starlette app, and as ASGI middleware for users' apps) and `listen` (cache invalidation over
Postgres LISTEN/NOTIFY, batched `last_used_at` writes). docs/webhooks.md tells how to use them.

This package imports nothing itself, so the resolver alone loads neither Starlette nor httpx;
and no module here imports the reconcile engine (only errors, protocol, redact, metrics,
secrets, state, bounded and netpolicy), so the webhook path stays small.
"""
