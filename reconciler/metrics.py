"""Prometheus metrics of one process, in their own registry (so a library user's default
registry is left alone). Labels never hold a secret, a body or an unbounded caller value:
org labels are slugs from our own specs, the rest are fixed words or HTTP methods/statuses."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

RECONCILE_SECONDS = Histogram(
    "reconciler_reconcile_duration_seconds",
    "Wall time of one reconcile run of `serve` (all orgs it claimed).",
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
    registry=REGISTRY,
)
ORG_OUTCOMES = Counter(
    "reconciler_org_outcomes_total",
    "Org reconciles by org slug and outcome (Ready, Failed, Stalled, Skipped).",
    ["org", "outcome"],
    registry=REGISTRY,
)
VAPI_REQUESTS = Counter(
    "reconciler_vapi_requests_total",
    "Requests sent to Vapi, by method and HTTP status (or 'error' without an answer).",
    ["method", "status"],
    registry=REGISTRY,
)
WEBHOOK_REQUESTS = Counter(
    "reconciler_webhook_requests_total",
    "Webhooks received, by outcome (forwarded, accepted, malformed, too_large, bad_secret, "
    "bad_signature, unknown_assistant, unavailable, forward_failed).",
    ["outcome"],
    registry=REGISTRY,
)
RESOLVER_CACHE = Counter(
    "reconciler_resolver_cache_total",
    "Webhook resolver cache lookups by result (hit, miss, negative_hit).",
    ["result"],
    registry=REGISTRY,
)
SPECS_FAILING = Gauge(
    "reconciler_spec_files_failing",
    "Spec files that failed validation or decryption in the last run.",
    registry=REGISTRY,
)
LAST_RUN_TIMESTAMP = Gauge(
    "reconciler_last_run_timestamp_seconds",
    "Unix time at which the last reconcile run of this process finished.",
    registry=REGISTRY,
)
