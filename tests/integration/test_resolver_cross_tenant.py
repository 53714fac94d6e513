"""One tenant attacking another through the webhook resolver (docs/webhooks.md): org `acme`
(the attacker, who knows its own webhook secret and can make Vapi-shaped bodies) against org
`globex` (the victim). Whatever the body says, a webhook is routed to the one org that its ids
decide (assistant, else phone number, else Vapi account) and only on that org's credential:
never to the victim on the attacker's secret or HMAC, never to an org other than the one
whose secret verified it. Ids that only look like the victim's, mappings past or within their
retention, a retired org, replays, numbers and assistants that move, and the cache (NOTIFY and
TTL) are covered too. Orgs, numbers and tools are seeded straight into Postgres."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from reconciler.errors import ReconcilerError
from reconciler.secrets.crypto import MasterKey
from reconciler.state.store import StateWriter
from reconciler.webhooks.http import PHONE_NUMBER_ID_HEADER, webhook_app
from reconciler.webhooks.listen import CacheListener
from reconciler.webhooks.resolver import WebhookError, WebhookResolver
from tests.helpers import served
from tests.integration.test_number_webhooks import add_number, number_body
from tests.integration.test_resolver import (
    Org,
    seed_org,
    set_previous_valid_until,
    set_vapi_row,
    signed,
    store_secret,
    vapi_row,
)
from tests.integration.test_webhook_http import LOCAL, PATH, counted, outcomes, poll

NO_SECRET = "no active webhook secret for this assistant"


@dataclass(frozen=True)
class World:
    acme: Org  # the attacker
    globex: Org  # the victim
    acme_number: str
    globex_number: str
    globex_tool: str

    def org(self, slug: str) -> Org:
        return self.acme if slug == "acme" else self.globex


ACCOUNT = {"acme": "acct-acme-7e1", "globex": "acct-globex-7e1"}
"""Each org's Vapi account (`organizations.vapi_account_id`): one account per org (BYOC)."""


def set_account(state: StateWriter, org_id: str, account: str | None) -> None:
    with state.pool.connection() as conn:
        conn.execute(
            "UPDATE organizations SET vapi_account_id = %s WHERE id = %s", (account, org_id)
        )


@pytest.fixture
def world(state: StateWriter, master_key: MasterKey) -> World:
    acme = seed_org(state, master_key, "acme")
    globex = seed_org(state, master_key, "globex")
    for org in (acme, globex):
        set_account(state, org.org_id, ACCOUNT[org.slug])
    acme_number = add_number(state, acme, "+15550170001")
    globex_number = add_number(state, globex, "+15550170002")
    globex_tool = f"tool-{uuid.uuid4()}"
    state.resources.record(globex.org_id, "tool", "book", globex_tool, {"type": "function"})
    return World(acme, globex, acme_number, globex_number, globex_tool)


Verdict = tuple[int, str, str | None]


def verdict(resolver: WebhookResolver, headers: dict[str, str], raw: bytes) -> Verdict:
    """(status, outcome, org slug): what the endpoint would answer and count, and for whom
    (the org found, for a refusal; the org resolved, for a success)."""
    try:
        hit = resolver.resolve(headers, raw)
    except WebhookError as exc:
        return exc.status, exc.outcome, getattr(exc, "org_slug", None)
    return 200, "accepted", hit.slug


def creds(org: Org, mechanism: str, raw: bytes) -> dict[str, str]:
    if mechanism == "secret":
        return {"x-vapi-secret": org.secret}
    if mechanism == "signature":
        return signed(org.secret, raw)
    return {"x-vapi-secret": org.secret, **signed(org.secret, raw)}  # both


REFUSED_AS = {"secret": "bad_secret", "signature": "bad_signature", "both": "bad_secret"}


def message(**fields: Any) -> bytes:
    return json.dumps({"message": fields}).encode()


TOOL_CALLS: dict[str, Any] = {
    "type": "tool-calls",
    "toolCallList": [{"id": "tc-1", "type": "function", "function": {"name": "book"}}],
}


def tool_calls(w: World, call: dict[str, Any]) -> bytes:
    """A `tool-calls` of the victim's tool (its id in the tool list), for the call given."""
    tool = {"id": w.globex_tool, "type": "function", "function": {"name": "book"}}
    listed = [{"tool": tool, "toolCall": TOOL_CALLS["toolCallList"][0]}]
    return message(**TOOL_CALLS, toolWithToolCallList=listed, call=call)


# --- the victim's ids on the attacker's credential -----------------------------------------

VICTIM_BODIES: dict[str, Callable[[World], bytes]] = {
    "assistant in call.assistantId": lambda w: message(
        type="status-update", call={"assistantId": w.globex.inbound}
    ),
    "assistant in message.assistantId": lambda w: message(
        type="transcript", assistantId=w.globex.outbound
    ),
    "number in call.phoneNumberId": lambda w: number_body(w.globex_number),
    "number in message.phoneNumber.id": lambda w: number_body(None, listed=w.globex_number),
    "tool-calls by assistant": lambda w: tool_calls(w, {"assistantId": w.globex.outbound}),
    "tool-calls by number": lambda w: tool_calls(w, {"phoneNumberId": w.globex_number}),
    "account in call.orgId": lambda w: message(
        type="assistant-request", call={"orgId": ACCOUNT["globex"]}
    ),
}


