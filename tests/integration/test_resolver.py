"""The webhook resolver against real Postgres: success, each failure, the cache, and every
bad input mapped to one of its errors (issue 5)."""

from __future__ import annotations

import gc
import hashlib
import hmac
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from psycopg_pool import ConnectionPool

from reconciler.controller.run import Controller
from reconciler.redact import printable
from reconciler.secrets.crypto import MasterKey
from reconciler.spec.loader import load_tree
from reconciler.state.db import open_pool
from reconciler.state.store import AssistantReader, Db, StateError, StateReader, StateWriter
from reconciler.webhooks.listen import UsageFlusher
from reconciler.webhooks.resolver import (
    MAX_BODY_BYTES,
    BadSecret,
    BadSignature,
    BodyTooLarge,
    MalformedWebhook,
    ResolvedWebhook,
    UnknownAssistant,
    VerificationUnavailable,
    WebhookError,
    WebhookResolver,
)
from tests.helpers import SlowReader, SpecDir, org_doc


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
            " JOIN organizations o ON o.id = m.org_id WHERE m.inactive_at IS NULL"
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


def assert_safe(exc: WebhookError, *secrets: str) -> None:
    """One short line, no control character, no secret."""
    text = str(exc)
    assert text
    assert printable(text) == text  # no newline, escape sequence, bidi override, NUL, ...
    assert len(text) <= 120
    for secret in secrets:
        assert secret not in text


def call_body(call: Any) -> bytes:
    return json.dumps({"message": {"type": "status-update", "call": call}}).encode()


@pytest.fixture
def resolver(state: StateWriter, master_key: MasterKey) -> WebhookResolver:
    return WebhookResolver(state, master_key)


DEEP = 50_000  # the longest opener times this stays under MAX_BODY_BYTES


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"",
        b"[]",
        b"null",
        b"3",
        b"1e999",
        b"1" * 5000,  # more digits than int() takes: a ValueError
        b'"a string"',
        b"true",
        b'[{"message": {"call": {"assistantId": "a"}}}]',
        b'{"message": 3}',
        b'{"message": [{"call": {"assistantId": "a"}}]}',
        b'{"message": {"type": "assistant-request", "call": {}}}',
        b'{"message": {"type": "assistant-request"}}',
        call_body([]),
        call_body([{"assistantId": "a"}]),
        call_body("asst-1"),
        call_body(7),
        call_body({"assistantId": 42}),
        call_body({"assistantId": 4.2}),
        call_body({"assistantId": ""}),
        call_body({"assistantId": ["a"]}),
        call_body({"assistantId": {"id": "a"}}),
        call_body({"assistantId": True}),
        # a wrong call.assistantId is not silently replaced by the top-level one
        json.dumps({"message": {"call": {"assistantId": 1}, "assistantId": "asst-1"}}).encode(),
        json.dumps({"message": {"assistantId": ""}}).encode(),
        b"\xff\xfe",
        b"\xef\xbb\xbf" + call_body({"assistantId": "asst-1"}),  # a UTF-8 BOM
        json.dumps({"message": {"call": {"assistantId": "asst-1"}}}).encode("utf-16"),
        '{"message": {"type": "\u00e9", "call": {"assistantId": "a"}}}'.encode("latin-1"),
        b"[" * DEEP,
        b"[" * DEEP + b"]" * DEEP,
        b'{"message": ' * DEEP,
        b'{"message": {"call": ' + b"[" * DEEP,
        b'{"message": {"type": ' + b'{"a": ' * DEEP,
    ],
    ids=lambda raw: printable(raw[:40]),
)
def test_malformed_bodies(raw: bytes, state: StateWriter, resolver: WebhookResolver) -> None:
    before = state.queries
    with pytest.raises(MalformedWebhook) as exc:
        resolver.resolve({"x-vapi-secret": "x"}, raw)
    assert exc.value.status == 400
    assert_safe(exc.value)
    assert state.queries == before


@pytest.mark.parametrize("raw", ["a str body", None, 123, ["a"], {"message": {}}])
def test_a_body_that_is_not_bytes_is_malformed(raw: Any, resolver: WebhookResolver) -> None:
    with pytest.raises(MalformedWebhook):
        resolver.resolve({}, raw)


@pytest.mark.parametrize(
    "assistant_id",
    [
        "\x00",
        "asst\x00-1",
        "a\nb",
        "asst\r\nX-Forged: 1",
        "\x1b[31mred",
        "\x7f",
        "a b",
        " asst",
        "\u202eevil",
        "\u200b",
        "caf\u00e9",
        "\U0001f600",
        "x" * 129,
        "x" * 1_000_000,
    ],
    ids=lambda v: printable(v, 20),
)
def test_bad_assistant_ids_are_malformed_without_a_query(
    assistant_id: str, state: StateWriter, resolver: WebhookResolver
) -> None:
    before = state.queries
    for raw in (
        body(assistant_id),
        json.dumps({"message": {"type": "transcript", "assistantId": assistant_id}}).encode(),
    ):
        with pytest.raises(MalformedWebhook) as exc:
            resolver.resolve({"x-vapi-secret": "x"}, raw)
        assert_safe(exc.value)
        assert assistant_id not in str(exc.value)
    assert state.queries == before  # a NUL never reaches Postgres (psycopg's DataError)


def test_lone_surrogate_assistant_id_is_malformed(
    state: StateWriter, resolver: WebhookResolver
) -> None:
    before = state.queries
    with pytest.raises(MalformedWebhook):
        resolver.resolve({}, b'{"message": {"call": {"assistantId": "ab\\ud800"}}}')
    assert state.queries == before


