"""reconciler.credentials without Postgres: the cache (TTL, LRU bound, statistics, single flight,
invalidation), the store over a fake backend (typed results that never show a value, not found,
decrypt failures, the version check, the audit queue and a failing database), the listener's
and checker's routing, caller validation, metrics and `reconciler audit --since`."""

from __future__ import annotations

import argparse
import hashlib
import logging
import random
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import generate_latest
from pydantic import SecretStr

from reconciler import metrics
from reconciler.cli.parsers import since
from reconciler.credentials import (
    AssistantOrg,
    CredentialNotFound,
    CredentialStore,
    CredentialUnavailable,
    GoogleCalendarCredentials,
    TwilioCredentials,
)
from reconciler.credentials.cache import MISS, Cache, Loaded
from reconciler.credentials.listen import (
    CREDENTIAL_CHANNEL,
    MAPPING_CHANNEL,
    Checker,
    Listener,
)
from reconciler.credentials.store import validate_caller
from reconciler.errors import ConfigError
from reconciler.secrets.crypto import KeyRing, MasterKey
from reconciler.state.store import StateError

# --- the cache -------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def loaded(value: Any, org: str | None = "org-1", *, negative: bool = False) -> Any:
    return lambda: Loaded(value, ("t", value), org, negative)


def make_cache(**kw: Any) -> tuple[Cache[Any, Any], Clock]:
    clock = Clock()
    options = {"ttl_s": 10.0, "negative_ttl_s": 2.0, "max_entries": 3} | kw
    return Cache(clock=clock, **options), clock


def test_ttl_expires_entries_and_counts_hits_misses_expiries() -> None:
    cache, clock = make_cache()
    assert cache.get("a") is MISS
    assert cache.load("a", loaded(1)) == 1
    clock.now += 9.99
    assert cache.get("a") == 1
    clock.now += 0.01  # exactly the TTL: gone
    assert cache.get("a") is MISS
    s = cache.stats
    assert (s.hits, s.misses, s.loads, s.expired, len(cache)) == (1, 1, 1, 1, 0)


def test_negative_answers_are_kept_for_the_negative_ttl_only() -> None:
    cache, clock = make_cache()
    cache.load("gone", loaded(None, negative=True))
    clock.now += 1.9
    assert cache.get("gone") is None
    clock.now += 0.2
    assert cache.get("gone") is MISS
    cache0, _ = make_cache(negative_ttl_s=0)
    cache0.load("gone", loaded(None, negative=True))
    assert cache0.get("gone") is MISS  # negative_ttl_s=0: not cached at all


def test_lru_bound_evicts_the_least_recently_used_and_counts_it() -> None:
    cache, _ = make_cache(max_entries=3)
    for key in "abc":
        cache.load(key, loaded(key))
    assert cache.get("a") == "a"  # a is now the most recently used
    cache.load("d", loaded("d"))
    assert cache.get("b") is MISS  # b was the least recently used
    assert [cache.get(k) for k in "acd"] == ["a", "c", "d"]
    assert cache.stats.evictions == 1 and len(cache) == 3
    for i in range(10):
        cache.load(f"x{i}", loaded(i))
    assert len(cache) == 3 and cache.stats.evictions == 11


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="ttl_s"):
        Cache(ttl_s=0, negative_ttl_s=1, max_entries=1)
    with pytest.raises(ValueError, match="max_entries"):
        Cache(ttl_s=1, negative_ttl_s=1, max_entries=0)


def test_invalidation_of_a_key_an_org_and_everything() -> None:
    cache, _ = make_cache(max_entries=10)
    cache.load("a1", loaded("a1", "org-a"))
    cache.load("a2", loaded("a2", "org-a"))
    cache.load("b1", loaded("b1", "org-b"))
    cache.load("unknown", loaded(None, None, negative=True))
    cache.invalidate("a1")
    assert cache.get("a1") is MISS and cache.get("a2") == "a2"
    cache.invalidate_org("org-a")
    assert cache.get("a2") is MISS and cache.get("b1") == "b1"
    assert cache.get("unknown") is None  # not an entry of org-a
    cache.invalidate_org("org-a", negatives=True)
    assert cache.get("unknown") is MISS and cache.get("b1") == "b1"
    cache.clear()
    assert cache.get("b1") is MISS and len(cache) == 0
    assert cache.stats.invalidated == 4