@pytest.mark.parametrize("warm", [False, True], ids=["cold", "warm"])
@pytest.mark.parametrize("mechanism", ["secret", "signature", "both"])
@pytest.mark.parametrize("case", list(VICTIM_BODIES))
def test_the_victims_webhook_on_the_attackers_credential_is_401(
    case: str,
    mechanism: str,
    warm: bool,
    world: World,
    state: StateWriter,
    master_key: MasterKey,
) -> None:
    """A body naming globex's assistant, number, tool call or account, with acme's valid
    secret or signature: globex's webhook, so 401 (bad_secret / bad_signature), on a cold
    cache and on one the victim's own webhook warmed; the victim keeps working after it."""
    raw = VICTIM_BODIES[case](world)
    resolver = WebhookResolver(state, master_key)
    if warm:
        assert verdict(resolver, creds(world.globex, mechanism, raw), raw)[:3] == (
            200,
            "accepted",
            "globex",
        )
    for _ in range(2):  # a refusal is not cached as anything: the same again
        assert verdict(resolver, creds(world.acme, mechanism, raw), raw) == (
            401,
            REFUSED_AS[mechanism],
            "globex",
        )
    assert verdict(resolver, creds(world.globex, mechanism, raw), raw) == (
        200,
        "accepted",
        "globex",
    )


# --- bodies whose fields disagree --------------------------------------------------------

CONFLICTS: dict[str, tuple[Callable[[World], bytes], str | None]] = {
    # the assistant decides before the number and the account
    "acme assistant, globex number and account": (
        lambda w: number_body(
            w.globex_number, account=ACCOUNT["globex"], assistant_id=w.acme.inbound
        ),
        "acme",
    ),
    "globex assistant, acme number and account": (
        lambda w: number_body(
            w.acme_number, account=ACCOUNT["acme"], assistant_id=w.globex.inbound
        ),
        "globex",
    ),
    # call.assistantId before message.assistantId; message.assistant.id is never read
    "call.assistantId acme, message.assistantId globex": (
        lambda w: message(
            type="status-update",
            call={"assistantId": w.acme.inbound},
            assistantId=w.globex.inbound,
        ),
        "acme",
    ),
    "call.assistantId globex, message.assistantId acme": (
        lambda w: message(
            type="status-update",
            call={"assistantId": w.globex.inbound},
            assistantId=w.acme.inbound,
        ),
        "globex",
    ),
    "call.assistantId null, message.assistantId globex": (
        lambda w: message(
            type="transcript", call={"assistantId": None}, assistantId=w.globex.inbound
        ),
        "globex",
    ),
    "call.assistantId acme, message.assistant.id globex": (
        lambda w: message(
            type="status-update",
            call={"assistantId": w.acme.inbound},
            assistant={"id": w.globex.inbound, "name": "globex inbound"},
        ),
        "acme",
    ),
    "call.assistantId globex, message.assistant.id acme": (
        lambda w: message(
            type="status-update",
            call={"assistantId": w.globex.inbound},
            assistant={"id": w.acme.inbound},
        ),
        "globex",
    ),
    "message.assistantId globex, call.phoneNumberId acme": (
        lambda w: message(
            type="transcript",
            call={"phoneNumberId": w.acme_number, "orgId": ACCOUNT["acme"]},
            assistantId=w.globex.outbound,
        ),
        "globex",
    ),
    # an assistantId beside `message` is not read, whichever org it names
    "root assistantId globex beside acme's call": (
        lambda w: json.dumps(
            {
                "assistantId": w.globex.inbound,
                "message": {"type": "status-update", "call": {"assistantId": w.acme.inbound}},
            }
        ).encode(),
        "acme",
    ),
    "root assistantId acme beside globex's call": (
        lambda w: json.dumps(
            {
                "assistantId": w.acme.inbound,
                "message": {"type": "status-update", "call": {"assistantId": w.globex.inbound}},
            }
        ).encode(),
        "globex",
    ),
    # the number decides before the account
    "globex number, acme account": (
        lambda w: number_body(w.globex_number, account=ACCOUNT["acme"]),
        "globex",
    ),
    "message.phoneNumber.id globex, acme account": (
        lambda w: number_body(None, listed=w.globex_number, account=ACCOUNT["acme"]),
        "globex",
    ),
    "acme number, globex account": (
        lambda w: number_body(w.acme_number, account=ACCOUNT["globex"]),
        "acme",
    ),
    # a number no org owns: the account; a tool's id is no number
    "unmanaged number, globex account": (
        lambda w: number_body("pn-unmanaged-7e1", account=ACCOUNT["globex"]),
        "globex",
    ),
    "globex tool id as the number, acme account": (
        lambda w: number_body(w.globex_tool, account=ACCOUNT["acme"]),
        "acme",
    ),
    "globex tool id as the number, globex account": (
        lambda w: number_body(w.globex_tool, account=ACCOUNT["globex"]),
        "globex",
    ),
    # tool-calls of globex's tool from acme's assistant: acme's call, acme's webhook
    "tool-calls of globex's tool by acme's assistant": (
        lambda w: tool_calls(w, {"assistantId": w.acme.outbound}),
        "acme",
    ),
    "tool-calls by acme's number, globex's assistant": (
        lambda w: tool_calls(w, {"phoneNumberId": w.acme_number, "assistantId": w.globex.inbound}),
        "globex",
    ),
    # two answers, or a bad one, are not a body: 400 whichever org signs it
    "call.phoneNumberId acme, message.phoneNumber.id globex": (
        lambda w: number_body(w.acme_number, listed=w.globex_number),
        None,
    ),
    "call.phoneNumberId globex, message.phoneNumber.id acme": (
        lambda w: number_body(w.globex_number, listed=w.acme_number),
        None,
    ),
    "bad call.assistantId, message.assistantId acme": (
        lambda w: message(call={"assistantId": ""}, assistantId=w.acme.inbound),
        None,
    ),
    "bad call.assistantId, acme number": (
        lambda w: message(call={"assistantId": 7, "phoneNumberId": w.acme_number}),
        None,
    ),
    "acme number, bad account": (
        lambda w: number_body(w.acme_number, account=""),
        None,
    ),
}


