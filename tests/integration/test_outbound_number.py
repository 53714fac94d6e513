"""An org's tools, phone numbers and outbound caller number, offered to the platform's services
(issue 16): the status API (and `reconciler status`) lists them with their Vapi ids, and the
credential library gives the outbound number's Vapi id (`CredentialStore.outbound_number`).
Rows are written with `StateWriter` (the engine is not involved)."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator

import httpx
import pytest
from rich.console import Console

from reconciler.cli.render import render_status
from reconciler.credentials import CredentialStore, CredentialUnavailable, OutboundNumber
from reconciler.secrets.crypto import MasterKey
from reconciler.server.app import ServerParts, build_app
from reconciler.server.views import org_view
from reconciler.state.store import StateError, StateWriter
from tests.helpers import served

TOKEN = "admin-token-5d1e"
NUMBER = "+15550199000"
OTHER = "+15550199001"


def seed(state: StateWriter, slug: str = "acme", *, outbound: bool = True) -> str:
    """An org with a tool, two numbers (one still being created) and an outbound number; ids
    and numbers of an org other than acme are its own (one org per number)."""
    org_id = str(uuid.uuid4())
    tag = "" if slug == "acme" else f"-{slug}"
    number, other = (NUMBER, OTHER) if slug == "acme" else (f"sip:{slug}@x", f"sip:{slug}2@x")
    state.orgs.upsert(org_id, slug, slug.title(), None, number if outbound else None)
    state.resources.record(
        org_id, "tool", "book", f"tool-vapi-1{tag}", {"type": "function", "function": {}}
    )
    state.resources.record(
        org_id, "phoneNumber", number, f"pn-vapi-1{tag}", {"provider": "twilio", "number": number}
    )
    state.resources.begin_create(org_id, "phoneNumber", other, {"provider": "byo-phone-number"})
    return org_id


@pytest.fixture
def store(database_url: str, master_key: MasterKey) -> Iterator[CredentialStore]:
    store = CredentialStore.from_url(database_url, master_key, caller="outbound-svc")
    yield store
    store.close()


def test_the_status_view_lists_tools_numbers_and_the_outbound_id(state: StateWriter) -> None:
    org_id = seed(state)
    (view,) = [org_view(r) for r in state.orgs.statuses("acme")]
    assert view["id"] == org_id
    assert view["tools"] == [
        {"name": "book", "type": "function", "vapiToolId": "tool-vapi-1", "status": "ready"}
    ]
    assert view["phoneNumbers"] == [
        {
            "number": NUMBER,
            "provider": "twilio",
            "vapiPhoneNumberId": "pn-vapi-1",
            "status": "ready",
        },
        {
            "number": OTHER,
            "provider": "byo-phone-number",
            "vapiPhoneNumberId": None,
            "status": "creating",
        },
    ]
    assert view["outbound"] == {"phoneNumber": NUMBER, "phoneNumberId": "pn-vapi-1"}
    # both numbers in Vapi, the outbound one the other: its own id, not the first number's
    state.resources.record(org_id, "phoneNumber", OTHER, "pn-vapi-2", {"provider": "byo"})
    state.orgs.upsert(org_id, "acme", "Acme", None, OTHER)
    (view,) = [org_view(r) for r in state.orgs.statuses("acme")]
    assert view["outbound"] == {"phoneNumber": OTHER, "phoneNumberId": "pn-vapi-2"}
    # declared, not in Vapi yet: no id
    state.resources.forget(org_id, "phoneNumber", OTHER, "pn-vapi-2")
    (view,) = [org_view(r) for r in state.orgs.statuses("acme")]
    assert view["outbound"] == {"phoneNumber": OTHER, "phoneNumberId": None}


def test_the_status_api_serves_them(state: StateWriter) -> None:
    seed(state)
    seed(state, "bare", outbound=False)  # no outbound number, no tools of its own: empty, null
    with state.pool.connection() as conn:
        conn.execute(
            "DELETE FROM vapi_resources WHERE org_id = (SELECT id FROM organizations"
            " WHERE slug = 'bare')"
        )
    app = build_app(ServerParts(state, None, TOKEN))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with served(app) as url:
        one = httpx.get(f"{url}/api/orgs/acme", headers=auth, timeout=10)
        listing = httpx.get(f"{url}/api/orgs", headers=auth, timeout=10)
    assert one.status_code == 200
    assert one.json()["outbound"] == {"phoneNumber": NUMBER, "phoneNumberId": "pn-vapi-1"}
    assert [n["vapiPhoneNumberId"] for n in one.json()["phoneNumbers"]] == ["pn-vapi-1", None]
    assert [t["vapiToolId"] for t in one.json()["tools"]] == ["tool-vapi-1"]
    bare = next(o for o in listing.json()["orgs"] if o["slug"] == "bare")
    assert (bare["outbound"], bare["tools"], bare["phoneNumbers"]) == (None, [], [])


def test_status_org_text_names_them(state: StateWriter) -> None:
    seed(state)
    out = io.StringIO()
    views = [org_view(r) for r in state.orgs.statuses("acme")]
    render_status(views, Console(file=out, width=200, color_system=None), detail=True)
    text = out.getvalue()
    assert "tool book: tool-vapi-1 (ready)" in text
    assert f"phone number {NUMBER} (twilio): pn-vapi-1 (ready)" in text
    assert f"phone number {OTHER} (byo-phone-number): - (creating)" in text
    assert f"outbound from {NUMBER}: pn-vapi-1" in text


def test_the_credential_api_gives_the_outbound_number_id(
    state: StateWriter, store: CredentialStore
) -> None:
    org_id = seed(state)
    assert store.outbound_number(org_id) == OutboundNumber(org_id, NUMBER, "pn-vapi-1")
    assert store.outbound_number(uuid.UUID(org_id)) == OutboundNumber(org_id, NUMBER, "pn-vapi-1")
    assert store.outbound_number(org_id.upper()) == OutboundNumber(org_id, NUMBER, "pn-vapi-1")
    # the number moves to another of the org's numbers: seen at once (not cached)
    state.resources.record(org_id, "phoneNumber", OTHER, "pn-vapi-2", {"provider": "byo"})
    state.orgs.upsert(org_id, "acme", "Acme", None, OTHER)
    assert store.outbound_number(org_id) == OutboundNumber(org_id, OTHER, "pn-vapi-2")
    # declared but not in Vapi yet: the number, no id
    state.resources.forget(org_id, "phoneNumber", OTHER, "pn-vapi-2")
    assert store.outbound_number(org_id) == OutboundNumber(org_id, OTHER, None)
    # none declared, an unknown org, not a uuid, a retired org: None
    state.orgs.upsert(org_id, "acme", "Acme", None, None)
    assert store.outbound_number(org_id) is None
    assert store.outbound_number(str(uuid.uuid4())) is None
    assert store.outbound_number("not-a-uuid") is None
    retired = seed(state, "gone")
    state.orgs.retire(retired, None, "removed from specs")
    assert store.outbound_number(retired) is None
    # nothing it reads is a secret: no audit row
    stats = store.stats()
    assert stats["audit_pending"] + stats["audit_written"] == 0
    store.close()
    with pytest.raises(CredentialUnavailable):
        store.outbound_number(org_id)


class _Down:
    """A credential backend whose database is down."""

    def load_outbound(self, org_id: str) -> None:
        raise StateError("database unavailable: connection refused")


def test_the_outbound_number_of_an_unreachable_database_is_unavailable(
    master_key: MasterKey,
) -> None:
    store = CredentialStore(_Down(), master_key, caller="outbound-svc", start=False)  # type: ignore[arg-type]
    try:
        with pytest.raises(CredentialUnavailable, match=r"outbound number .*database unavailable"):
            store.outbound_number(str(uuid.uuid4()))
    finally:
        store.close()
