"""Metrics of credential verification, on the process's registry (`reconciler.metrics`), so
`/metrics` serves them with the rest. Labels are fixed words only: the provider names and the
outcomes of `providers.verify` (never an org, a message or a value)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from reconciler.metrics import REGISTRY

VERIFICATIONS = Counter(
    "reconciler_credential_verifications_total",
    "Stored credentials checked against their provider, by provider (vapi, twilio, "
    "google_calendar, resend, elevenlabs) and outcome (ok, rejected, unavailable, unreadable).",
    ["provider", "outcome"],
    registry=REGISTRY,
)
LAST_VERIFICATION_TIMESTAMP = Gauge(
    "reconciler_credential_verification_last_run_timestamp_seconds",
    "Unix time at which this process last finished a verification pass that checked anything.",
    registry=REGISTRY,
)