@pytest.mark.parametrize("case", list(CONFLICTS))
def test_fields_that_disagree_route_by_the_documented_order_only(
    case: str, world: World, state: StateWriter, master_key: MasterKey
) -> None:
    """Each org's secret and signature on a body whose ids disagree: accepted only as the org
    the documented order gives (assistant, number, account), on that org's own credential;
    the other org's is 401 naming the owner (for our logs); a malformed body is 400 for both."""
    make, owner = CONFLICTS[case]
    raw = make(world)
    resolver = WebhookResolver(state, master_key)
    for signer in ("acme", "globex"):
        for mechanism in ("secret", "signature"):
            got = verdict(resolver, creds(world.org(signer), mechanism, raw), raw)
            if owner is None:
                assert got == (400, "malformed", None), (signer, mechanism)
            elif owner == signer:
                assert got == (200, "accepted", owner), (signer, mechanism)
            else:
                assert got == (401, REFUSED_AS[mechanism], owner), (signer, mechanism)


DUPLICATES = {
    "call.assistantId twice, acme first": (
        '{"message": {"type": "status-update",'
        ' "call": {"assistantId": "{A}", "assistantId": "{G}"}}}'
    ),
    "call.assistantId twice, globex first": (
        '{"message": {"type": "status-update",'
        ' "call": {"assistantId": "{G}", "assistantId": "{A}"}}}'
    ),
    "escaped twin assistant\\u0049d": (
        '{"message": {"call": {"assistantId": "{A}", "assistant\\u0049d": "{G}"}}}'
    ),
    "escaped twin \\u0061ssistantId": (
        '{"message": {"call": {"\\u0061ssistantId": "{G}", "assistantId": "{A}"}}}'
    ),
    "message.assistantId twice": (
        '{"message": {"type": "transcript", "assistantId": "{A}", "assistantId": "{G}"}}'
    ),
    "message twice": (
        '{"message": {"call": {"assistantId": "{A}"}}, "message": {"call": {"assistantId": "{G}"}}}'
    ),
    "call twice": ('{"message": {"call": {"assistantId": "{A}"}, "call": {"assistantId": "{G}"}}}'),
    "phoneNumberId twice": (
        '{"message": {"type": "assistant-request",'
        ' "call": {"phoneNumberId": "{AN}", "phoneNumberId": "{GN}"}}}'
    ),
    "phoneNumber object twice": (
        '{"message": {"type": "assistant-request",'
        ' "phoneNumber": {"id": "{AN}"}, "phoneNumber": {"id": "{GN}"}}}'
    ),
    "orgId twice": (
        '{"message": {"type": "assistant-request",'
        ' "call": {"orgId": "{AACCT}", "orgId": "{GACCT}"}}}'
    ),
    "type twice": (
        '{"message": {"type": "status-update", "type": "tool-calls",'
        ' "call": {"assistantId": "{A}"}}}'
    ),
    "assistant.id twice": (
        '{"message": {"call": {"assistantId": "{A}"}, "assistant": {"id": "{A}", "id": "{G}"}}}'
    ),
    "deep in the artifact": (
        '{"message": {"type": "end-of-call-report", "call": {"assistantId": "{A}"},'
        ' "artifact": {"messages": [{"assistantId": "{A}", "assistantId": "{G}"}]}}}'
    ),
}


@pytest.mark.parametrize("case", list(DUPLICATES))
def test_an_org_deciding_key_given_twice_is_400_before_any_lookup(
    case: str, world: World, state: StateWriter, master_key: MasterKey
) -> None:
    """Parsers disagree on which copy of a key counts: refused (400 malformed) for either
    org's credential, without a query, even with both orgs' entries cached."""
    raw = (
        DUPLICATES[case]
        .replace("{AN}", world.acme_number)
        .replace("{GN}", world.globex_number)
        .replace("{AACCT}", ACCOUNT["acme"])
        .replace("{GACCT}", ACCOUNT["globex"])
        .replace("{A}", world.acme.inbound)
        .replace("{G}", world.globex.inbound)
        .encode()
    )
    resolver = WebhookResolver(state, master_key)
    for org in (world.acme, world.globex):  # warm: each org's entry is cached
        good = message(call={"assistantId": org.inbound})
        assert verdict(resolver, {"x-vapi-secret": org.secret}, good)[0] == 200
    queries = state.queries
    for org in (world.acme, world.globex):
        for mechanism in ("secret", "signature", "both"):
            assert verdict(resolver, creds(org, mechanism, raw), raw) == (400, "malformed", None)
    assert state.queries == queries


@pytest.mark.parametrize("twin", ["AssistantId", "ASSISTANTID", "assi\u017ftantId"])
def test_a_case_folded_twin_of_an_org_deciding_key_is_400(
    twin: str, world: World, state: StateWriter, master_key: MasterKey
) -> None:
    """docs/webhooks.md, "One meaning per body": Go's encoding/json (and .NET with
    case-insensitive names) reads `AssistantId` or `assi\u017ftantId` as `assistantId`, the
    last copy winning, so a downstream would see globex's assistant in a body verified as
    acme: a key that differs from one the org is read from only by case is refused (400)."""
    raw = message(
        **TOOL_CALLS, call={"assistantId": world.acme.inbound, twin: world.globex.inbound}
    )
    resolver = WebhookResolver(state, master_key)
    assert verdict(resolver, {"x-vapi-secret": world.acme.secret}, raw) == (
        400,
        "malformed",
        None,
    )