def test_concurrent_misses_share_one_load() -> None:
    cache, _ = make_cache()
    release = threading.Event()
    calls = []

    def slow() -> Loaded[str, Any]:  # type: ignore[type-arg]
        calls.append(1)
        release.wait(5)
        return Loaded("v", "t", "org-1")

    results: list[str] = []
    threads = [
        threading.Thread(target=lambda: results.append(cache.load("k", slow))) for _ in range(8)
    ]
    for t in threads:
        t.start()
    time.sleep(0.1)
    release.set()
    for t in threads:
        t.join(5)
    assert results == ["v"] * 8 and len(calls) == 1
    assert cache.stats.misses == 8 and cache.stats.loads == 1


def test_a_load_begun_before_an_invalidation_is_returned_but_not_stored() -> None:
    cache, _ = make_cache()
    started, release = threading.Event(), threading.Event()

    def slow() -> Any:
        started.set()
        release.wait(5)
        return Loaded("old", "t", "org-1")

    got: list[str] = []
    t = threading.Thread(target=lambda: got.append(cache.load("k", slow)))
    t.start()
    started.wait(5)
    cache.invalidate("k")  # the change was announced while the query ran
    # a read after the invalidation does not join the old load: it loads for itself
    assert cache.load("k", loaded("new")) == "new"
    release.set()
    t.join(5)
    assert got == ["old"]
    assert cache.get("k") == "new"  # the old answer never replaced the new one


def test_a_failed_load_caches_nothing_and_its_followers_load_again() -> None:
    cache, _ = make_cache()
    started, release = threading.Event(), threading.Event()

    def failing() -> Any:
        started.set()
        release.wait(5)
        raise StateError("database unavailable: x")

    errors: list[BaseException] = []

    def lead() -> None:
        try:
            cache.load("k", failing)
        except StateError as exc:
            errors.append(exc)

    t = threading.Thread(target=lead)
    t.start()
    started.wait(5)
    got: list[str] = []
    f = threading.Thread(target=lambda: got.append(cache.load("k", loaded("fresh"))))
    f.start()
    time.sleep(0.05)
    release.set()
    t.join(5)
    f.join(5)
    assert len(errors) == 1 and got == ["fresh"]
    assert cache.stats.load_errors == 1


def test_version_check_drops_only_the_entry_it_compared() -> None:
    cache, clock = make_cache(max_entries=10)
    cache.load("a", loaded("a"))
    cache.load("b", loaded("b"))
    entries = dict(cache.begin_check())
    cache.invalidate("b")
    cache.load("b", loaded("b2"))  # reloaded since the check began
    assert cache.drop_if_same("a", entries["a"]) is True
    assert cache.drop_if_same("b", entries["b"]) is False
    assert cache.get("a") is MISS and cache.get("b") == "b2"
    clock.now += 11
    assert cache.begin_check() == [] and cache.stats.expired == 1


