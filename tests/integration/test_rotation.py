"""Rotating an org's webhook secret through the reconciler never drops a webhook: until every
assistant carries the new secret (and a grace after), the old one is accepted for that org,
never for another; once the rotation completed and the grace ended, the old one is refused."""

from __future__ import annotations

import json

import pytest

from reconciler.controller.run import Controller
from reconciler.secrets.crypto import MasterKey
from reconciler.spec.loader import load_tree
from reconciler.state.store import StateWriter
from reconciler.vapi.client import http_client
from reconciler.webhooks.resolver import BadSecret, WebhookResolver
from tests.helpers import (
    FAST_RETRY,
    SpecDir,
    clear_faults,
    fault,
    key_of,
    live,
    mappings,
    org_doc,
)


def with_server(doc: dict, url: str = "https://hooks.example.com/webhooks/vapi") -> dict:
    for assistant in doc["spec"]["assistants"].values():
        assistant["server"] = {"url": url}
    return doc


def body_for(assistant_id: str) -> bytes:
    return json.dumps(
        {"message": {"type": "status-update", "call": {"assistantId": assistant_id}}}
    ).encode()


def assistant_ids(state: StateWriter, org_id: str) -> list[str]:
    """The ids of the org's assistants that its active mapping rows name, sorted."""
    return sorted(vid for _, vid, active in mappings(state.pool, org_id) if active)


def accepted(resolver: WebhookResolver, assistant_id: str, secret: str) -> bool:
    try:
        resolver.resolve({"x-vapi-secret": secret}, body_for(assistant_id))
    except BadSecret:
        return False
    return True


@pytest.mark.parametrize("warm", [False, True], ids=["cold cache", "warm cache"])
def test_secret_rotation_keeps_old_secret_until_assistants_carry_the_new_one(
    state: StateWriter, emulator: str, master_key: MasterKey, specs: SpecDir, warm: bool
) -> None:
    acme = with_server(org_doc("acme", secret="old-secret-acme"))
    other = with_server(org_doc("other", secret="secret-of-other"))
    specs.write(acme)
    specs.write(other)
    acme_id = acme["metadata"]["id"]
    with http_client(emulator, timeout_s=5) as http:
        controller = Controller(state, http, master_key, retry=FAST_RETRY, secret_grace_s=0)
        assert controller.apply(load_tree(specs.root)).ok
        ids = assistant_ids(state, acme_id)
        assert len(ids) == 2
        resolver = WebhookResolver(state, master_key)

        def fresh() -> WebhookResolver:
            """A warm resolver is the same one all along (invalidated as NOTIFY would);
            a cold one is new each time."""
            if warm:
                resolver.invalidate()
                return resolver
            return WebhookResolver(state, master_key)

        assert accepted(fresh(), ids[0], "old-secret-acme")

        # rotate, while every PATCH fails: the new credential is stored, no assistant has it
        acme["spec"]["credentials"]["vapi"]["webhookSecret"] = "new-secret-acme"
        specs.write(acme)
        fault(
            emulator, method="PATCH", path="/assistant/{id}", mode="error", status=400, times=None
        )
        report = controller.apply(load_tree(specs.root))
        (failed,) = report.failed
        assert failed.slug == "acme"
        r = fresh()
        for assistant in ids:
            assert accepted(r, assistant, "old-secret-acme")  # Vapi still sends the old one
            assert accepted(r, assistant, "new-secret-acme")
            assert not accepted(r, assistant, "secret-of-other")
            assert not accepted(r, assistant, "wrong")
        # rotated again before the first one completed: both earlier secrets stay in flight
        acme["spec"]["credentials"]["vapi"]["webhookSecret"] = "newer-secret-acme"
        specs.write(acme)
        assert [o.slug for o in controller.apply(load_tree(specs.root)).failed] == ["acme"]
        r = fresh()
        for secret in ("old-secret-acme", "new-secret-acme", "newer-secret-acme"):
            assert accepted(r, ids[0], secret), secret
        assert not accepted(r, ids[0], "secret-of-other")
        acme["spec"]["credentials"]["vapi"]["webhookSecret"] = "new-secret-acme"
        specs.write(acme)
        assert [o.slug for o in controller.apply(load_tree(specs.root)).failed] == ["acme"]
        other_ids = assistant_ids(state, other["metadata"]["id"])
        assert not accepted(r, other_ids[0], "old-secret-acme")  # never another org's
        assert accepted(r, other_ids[0], "secret-of-other")

        # the PATCHes go through: the rotation completes, grace 0: the old secret is refused
        clear_faults(emulator)
        assert controller.apply(load_tree(specs.root)).ok
        carried = {a["server"]["headers"]["x-vapi-secret"] for a in live(emulator, key_of(acme))}
        assert carried == {"new-secret-acme"}
        with state.pool.connection() as conn:  # grace 0 means the end is now: let it pass
            conn.execute(
                "UPDATE org_credentials SET previous_valid_until = now() - interval '1 ms'"
                " WHERE previous_valid_until IS NOT NULL"
            )
        r = fresh()
        for assistant in ids:
            assert not accepted(r, assistant, "old-secret-acme")
            assert accepted(r, assistant, "new-secret-acme")


def test_rotation_grace_keeps_old_secret_for_a_while(
    state: StateWriter, emulator: str, master_key: MasterKey, specs: SpecDir
) -> None:
    acme = with_server(org_doc("acme", secret="old-secret-acme"))
    specs.write(acme)
    with http_client(emulator, timeout_s=5) as http:
        controller = Controller(state, http, master_key, retry=FAST_RETRY, secret_grace_s=300)
        assert controller.apply(load_tree(specs.root)).ok
        acme["spec"]["credentials"]["vapi"]["webhookSecret"] = "new-secret-acme"
        specs.write(acme)
        assert controller.apply(load_tree(specs.root)).ok  # rotation complete at once
    ids = assistant_ids(state, acme["metadata"]["id"])
    resolver = WebhookResolver(state, master_key)
    assert accepted(resolver, ids[0], "old-secret-acme")  # within the 300 s grace
    assert accepted(resolver, ids[0], "new-secret-acme")