@pytest.mark.parametrize(
    ("where", "body"),
    [
        ("a lone variant in call", {"call": {"AssistantId": "{G}", "orgId": "{AACCT}"}}),
        ("call's own key", {"Call": {"assistantId": "{G}"}, "call": {"orgId": "{AACCT}"}}),
        ("the phone number's id", {"phoneNumber": {"ID": "{G}"}, "call": {"orgId": "{AACCT}"}}),
    ],
)
def test_a_key_the_org_is_read_from_spelt_in_another_case_is_400(
    where: str, body: dict[str, Any], world: World, state: StateWriter, master_key: MasterKey
) -> None:
    """No twin needed: acme's account decides for this reader, while a case-insensitive reader
    takes the variant for the key it names (globex's assistant)."""
    raw = (
        json.dumps({"message": {"type": "tool-calls", **body}})
        .replace("{G}", world.globex.inbound)
        .replace("{AACCT}", ACCOUNT["acme"])
        .encode()
    )
    resolver = WebhookResolver(state, master_key)
    assert verdict(resolver, {"x-vapi-secret": world.acme.secret}, raw) == (400, "malformed", None)
    variant = json.dumps({"Message": {"call": {"assistantId": world.globex.inbound}}})
    raw = json.dumps({"message": {"call": {"assistantId": world.acme.inbound}}})[:-1]
    raw += ", " + variant[1:]
    assert verdict(resolver, {"x-vapi-secret": world.acme.secret}, raw.encode()) == (
        400,
        "malformed",
        None,
    )


def test_keys_in_another_case_deeper_down_are_the_calls_content(
    world: World, state: StateWriter, master_key: MasterKey
) -> None:
    """Tool arguments and variables may say `Type`, `ID` or `Message`: they are not read for
    the org by anyone, and the webhook is resolved as usual."""
    content = {"Type": "booking", "ID": 7, "Message": "hi", "AssistantId": "not read"}
    raw = message(
        **TOOL_CALLS,
        call={"assistantId": world.acme.inbound, "assistantOverrides": {"variableValues": content}},
        artifact={"messages": [content]},
    )
    resolver = WebhookResolver(state, master_key)
    assert verdict(resolver, {"x-vapi-secret": world.acme.secret}, raw) == (200, "accepted", "acme")


# --- ids that only look like the victim's ------------------------------------------------


HOMOGLYPHS = {"a": "\u0430", "c": "\u0441", "e": "\u0435", "o": "\u043e", "p": "\u0440"}
"""Latin letters and their Cyrillic look-alikes."""


def look_alikes(victim: str) -> dict[str, tuple[str, int]]:
    """Variants of an id, each with what it is: 404 (a valid id that no org owns) or 400 (not
    1..128 visible ASCII characters, refused before any query)."""
    head, tail = victim[:3], victim[3:]
    first = next(i for i, ch in enumerate(victim) if ch in HOMOGLYPHS)
    cyrillic = victim[:first] + HOMOGLYPHS[victim[first]] + victim[first + 1 :]
    return {
        "upper case": (victim.upper(), 404),
        "first letter's case": (victim[0].upper() + victim[1:], 404),
        "one character short": (victim[:-1], 404),
        "one character more": (victim + "0", 404),
        "padded to 128": (victim + "x" * (128 - len(victim)), 404),
        "percent-encoded dash": (victim.replace("-", "%2D"), 404),
        "Cyrillic look-alike": (cyrillic, 400),
        "fullwidth dash": (victim.replace("-", "\uff0d", 1), 400),
        "long s / Kelvin": (victim.replace("-", "\u017f-", 1) + "\u212a", 400),
        "leading space": (" " + victim, 400),
        "trailing space": (victim + " ", 400),
        "trailing tab": (victim + "\t", 400),
        "trailing newline": (victim + "\n", 400),
        "no-break space": (victim + "\u00a0", 400),
        "zero-width space": (head + "\u200b" + tail, 400),
        "bidi override": ("\u202e" + victim, 400),
        "NUL after": (victim + "\x00", 400),
        "NUL inside": (head + "\x00" + tail, 400),
        "129 characters": (victim + "x" * (129 - len(victim)), 400),
        "a megabyte": (victim + "x" * 500_000, 400),
    }


@pytest.mark.parametrize("where", ["call.assistantId", "call.phoneNumberId", "call.orgId"])
def test_ids_that_only_look_like_the_victims_resolve_to_nobody(
    where: str, world: World, state: StateWriter, master_key: MasterKey
) -> None:
    """Case, Unicode look-alikes, whitespace, NUL and overlong variants of globex's
    assistant, number or account id: never globex's, whoever's secret is sent (globex's
    own included): 404 unknown_assistant for a valid id no org owns, else 400 malformed
    without a query."""
    victim = {
        "call.assistantId": world.globex.inbound,
        "call.phoneNumberId": world.globex_number,
        "call.orgId": ACCOUNT["globex"],
    }[where]
    field = where.removeprefix("call.")
    resolver = WebhookResolver(state, master_key)
    for name, (variant, status) in look_alikes(victim).items():
        raw = message(type="assistant-request", call={field: variant})
        for org in (world.acme, world.globex):
            queries = state.queries
            got = verdict(resolver, {"x-vapi-secret": org.secret}, raw)
            if status == 404:
                assert got == (404, "unknown_assistant", None), (name, org.slug)
            else:
                assert got == (400, "malformed", None), (name, org.slug)
                assert state.queries == queries, name
    # an escaped form of the victim's id is the victim's id: still globex's webhook
    escaped = "\\u00" + format(ord(victim[0]), "x") + victim[1:]
    raw = f'{{"message": {{"call": {{"{field}": "{escaped}"}}}}}}'.encode()
    assert verdict(resolver, {"x-vapi-secret": world.acme.secret}, raw) == (
        401,
        "bad_secret",
        "globex",
    )
    assert verdict(resolver, {"x-vapi-secret": world.globex.secret}, raw)[:2] == (
        200,
        "accepted",
    )


