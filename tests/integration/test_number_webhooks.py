"""Webhooks routed by phone number (issue 16): a call to a number with no assistant (an
`assistant-request`) names only `message.call.phoneNumberId`; `resource_org_mapping` (kind
`phoneNumber`) gives the org, verified with that org's secret exactly as by assistant: the
same cache, NOTIFY invalidation, errors and metrics. Rows are written with
`StateWriter.resources.record` (the engine is not involved)."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import httpx
import pytest

from reconciler.secrets.crypto import MasterKey
from reconciler.state.store import StateWriter
from reconciler.webhooks.http import PHONE_NUMBER_ID_HEADER, webhook_app
from reconciler.webhooks.listen import CacheListener
from reconciler.webhooks.resolver import (
    BadSecret,
    BadSignature,
    MalformedWebhook,
    UnknownAssistant,
    WebhookResolver,
)
from tests.helpers import served
from tests.integration.test_resolver import Org, seed_org, signed
from tests.integration.test_webhook_http import counted, outcomes, poll


def number_body(
    number_id: object,
    *,
    kind: str = "assistant-request",
    account: str | None = None,
    listed: object = None,
    assistant_id: str | None = None,
) -> bytes:
    """A Vapi server message for a call to a number: `call.phoneNumberId` (left out when
    None), optionally the account, the number object (`message.phoneNumber.id`) and an
    assistant."""
    call: dict[str, Any] = {"id": f"call-{uuid.uuid4()}"}
    if number_id is not None:
        call["phoneNumberId"] = number_id
    if account is not None:
        call["orgId"] = account
    if assistant_id is not None:
        call["assistantId"] = assistant_id
    message: dict[str, Any] = {"type": kind, "call": call}
    if listed is not None:
        message["phoneNumber"] = {"id": listed, "number": "+15550100000"}
    return json.dumps({"message": message}).encode()


def add_number(state: StateWriter, org: Org, number: str | None = None) -> str:
    """A phone number of the org, as `apply` records it; returns its Vapi id."""
    vapi_id = f"pn-{uuid.uuid4()}"
    number = number or f"+1555{uuid.uuid4().int % 10**7:07d}"
    state.resources.record(
        org.org_id, "phoneNumber", number, vapi_id, {"provider": "twilio", "number": number}
    )
    return vapi_id


@pytest.fixture
def two(state: StateWriter, master_key: MasterKey) -> tuple[Org, Org]:
    return seed_org(state, master_key, "acme"), seed_org(state, master_key, "globex")


@pytest.mark.parametrize("warm", [False, True], ids=["cold cache", "warm cache"])
def test_a_number_routes_to_its_org_verified_with_that_orgs_secret(
    two: tuple[Org, Org], state: StateWriter, master_key: MasterKey, warm: bool
) -> None:
    acme, globex = two
    number = add_number(state, acme)
    resolver = WebhookResolver(state, master_key)
    raw = number_body(number)
    if warm:  # cached by a first good request; every check still runs on a hit
        resolver.resolve({"x-vapi-secret": acme.secret}, raw)
    for headers in ({"x-vapi-secret": acme.secret}, signed(acme.secret, raw)):
        hit = resolver.resolve(headers, raw)
        assert (hit.org_id, hit.slug) == (acme.org_id, "acme")
        assert (hit.assistant_id, hit.role, hit.phone_number_id) == ("", "", number)
        assert hit.message_type == "assistant-request"
    refusals: list[tuple[dict[str, str], type[BadSecret]]] = [
        ({"x-vapi-secret": globex.secret}, BadSecret),  # another org's secret
        (signed(globex.secret, raw), BadSignature),  # another org's signature
        ({"x-vapi-secret": acme.secret + "x"}, BadSecret),
        (signed(acme.secret, raw, at=time.time() - 310), BadSignature),  # a replay
        ({}, BadSecret),
    ]
    for headers, error in refusals:
        with pytest.raises(error) as caught:
            resolver.resolve(headers, raw)
        assert type(caught.value) is error
        assert caught.value.org_slug == "acme"
    # a good signature beside a wrong secret: each one sent must verify
    with pytest.raises(BadSecret):
        resolver.resolve({"x-vapi-secret": globex.secret, **signed(acme.secret, raw)}, raw)


def test_an_unknown_number_is_404_and_cached_as_unknown(
    two: tuple[Org, Org], state: StateWriter, master_key: MasterKey
) -> None:
    acme, _ = two
    resolver = WebhookResolver(state, master_key)
    raw = number_body("pn-nobody-has-this")
    with pytest.raises(UnknownAssistant, match="phone number pn-nobody-has-this") as caught:
        resolver.resolve({"x-vapi-secret": acme.secret}, raw)
    assert (caught.value.status, caught.value.outcome) == (404, "unknown_assistant")
    misses = resolver.misses
    for _ in range(20):
        with pytest.raises(UnknownAssistant):
            resolver.resolve({"x-vapi-secret": acme.secret}, raw)
    assert resolver.misses == misses  # one query for a flood of one unknown id


def test_only_phone_numbers_route(
    two: tuple[Org, Org], state: StateWriter, master_key: MasterKey
) -> None:
    """A tool's id in `call.phoneNumberId` is no number: unknown, whatever its org."""
    acme, _ = two
    tool_id = f"tool-{uuid.uuid4()}"
    state.resources.record(acme.org_id, "tool", "book", tool_id, {"type": "function"})
    with pytest.raises(UnknownAssistant):
        WebhookResolver(state, master_key).resolve(
            {"x-vapi-secret": acme.secret}, number_body(tool_id)
        )