def test_unknown_assistant_message_echoes_only_a_short_prefix(
    state: StateWriter, resolver: WebhookResolver
) -> None:
    longest = "z" * 100 + "\\'\"<>{}" + "y" * 21  # 128 visible characters
    assert len(longest) == 128
    before = state.queries
    with pytest.raises(UnknownAssistant) as exc:
        resolver.resolve({}, body(longest))
    assert state.queries == before + 1  # the longest valid id is looked up
    assert exc.value.status == 404
    assert_safe(exc.value)
    assert "z" * 37 in str(exc.value)
    assert "z" * 41 not in str(exc.value)
    assert "y" not in str(exc.value)


def test_unknown_ids_are_cached_briefly_and_invalidation_resolves_them_at_once(
    applied: dict, state: StateWriter, controller: Controller
) -> None:
    resolver = WebhookResolver(state, controller.key, negative_ttl_s=300)
    ids = applied["acme"]
    fresh = f"asst-{uuid.uuid4()}"
    before = state.queries
    for _ in range(3):
        with pytest.raises(UnknownAssistant):
            resolver.resolve({"x-vapi-secret": ids["secret"]}, body(fresh))
    assert state.queries - before == 1  # cached negatively
    with state.pool.connection() as conn:
        conn.execute(
            "UPDATE assistant_org_mapping SET vapi_assistant_id = %s WHERE vapi_assistant_id = %s",
            (fresh, ids["inbound"]),
        )
    with pytest.raises(UnknownAssistant):  # still cached: nobody told this resolver
        resolver.resolve({"x-vapi-secret": ids["secret"]}, body(fresh))
    resolver.invalidate(fresh)  # what the NOTIFY listener does
    hit = resolver.resolve({"x-vapi-secret": ids["secret"]}, body(fresh))
    assert (hit.slug, hit.role) == ("acme", "inbound")


def test_negative_entries_expire(applied: dict, state: StateWriter, controller: Controller) -> None:
    resolver = WebhookResolver(state, controller.key, negative_ttl_s=0.05)
    fresh = f"asst-{uuid.uuid4()}"
    with pytest.raises(UnknownAssistant):
        resolver.resolve({}, body(fresh))
    time.sleep(0.1)
    with pytest.raises(UnknownAssistant):
        resolver.resolve({}, body(fresh))
    assert resolver.misses == 2


def test_body_size_is_bounded(applied: dict, state: StateWriter, controller: Controller) -> None:
    resolver = WebhookResolver(state, controller.key)
    ids = applied["acme"]
    raw = body(ids["inbound"])
    exactly = raw + b" " * (MAX_BODY_BYTES - len(raw))
    assert resolver.resolve({"x-vapi-secret": ids["secret"]}, exactly).slug == "acme"
    before = state.queries
    for too_big in (exactly + b" ", bytearray(exactly + b" "), memoryview(exactly + b"\xff")):
        with pytest.raises(BodyTooLarge) as exc:
            resolver.resolve({"x-vapi-secret": ids["secret"]}, too_big)  # type: ignore[arg-type]
        assert exc.value.status == 413
        assert_safe(exc.value)
    assert state.queries == before


# --- the org's stored credential -----------------------------------------------------------


def vapi_row(state: StateWriter, slug: str) -> tuple[str, str]:
    with state.pool.connection() as conn:
        row = conn.execute(
            "SELECT c.org_id::text, c.encrypted_config FROM org_credentials c"
            " JOIN organizations o ON o.id = c.org_id WHERE o.slug = %s AND c.provider = 'vapi'",
            (slug,),
        ).fetchone()
    assert row is not None
    return row[0], row[1]


def set_vapi_row(state: StateWriter, org_id: str, encrypted: str) -> None:
    with state.pool.connection() as conn:
        conn.execute(
            "UPDATE org_credentials SET encrypted_config = %s"
            " WHERE org_id = %s AND provider = 'vapi'",
            (encrypted, org_id),
        )


def assert_unavailable(exc: VerificationUnavailable, slug: str | None, *secrets: str) -> None:
    assert exc.status == 503
    assert str(exc) == "cannot verify this webhook now"  # neither the org nor the reason
    assert exc.org_slug == slug
    assert exc.reason
    assert_safe(exc, *secrets)


def test_credential_under_another_master_key_is_unavailable(
    applied: dict, state: StateWriter
) -> None:
    resolver = WebhookResolver(state, MasterKey.generate())
    ids = applied["acme"]
    with pytest.raises(VerificationUnavailable) as exc:
        resolver.resolve({"x-vapi-secret": ids["secret"]}, body(ids["inbound"]))
    assert_unavailable(exc.value, "acme", ids["secret"])
    assert "does not decrypt" in exc.value.reason


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda token, _other: "garbage",
        lambda token, _other: "v1:",
        lambda token, _other: "v1:AAAA",
        lambda token, _other: "v1:!!not base64!!",
        lambda token, _other: "v2" + token[2:],
        lambda token, _other: token[:-6] + ("AAAAAA" if token[-6:] != "AAAAAA" else "BBBBBB"),
        lambda token, _other: token[:20] + token[21:],
        lambda _token, other: other,  # another org's row: its AAD does not match
    ],
    ids=["garbage", "empty", "short", "not-base64", "version", "tail", "cut", "other-org"],
)
def test_tampered_credential_is_unavailable_and_not_cached(
    corrupt: Any, applied: dict, state: StateWriter, controller: Controller
) -> None:
    resolver = WebhookResolver(state, controller.key)
    ids = applied["acme"]
    org_id, token = vapi_row(state, "acme")
    _, other = vapi_row(state, "globex")
    set_vapi_row(state, org_id, corrupt(token, other))
    for _ in range(2):
        with pytest.raises(VerificationUnavailable) as exc:
            resolver.resolve({"x-vapi-secret": ids["secret"]}, body(ids["inbound"]))
        assert_unavailable(exc.value, "acme", ids["secret"], applied["globex"]["secret"])
    assert resolver.misses == 2  # a failure is not cached ...
    set_vapi_row(state, org_id, token)
    hit = resolver.resolve({"x-vapi-secret": ids["secret"]}, body(ids["inbound"]))
    assert hit.slug == "acme"  # ... so the repaired row works at once