def test_cache_is_thread_safe_under_churn() -> None:
    cache, _ = make_cache(max_entries=16, ttl_s=1e9)
    cache_clock_free = Cache[str, str](ttl_s=0.01, negative_ttl_s=0.005, max_entries=16)
    stop = time.monotonic() + 0.6
    failures: list[BaseException] = []

    def worker(seed: int, target: Cache[str, str]) -> None:
        rnd = random.Random(seed)
        try:
            while time.monotonic() < stop:
                key = f"k{rnd.randrange(40)}"
                org = f"org-{rnd.randrange(5)}"
                op = rnd.random()
                if op < 0.6:
                    value = target.get(key)
                    if value is MISS:
                        value = target.load(key, lambda k=key, o=org: Loaded(k, k, o))
                    assert value == key
                elif op < 0.8:
                    target.invalidate(key)
                elif op < 0.95:
                    target.invalidate_org(org, negatives=True)
                else:
                    target.begin_check()
        except BaseException as exc:
            failures.append(exc)

    threads = [
        threading.Thread(target=worker, args=(i, c))
        for i in range(6)
        for c in (cache, cache_clock_free)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not failures
    for c in (cache, cache_clock_free):
        assert len(c) <= 16
        indexed = {k for keys in c._by_org.values() for k in keys}
        assert indexed == set(c._entries), "the org index holds exactly the cached keys"
        s = c.stats
        assert s.hits + s.misses > 1000


# --- the store over a fake backend -----------------------------------------------------------

KEYS = KeyRing.single(MasterKey.generate())
ORG = str(uuid.uuid4())
OTHER = str(uuid.uuid4())
EXOTIC = "Grüße \"quoted\" 'single' $HOME ${X} C:\\path\\n 🎉\nline2\r\n\ttab \u202e end "
VALUES: dict[str, dict[str, str]] = {
    "vapi": {"apiKey": "vapi-key-1", "webhookSecret": "whsec-1"},
    "twilio": {"accountSid": "AC-" + EXOTIC, "authToken": "tok-" + EXOTIC},
    "google_calendar": {"clientId": "cid", "clientSecret": "csecret-é", "refreshToken": "r\\t"},
    "resend": {"apiKey": "re_" + EXOTIC},
    "elevenlabs": {"apiKey": "el-🎉"},
}
ALL_SECRETS = [v for config in VALUES.values() for v in config.values()]


class FakeBackend:
    """The Postgres side, in memory: sealed rows as the reconciler writes them."""

    def __init__(self, keys: KeyRing = KEYS) -> None:
        self.keys = keys
        self.rows: dict[tuple[str, str], tuple[str, bool]] = {}
        self.mappings: dict[str, tuple[str, str, str]] = {}
        self.audit: list[tuple[Any, ...]] = []
        self.queries = 0
        self.fail = False
        self.writes_failed = 0
        self.lock = threading.Lock()

    def put(self, org: str, provider: str, config: dict[str, Any], active: bool = True) -> None:
        self.rows[(org, provider)] = (self.keys.encrypt(config, aad=f"{org}:{provider}"), active)

    def _maybe_fail(self) -> None:
        if self.fail:
            raise StateError("database unavailable: connection refused")

    def load_credential(self, org_id: str, provider: str) -> tuple[str, bool] | None:
        with self.lock:
            self.queries += 1
        self._maybe_fail()
        return self.rows.get((org_id, provider))

    def check_credentials(
        self, keys: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], tuple[str, bool] | None]:
        self._maybe_fail()
        out: dict[tuple[str, str], tuple[str, bool] | None] = {}
        for key in keys:
            row = self.rows.get(key)
            out[key] = (
                None
                if row is None
                else (hashlib.md5(row[0].encode(), usedforsecurity=False).hexdigest(), row[1])
            )
        return out

    def load_assistants(self, assistant_ids: Sequence[str]) -> dict[str, tuple[str, str, str]]:
        with self.lock:
            self.queries += 1
        self._maybe_fail()
        return {a: self.mappings[a] for a in assistant_ids if a in self.mappings}

    def write_audit(
        self, rows: Sequence[Any], caller: str, *, timeout_s: float | None = None
    ) -> None:
        if self.fail:
            self.writes_failed += 1
        self._maybe_fail()
        self.audit.extend((*r, caller) for r in rows)

    def expire_audit(self, retention_s: float, limit: int) -> int:
        return 0


@pytest.fixture
def backend() -> FakeBackend:
    b = FakeBackend()
    for provider, config in VALUES.items():
        b.put(ORG, provider, config)
    b.put(OTHER, "vapi", {"apiKey": "other-key", "webhookSecret": "other-secret"})
    return b


@pytest.fixture
def store(backend: FakeBackend) -> Iterator[CredentialStore]:
    s = CredentialStore(backend, KEYS, caller="unit-test", start=False)
    yield s
    s.close()


def reveal(result: Any) -> dict[str, str]:
    return {
        name: getattr(result, name).get_secret_value()
        for name in result.__dataclass_fields__
        if name != "org_id"
    }


def test_every_getter_returns_the_stored_values_exactly(store: CredentialStore) -> None:
    assert reveal(store.vapi(ORG)) == {"api_key": "vapi-key-1", "webhook_secret": "whsec-1"}
    tw = store.twilio(ORG)
    assert isinstance(tw, TwilioCredentials) and tw.org_id == ORG
    assert tw.account_sid.get_secret_value() == "AC-" + EXOTIC
    assert tw.auth_token.get_secret_value() == "tok-" + EXOTIC
    gc = store.google_calendar(ORG)
    assert isinstance(gc, GoogleCalendarCredentials)
    assert reveal(gc) == {"client_id": "cid", "client_secret": "csecret-é", "refresh_token": "r\\t"}
    assert store.resend(ORG).api_key.get_secret_value() == "re_" + EXOTIC
    assert store.elevenlabs(ORG).api_key.get_secret_value() == "el-🎉"