def test_a_look_alike_of_the_victims_number_falls_back_to_the_account_named(
    world: World, state: StateWriter, master_key: MasterKey
) -> None:
    """A number id no org owns (globex's, upper-cased) is resolved by the account beside it
    (docs: case 4): the account's org, on that org's secret only, never globex by the number."""
    fake = world.globex_number.upper()
    resolver = WebhookResolver(state, master_key)
    in_acme = number_body(fake, account=ACCOUNT["acme"])
    assert verdict(resolver, {"x-vapi-secret": world.acme.secret}, in_acme) == (
        200,
        "accepted",
        "acme",
    )
    assert verdict(resolver, {"x-vapi-secret": world.globex.secret}, in_acme) == (
        401,
        "bad_secret",
        "acme",
    )
    in_globex = number_body(fake, account=ACCOUNT["globex"])
    assert verdict(resolver, signed(world.acme.secret, in_globex), in_globex) == (
        401,
        "bad_signature",
        "globex",
    )


# --- retention of deleted assistants and released numbers ----------------------------------


def age_mapping(state: StateWriter, table: str, column: str, vapi_id: str, days: int) -> None:
    with state.pool.connection() as conn:
        conn.execute(
            f"UPDATE {table} SET inactive_at = now() - make_interval(days => %s)"
            f" WHERE {column} = %s",
            (days, vapi_id),
        )


def test_a_deleted_assistant_and_a_released_number_within_and_past_retention(
    world: World, state: StateWriter, master_key: MasterKey
) -> None:
    """Within `RECONCILER_MAPPING_RETENTION` (30 days) a deleted assistant's and a released
    number's late webhooks are still their old org's, on its secret only; past it they are
    unknown (404) to everybody, never anyone else's."""
    acme, globex = world.acme, world.globex
    state.assistants.forget(globex.org_id, "inbound", globex.inbound)
    state.resources.forget(globex.org_id, "phoneNumber", "+15550170002", world.globex_number)
    by_assistant = message(type="end-of-call-report", call={"assistantId": globex.inbound})
    by_number = number_body(world.globex_number)
    for days in (0, 29):
        age_mapping(state, "assistant_org_mapping", "vapi_assistant_id", globex.inbound, days)
        age_mapping(state, "resource_org_mapping", "vapi_id", world.globex_number, days)
        resolver = WebhookResolver(state, master_key)
        for raw in (by_assistant, by_number):
            assert verdict(resolver, {"x-vapi-secret": globex.secret}, raw) == (
                200,
                "accepted",
                "globex",
            )
            assert verdict(resolver, {"x-vapi-secret": acme.secret}, raw) == (
                401,
                "bad_secret",
                "globex",
            )
            assert verdict(resolver, signed(acme.secret, raw), raw) == (
                401,
                "bad_signature",
                "globex",
            )
    age_mapping(state, "assistant_org_mapping", "vapi_assistant_id", globex.inbound, 31)
    age_mapping(state, "resource_org_mapping", "vapi_id", world.globex_number, 31)
    resolver = WebhookResolver(state, master_key)
    for raw in (by_assistant, by_number):
        for org in (acme, globex):
            assert verdict(resolver, {"x-vapi-secret": org.secret}, raw) == (
                404,
                "unknown_assistant",
                None,
            )


# --- a retired org -----------------------------------------------------------------------


def test_a_retired_orgs_secret_verifies_its_own_late_webhooks_only(
    world: World, state: StateWriter, master_key: MasterKey
) -> None:
    """Retiring globex keeps its webhook secret for its own late webhooks (its inactive
    mappings). It never verifies acme's webhooks, nor those of a new org that takes globex's
    slug and Vapi account; its account resolves to nobody once it is retired; and once its
    window ends, even its own late webhooks are 401."""
    acme, globex = world.acme, world.globex
    sealed = master_key.encrypt({"webhookSecret": globex.secret}, aad=f"{globex.org_id}:vapi")
    state.orgs.retire(globex.org_id, sealed, "removed from specs")
    resolver = WebhookResolver(state, master_key)
    late = message(type="end-of-call-report", call={"assistantId": globex.inbound})
    late_number = number_body(world.globex_number, kind="status-update")
    by_account = message(type="assistant-request", call={"orgId": ACCOUNT["globex"]})
    for raw in (late, late_number):
        assert verdict(resolver, {"x-vapi-secret": globex.secret}, raw) == (
            200,
            "accepted",
            "globex",
        )
        assert verdict(resolver, {"x-vapi-secret": acme.secret}, raw) == (
            401,
            "bad_secret",
            "globex",
        )
    acme_body = message(type="status-update", call={"assistantId": acme.inbound})
    assert verdict(resolver, signed(globex.secret, acme_body), acme_body) == (
        401,
        "bad_signature",
        "acme",
    )
    assert verdict(resolver, {"x-vapi-secret": globex.secret}, by_account) == (
        404,
        "unknown_assistant",
        None,
    )
    # a new org takes the freed slug and the same Vapi account
    reborn = seed_org(state, master_key, "globex", secret="whsec-globex-reborn")
    set_account(state, reborn.org_id, ACCOUNT["globex"])
    resolver = WebhookResolver(state, master_key)
    for raw in (message(call={"assistantId": reborn.inbound}), by_account):
        assert verdict(resolver, {"x-vapi-secret": globex.secret}, raw) == (
            401,
            "bad_secret",
            "globex",
        )
        assert verdict(resolver, signed(globex.secret, raw), raw) == (
            401,
            "bad_signature",
            "globex",
        )
        hit = resolver.resolve({"x-vapi-secret": reborn.secret}, raw)
        assert hit.org_id == reborn.org_id != globex.org_id
    hit = resolver.resolve({"x-vapi-secret": globex.secret}, late)  # still the old org's
    assert hit.org_id == globex.org_id
    assert verdict(resolver, {"x-vapi-secret": reborn.secret}, late) == (
        401,
        "bad_secret",
        "globex",
    )
    # the retired org's window ends: nothing verifies its late webhooks any more
    with state.pool.connection() as conn:
        conn.execute(
            "UPDATE org_credentials SET webhook_only_until = now() - interval '1 second'"
            " WHERE org_id = %s",
            (globex.org_id,),
        )
    resolver = WebhookResolver(state, master_key)
    for raw in (late, late_number):
        with pytest.raises(WebhookError) as caught:
            resolver.resolve({"x-vapi-secret": globex.secret}, raw)
        assert (caught.value.status, caught.value.outcome, str(caught.value)) == (
            401,
            "bad_secret",
            NO_SECRET,
        )


