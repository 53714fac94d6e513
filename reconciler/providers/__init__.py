"""Verification of each org's stored provider credentials (`reconciler verify`, and `serve`
every `RECONCILER_VERIFY_INTERVAL`).

- `verify`: one cheap, read-only, documented call per provider (plain httpx, bounded waits, at
  most one retry), answering ok or a one-line reason with every secret of the org masked;
- `runner`: reads the active rows from Postgres, opens them with the key ring, checks them
  concurrently (one failure never stops the others) and records each result;
- `job`: the schedule under `serve`, shared by replicas through
  `org_credentials.verification_attempted_at`;
- `metrics`: verifications counted by provider and outcome, on the process's registry.

This package reads state, secrets and settings only: never the reconcile engine, the spec
loader, the Vapi client or the CLI.
"""