def test_results_never_show_a_value(store: CredentialStore) -> None:
    results = [
        store.vapi(ORG),
        store.twilio(ORG),
        store.google_calendar(ORG),
        store.resend(ORG),
        store.elevenlabs(ORG),
    ]
    for r in results:
        for shown in (
            repr(r),
            str(r),
            f"{r}",
            f"{r!r}",
            repr([r]),
            str({"r": r}),
            repr(vars_of(r)),
        ):
            for secret in ALL_SECRETS:
                assert secret not in shown
                assert secret.strip() not in shown
            assert "**********" in shown
        with pytest.raises(AttributeError):  # frozen
            r.org_id = "x"  # type: ignore[misc]
    assert "twilio" in repr(results[1]).lower() and ORG in repr(results[1])


def vars_of(result: Any) -> dict[str, Any]:
    return {name: getattr(result, name) for name in result.__dataclass_fields__}


def test_hits_make_no_query_and_are_counted(store: CredentialStore, backend: FakeBackend) -> None:
    store.twilio(ORG)
    before = backend.queries
    for _ in range(100):
        store.twilio(ORG)
    assert backend.queries == before
    stats = store.stats()
    assert stats["hits"] == 100 and stats["misses"] == 1 and stats["entries"] == 1


def test_org_id_forms_share_one_canonical_entry(
    store: CredentialStore, backend: FakeBackend
) -> None:
    upper = ORG.upper()
    assert store.twilio(upper).org_id == ORG
    assert store.twilio(uuid.UUID(ORG)).org_id == ORG
    assert store.twilio(ORG).org_id == ORG
    assert backend.queries == 1
    # an invalidation names the canonical id: it drops what was read by any form
    backend.put(ORG, "twilio", {"accountSid": "AC-new", "authToken": "tok-new"})
    store.on_credential(ORG, "twilio")
    assert store.twilio(upper).account_sid.get_secret_value() == "AC-new"


def test_missing_inactive_unknown_and_invalid_are_not_found(
    store: CredentialStore, backend: FakeBackend
) -> None:
    with pytest.raises(CredentialNotFound) as exc:
        store.twilio(OTHER)
    assert isinstance(exc.value, LookupError)
    assert str(exc.value) == f"no active twilio credential for org {OTHER}"
    assert (exc.value.org_id, exc.value.provider) == (OTHER, "twilio")
    backend.put(OTHER, "resend", {"apiKey": "inactive-key"}, active=False)
    with pytest.raises(CredentialNotFound, match="resend"):
        store.resend(OTHER)
    unknown = str(uuid.uuid4())
    with pytest.raises(CredentialNotFound, match=unknown):
        store.vapi(unknown)
    queries = backend.queries
    for bad in ("not-a-uuid", "", "x" * 10_000, "\x1b[31mred"):
        with pytest.raises(CredentialNotFound) as bad_exc:
            store.vapi(bad)
        assert "\x1b" not in str(bad_exc.value) and len(str(bad_exc.value)) < 120
    assert backend.queries == queries  # no query for what cannot be an org id
    # negative answers are cached (briefly): a second read makes no query
    with pytest.raises(CredentialNotFound):
        store.twilio(OTHER)
    assert backend.queries == queries


def test_never_a_fallback_to_the_environment(
    store: CredentialStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "RESEND_API_KEY", "VAPI_API_KEY"):
        monkeypatch.setenv(name, "from-env")
    with pytest.raises(CredentialNotFound):
        store.twilio(OTHER)
    with pytest.raises(CredentialNotFound):
        store.resend(OTHER)


def test_undecryptable_or_malformed_rows_are_unavailable_and_not_cached(
    store: CredentialStore, backend: FakeBackend
) -> None:
    other_key = KeyRing.single(MasterKey.generate())
    backend.rows[(OTHER, "twilio")] = (
        other_key.encrypt({"accountSid": "a", "authToken": "b"}, aad=f"{OTHER}:twilio"),
        True,
    )
    with pytest.raises(CredentialUnavailable, match="does not decrypt"):
        store.twilio(OTHER)
    # a row copied from another org does not open under this org's AAD
    backend.rows[(OTHER, "resend")] = (backend.rows[(ORG, "resend")][0], True)
    with pytest.raises(CredentialUnavailable, match="does not decrypt"):
        store.resend(OTHER)
    backend.put(OTHER, "elevenlabs", {"apiKey": 987654321987})
    with pytest.raises(CredentialUnavailable, match="no apiKey string") as exc:
        store.elevenlabs(OTHER)
    assert "987654321987" not in str(exc.value)
    queries = backend.queries
    backend.put(OTHER, "twilio", {"accountSid": "a", "authToken": "b"})
    assert store.twilio(OTHER).auth_token.get_secret_value() == "b"  # repaired: works at once
    assert backend.queries == queries + 1


