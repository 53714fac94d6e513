"""Prometheus metrics of one process, in their own registry (so a library user's default
registry is left alone). Labels never hold a secret, a body or an unbounded caller value:
org labels are slugs from our own specs, the rest are fixed words or HTTP methods/statuses."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

REGISTRY = CollectorRegistry(auto_describe=True)

RECONCILE_SECONDS = Histogram(
    "reconciler_reconcile_duration_seconds",
    "Wall time of one reconcile run of `serve` (all orgs it claimed).",
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
    registry=REGISTRY,
)
ORG_OUTCOMES = Counter(
    "reconciler_org_outcomes_total",
    "Org reconciles by org slug and outcome (Ready, Failed, Stalled, Skipped, Orphaned, Retired).",
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
    "bad_signature, unknown_assistant, unavailable, forward_failed, forward_refused, busy, "
    "body_timeout).",
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
ORGS_ORPHANED = Gauge(
    "reconciler_orgs_orphaned",
    "Orgs in Postgres whose spec is gone from the specs and that were not retired (no "
    "`--prune`, or held back), in the last run.",
    registry=REGISTRY,
)
LAST_RUN_TIMESTAMP = Gauge(
    "reconciler_last_run_timestamp_seconds",
    "Unix time at which the last reconcile run of this process finished.",
    registry=REGISTRY,
)


class LiveCounters(Collector):
    """Counters whose values other objects keep as plain integers (no cost per event, no lock
    of prometheus's on a hot path), read only when `/metrics` is scraped: nothing needs a
    scrape to count. `attach(read)` adds a source, a function returning its current values by
    label values; the `detach` it returns keeps that source's last values, so a total never
    goes down when a source closes."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        registry: CollectorRegistry | None = REGISTRY,
    ) -> None:
        self._name = name
        self._doc = documentation
        self._labelnames = tuple(labelnames)
        self._lock = threading.Lock()
        self._sources: dict[int, Callable[[], Mapping[tuple[str, ...], float]]] = {}
        self._kept: dict[tuple[str, ...], float] = {}
        self._next = 0
        if registry is not None:
            registry.register(self)

    def attach(self, read: Callable[[], Mapping[tuple[str, ...], float]]) -> Callable[[], None]:
        with self._lock:
            handle = self._next
            self._next += 1
            self._sources[handle] = read

        def detach() -> None:
            with self._lock:
                source = self._sources.pop(handle, None)
                if source is not None:
                    for labels, value in source().items():
                        self._kept[labels] = self._kept.get(labels, 0.0) + value

        return detach

    def values(self) -> dict[tuple[str, ...], float]:
        """The totals by label values: kept ones plus every attached source's."""
        with self._lock:
            totals = dict(self._kept)
            sources = list(self._sources.values())
        for read in sources:
            for labels, value in read().items():
                totals[labels] = totals.get(labels, 0.0) + value
        return totals

    def describe(self) -> Iterable[Metric]:
        yield CounterMetricFamily(self._name, self._doc, labels=self._labelnames)

    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily(self._name, self._doc, labels=self._labelnames)
        for labels, value in sorted(self.values().items()):
            family.add_metric(list(labels), value)
        yield family


CREDENTIAL_CACHE = LiveCounters(
    "reconciler_credential_cache",
    "Credential store (`reconciler.credentials`) lookups by result: hit (served from memory) "
    "or miss (not cached: read from Postgres, or shared with a concurrent read of it).",
    ["result"],
)
CREDENTIAL_CACHE_EVICTIONS = LiveCounters(
    "reconciler_credential_cache_evictions",
    "Credential store cache entries dropped, by reason: lru (the size bound), expired (TTL), "
    "invalidated (changed in Postgres: NOTIFY or the version check).",
    ["reason"],
)
CREDENTIAL_AUDIT_ROWS = LiveCounters(
    "reconciler_credential_audit_rows",
    "Credential audit rows by fate: written, or dropped (the database was unavailable and the "
    "pending rows were past their bound, or the store closed before they could be written).",
    ["fate"],
)


class OrgWebhooks:
    """This process's webhook outcomes per org (slug), in one-minute buckets over the last
    `window_s`: what a template rollout asks before it moves on (a wave whose orgs' webhooks
    start failing halts it). Slugs are those of resolved orgs (our own specs), so the table is
    bounded by the fleet; each org keeps at most `window_s / 60` buckets."""

    FAILED = frozenset(
        {"bad_secret", "bad_signature", "unavailable", "forward_failed", "forward_refused"}
    )
    OK = frozenset({"forwarded", "accepted"})

    def __init__(self, window_s: float = 600.0) -> None:
        self.window_s = window_s
        self._lock = threading.Lock()
        self._buckets: dict[str, dict[int, list[int]]] = {}

    def record(self, slug: str | None, outcome: str, now: float | None = None) -> None:
        if not slug or (outcome not in self.FAILED and outcome not in self.OK):
            return
        minute = int((time.monotonic() if now is None else now) // 60)
        with self._lock:
            buckets = self._buckets.setdefault(slug, {})
            counts = buckets.setdefault(minute, [0, 0])
            counts[outcome in self.FAILED] += 1
            oldest = minute - int(self.window_s // 60)
            for old in [m for m in buckets if m < oldest]:
                del buckets[old]

    def counts(self, slug: str, since_s: float, now: float | None = None) -> tuple[int, int]:
        """(ok, failed) in the minutes that the last `since_s` seconds (at most the window)
        touch: whole minutes, so a span that began just before a minute's turn keeps it."""
        at = time.monotonic() if now is None else now
        first = int((at - min(max(since_s, 0.0), self.window_s)) // 60)
        with self._lock:
            buckets = dict(self._buckets.get(slug, {}))
        ok = sum(c[0] for m, c in buckets.items() if m >= first)
        failed = sum(c[1] for m, c in buckets.items() if m >= first)
        return ok, failed


ORG_WEBHOOKS = OrgWebhooks()