# --- replays ---------------------------------------------------------------------------


def test_a_captured_signature_is_refused_outside_the_window_and_on_any_other_body(
    world: World, state: StateWriter, master_key: MasterKey
) -> None:
    """An attacker holding one of globex's signed webhooks: outside the 5-minute window
    (either way, seconds or milliseconds) it is a replay (401 bad_signature); inside it, it
    verifies globex's body only: not another body, not its timestamp restated, not beside the
    attacker's own secret."""
    acme, globex = world.acme, world.globex
    raw = message(type="status-update", call={"assistantId": globex.inbound})
    resolver = WebhookResolver(state, master_key)
    now = time.time()
    replays = [
        signed(globex.secret, raw, at=now - 301),
        signed(globex.secret, raw, at=now - 301, ms=True),
        signed(globex.secret, raw, at=now + 301),
        signed(globex.secret, raw, at=now - 86_400, prefix="sha256="),
        signed(globex.secret, raw, at=1_600_000_000),
    ]
    for headers in replays:
        assert verdict(resolver, headers, raw) == (401, "bad_signature", "globex")
    fresh = signed(globex.secret, raw)
    assert verdict(resolver, fresh, raw) == (200, "accepted", "globex")  # inside the window
    # the same signature on a body naming acme's assistant (or globex's, re-serialised)
    for other in (
        message(type="status-update", call={"assistantId": acme.inbound}),
        raw.replace(b": ", b":"),
        raw + b" ",
    ):
        owner = "acme" if acme.inbound.encode() in other else "globex"
        assert verdict(resolver, fresh, other) == (401, "bad_signature", owner)
    restated = {**fresh, "x-timestamp": fresh["x-timestamp"] + "000"}  # same instant, in ms
    assert verdict(resolver, restated, raw) == (401, "bad_signature", "globex")
    leading_zero = {**fresh, "x-timestamp": "0" + fresh["x-timestamp"]}
    assert verdict(resolver, leading_zero, raw) == (401, "bad_signature", "globex")
    assert verdict(resolver, {**fresh, "x-vapi-secret": acme.secret}, raw) == (
        401,
        "bad_secret",
        "globex",
    )


# --- what moves, and the cache ---------------------------------------------------------


@pytest.fixture
def listening(
    state: StateWriter, master_key: MasterKey, database_url: str
) -> Iterator[WebhookResolver]:
    """A resolver whose TTLs are long (300 s): only a NOTIFY can make a change count."""
    resolver = WebhookResolver(state, master_key, ttl_s=300, negative_ttl_s=300)
    listener = CacheListener(resolver, database_url)
    try:
        assert listener.start(wait_s=5)
        yield resolver
    finally:
        listener.close()


def until(resolver: WebhookResolver, headers: dict[str, str], raw: bytes, want: Verdict) -> None:
    poll(lambda: verdict(resolver, headers, raw) == want, within_s=5.0)


def test_a_number_cannot_be_taken_while_its_org_holds_it(
    world: World, state: StateWriter, master_key: MasterKey
) -> None:
    """acme records globex's live number (or assistant) as its own: refused, whether under
    the same E.164 name or another, and the number stays globex's."""
    with pytest.raises(ReconcilerError, match="one_org_per_number"):
        state.resources.record(
            world.acme.org_id, "phoneNumber", "+15550170002", world.globex_number, {}
        )
    with pytest.raises(ReconcilerError, match="already mapped to another org"):
        state.resources.record(
            world.acme.org_id, "phoneNumber", "+15550179999", world.globex_number, {}
        )
    with pytest.raises(ReconcilerError, match="already mapped to another org"):
        state.assistants.record(world.acme.org_id, "inbound", world.globex.inbound, "x", {})
    resolver = WebhookResolver(state, master_key)
    for raw in (
        number_body(world.globex_number),
        message(call={"assistantId": world.globex.inbound}),
    ):
        assert verdict(resolver, {"x-vapi-secret": world.acme.secret}, raw) == (
            401,
            "bad_secret",
            "globex",
        )