def test_a_database_failure_on_a_miss_is_unavailable_not_not_found(
    store: CredentialStore, backend: FakeBackend
) -> None:
    backend.fail = True
    with pytest.raises(CredentialUnavailable, match="database unavailable"):
        store.twilio(ORG)
    backend.fail = False
    assert store.twilio(ORG).org_id == ORG


def test_rotated_master_keys_open_rows_of_either_key(backend: FakeBackend) -> None:
    old = MasterKey.generate()
    ring = KeyRing((("new", MasterKey.generate()), ("old", old)))
    backend.rows[(OTHER, "twilio")] = (
        KeyRing((("old", old),)).encrypt(
            {"accountSid": "s", "authToken": "t"}, aad=f"{OTHER}:twilio"
        ),
        True,
    )
    backend.put(OTHER, "resend", {"apiKey": "under-default"})  # the test's single default key
    with CredentialStore(backend, ring, caller="rotation", start=False) as s:
        assert s.twilio(OTHER).auth_token.get_secret_value() == "t"
        with pytest.raises(CredentialUnavailable):
            s.resend(OTHER)  # its key id is not in the ring


def test_invalidations_reach_every_kind_of_entry(
    store: CredentialStore, backend: FakeBackend
) -> None:
    assistant = "asst-1"
    backend.mappings[assistant] = (ORG, "acme", "inbound")
    assert store.org_for_assistant(assistant) == AssistantOrg(ORG, "acme", "inbound")
    assert store.org_for_assistant("asst-unknown") is None
    store.twilio(ORG)
    queries = backend.queries
    backend.mappings["asst-unknown"] = (OTHER, "globex", "outbound")
    store.on_org(OTHER)  # an org changed: unknown ids may resolve to it now
    assert store.org_for_assistant("asst-unknown") == AssistantOrg(OTHER, "globex", "outbound")
    backend.mappings[assistant] = (ORG, "acme-renamed", "inbound")
    store.on_assistant(assistant)
    assert store.org_for_assistant(assistant).slug == "acme-renamed"  # type: ignore[union-attr]
    store.twilio(ORG)
    assert backend.queries == queries + 2  # twilio still cached
    store.on_org(ORG)
    store.twilio(ORG)
    assert backend.queries == queries + 3
    store.on_deaf()
    store.twilio(ORG)
    assert backend.queries == queries + 4
    for bad in ("", "a b", "x" * 129, "é", 42, None):
        assert store.org_for_assistant(bad) is None  # type: ignore[arg-type]
    assert backend.queries == queries + 4


def test_version_check_drops_changed_and_deactivated_entries_only(
    store: CredentialStore, backend: FakeBackend
) -> None:
    for read in (store.vapi, store.twilio, store.resend, store.elevenlabs):
        read(ORG)
    with pytest.raises(CredentialNotFound):
        store.twilio(OTHER)
    backend.mappings["asst-1"] = (ORG, "acme", "inbound")
    store.org_for_assistant("asst-1")
    backend.put(ORG, "twilio", {"accountSid": "AC-2", "authToken": "tok-2"})  # changed
    backend.rows[(ORG, "resend")] = (backend.rows[(ORG, "resend")][0], False)  # deactivated
    del backend.rows[(ORG, "elevenlabs")]  # deleted
    backend.put(OTHER, "twilio", {"accountSid": "AC-o", "authToken": "tok-o"})  # now exists
    backend.mappings["asst-1"] = (ORG, "acme", "outbound")  # role changed
    store.check()  # no NOTIFY came: the version check finds them
    queries = backend.queries
    assert store.vapi(ORG).api_key.get_secret_value() == "vapi-key-1"
    assert backend.queries == queries  # unchanged: still cached
    assert store.twilio(ORG).auth_token.get_secret_value() == "tok-2"
    with pytest.raises(CredentialNotFound):
        store.resend(ORG)
    with pytest.raises(CredentialNotFound):
        store.elevenlabs(ORG)
    assert store.twilio(OTHER).account_sid.get_secret_value() == "AC-o"
    assert store.org_for_assistant("asst-1").role == "outbound"  # type: ignore[union-attr]
    assert store.stats()["invalidated"] == 5


