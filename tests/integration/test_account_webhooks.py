"""Webhooks that name no assistant (an `assistant-request` for a phone number without one)
resolve by the Vapi account (`message.call.orgId`), which is one org's: verified with that
org's secret exactly as by assistant, on a cold and a warm cache."""

from __future__ import annotations

import json

import httpx
import pytest

from reconciler.controller.run import Controller
from reconciler.secrets.crypto import MasterKey
from reconciler.spec.loader import load_tree
from reconciler.state.store import StateWriter
from reconciler.webhooks.http import webhook_app
from reconciler.webhooks.resolver import (
    BadSecret,
    MalformedWebhook,
    UnknownAssistant,
    WebhookResolver,
)
from tests.helpers import SpecDir, org_doc, served
from tests.integration.test_resolver import signed


def request_for(account: object) -> bytes:
    call = {"orgId": account, "phoneNumberId": "pn-1"}
    return json.dumps({"message": {"type": "assistant-request", "call": call}}).encode()


def accounts(state: StateWriter) -> dict[str, str]:
    with state.pool.connection() as conn:
        rows = conn.execute("SELECT slug, vapi_account_id FROM organizations").fetchall()
    return dict(rows)


@pytest.mark.parametrize("warm", [False, True], ids=["cold cache", "warm cache"])
def test_assistant_request_resolves_by_the_vapi_account(
    controller: Controller, state: StateWriter, master_key: MasterKey, specs: SpecDir, warm: bool
) -> None:
    specs.write(org_doc("acme", secret="acme-secret"))
    specs.write(org_doc("bravo", secret="bravo-secret"))
    assert controller.apply(load_tree(specs.root)).ok
    account = accounts(state)
    resolver = WebhookResolver(state, master_key)
    if warm:  # the entry is cached by a first good request; every check still runs
        resolver.resolve({"x-vapi-secret": "acme-secret"}, request_for(account["acme"]))
    hit = resolver.resolve({"x-vapi-secret": "acme-secret"}, request_for(account["acme"]))
    assert (hit.slug, hit.assistant_id, hit.message_type) == ("acme", "", "assistant-request")
    for wrong in ("bravo-secret", "nope"):
        with pytest.raises(BadSecret):
            resolver.resolve({"x-vapi-secret": wrong}, request_for(account["acme"]))
    with pytest.raises(BadSecret):
        resolver.resolve({}, request_for(account["acme"]))
    with pytest.raises(UnknownAssistant, match="Vapi account"):
        resolver.resolve({"x-vapi-secret": "acme-secret"}, request_for("not-an-account"))
    for bad in (42, "", "has space"):
        with pytest.raises(MalformedWebhook):
            resolver.resolve({"x-vapi-secret": "acme-secret"}, request_for(bad))
    # no account (null is absent): the phone number decides alone, and no org owns `pn-1`
    with pytest.raises(UnknownAssistant, match="phone number"):
        resolver.resolve({"x-vapi-secret": "acme-secret"}, request_for(None))


def test_an_assistant_id_can_never_pass_for_an_account(
    controller: Controller, state: StateWriter, master_key: MasterKey, specs: SpecDir
) -> None:
    """The account lookup key holds a space, which no assistant id may: a body whose
    assistantId imitates it is malformed, not resolved by account."""
    specs.write(org_doc("acme", secret="acme-secret"))
    assert controller.apply(load_tree(specs.root)).ok
    forged = json.dumps(
        {"message": {"call": {"assistantId": f"account {accounts(state)['acme']}"}}}
    ).encode()
    with pytest.raises(MalformedWebhook):
        WebhookResolver(state, master_key).resolve({"x-vapi-secret": "acme-secret"}, forged)


def test_an_account_two_orgs_were_seen_in_resolves_to_neither(
    controller: Controller, state: StateWriter, master_key: MasterKey, specs: SpecDir
) -> None:
    specs.write(org_doc("acme", secret="acme-secret"))
    specs.write(org_doc("bravo", secret="bravo-secret"))
    assert controller.apply(load_tree(specs.root)).ok
    shared = accounts(state)["acme"]
    with state.pool.connection() as conn:  # as left by two keys on one account, refused since
        conn.execute("UPDATE organizations SET vapi_account_id = %s", (shared,))
    with pytest.raises(UnknownAssistant):
        WebhookResolver(state, master_key).resolve(
            {"x-vapi-secret": "acme-secret"}, request_for(shared)
        )


@pytest.mark.parametrize("warm", [False, True], ids=["cold cache", "warm cache"])
@pytest.mark.parametrize("mechanism", ["x-vapi-secret", "x-signature"])
def test_the_assistant_decides_the_org_before_the_account(
    controller: Controller,
    state: StateWriter,
    master_key: MasterKey,
    specs: SpecDir,
    warm: bool,
    mechanism: str,
) -> None:
    """acme's valid secret or signature on a body naming bravo's assistant, whatever the body
    also says about accounts (acme's own Vapi account in `message.call.orgId`): the
    assistant decides the org (bravo), so acme's credential is refused, over HTTP too. Were
    the account read first, acme would verify and bravo's call be taken as acme's."""
    specs.write(org_doc("acme", secret="acme-secret"))
    specs.write(org_doc("bravo", secret="bravo-secret"))
    assert controller.apply(load_tree(specs.root)).ok
    account = accounts(state)
    bravo_assistant = assistant_of(state, "bravo")
    resolver = WebhookResolver(state, master_key)
    if warm:  # acme's account entry cached by a good request of its own
        resolver.resolve({"x-vapi-secret": "acme-secret"}, request_for(account["acme"]))
    forged = json.dumps(
        {
            "message": {
                "type": "assistant-request",
                "call": {"assistantId": bravo_assistant, "orgId": account["acme"]},
            }
        }
    ).encode()
    if mechanism == "x-vapi-secret":
        headers = {"x-vapi-secret": "acme-secret"}
    else:
        headers = signed("acme-secret", forged)
    with pytest.raises(BadSecret) as caught:
        resolver.resolve(headers, forged)
    assert caught.value.org_slug == "bravo"
    with served(webhook_app(resolver)) as url:
        resp = httpx.post(url + "/webhooks/vapi", content=forged, headers=headers, timeout=10)
    assert resp.status_code == 401
    # and bravo's own credential on that body is bravo's webhook
    good = {"x-vapi-secret": "bravo-secret"}
    assert resolver.resolve(good, forged).slug == "bravo"


def assistant_of(state: StateWriter, slug: str) -> str:
    with state.pool.connection() as conn:
        row = conn.execute(
            "SELECT m.vapi_assistant_id FROM assistant_org_mapping m JOIN organizations o"
            " ON o.id = m.org_id WHERE o.slug = %s AND m.assistant_role = 'inbound'",
            (slug,),
        ).fetchone()
    assert row is not None
    return str(row[0])