def test_a_released_number_resolves_within_retention_only(
    two: tuple[Org, Org], state: StateWriter, master_key: MasterKey
) -> None:
    """Late webhooks of a released number's last calls still reach its org, as a deleted
    assistant's do; past `RECONCILER_MAPPING_RETENTION` it is unknown."""
    acme, _ = two
    number = add_number(state, acme, "+15550142000")
    state.resources.forget(acme.org_id, "phoneNumber", "+15550142000", number)
    raw = number_body(number)
    hit = WebhookResolver(state, master_key).resolve({"x-vapi-secret": acme.secret}, raw)
    assert (hit.slug, hit.phone_number_id) == ("acme", number)
    with state.pool.connection() as conn:  # the retention window passed
        conn.execute(
            "UPDATE resource_org_mapping SET inactive_at = now() - interval '31 days'"
            " WHERE vapi_id = %s",
            (number,),
        )
    with pytest.raises(UnknownAssistant):
        WebhookResolver(state, master_key).resolve({"x-vapi-secret": acme.secret}, raw)


def test_a_number_that_moves_is_seen_at_once_through_notify(
    two: tuple[Org, Org], state: StateWriter, master_key: MasterKey, database_url: str
) -> None:
    """The mapping's NOTIFY (payload: the bare Vapi id) drops the number's cached entry, known
    or unknown, whatever the TTLs."""
    acme, globex = two
    resolver = WebhookResolver(state, master_key, ttl_s=300, negative_ttl_s=300)
    listener = CacheListener(resolver, database_url)
    try:
        assert listener.start(wait_s=5)
        number = add_number(state, acme, "+15550143000")
        raw = number_body(number)
        assert resolver.resolve({"x-vapi-secret": acme.secret}, raw).slug == "acme"  # cached
        # the number leaves acme's spec and is imported by globex: same Vapi id, new org
        state.resources.forget(acme.org_id, "phoneNumber", "+15550143000", number)
        state.resources.record(
            globex.org_id, "phoneNumber", "+15550143000", number, {"provider": "twilio"}
        )

        def moved() -> bool:
            try:
                return resolver.resolve({"x-vapi-secret": globex.secret}, raw).slug == "globex"
            except BadSecret:
                return False

        poll(moved, within_s=5.0)
        with pytest.raises(BadSecret):  # acme's secret no longer verifies it
            resolver.resolve({"x-vapi-secret": acme.secret}, raw)
        # an unknown number, cached as unknown for 300 s, resolves once it is recorded
        fresh = f"pn-{uuid.uuid4()}"
        with pytest.raises(UnknownAssistant):
            resolver.resolve({"x-vapi-secret": acme.secret}, number_body(fresh))
        state.resources.record(acme.org_id, "phoneNumber", "+15550143001", fresh, {})

        def known() -> bool:
            try:
                return resolver.resolve({"x-vapi-secret": acme.secret}, number_body(fresh)).slug
            except UnknownAssistant:
                return False

        poll(known, within_s=5.0)
    finally:
        listener.close()