def test_reads_are_thread_safe_and_never_mix_orgs(backend: FakeBackend) -> None:
    orgs = [str(uuid.uuid4()) for _ in range(30)]
    for org in orgs:
        backend.put(org, "twilio", {"accountSid": f"sid-{org}", "authToken": f"tok-{org}-0"})
    store = CredentialStore(backend, KEYS, caller="threads", start=False, max_entries=20)
    stop = time.monotonic() + 0.8
    failures: list[BaseException] = []
    version = dict.fromkeys(orgs, 0)

    def reader(seed: int) -> None:
        rnd = random.Random(seed)
        try:
            while time.monotonic() < stop:
                org = rnd.choice(orgs)
                tw = store.twilio(org)
                assert tw.org_id == org
                assert tw.account_sid.get_secret_value() == f"sid-{org}"
                n = int(tw.auth_token.get_secret_value().rsplit("-", 1)[1])
                assert n <= version[org]
        except BaseException as exc:
            failures.append(exc)

    def writer() -> None:
        rnd = random.Random(99)
        while time.monotonic() < stop:
            org = rnd.choice(orgs)
            version[org] += 1
            backend.put(
                org,
                "twilio",
                {"accountSid": f"sid-{org}", "authToken": f"tok-{org}-{version[org]}"},
            )
            store.on_credential(org, "twilio")
            time.sleep(0.001)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(6)]
    threads.append(threading.Thread(target=writer))
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not failures
    # after the last invalidation, every read is the latest value
    for org in orgs:
        assert store.twilio(org).auth_token.get_secret_value() == f"tok-{org}-{version[org]}"
    stats = store.stats()
    assert stats["entries"] <= 20 and stats["evictions"] > 0 and stats["hits"] > 0
    store.close()


# --- the audit -------------------------------------------------------------------------------


def test_every_read_is_audited_in_batches_never_a_value(backend: FakeBackend) -> None:
    store = CredentialStore(backend, KEYS, caller="sms-service", start=False, audit_batch=3)
    store.twilio(ORG)
    store.twilio(ORG)
    store.vapi(ORG)
    with pytest.raises(CredentialNotFound):
        store.twilio(OTHER)
    with pytest.raises(CredentialNotFound):
        store.twilio("nope")
    store.org_for_assistant("asst-x")  # not a credential read: not audited
    assert backend.audit == []  # nothing written on the read path
    assert store.flush()
    rows = [(r[0], r[1], r[3], r[4]) for r in backend.audit]
    assert rows == [
        (ORG, "twilio", "ok", "sms-service"),
        (ORG, "twilio", "ok", "sms-service"),
        (ORG, "vapi", "ok", "sms-service"),
        (OTHER, "twilio", "not_found", "sms-service"),
        (None, "twilio", "not_found", "sms-service"),
    ]
    assert all(abs(r[2] - time.time()) < 60 for r in backend.audit)
    text = repr(backend.audit)
    assert not any(s in text for s in ALL_SECRETS)
    store.close()
    assert store.stats()["audit_written"] == 5


def test_audit_is_written_by_the_background_thread_and_flushed_by_close(
    backend: FakeBackend,
) -> None:
    store = CredentialStore(backend, KEYS, caller="bg", audit_every_s=0.05)
    store.twilio(ORG)
    deadline = time.monotonic() + 5
    while not backend.audit and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(backend.audit) == 1
    store.vapi(ORG)
    store.close()  # the thread has not run again yet, or has: either way it is written
    assert len(backend.audit) == 2
    with pytest.raises(CredentialUnavailable, match="closed"):
        store.twilio(ORG)
    with pytest.raises(CredentialUnavailable, match="closed"):
        store.org_for_assistant("a")
    store.close()  # idempotent