def test_a_number_moved_to_another_org_follows_at_once_on_notify(
    world: World, state: StateWriter, listening: WebhookResolver
) -> None:
    """globex's number (cached for 300 s) is released by globex and recorded by acme: the
    mapping's NOTIFY makes it acme's at once; globex's secret and signature are 401 for it."""
    resolver = listening
    raw = number_body(world.globex_number)
    assert verdict(resolver, signed(world.globex.secret, raw), raw) == (200, "accepted", "globex")
    state.resources.forget(world.globex.org_id, "phoneNumber", "+15550170002", world.globex_number)
    state.resources.record(
        world.acme.org_id, "phoneNumber", "+15550170002", world.globex_number, {}
    )
    until(resolver, {"x-vapi-secret": world.acme.secret}, raw, (200, "accepted", "acme"))
    assert verdict(resolver, signed(world.acme.secret, raw), raw) == (200, "accepted", "acme")
    assert verdict(resolver, {"x-vapi-secret": world.globex.secret}, raw) == (
        401,
        "bad_secret",
        "acme",
    )
    assert verdict(resolver, signed(world.globex.secret, raw), raw) == (
        401,
        "bad_signature",
        "acme",
    )
    hit = resolver.resolve({"x-vapi-secret": world.acme.secret}, raw)
    assert (hit.org_id, hit.phone_number_id) == (world.acme.org_id, world.globex_number)


def test_an_assistant_remapped_to_another_org_follows_at_once_on_notify(
    world: World, state: StateWriter, listening: WebhookResolver
) -> None:
    resolver = listening
    raw = message(type="status-update", call={"assistantId": world.globex.outbound})
    assert verdict(resolver, {"x-vapi-secret": world.globex.secret}, raw)[0] == 200
    state.assistants.forget(world.globex.org_id, "outbound", world.globex.outbound)
    state.assistants.record(world.acme.org_id, "outbound", world.globex.outbound, "moved", {})
    until(resolver, {"x-vapi-secret": world.acme.secret}, raw, (200, "accepted", "acme"))
    assert verdict(resolver, signed(world.globex.secret, raw), raw) == (
        401,
        "bad_signature",
        "acme",
    )


def test_without_notify_a_move_counts_once_the_ttl_has_passed(
    world: World, state: StateWriter, master_key: MasterKey
) -> None:
    """No listener (behind a transaction pooler): the TTL bounds how long the old org keeps
    a moved number or assistant."""
    ttl = 0.3
    resolver = WebhookResolver(state, master_key, ttl_s=ttl, negative_ttl_s=ttl)
    by_number = number_body(world.globex_number)
    by_assistant = message(call={"assistantId": world.globex.inbound})
    for raw in (by_number, by_assistant):
        assert verdict(resolver, {"x-vapi-secret": world.globex.secret}, raw)[0] == 200
    state.resources.forget(world.globex.org_id, "phoneNumber", "+15550170002", world.globex_number)
    state.resources.record(
        world.acme.org_id, "phoneNumber", "+15550170002", world.globex_number, {}
    )
    state.assistants.forget(world.globex.org_id, "inbound", world.globex.inbound)
    state.assistants.record(world.acme.org_id, "inbound", world.globex.inbound, "moved", {})
    time.sleep(ttl + 0.05)
    for raw in (by_number, by_assistant):
        assert verdict(resolver, {"x-vapi-secret": world.globex.secret}, raw) == (
            401,
            "bad_secret",
            "acme",
        )
        assert verdict(resolver, {"x-vapi-secret": world.acme.secret}, raw) == (
            200,
            "accepted",
            "acme",
        )


def test_a_rotated_then_revoked_secret_stops_at_once_on_notify(
    world: World, state: StateWriter, master_key: MasterKey, listening: WebhookResolver
) -> None:
    """globex's secret leaks; globex rotates it and ends the grace, then deactivates the
    credential: each change counts at once (entries cached for 300 s), for every id kind,
    and acme's secret is never accepted meanwhile."""
    resolver = listening
    globex = world.globex
    bodies = [
        message(call={"assistantId": globex.inbound}),
        number_body(world.globex_number),
        message(type="assistant-request", call={"orgId": ACCOUNT["globex"]}),
    ]
    for raw in bodies:
        assert verdict(resolver, {"x-vapi-secret": globex.secret}, raw)[0] == 200
    store_secret(state, master_key, globex.org_id, "whsec-globex-rotated")
    set_previous_valid_until(state, globex.org_id, -1)  # no grace: the leaked one is over
    for raw in bodies:
        until(resolver, {"x-vapi-secret": globex.secret}, raw, (401, "bad_secret", "globex"))
        assert verdict(resolver, signed(globex.secret, raw), raw) == (
            401,
            "bad_signature",
            "globex",
        )
        assert verdict(resolver, {"x-vapi-secret": "whsec-globex-rotated"}, raw)[0] == 200
        assert verdict(resolver, {"x-vapi-secret": world.acme.secret}, raw)[:2] == (
            401,
            "bad_secret",
        )
    state.credentials.deactivate(globex.org_id, "vapi")
    for raw in bodies:
        until(
            resolver,
            {"x-vapi-secret": "whsec-globex-rotated"},
            raw,
            (401, "bad_secret", "globex"),
        )
        with pytest.raises(WebhookError, match=NO_SECRET):
            resolver.resolve({"x-vapi-secret": "whsec-globex-rotated"}, raw)


def test_without_notify_a_rotated_secret_stops_with_the_ttl_or_its_grace(
    world: World, state: StateWriter, master_key: MasterKey
) -> None:
    globex = world.globex
    raw = message(call={"assistantId": globex.inbound})
    # the TTL bounds an entry
    resolver = WebhookResolver(state, master_key, ttl_s=0.3)
    assert verdict(resolver, {"x-vapi-secret": globex.secret}, raw)[0] == 200
    store_secret(state, master_key, globex.org_id, "whsec-globex-2")
    set_previous_valid_until(state, globex.org_id, -1)
    time.sleep(0.35)
    assert verdict(resolver, {"x-vapi-secret": globex.secret}, raw) == (
        401,
        "bad_secret",
        "globex",
    )
    # an entry holding a replaced secret expires with that secret's grace, whatever the TTL
    store_secret(state, master_key, globex.org_id, "whsec-globex-3")
    set_previous_valid_until(state, globex.org_id, 0.5)
    resolver = WebhookResolver(state, master_key, ttl_s=3600)
    assert verdict(resolver, signed("whsec-globex-2", raw), raw)[0] == 200
    time.sleep(0.7)
    assert verdict(resolver, signed("whsec-globex-2", raw), raw) == (
        401,
        "bad_signature",
        "globex",
    )
    assert verdict(resolver, signed("whsec-globex-3", raw), raw)[0] == 200