@pytest.mark.parametrize(
    "config",
    [
        {"apiKey": "k"},
        {"apiKey": "k", "webhookSecret": ""},
        {"apiKey": "k", "webhookSecret": "   "},
        {"apiKey": "k", "webhookSecret": None},
        {"apiKey": "k", "webhookSecret": 123},
        {"apiKey": "k", "webhookSecret": ["s"]},
        {"apiKey": "k", "webhookSecret": "lone \ud800 surrogate"},
    ],
    ids=["missing", "empty", "blank", "null", "number", "list", "surrogate"],
)
def test_decrypted_config_without_a_usable_secret_is_unavailable(
    config: dict[str, Any], applied: dict, state: StateWriter, controller: Controller
) -> None:
    ids = applied["acme"]
    org_id, _ = vapi_row(state, "acme")
    set_vapi_row(state, org_id, controller.key.encrypt(config, aad=f"{org_id}:vapi"))
    resolver = WebhookResolver(state, controller.key)
    for sent in ("", "   ", ids["secret"]):  # an empty secret never matches an empty header
        with pytest.raises(VerificationUnavailable) as exc:
            resolver.resolve({"x-vapi-secret": sent}, body(ids["inbound"]))
        assert_unavailable(exc.value, "acme", ids["secret"])
        assert "webhookSecret" in exc.value.reason or "Unicode" in exc.value.reason


def test_org_without_active_credential_is_refused(
    applied: dict, state: StateWriter, controller: Controller
) -> None:
    ids = applied["acme"]
    org_id, _ = vapi_row(state, "acme")
    state.credentials.deactivate(org_id, "vapi")
    with pytest.raises(BadSecret) as exc:
        WebhookResolver(state, controller.key).resolve(
            {"x-vapi-secret": ids["secret"]}, body(ids["inbound"])
        )
    assert exc.value.org_slug == "acme"
    assert_safe(exc.value, ids["secret"], "acme")


# --- the database unavailable --------------------------------------------------------------


@pytest.fixture
def own_pool(database_url: str) -> Iterator[ConnectionPool]:
    """A pool of its own (one connection), so a test can kill or close it."""
    pool = open_pool(database_url, max_size=1, name=f"resolver-test-{uuid.uuid4().hex[:8]}")
    yield pool
    pool.close()


def test_closed_pool_is_unavailable(
    own_pool: ConnectionPool, master_key: MasterKey, state: StateWriter
) -> None:
    own_pool.close()
    resolver = WebhookResolver(StateReader(own_pool), master_key)
    with pytest.raises(VerificationUnavailable) as exc:
        resolver.resolve({"x-vapi-secret": "s"}, body(str(uuid.uuid4())))
    assert_unavailable(exc.value, None)
    assert "database" in exc.value.reason


def test_terminated_connection_is_replaced_without_an_error(
    applied: dict, own_pool: ConnectionPool, state: StateWriter, controller: Controller
) -> None:
    resolver = WebhookResolver(StateReader(own_pool), controller.key)
    acme, globex = applied["acme"], applied["globex"]
    assert resolver.resolve({"x-vapi-secret": acme["secret"]}, body(acme["inbound"]))
    with state.pool.connection() as conn:
        killed = conn.execute(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = %s AND datname = current_database()) t",
            (own_pool.name,),
        ).fetchone()
    assert killed == (1,)
    deadline = time.monotonic() + 10  # the backend exits (and its socket closes) just after
    while time.monotonic() < deadline:
        with state.pool.connection() as conn:
            left = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                (own_pool.name,),
            ).fetchone()
        if left == (0,):
            break
        time.sleep(0.02)
    # a cached id needs no query, so it still resolves
    assert resolver.resolve({"x-vapi-secret": acme["secret"]}, body(acme["inbound"]))
    # the pool checks a connection before handing it out: the dead one is replaced, so the
    # next lookup is answered, not refused (a restarted Postgres costs a reconnect)
    hit = resolver.resolve({"x-vapi-secret": globex["secret"]}, body(globex["inbound"]))
    assert hit.slug == "globex"


# --- headers -------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [None, 42, 1.5, ["s"], {"v": "s"}, ("s",)])
def test_secret_header_that_is_not_text_is_malformed(
    value: Any, applied: dict, state: StateWriter, controller: Controller
) -> None:
    ids = applied["acme"]
    before = state.queries
    with pytest.raises(MalformedWebhook) as exc:
        WebhookResolver(state, controller.key).resolve(
            {"X-Vapi-Secret": value}, body(ids["inbound"])
        )
    assert_safe(exc.value, ids["secret"])
    assert state.queries == before