def test_a_failing_database_never_breaks_a_cached_read_and_drops_are_counted(
    backend: FakeBackend, caplog: pytest.LogCaptureFixture
) -> None:
    store = CredentialStore(backend, KEYS, caller="outage", start=False, audit_max_pending=5)
    store.twilio(ORG)
    backend.fail = True
    with caplog.at_level(logging.WARNING, logger="reconciler.credentials"):
        for _ in range(20):
            assert store.twilio(ORG).org_id == ORG  # served from the cache
        assert store.flush() is False  # kept for the next attempt, within the bound
        assert store.flush() is False
        counts = store.stats()
        assert (counts["audit_pending"], counts["audit_dropped"]) == (5, 16)
        store.close()
    assert store.stats()["audit_dropped"] == 21 and store.stats()["audit_written"] == 0
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages  # one when writes start failing, one at close
    assert "cannot write" in messages[0] and "dropped at close" in messages[1]
    assert not any(s in m for m in messages for s in ALL_SECRETS)


def test_audit_recovers_and_says_so_once(
    backend: FakeBackend, caplog: pytest.LogCaptureFixture
) -> None:
    store = CredentialStore(backend, KEYS, caller="recovers", start=False, audit_max_pending=3)
    store.twilio(ORG)
    backend.fail = True
    with caplog.at_level(logging.WARNING, logger="reconciler.credentials"):
        for _ in range(5):
            store.twilio(ORG)
        store.flush()
        backend.fail = False
        assert store.flush() is True
    assert len(backend.audit) == 3 and store.stats()["audit_dropped"] == 3
    assert [r.getMessage() for r in caplog.records][-1].startswith(
        "credential audit: writing again (3 row(s) dropped"
    )
    store.close()


# --- caller names, settings, metrics -----------------------------------------------------------


@pytest.mark.parametrize("caller", ["sms-service", "a", "Billing_2.worker", "x" * 64])
def test_good_caller_names(caller: str) -> None:
    assert validate_caller(caller) == caller