def test_what_decides_the_org(
    two: tuple[Org, Org], state: StateWriter, master_key: MasterKey
) -> None:
    """The assistant before the number, the number before the account; an account is tried
    only when no org owns the number (a number the reconciler does not manage)."""
    acme, globex = two
    number = add_number(state, globex)
    with state.pool.connection() as conn:
        conn.execute(
            "UPDATE organizations SET vapi_account_id = 'acct-acme' WHERE id = %s",
            (acme.org_id,),
        )
    resolver = WebhookResolver(state, master_key)
    # globex's number in acme's account: the number decides (globex), acme's secret is refused
    raw = number_body(number, account="acct-acme")
    assert resolver.resolve({"x-vapi-secret": globex.secret}, raw).slug == "globex"
    with pytest.raises(BadSecret) as caught:
        resolver.resolve({"x-vapi-secret": acme.secret}, raw)
    assert caught.value.org_slug == "globex"
    # acme's assistant on a call to globex's number: the assistant decides (acme)
    raw = number_body(number, assistant_id=acme.inbound, kind="status-update")
    hit = resolver.resolve({"x-vapi-secret": acme.secret}, raw)
    assert (hit.slug, hit.assistant_id, hit.phone_number_id) == ("acme", acme.inbound, "")
    with pytest.raises(BadSecret):
        resolver.resolve({"x-vapi-secret": globex.secret}, raw)
    # a number no org owns, in acme's account: acme's, by the account
    raw = number_body("pn-unmanaged", account="acct-acme")
    hit = resolver.resolve({"x-vapi-secret": acme.secret}, raw)
    assert (hit.slug, hit.assistant_id, hit.phone_number_id) == ("acme", "", "")
    with pytest.raises(BadSecret):
        resolver.resolve({"x-vapi-secret": globex.secret}, raw)
    # ... and in no known account: unknown
    with pytest.raises(UnknownAssistant):
        resolver.resolve({"x-vapi-secret": acme.secret}, number_body("pn-x", account="acct-y"))


def test_the_number_object_of_the_message_routes_too(
    two: tuple[Org, Org], state: StateWriter, master_key: MasterKey
) -> None:
    """`message.phoneNumber.id` (the number object Vapi may send beside the call) when the
    call names none; both given and different: which one a reader takes varies, so 400."""
    acme, globex = two
    number = add_number(state, acme)
    other = add_number(state, globex)
    resolver = WebhookResolver(state, master_key)
    hit = resolver.resolve({"x-vapi-secret": acme.secret}, number_body(None, listed=number))
    assert (hit.slug, hit.phone_number_id) == ("acme", number)
    same = number_body(number, listed=number)
    assert resolver.resolve({"x-vapi-secret": acme.secret}, same).slug == "acme"
    with pytest.raises(MalformedWebhook, match="differs"):
        resolver.resolve({"x-vapi-secret": acme.secret}, number_body(number, listed=other))


@pytest.mark.parametrize(
    "raw",
    [
        # the org-deciding key given twice: Python keeps the last copy, other parsers the first
        b'{"message": {"type": "assistant-request",'
        b' "call": {"phoneNumberId": "pn-a", "phoneNumberId": "pn-b"}}}',
        b'{"message": {"type": "assistant-request",'
        b' "call": {"phoneNumberId": "pn-a", "phoneNumber\\u0049d": "pn-b"}}}',
        b'{"message": {"type": "assistant-request", "phoneNumber": {"id": "a", "id": "b"}}}',
        b'{"message": {"type": "assistant-request", "phoneNumber": {"id": "a"},'
        b' "phoneNumber": {"id": "b"}}}',
        # not an id Vapi could have given
        b'{"message": {"call": {"phoneNumberId": 42}}}',
        b'{"message": {"call": {"phoneNumberId": ""}}}',
        b'{"message": {"call": {"phoneNumberId": "has space"}}}',
        b'{"message": {"call": {"phoneNumberId": "pn-\\u0000"}}}',
        b'{"message": {"phoneNumber": {"id": ["pn-a"]}}}',
        # a good number beside a bad account is not a good body
        b'{"message": {"call": {"phoneNumberId": "pn-a", "orgId": 7}}}',
    ],
    ids=[
        "phoneNumberId twice",
        "phoneNumberId twice, escaped",
        "phoneNumber.id twice",
        "phoneNumber twice",
        "a number",
        "empty",
        "a space",
        "a NUL",
        "a list",
        "a bad account beside",
    ],
)
def test_bad_number_bodies_are_400_without_a_query(
    two: tuple[Org, Org], state: StateWriter, master_key: MasterKey, raw: bytes
) -> None:
    acme, _ = two
    resolver = WebhookResolver(state, master_key)
    queries = state.queries
    with pytest.raises(MalformedWebhook) as caught:
        resolver.resolve({"x-vapi-secret": acme.secret}, raw)
    assert caught.value.status == 400
    assert state.queries == queries