# --- the victim's credential missing or broken ---------------------------------------------


def test_a_victim_without_a_usable_credential_never_falls_back_to_the_attackers_account(
    world: World, state: StateWriter, master_key: MasterKey
) -> None:
    """globex's assistant or number beside acme's account, on acme's secret: globex's
    webhook even when globex's credential does not decrypt (503) or is inactive (401 "no
    active webhook secret"); never resolved by the account named beside it."""
    acme, globex = world.acme, world.globex
    bodies = [
        number_body(world.globex_number, account=ACCOUNT["acme"], assistant_id=globex.inbound),
        number_body(world.globex_number, account=ACCOUNT["acme"]),
        tool_calls(world, {"assistantId": globex.outbound, "orgId": ACCOUNT["acme"]}),
    ]
    _, acme_token = vapi_row(state, "acme")
    set_vapi_row(state, globex.org_id, acme_token)  # acme's credential copied onto globex
    resolver = WebhookResolver(state, master_key)
    for raw in bodies:
        for mechanism in ("secret", "signature"):
            assert verdict(resolver, creds(acme, mechanism, raw), raw) == (
                503,
                "unavailable",
                "globex",
            )
    state.credentials.deactivate(globex.org_id, "vapi")
    resolver = WebhookResolver(state, master_key)
    for raw in bodies:
        for mechanism in ("secret", "signature"):
            with pytest.raises(WebhookError) as caught:
                resolver.resolve(creds(acme, mechanism, raw), raw)
            assert (caught.value.status, caught.value.outcome, str(caught.value)) == (
                401,
                "bad_secret",
                NO_SECRET,
            )
            assert getattr(caught.value, "org_slug", None) == "globex"


# --- over HTTP --------------------------------------------------------------------------


def test_over_http_the_attacker_gets_401_and_the_victims_service_gets_nothing(
    world: World, state: StateWriter, master_key: MasterKey
) -> None:
    """Each org forwards to its own service. acme's credential on globex's webhooks: 401
    with the documented bodies and outcomes, nothing forwarded anywhere. acme's own webhook,
    whatever globex ids and forged `x-reconciler-*` headers it carries, reaches acme's service
    only, with headers naming acme alone."""
    received: list[tuple[str, list[tuple[str, str]]]] = []

    async def hook(request: Request) -> Response:
        headers = [(k.decode(), v.decode()) for k, v in request.headers.raw]
        received.append((request.url.path, headers))
        return Response(b'{"results": []}', media_type="application/json")

    acme, globex = world.acme, world.globex
    downstream = Starlette(routes=[Route("/{path:path}", hook, methods=["POST"])])
    with served(downstream) as target:
        for org in (acme, globex):
            with state.pool.connection() as conn:
                conn.execute(
                    "UPDATE organizations SET webhook_forward_url = %s WHERE id = %s",
                    (f"{target}/{org.slug}", org.org_id),
                )
        resolver = WebhookResolver(state, master_key)
        app = webhook_app(resolver, forward_policy=LOCAL)
        with served(app) as url, httpx.Client(base_url=url, timeout=10) as http:
            before = outcomes()
            victim = tool_calls(world, {"assistantId": globex.outbound})
            answer = http.post(PATH, content=victim, headers={"x-vapi-secret": acme.secret})
            assert (answer.status_code, answer.json()) == (
                401,
                {"error": "bad or missing x-vapi-secret"},
            )
            by_number = number_body(world.globex_number)
            answer = http.post(PATH, content=by_number, headers=signed(acme.secret, by_number))
            assert (answer.status_code, answer.json()) == (401, {"error": "bad x-signature"})
            twice = (
                f'{{"message": {{"type": "tool-calls", "call": {{"assistantId": "{acme.outbound}",'
                f' "assistantId": "{globex.outbound}"}}}}}}'
            ).encode()
            answer = http.post(PATH, content=twice, headers={"x-vapi-secret": acme.secret})
            assert answer.status_code == 400
            mixed = number_body(
                world.globex_number,
                kind="tool-calls",
                account=ACCOUNT["globex"],
                assistant_id=acme.outbound,
            )
            forged = [
                ("x-vapi-secret", acme.secret),
                ("x-reconciler-org-id", globex.org_id),
                ("x-reconciler-org-slug", "globex"),
                ("x-reconciler-assistant-id", globex.outbound),
                (PHONE_NUMBER_ID_HEADER, world.globex_number),
                ("content-type", "application/json"),
            ]
            answer = http.post(PATH, content=mixed, headers=forged)
            assert (answer.status_code, answer.json()) == (200, {"results": []})
            assert counted(before) == {
                "bad_secret": 1,
                "bad_signature": 1,
                "malformed": 1,
                "forwarded": 1,
            }
    [(path, headers)] = received  # globex's service got nothing
    assert path == "/acme"
    named = {k: [v for key, v in headers if key == k] for k, _ in headers}
    assert named["x-reconciler-org-id"] == [acme.org_id]
    assert named["x-reconciler-org-slug"] == ["acme"]
    assert named["x-reconciler-assistant-id"] == [acme.outbound]
    assert PHONE_NUMBER_ID_HEADER not in named
    assert "x-vapi-secret" not in named