@pytest.mark.parametrize(
    "caller",
    [
        "",
        " sms",
        "sms service",
        "sms\n",
        "-lead",
        ".hidden",
        "x" * 65,
        "sérvice",
        "a/b",
        "a;b",
        42,
        None,
    ],
)
def test_bad_caller_names_are_refused_before_any_io(
    caller: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_settings(**_: Any) -> Any:
        raise AssertionError("settings read before the caller was checked")

    monkeypatch.setattr("reconciler.config.load_settings", no_settings)
    with pytest.raises(ConfigError, match="caller must be"):
        CredentialStore.from_settings(caller=caller)
    with pytest.raises(ConfigError, match="caller must be"):
        CredentialStore(FakeBackend(), KEYS, caller=caller, start=False)


def test_from_settings_reads_the_clis_key_settings(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from reconciler.config import Settings, load_settings
    from reconciler.state.connect import master_keys

    def _master_keys(settings: Settings) -> KeyRing:  # as CredentialStore.from_settings reads them
        return master_keys(settings, create=False, must_exist=True)

    for name in ("RECONCILER_DATABASE_URL", "RECONCILER_MASTER_KEY", "RECONCILER_MASTER_KEYS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RECONCILER_DATA_DIR", str(tmp_path))
    with pytest.raises(ConfigError, match="no master key"):
        _master_keys(load_settings())
    assert not (tmp_path / "master.key").exists()  # never created here
    key = MasterKey.generate()
    (tmp_path / "master.key").write_text(key.to_b64() + "\n")
    assert _master_keys(load_settings()).keys[0][1] == key
    monkeypatch.setenv("RECONCILER_DATABASE_URL", "postgresql://nowhere/db")
    with pytest.raises(ConfigError, match="required with RECONCILER_DATABASE_URL"):
        _master_keys(load_settings())
    monkeypatch.setenv("RECONCILER_MASTER_KEYS", f"new:{key.to_b64()}")
    assert _master_keys(load_settings()).ids == ("new",)
    monkeypatch.setenv("RECONCILER_MASTER_KEY", key.to_b64())
    with pytest.raises(ConfigError, match="not both"):
        _master_keys(load_settings())


def _metric(name: str, **labels: str) -> float:
    for family in metrics.REGISTRY.collect():
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


def test_metrics_are_read_at_scrape_time_and_never_go_down(backend: FakeBackend) -> None:
    hits0 = _metric("reconciler_credential_cache_total", result="hit")
    misses0 = _metric("reconciler_credential_cache_total", result="miss")
    lru0 = _metric("reconciler_credential_cache_evictions_total", reason="lru")
    dropped0 = _metric("reconciler_credential_audit_rows_total", fate="dropped")
    store = CredentialStore(backend, KEYS, caller="metrics", start=False, max_entries=1)
    store.twilio(ORG)
    store.twilio(ORG)
    store.vapi(ORG)  # evicts twilio
    assert _metric("reconciler_credential_cache_total", result="hit") == hits0 + 1
    assert _metric("reconciler_credential_cache_total", result="miss") == misses0 + 2
    assert _metric("reconciler_credential_cache_evictions_total", reason="lru") == lru0 + 1
    backend.fail = True
    store.close()
    assert _metric("reconciler_credential_audit_rows_total", fate="dropped") == dropped0 + 3
    # closed, and still counted: a counter never goes down
    assert _metric("reconciler_credential_cache_total", result="hit") == hits0 + 1
    text = generate_latest(metrics.REGISTRY).decode()
    assert "reconciler_credential_cache_total" in text
    assert not any(s in text for s in ALL_SECRETS)


# --- the listener's routing and the checker ----------------------------------------------------


class Target:
    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []

    def on_credential(self, org_id: str, provider: str) -> None:
        self.calls.append(("credential", org_id, provider))

    def on_assistant(self, assistant_id: str) -> None:
        self.calls.append(("assistant", assistant_id))

    def on_org(self, org_id: str) -> None:
        self.calls.append(("org", org_id))

    def on_deaf(self) -> None:
        self.calls.append(("deaf",))


def test_listener_routes_each_channel() -> None:
    target = Target()
    listener = Listener(target, "postgresql://unused/db")
    listener._apply(CREDENTIAL_CHANNEL, f"{ORG}:twilio")
    listener._apply(CREDENTIAL_CHANNEL, "*")  # the table was truncated
    listener._apply(MAPPING_CHANNEL, f"org:{ORG}")
    listener._apply(MAPPING_CHANNEL, "asst-1")
    assert target.calls == [
        ("credential", ORG, "twilio"),
        ("deaf",),
        ("org", ORG),
        ("assistant", "asst-1"),
    ]


def test_checker_runs_only_while_the_listener_cannot_vouch() -> None:
    runs: list[float] = []
    confirmed = [time.monotonic()]
    checker = Checker(
        lambda: runs.append(time.monotonic()),
        lambda: confirmed[0],
        every_s=0.02,
        stale_after_s=0.5,
    )
    checker.start()
    try:
        time.sleep(0.2)
        assert runs == []  # the listener confirmed recently
        confirmed[0] = float("-inf")  # it lost its connection
        deadline = time.monotonic() + 2
        while len(runs) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(runs) >= 3 and checker.checks >= 3
    finally:
        checker.close()


def test_a_failing_check_logs_once_and_recovers(caplog: pytest.LogCaptureFixture) -> None:
    fail = [True]

    def check() -> None:
        if fail[0]:
            raise StateError("database unavailable: refused")

    checker = Checker(check, lambda: float("-inf"))
    with caplog.at_level(logging.WARNING, logger="reconciler.credentials"):
        assert checker.run_once() is False
        assert checker.run_once() is False
        fail[0] = False
        assert checker.run_once() is True
    assert len(caplog.records) == 2
    assert "served until their TTL" in caplog.records[0].getMessage()


# --- reconciler audit --since ------------------------------------------------------------------


def test_since_takes_durations_and_iso_times() -> None:
    now = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert since("1h", now=now) == now - timedelta(hours=1)
    assert since("7d", now=now) == now - timedelta(days=7)
    assert since("90s", now=now) == now - timedelta(seconds=90)
    assert since("2w", now=now) == now - timedelta(days=14)
    assert since("2024-04-30", now=now) == datetime(2024, 4, 30, tzinfo=UTC)
    assert since("2024-04-30T10:00:00Z", now=now) == datetime(2024, 4, 30, 10, tzinfo=UTC)
    assert since("2024-04-30T12:00:00+02:00", now=now) == datetime(2024, 4, 30, 10, tzinfo=UTC)
    for bad in ("yesterday", "1y", "", "-1h", "99999999999d"):
        with pytest.raises(argparse.ArgumentTypeError):
            since(bad, now=now)


def test_results_compare_by_value() -> None:
    result = TwilioCredentials(ORG, SecretStr("s"), SecretStr("t"))
    assert result == TwilioCredentials(ORG, SecretStr("s"), SecretStr("t"))
    assert result != TwilioCredentials(ORG, SecretStr("s"), SecretStr("other"))