@pytest.mark.parametrize(
    "headers",
    [
        {"x-vapi-secret": "{secret}", "X-Vapi-Secret": "{secret}"},
        {"x-vapi-secret": "{secret}", "X-VAPI-SECRET": "forged"},
        {"X-VAPI-SECRET": "forged", "x-vapi-secret": "{secret}"},
        {"x-vapi-secret": "{secret}", b"x-vapi-secret": b"{secret}"},
    ],
    ids=["same", "second-wrong", "first-wrong", "str-and-bytes"],
)
def test_secret_header_given_twice_is_malformed(
    headers: dict[Any, Any], applied: dict, state: StateWriter, controller: Controller
) -> None:
    secret = applied["acme"]["secret"]
    filled = {
        k: (
            v.replace("{secret}", secret)
            if isinstance(v, str)
            else v.replace(b"{secret}", secret.encode())
        )
        for k, v in headers.items()
    }
    with pytest.raises(MalformedWebhook) as exc:
        WebhookResolver(state, controller.key).resolve(filled, body(applied["acme"]["inbound"]))
    assert_safe(exc.value, secret)


@pytest.mark.parametrize(
    "headers", [None, [("x-vapi-secret", "s")], "x-vapi-secret: s", b"x-vapi-secret", 3]
)
def test_headers_that_are_not_a_mapping_are_malformed(
    headers: Any, resolver: WebhookResolver
) -> None:
    with pytest.raises(MalformedWebhook):
        resolver.resolve(headers, body("asst-1"))


def test_header_forms(applied: dict, state: StateWriter, controller: Controller) -> None:
    resolver = WebhookResolver(state, controller.key)
    ids = applied["acme"]
    secret, raw = ids["secret"], body(ids["inbound"])
    # bytes names and values, as ASGI servers hand them over
    assert resolver.resolve({b"X-Vapi-Secret": secret.encode()}, raw).slug == "acme"
    assert resolver.resolve({"x-vapi-secret": bytearray(secret.encode())}, raw).slug == "acme"
    # other headers are not read, whatever their types
    odd: dict[Any, Any] = {1: 2, None: None, b"\xff": ["x"], "content-type": 3.5}
    assert resolver.resolve({**odd, "x-vapi-secret": secret}, raw).slug == "acme"
    # wrong in every form, never a crash: empty, padded, non-ASCII, lone surrogate, binary
    for wrong in ("", f" {secret}", f"{secret}\x00", "s\u00e9cret", "\ud800", b"\xff\x00"):
        with pytest.raises(BadSecret) as exc:
            resolver.resolve({"x-vapi-secret": wrong}, raw)
        assert_safe(exc.value, secret, "acme")
    # a look-alike name is not the secret header
    with pytest.raises(BadSecret):
        resolver.resolve({"x-vapi-\u017fecret": secret}, raw)


