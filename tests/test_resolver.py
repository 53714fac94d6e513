"""The webhook resolver against real Postgres: success, each failure, the cache."""

from __future__ import annotations

import json

import pytest

from reconciler.controller.run import Controller
from reconciler.spec.loader import load_tree
from reconciler.state.store import StateWriter
from reconciler.webhooks.resolver import (
    BadSecret,
    MalformedWebhook,
    UnknownAssistant,
    WebhookResolver,
)
from tests.helpers import SpecDir, org_doc


def body(assistant_id: str, kind: str = "status-update") -> bytes:
    return json.dumps({"message": {"type": kind, "call": {"assistantId": assistant_id}}}).encode()


@pytest.fixture
def applied(
    specs: SpecDir, controller: Controller, state: StateWriter
) -> dict[str, dict[str, str]]:
    """Two orgs applied; returns slug -> {role: assistant id, 'secret': webhook secret}."""
    out: dict[str, dict[str, str]] = {}
    for slug in ("acme", "globex"):
        specs.write(org_doc(slug, secret=f"whsec-{slug}-7f3a"))
    assert controller.apply(load_tree(specs.root)).ok
    with state.pool.connection() as conn:
        rows = conn.execute(
            "SELECT o.slug, m.assistant_role, m.vapi_assistant_id FROM assistant_org_mapping m"
            " JOIN organizations o ON o.id = m.org_id"
        ).fetchall()
    for slug, role, vid in rows:
        out.setdefault(slug, {"secret": f"whsec-{slug}-7f3a"})[role] = vid
    return out


def test_resolves_org_and_verifies_secret(
    applied: dict, state: StateWriter, controller: Controller
) -> None:
    resolver = WebhookResolver(state, controller.key)
    for slug, ids in applied.items():
        hit = resolver.resolve({"X-Vapi-Secret": ids["secret"]}, body(ids["outbound"]))
        assert (hit.slug, hit.role, hit.assistant_id) == (slug, "outbound", ids["outbound"])
        assert hit.message_type == "status-update"


def test_transcript_event_with_top_level_assistant_id(
    applied: dict, state: StateWriter, controller: Controller
) -> None:
    ids = applied["acme"]
    raw = json.dumps({"message": {"type": "transcript", "assistantId": ids["inbound"]}}).encode()
    hit = WebhookResolver(state, controller.key).resolve({"x-vapi-secret": ids["secret"]}, raw)
    assert hit.slug == "acme"


def test_another_orgs_secret_is_refused(
    applied: dict, state: StateWriter, controller: Controller
) -> None:
    resolver = WebhookResolver(state, controller.key)
    with pytest.raises(BadSecret) as exc:
        resolver.resolve(
            {"x-vapi-secret": applied["globex"]["secret"]}, body(applied["acme"]["inbound"])
        )
    assert exc.value.org_slug == "acme"
    assert "acme" not in str(exc.value)  # an unauthenticated caller learns nothing
    assert applied["globex"]["secret"] not in str(exc.value)


def test_missing_secret_is_refused(
    applied: dict, state: StateWriter, controller: Controller
) -> None:
    with pytest.raises(BadSecret):
        WebhookResolver(state, controller.key).resolve({}, body(applied["acme"]["inbound"]))


def test_unknown_assistant(applied: dict, state: StateWriter, controller: Controller) -> None:
    with pytest.raises(UnknownAssistant):
        WebhookResolver(state, controller.key).resolve({"x-vapi-secret": "x"}, body("no-such-id"))


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[]",
        b'{"message": 3}',
        b'{"message": {"type": "assistant-request", "call": {}}}',
        b"\xff\xfe",
    ],
)
def test_malformed_bodies(raw: bytes, state: StateWriter, controller: Controller) -> None:
    with pytest.raises(MalformedWebhook):
        WebhookResolver(state, controller.key).resolve({"x-vapi-secret": "x"}, raw)


def test_cache_serves_repeat_lookups_without_queries(
    applied: dict, state: StateWriter, controller: Controller
) -> None:
    resolver = WebhookResolver(state, controller.key)
    ids = applied["acme"]
    before = state.queries
    for _ in range(50):
        resolver.resolve({"x-vapi-secret": ids["secret"]}, body(ids["inbound"]))
    assert state.queries - before == 1
    assert (resolver.hits, resolver.misses) == (49, 1)


def test_cache_expires(applied: dict, state: StateWriter, controller: Controller) -> None:
    resolver = WebhookResolver(state, controller.key, ttl_s=0)
    ids = applied["acme"]
    for _ in range(3):
        resolver.resolve({"x-vapi-secret": ids["secret"]}, body(ids["inbound"]))
    assert resolver.misses == 3