def test_tool_calls_resolve_by_assistant_else_by_number(
    two: tuple[Org, Org], state: StateWriter, master_key: MasterKey
) -> None:
    """A tool whose `server.url` is our endpoint: its `tool-calls` carry the calling
    assistant (`call.assistantId`), and resolve by it; one that names only the number (a
    transient assistant answering a call to it) resolves by the number."""
    acme, globex = two
    number = add_number(state, acme)
    resolver = WebhookResolver(state, master_key)
    tool_calls = {
        "type": "tool-calls",
        "toolCallList": [{"id": "tc-1", "type": "function", "function": {"name": "book"}}],
        "toolWithToolCallList": [],
    }
    by_assistant = json.dumps(
        {"message": {**tool_calls, "call": {"assistantId": globex.outbound}}}
    ).encode()
    hit = resolver.resolve({"x-vapi-secret": globex.secret}, by_assistant)
    assert (hit.slug, hit.role, hit.assistant_id, hit.message_type) == (
        "globex",
        "outbound",
        globex.outbound,
        "tool-calls",
    )
    with pytest.raises(BadSecret):
        resolver.resolve({"x-vapi-secret": acme.secret}, by_assistant)
    by_number = json.dumps({"message": {**tool_calls, "call": {"phoneNumberId": number}}}).encode()
    hit = resolver.resolve(signed(acme.secret, by_number), by_number)
    assert (hit.slug, hit.phone_number_id, hit.message_type) == ("acme", number, "tool-calls")
    with pytest.raises(BadSignature):
        resolver.resolve(signed(globex.secret, by_number), by_number)


def test_over_http_answers_and_metrics_are_the_assistants(
    two: tuple[Org, Org], state: StateWriter, master_key: MasterKey
) -> None:
    """The endpoint: forwarded with `x-reconciler-phone-number-id` (no assistant headers),
    and the same statuses and outcome labels as webhooks routed by assistant."""
    acme, globex = two
    number = add_number(state, acme)
    seen: list[dict[str, str]] = []

    async def downstream(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        seen.append({k.decode(): v.decode() for k, v in scope["headers"]})
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b'{"assistantId": "a-1"}'})

    resolver = WebhookResolver(state, master_key)
    raw = number_body(number)
    before = outcomes()
    with served(downstream) as target, served(webhook_app(resolver, target)) as url:
        post = url + "/webhooks/vapi"
        ok = httpx.post(post, content=raw, headers={"x-vapi-secret": acme.secret}, timeout=10)
        assert (ok.status_code, ok.json()) == (200, {"assistantId": "a-1"})
        wrong = {"x-vapi-secret": globex.secret}
        assert httpx.post(post, content=raw, headers=wrong, timeout=10).status_code == 401
        unknown = number_body("pn-unknown")
        good = {"x-vapi-secret": acme.secret}
        assert httpx.post(post, content=unknown, headers=good, timeout=10).status_code == 404
    assert counted(before) == {"forwarded": 1, "bad_secret": 1, "unknown_assistant": 1}
    (headers,) = seen
    assert headers[PHONE_NUMBER_ID_HEADER] == number
    assert headers["x-reconciler-org-slug"] == "acme"
    assert "x-reconciler-assistant-id" not in headers
    assert "x-vapi-secret" not in headers


def test_last_used_at_of_a_number(
    two: tuple[Org, Org], state: StateWriter, master_key: MasterKey
) -> None:
    acme, _ = two
    number = add_number(state, acme)
    resolver = WebhookResolver(state, master_key)
    resolver.resolve({"x-vapi-secret": acme.secret}, number_body(number))
    assert resolver.take_used() == [number]
    state.assistants.touch_mappings([number])
    with state.pool.connection() as conn:
        row = conn.execute(
            "SELECT last_used_at IS NOT NULL FROM resource_org_mapping WHERE vapi_id = %s",
            (number,),
        ).fetchone()
    assert row == (True,)