def test_secret_is_compared_in_constant_time(
    applied: dict, state: StateWriter, controller: Controller, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hmac

    calls: list[tuple[int, int]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    ids = applied["acme"]
    with pytest.raises(BadSecret):
        WebhookResolver(state, controller.key).resolve({"x-vapi-secret": "x"}, body(ids["inbound"]))
    assert calls == [(32, 32)]  # digests of equal length, whatever the length of the input


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


# --- any input -----------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=16,
)
OPENERS = [b"[", b'{"a": ', b'{"message": ', b'{"message": {"call": ', b'{"message": {"type": [']


@pytest.fixture
def half_broken(applied: dict, state: StateWriter) -> dict[str, dict[str, str]]:
    """`applied`, with globex's stored credential replaced by acme's (it no longer decrypts:
    503), so that arbitrary input can reach every outcome."""
    _, acme_token = vapi_row(state, "acme")
    globex_id, _ = vapi_row(state, "globex")
    set_vapi_row(state, globex_id, acme_token)
    return applied


SECRET_NAMES = ["x-vapi-secret", "X-Vapi-Secret", "X-VAPI-SECRET", b"x-vapi-secret"]


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(data=st.data())
def test_any_input_resolves_or_raises_a_webhook_error(
    data: st.DataObject, half_broken: dict, state: StateWriter, controller: Controller
) -> None:
    resolver = WebhookResolver(state, controller.key)
    known = [ids[role] for ids in half_broken.values() for role in ("inbound", "outbound")]
    secrets = [ids["secret"] for ids in half_broken.values()]
    assistant_ids = (
        st.sampled_from(known)
        | st.uuids().map(str)
        | st.text(max_size=140)
        | st.text(st.characters(max_codepoint=0x7F), max_size=140)
        | JSON
    )
    call = st.fixed_dictionaries({}, optional={"assistantId": assistant_ids}) | JSON
    message = st.fixed_dictionaries(
        {}, optional={"type": JSON, "call": call, "assistantId": assistant_ids}
    )
    documents = (
        st.builds(
            lambda kind, aid: {"message": {"type": kind, "call": {"assistantId": aid}}},
            st.text(max_size=20),
            assistant_ids,
        )
        | st.fixed_dictionaries({"message": message})
        | JSON
    )
    encoded = documents.map(lambda doc: json.dumps(doc).encode())
    bodies = (
        encoded
        | encoded.map(lambda raw: raw.decode().encode("utf-16"))
        | st.binary(max_size=200)
        | st.builds(lambda n, opener: opener * n, st.integers(1, 120_000), st.sampled_from(OPENERS))
        | st.integers(1, 5_000).map(lambda n: b"[" * n + b"]" * n)
        | st.just(b" " * (MAX_BODY_BYTES + 1))
    )
    names = st.sampled_from(SECRET_NAMES) | st.text(max_size=20) | st.binary(max_size=20)
    values = (
        st.sampled_from(secrets)
        | st.sampled_from(secrets).map(str.encode)
        | st.text(max_size=40)
        | st.binary(max_size=40)
        | st.none()
        | st.integers()
        | st.lists(st.text(max_size=5), max_size=2)
    )
    any_headers = st.dictionaries(names | st.integers() | st.none(), values, max_size=4)
    one_secret = st.builds(
        lambda name, value, extra: {**extra, name: value},
        st.sampled_from(SECRET_NAMES),
        values,
        st.dictionaries(names, values, max_size=2),
    )
    headers: Mapping[Any, Any] = data.draw(one_secret | any_headers)
    raw = data.draw(bodies)
    outcome = resolve_or_error(resolver, headers, raw)
    event(type(outcome).__name__)  # --hypothesis-show-statistics: every outcome is reached
    if isinstance(outcome, WebhookError):
        assert outcome.status in {400, 401, 404, 413, 503}
        assert_safe(outcome, *secrets)
        if len(raw) > 100:
            assert raw.decode("utf-8", "replace") not in str(outcome)
    else:
        assert isinstance(outcome, ResolvedWebhook)
        assert (outcome.slug, outcome.assistant_id) in [
            ("acme", half_broken["acme"]["inbound"]),
            ("acme", half_broken["acme"]["outbound"]),
        ]
        secret = half_broken["acme"]["secret"]
        sent = [v for k, v in headers.items() if is_secret_name(k)]
        assert sent in ([secret], [secret.encode()])


def is_secret_name(name: object) -> bool:
    text = name.decode("latin-1") if isinstance(name, bytes) else name
    return isinstance(text, str) and text.isascii() and text.lower() == "x-vapi-secret"


def resolve_or_error(
    resolver: WebhookResolver, headers: Mapping[Any, Any], raw: bytes
) -> ResolvedWebhook | WebhookError:
    """What `resolve` gives; anything but a WebhookError propagates and fails the test."""
    try:
        return resolver.resolve(headers, raw)
    except WebhookError as exc:
        return exc


# --- seeded orgs (straight into the store, real encrypted credentials) -----------------------


@dataclass(frozen=True)
class Org:
    org_id: str
    slug: str
    secret: str
    inbound: str
    outbound: str


def store_secret(state: StateWriter, key: MasterKey, org_id: str, secret: str) -> None:
    """The org's Vapi credential; storing a different one keeps this as the previous one."""
    config = {"apiKey": f"key-{uuid.uuid4().hex[:8]}", "webhookSecret": secret}
    state.credentials.store(
        org_id, "vapi", key.encrypt(config, aad=f"{org_id}:vapi"), key.fingerprint(config)
    )


def seed_org(
    state: StateWriter,
    key: MasterKey,
    slug: str,
    *,
    secret: str | None = None,
    forward_url: str | None = None,
) -> Org:
    org_id = str(uuid.uuid4())
    secret = secret or f"whsec-{slug}-{uuid.uuid4().hex[:8]}"
    state.orgs.upsert(org_id, slug, slug.title(), forward_url)
    store_secret(state, key, org_id, secret)
    ids = {}
    for role in ("inbound", "outbound"):
        ids[role] = f"asst-{uuid.uuid4()}"
        state.assistants.record(org_id, role, ids[role], f"{slug} {role}", {})
    return Org(org_id, slug, secret, ids["inbound"], ids["outbound"])


def signed(
    secret: str, raw: bytes, *, at: float | None = None, ms: bool = False, prefix: str = ""
) -> dict[str, str]:
    """Vapi's HMAC headers, computed with the standard library (not the resolver's code)."""
    when = time.time() if at is None else at
    stamp = str(int(when * 1000)) if ms else str(int(when))
    digest = hmac.new(secret.encode(), f"{stamp}.".encode() + raw, hashlib.sha256).hexdigest()
    return {"x-signature": prefix + digest, "x-timestamp": stamp}


@pytest.fixture
def two(state: StateWriter, master_key: MasterKey) -> tuple[Org, Org]:
    return seed_org(state, master_key, "acme"), seed_org(state, master_key, "globex")


# --- HMAC signatures -------------------------------------------------------------------------


def test_hmac_signatures_verify(
    two: tuple[Org, Org], state: StateWriter, master_key: MasterKey
) -> None:
    acme, _ = two
    resolver = WebhookResolver(state, master_key)
    raw = body(acme.inbound)
    seconds, millis = signed(acme.secret, raw), signed(acme.secret, raw, ms=True)
    assert len(millis["x-timestamp"]) == 13
    accepted = [
        seconds,
        millis,
        signed(acme.secret, raw, prefix="sha256="),
        {"X-Signature": seconds["x-signature"].upper(), "X-Timestamp": seconds["x-timestamp"]},
        {k.encode(): v.encode() for k, v in seconds.items()},
        signed(acme.secret, raw, at=time.time() - 290),  # inside the window, either way
        signed(acme.secret, raw, at=time.time() + 290, ms=True),
        {"x-vapi-secret": acme.secret, **seconds},  # both sent, both good
    ]
    for headers in accepted:
        hit = resolver.resolve(headers, raw)
        assert (hit.slug, hit.assistant_id) == ("acme", acme.inbound)


def test_hmac_with_a_secret_longer_than_a_block(state: StateWriter, master_key: MasterKey) -> None:
    long = seed_org(state, master_key, "long", secret="s" * 100)  # hashed first, as HMAC does
    raw = body(long.outbound)
    resolver = WebhookResolver(state, master_key)
    assert resolver.resolve(signed(long.secret, raw), raw).slug == "long"


Refusal = Callable[[Org, Org, bytes], dict[str, str]]
REFUSALS: dict[str, tuple[Refusal, type[BadSecret]]] = {
    "wrong secret": (lambda a, g, raw: {"x-vapi-secret": a.secret + "x"}, BadSecret),
    "no credentials": (lambda a, g, raw: {}, BadSecret),
    "only a timestamp": (lambda a, g, raw: {"x-timestamp": str(int(time.time()))}, BadSecret),
    "another org's secret": (lambda a, g, raw: {"x-vapi-secret": g.secret}, BadSecret),
    "wrong signature": (lambda a, g, raw: signed(a.secret + "x", raw), BadSignature),
    "another org's signature": (lambda a, g, raw: signed(g.secret, raw), BadSignature),
    "signature of another body": (lambda a, g, raw: signed(a.secret, raw + b" "), BadSignature),
    "replayed": (lambda a, g, raw: signed(a.secret, raw, at=time.time() - 310), BadSignature),
    "replayed, ms": (
        lambda a, g, raw: signed(a.secret, raw, at=time.time() - 310, ms=True),
        BadSignature,
    ),
    "from the future": (
        lambda a, g, raw: signed(a.secret, raw, at=time.time() + 310),
        BadSignature,
    ),
    "no timestamp": (
        lambda a, g, raw: {"x-signature": signed(a.secret, raw)["x-signature"]},
        BadSignature,
    ),
    "timestamp not digits": (
        lambda a, g, raw: {**signed(a.secret, raw), "x-timestamp": f"{int(time.time())}.5"},
        BadSignature,
    ),
    "good signature, wrong secret": (
        lambda a, g, raw: {**signed(a.secret, raw), "x-vapi-secret": "wrong"},
        BadSecret,
    ),
    "good secret, wrong signature": (
        lambda a, g, raw: {**signed(g.secret, raw), "x-vapi-secret": a.secret},
        BadSignature,
    ),
    "good secret, replayed signature": (
        lambda a, g, raw: {**signed(a.secret, raw, at=1_600_000_000), "x-vapi-secret": a.secret},
        BadSignature,
    ),
}


@pytest.mark.parametrize("warm", [False, True], ids=["cold", "warm"])
@pytest.mark.parametrize("case", list(REFUSALS))
def test_refusals_on_a_cold_and_a_warm_cache(
    case: str, warm: bool, two: tuple[Org, Org], state: StateWriter, master_key: MasterKey
) -> None:
    """Every check runs on a cached entry too: a warm cache refuses what a cold one does."""
    acme, globex = two
    make, expected = REFUSALS[case]
    resolver = WebhookResolver(state, master_key)
    raw = body(acme.inbound)
    if warm:
        assert resolver.resolve({"x-vapi-secret": acme.secret}, raw).slug == "acme"
        assert resolver.resolve_cached(signed(acme.secret, raw), raw) is not None
    before = state.queries
    headers = make(acme, globex, raw)
    with pytest.raises(BadSecret) as exc:
        resolver.resolve(headers, raw)
    assert type(exc.value) is expected
    assert exc.value.status == 401
    assert exc.value.org_slug == "acme"
    assert_safe(exc.value, acme.secret, globex.secret, "acme", *headers.values())
    if warm:
        assert state.queries == before  # decided on the cached entry
        with pytest.raises(expected):
            resolver.resolve_cached(headers, raw)


@pytest.mark.parametrize("name", ["x-signature", "x-timestamp"])
def test_signature_headers_given_twice_are_malformed(
    name: str, two: tuple[Org, Org], state: StateWriter, master_key: MasterKey
) -> None:
    acme, _ = two
    raw = body(acme.inbound)
    headers: dict[Any, Any] = signed(acme.secret, raw)
    headers[name.upper().encode()] = headers[name].encode()
    before = state.queries
    with pytest.raises(MalformedWebhook):
        WebhookResolver(state, master_key).resolve(headers, raw)
    assert state.queries == before


def test_resolve_cached_answers_without_io(
    two: tuple[Org, Org], state: StateWriter, master_key: MasterKey
) -> None:
    acme, _ = two
    resolver = WebhookResolver(state, master_key)
    raw = body(acme.inbound)
    headers = {"x-vapi-secret": acme.secret}
    before = state.queries
    assert resolver.resolve_cached(headers, raw) is None  # a miss: the caller goes to a thread
    assert (state.queries, resolver.misses) == (before, 0)
    assert resolver.resolve(headers, raw).slug == "acme"
    before = state.queries
    cached = resolver.resolve_cached(headers, raw)
    assert cached is not None
    assert cached.slug == "acme"
    assert state.queries == before


# --- secret rotation -------------------------------------------------------------------------


def set_previous_valid_until(state: StateWriter, org_id: str, in_s: float | None) -> None:
    with state.pool.connection() as conn:
        conn.execute(
            "UPDATE org_credentials SET previous_valid_until ="
            " CASE WHEN %s::float8 IS NULL THEN NULL"
            " ELSE now() + make_interval(secs => %s::float8) END"
            " WHERE org_id = %s AND provider = 'vapi'",
            (in_s, in_s, org_id),
        )


def accepts(resolver: WebhookResolver, org: Org, secret: str) -> bool:
    """Whether both mechanisms accept `secret` for `org` (they must agree)."""
    raw = body(org.inbound)
    verdicts = []
    for headers in ({"x-vapi-secret": secret}, signed(secret, raw)):
        try:
            verdicts.append(resolver.resolve(headers, raw).org_id == org.org_id)
        except BadSecret:
            verdicts.append(False)
    assert verdicts[0] == verdicts[1]
    return verdicts[0]


def test_rotation_accepts_both_secrets_of_the_same_org_only(
    two: tuple[Org, Org], state: StateWriter, master_key: MasterKey
) -> None:
    acme, globex = two
    store_secret(state, master_key, acme.org_id, "whsec-acme-new")
    store_secret(state, master_key, globex.org_id, "whsec-globex-new")
    with state.pool.connection() as conn:
        rows = conn.execute(
            "SELECT previous_encrypted_config IS NOT NULL, previous_valid_until"
            " FROM org_credentials WHERE provider = 'vapi'"
        ).fetchall()
    assert rows == [(True, None), (True, None)]  # rotation in progress for both
    for warm in (False, True):
        resolver = WebhookResolver(state, master_key)
        if warm:
            resolver.resolve({"x-vapi-secret": acme.secret}, body(acme.inbound))
        assert accepts(resolver, acme, acme.secret)
        assert accepts(resolver, acme, "whsec-acme-new")
        assert not accepts(resolver, acme, globex.secret)
        assert not accepts(resolver, acme, "whsec-globex-new")


def test_replaced_secret_is_refused_once_its_grace_is_over(
    two: tuple[Org, Org], state: StateWriter, master_key: MasterKey
) -> None:
    acme, _ = two
    store_secret(state, master_key, acme.org_id, "whsec-acme-new")
    set_previous_valid_until(state, acme.org_id, 120)  # completed, in its grace
    assert accepts(WebhookResolver(state, master_key), acme, acme.secret)
    set_previous_valid_until(state, acme.org_id, -1)  # grace over
    resolver = WebhookResolver(state, master_key)
    assert not accepts(resolver, acme, acme.secret)
    assert accepts(resolver, acme, "whsec-acme-new")


def test_cached_entry_expires_with_the_replaced_secret(
    two: tuple[Org, Org], state: StateWriter, master_key: MasterKey
) -> None:
    acme, _ = two
    store_secret(state, master_key, acme.org_id, "whsec-acme-new")
    set_previous_valid_until(state, acme.org_id, 2.0)
    resolver = WebhookResolver(state, master_key, ttl_s=3600)
    assert accepts(resolver, acme, acme.secret)
    assert resolver.misses == 1
    time.sleep(2.2)  # no invalidation: the entry itself must not outlive the old secret
    assert not accepts(resolver, acme, acme.secret)
    assert accepts(resolver, acme, "whsec-acme-new")
    assert resolver.misses == 2


def test_a_replaced_credential_of_another_org_never_counts(
    two: tuple[Org, Org], state: StateWriter, master_key: MasterKey
) -> None:
    acme, globex = two
    _, globex_token = vapi_row(state, "globex")
    with state.pool.connection() as conn:
        conn.execute(
            "UPDATE org_credentials SET previous_encrypted_config = %s,"
            " previous_valid_until = NULL WHERE org_id = %s AND provider = 'vapi'",
            (globex_token, acme.org_id),
        )
    resolver = WebhookResolver(state, master_key)
    assert not accepts(resolver, acme, globex.secret)  # bound to globex's row: does not open
    assert accepts(resolver, acme, acme.secret)


# --- orgs without a credential, invalidation, single flight ---------------------------------


def test_org_without_credential_refuses_everything_until_one_is_stored(
    two: tuple[Org, Org], state: StateWriter, master_key: MasterKey
) -> None:
    acme, _ = two
    state.credentials.deactivate(acme.org_id, "vapi")
    resolver = WebhookResolver(state, master_key, negative_ttl_s=300)
    raw = body(acme.inbound)
    for headers in (
        {"x-vapi-secret": acme.secret},
        signed(acme.secret, raw),
        {"x-vapi-secret": acme.secret, **signed(acme.secret, raw)},
        {},
    ):
        with pytest.raises(BadSecret) as exc:
            resolver.resolve(headers, raw)
        assert str(exc.value) == "no active webhook secret for this assistant"
    assert resolver.misses == 1  # cached briefly: a flood costs one query
    store_secret(state, master_key, acme.org_id, "whsec-acme-2")
    assert not accepts(resolver, acme, "whsec-acme-2")  # cached, nobody said
    resolver.invalidate_org(acme.org_id)  # what NOTIFY org:<id> does
    assert accepts(resolver, acme, "whsec-acme-2")
    assert not accepts(resolver, acme, acme.secret)  # the deactivated one is no previous


def test_invalidate_org_drops_that_orgs_entries_and_unknown_ids(
    two: tuple[Org, Org], state: StateWriter, master_key: MasterKey
) -> None:
    acme, globex = two
    resolver = WebhookResolver(state, master_key)
    unknown = f"asst-{uuid.uuid4()}"
    for org, aid in ((acme, acme.inbound), (acme, acme.outbound), (globex, globex.inbound)):
        resolver.resolve({"x-vapi-secret": org.secret}, body(aid))
    with pytest.raises(UnknownAssistant):
        resolver.resolve({}, body(unknown))
    resolver.invalidate_org(acme.org_id)
    before = state.queries
    resolver.resolve({"x-vapi-secret": globex.secret}, body(globex.inbound))
    assert state.queries == before  # another org's entry is kept
    resolver.resolve({"x-vapi-secret": acme.secret}, body(acme.inbound))
    resolver.resolve({"x-vapi-secret": acme.secret}, body(acme.outbound))
    with pytest.raises(UnknownAssistant):
        resolver.resolve({}, body(unknown))
    assert state.queries == before + 3


def test_a_flood_of_one_unknown_id_costs_one_query(
    state: StateWriter, master_key: MasterKey
) -> None:
    resolver = WebhookResolver(state, master_key)
    unknown = body(f"asst-{uuid.uuid4()}")
    before = state.queries
    for _ in range(1000):
        with pytest.raises(UnknownAssistant):
            resolver.resolve({"x-vapi-secret": "s"}, unknown)
    assert state.queries - before == 1
    assert (resolver.hits, resolver.misses) == (999, 1)


def test_concurrent_misses_of_one_id_share_one_query(
    two: tuple[Org, Org], state: StateWriter, master_key: MasterKey
) -> None:
    acme, _ = two
    reader = SlowReader(state.pool)
    resolver = WebhookResolver(reader, master_key)
    unknown = body(f"asst-{uuid.uuid4()}")
    start = threading.Barrier(16)
    outcomes: list[str] = []

    def one(raw: bytes) -> None:
        start.wait()
        try:
            outcomes.append(resolver.resolve({"x-vapi-secret": acme.secret}, raw).slug)
        except WebhookError as exc:
            outcomes.append(type(exc).__name__)

    threads = [
        threading.Thread(target=one, args=(body(acme.inbound) if i % 2 else unknown,))
        for i in range(16)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["UnknownAssistant"] * 8 + ["acme"] * 8
    assert reader.queries == 2  # one per id


def test_a_change_announced_during_a_lookup_is_not_cached(
    two: tuple[Org, Org], state: StateWriter, master_key: MasterKey
) -> None:
    acme, _ = two
    resolvers: list[WebhookResolver] = []

    class RacingAssistants(AssistantReader):
        def resolve(self, vapi_assistant_id: str) -> dict[str, Any] | None:
            row = super().resolve(vapi_assistant_id)
            resolvers[0].invalidate(vapi_assistant_id)  # a commit this read did not see
            return row

    class Racing(StateReader):
        def _compose(self, db: Db) -> None:
            super()._compose(db)
            self.assistants = RacingAssistants(db)

    resolver = WebhookResolver(Racing(state.pool), master_key)
    resolvers.append(resolver)
    for _ in range(2):
        assert resolver.resolve({"x-vapi-secret": acme.secret}, body(acme.inbound))
    assert resolver.misses == 2  # the first answer may be stale: it was not kept


def test_cache_holds_digests_only(
    two: tuple[Org, Org], state: StateWriter, master_key: MasterKey
) -> None:
    acme, globex = two
    store_secret(state, master_key, acme.org_id, "whsec-acme-new")  # two keys cached
    resolver = WebhookResolver(state, master_key)
    for org in two:
        for aid in (org.inbound, org.outbound):
            resolver.resolve({"x-vapi-secret": org.secret}, body(aid))
    secrets = [acme.secret, "whsec-acme-new", globex.secret]
    seen: set[int] = set()
    todo: list[Any] = list(resolver._cache.values())
    reached = 0
    while todo:
        obj = todo.pop()
        if id(obj) in seen or isinstance(obj, type):
            continue
        seen.add(id(obj))
        reached += 1
        if isinstance(obj, str | bytes):
            text = obj if isinstance(obj, str) else obj.decode("latin-1")
            assert not any(s in text for s in secrets)
        todo.extend(gc.get_referents(obj))
    assert reached > 20  # the walk did reach into the entries and their keys


# --- last_used_at, in batches -----------------------------------------------------------------


def last_used(state: StateWriter) -> dict[str, bool]:
    with state.pool.connection() as conn:
        rows = conn.execute(
            "SELECT vapi_assistant_id, last_used_at IS NOT NULL FROM assistant_org_mapping"
        ).fetchall()
    return dict(rows)


def test_last_used_at_is_written_in_batches_off_the_request_path(
    two: tuple[Org, Org], state: StateWriter, master_key: MasterKey
) -> None:
    acme, globex = two
    resolver = WebhookResolver(state, master_key)
    flusher = UsageFlusher(resolver, state.assistants.touch_mappings, every_s=3600)
    start = state.queries
    for _ in range(20):
        resolver.resolve({"x-vapi-secret": acme.secret}, body(acme.inbound))
        resolver.resolve(signed(globex.secret, body(globex.outbound)), body(globex.outbound))
    assert not any(last_used(state).values())  # nothing written per request
    assert state.queries - start == 2  # the two lookups
    assert flusher.flush() == 2
    assert state.queries - start == 3  # one statement for the batch
    assert last_used(state) == {
        acme.inbound: True,
        acme.outbound: False,
        globex.inbound: False,
        globex.outbound: True,
    }
    assert flusher.flush() == 0  # nothing new, nothing written
    assert state.queries - start == 3


def test_a_failed_flush_is_logged_and_retried_and_close_flushes(
    two: tuple[Org, Org],
    state: StateWriter,
    master_key: MasterKey,
    caplog: pytest.LogCaptureFixture,
) -> None:
    acme, globex = two
    resolver = WebhookResolver(state, master_key)
    calls: list[list[str]] = []

    def touch(ids: list[str]) -> None:
        calls.append(ids)
        if len(calls) == 1:
            raise StateError("database unavailable: connection refused")

    flusher = UsageFlusher(resolver, touch, every_s=3600)
    resolver.resolve({"x-vapi-secret": acme.secret}, body(acme.inbound))
    with caplog.at_level(logging.WARNING, logger="reconciler.webhooks"):
        assert flusher.flush() == 0
    assert [r.getMessage() for r in caplog.records] == [
        "webhook last_used_at not written (StateError: database unavailable: connection refused)"
    ]
    resolver.resolve({"x-vapi-secret": globex.secret}, body(globex.inbound))  # unaffected
    flusher.close()
    assert calls == [[acme.inbound], sorted([acme.inbound, globex.inbound])]


def test_the_flusher_thread_writes_every_few_seconds(
    two: tuple[Org, Org], state: StateWriter, master_key: MasterKey
) -> None:
    acme, _ = two
    resolver = WebhookResolver(state, master_key)
    flusher = UsageFlusher(resolver, state.assistants.touch_mappings, every_s=0.05)
    flusher.start()
    try:
        resolver.resolve({"x-vapi-secret": acme.secret}, body(acme.inbound))
        deadline = time.monotonic() + 5
        while not last_used(state)[acme.inbound] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert last_used(state)[acme.inbound]
    finally:
        flusher.close()
