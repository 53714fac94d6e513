"""reconciler.credentials against real Postgres: specs SOPS-encrypted, applied by `reconciler
apply` (the emulator as Vapi), read back through the API. Exact values, not found, the cache
following Postgres (LISTEN/NOTIFY, and the version check without a listener or with its
connection cut), the audit table and `reconciler audit`, and a database outage."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg_pool import ConnectionPool

from reconciler.credentials import (
    AssistantOrg,
    CredentialNotFound,
    CredentialStore,
    CredentialUnavailable,
)
from reconciler.errors import ConfigError
from reconciler.secrets.crypto import MasterKey
from tests.helpers import SpecDir, org_doc
from tests.helpers.netproxy import cuttable
from tests.helpers.serve import wait_until

CANARY = f"canary{uuid.uuid4().hex[:10]}"
# every character a YAML file, sops, JSON or a shell could get wrong
EXOTIC = (
    "Grüße \"double\" 'single' $HOME ${PATH} $$ `tick` C:\\dir\\new \\n \\\\ 🎉👩‍💻 \u202e "
    "~ null yes: no # not a comment - [a, b] {c: d} & * ! | > %\nsecond line\r\nthird\ttab"
)
# Vapi's two travel in HTTP headers: printable ASCII without surrounding spaces (the spec says so)
VAPI = {
    "apiKey": f"vk-{CANARY}-\"q'$HOME\\x`!#:{{}}[]",
    "webhookSecret": f"ws-{CANARY}-$${{X}}\\\\'\"",
}
OTHERS: dict[str, dict[str, str]] = {
    "twilio": {"accountSid": f"AC{CANARY}", "authToken": f"  {CANARY} {EXOTIC}  "},
    "googleCalendar": {
        "clientId": f"{CANARY}.apps.googleusercontent.com",
        "clientSecret": f"ünïcödé {CANARY}\n{EXOTIC}",
        "refreshToken": f"1//{CANARY}\\n\n",
    },
    "resend": {"apiKey": f"re_{CANARY}'\"'"},
    "elevenlabs": {"apiKey": f"{CANARY} 🎉 null"},
}
ALL_VALUES = [*VAPI.values(), *(v for c in OTHERS.values() for v in c.values())]


def acme_doc(**changes: dict[str, str]) -> dict[str, Any]:
    credentials = {k: dict(v) for k, v in OTHERS.items()} | changes
    return org_doc(
        "acme",
        org_id=ACME_ID,
        api_key=VAPI["apiKey"],
        secret=VAPI["webhookSecret"],
        extra_credentials=credentials,
    )


ACME_ID = str(uuid.uuid4())
GLOBEX_ID = str(uuid.uuid4())
GLOBEX_KEY = f"key-globex-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def run(cli: Any, pool: ConnectionPool, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The `cli` fixture with `reconciler audit` wired, and an empty audit table (not among the
    tables the `pool` fixture truncates)."""
    with pool.connection() as conn:
        conn.execute("TRUNCATE credential_audit")
    return cli


@pytest.fixture
def applied(run: Any, specs: SpecDir) -> dict[str, Any]:
    specs.write(acme_doc())
    specs.write(org_doc("globex", org_id=GLOBEX_ID, api_key=GLOBEX_KEY))  # Vapi only
    done = run("apply", str(specs.root))
    assert done.code == 0, done.out + done.err
    return {"acme": acme_doc(), "path": specs.root / "acme.yaml"}


@pytest.fixture
def open_store() -> Iterator[Callable[..., CredentialStore]]:
    stores: list[CredentialStore] = []

    def make(**options: Any) -> CredentialStore:
        options.setdefault("caller", f"svc-{uuid.uuid4().hex[:8]}")
        store = CredentialStore.from_settings(**options)
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()


def audit_rows(pool: ConnectionPool) -> list[tuple[Any, ...]]:
    with pool.connection() as conn:
        return conn.execute(
            "SELECT org_id::text, provider, caller, outcome FROM credential_audit ORDER BY id"
        ).fetchall()


def reveal(result: Any) -> dict[str, str]:
    return {
        name: getattr(result, name).get_secret_value()
        for name in result.__dataclass_fields__
        if name != "org_id"
    }


# --- exact values, every getter ----------------------------------------------------------------


def test_every_getter_reads_back_the_spec_values_exactly(
    applied: dict[str, Any], open_store: Callable[..., CredentialStore]
) -> None:
    store = open_store()
    assert reveal(store.vapi(ACME_ID)) == {
        "api_key": VAPI["apiKey"],
        "webhook_secret": VAPI["webhookSecret"],
    }
    assert reveal(store.twilio(ACME_ID)) == {
        "account_sid": OTHERS["twilio"]["accountSid"],
        "auth_token": OTHERS["twilio"]["authToken"],
    }
    assert reveal(store.google_calendar(ACME_ID)) == {
        "client_id": OTHERS["googleCalendar"]["clientId"],
        "client_secret": OTHERS["googleCalendar"]["clientSecret"],
        "refresh_token": OTHERS["googleCalendar"]["refreshToken"],
    }
    assert reveal(store.resend(ACME_ID)) == {"api_key": OTHERS["resend"]["apiKey"]}
    assert reveal(store.elevenlabs(ACME_ID)) == {"api_key": OTHERS["elevenlabs"]["apiKey"]}
    results = [
        store.vapi(ACME_ID),
        store.twilio(uuid.UUID(ACME_ID)),
        store.google_calendar(ACME_ID.upper()),
        store.resend(ACME_ID),
        store.elevenlabs(ACME_ID),
        store.vapi(GLOBEX_ID),
    ]
    assert all(r.org_id in (ACME_ID, GLOBEX_ID) for r in results)
    shown = repr(results) + str(results) + "".join(f"{r}" for r in results)
    assert CANARY not in shown and "**********" in shown
    stats = store.stats()
    assert stats["misses"] == 6 and stats["hits"] == 5  # one query per credential, then memory


# --- not found -------------------------------------------------------------------------------


def test_missing_unknown_inactive_and_retired_are_not_found(
    applied: dict[str, Any],
    run: Any,
    specs: SpecDir,
    open_store: Callable[..., CredentialStore],
    pool: ConnectionPool,
) -> None:
    store = open_store()
    with pytest.raises(CredentialNotFound) as missing:
        store.twilio(GLOBEX_ID)  # globex's spec has no twilio
    assert str(missing.value) == f"no active twilio credential for org {GLOBEX_ID}"
    unknown = str(uuid.uuid4())
    with pytest.raises(CredentialNotFound, match=f"vapi credential for org {unknown}"):
        store.vapi(unknown)
    with pytest.raises(CredentialNotFound):
        store.vapi("acme")  # a slug is no org id
    # removed from the spec: deactivated by apply
    specs.write(
        org_doc("globex", org_id=GLOBEX_ID, api_key=GLOBEX_KEY, extra_credentials=dict(OTHERS))
    )
    assert run("apply", str(specs.root)).code == 0
    assert store.resend(GLOBEX_ID).api_key.get_secret_value() == OTHERS["resend"]["apiKey"]
    specs.write(org_doc("globex", org_id=GLOBEX_ID, api_key=GLOBEX_KEY))
    assert run("apply", str(specs.root)).code == 0
    with pool.connection() as conn:
        active = conn.execute(
            "SELECT is_active FROM org_credentials WHERE org_id = %s AND provider = 'resend'",
            (GLOBEX_ID,),
        ).fetchone()
    assert active == (False,)  # the row is there, inactive
    wait_until(lambda: _not_found(lambda: store.resend(GLOBEX_ID)), 5, "resend deactivated")
    # retired: every credential inactive, the Vapi one cut to a webhook-only row
    store.twilio(ACME_ID)
    store.vapi(ACME_ID)
    applied["path"].unlink()
    retired = run("org", "retire", "acme", "--yes", "--path", str(specs.root))
    assert retired.code == 0, retired.out + retired.err
    with pool.connection() as conn:
        row = conn.execute(
            "SELECT is_active, webhook_only_until IS NOT NULL FROM org_credentials"
            " WHERE org_id = %s AND provider = 'vapi'",
            (ACME_ID,),
        ).fetchone()
    assert row == (False, True)  # the webhook-only row the resolver still uses
    for read in (store.vapi, store.twilio, store.google_calendar, store.resend, store.elevenlabs):
        wait_until(lambda read=read: _not_found(lambda: read(ACME_ID)), 5, f"{read} retired")
    fresh = open_store()  # and a store that never cached them
    with pytest.raises(CredentialNotFound, match="vapi credential for org"):
        fresh.vapi(ACME_ID)


def _not_found(read: Callable[[], Any]) -> bool:
    try:
        read()
    except CredentialNotFound:
        return True
    return False


# --- org_for_assistant ----------------------------------------------------------------------


def test_org_for_assistant_resolves_as_the_webhook_resolver_does(
    applied: dict[str, Any],
    run: Any,
    specs: SpecDir,
    open_store: Callable[..., CredentialStore],
    pool: ConnectionPool,
) -> None:
    with pool.connection() as conn:
        mapped = dict(
            conn.execute(
                "SELECT assistant_role, vapi_assistant_id FROM assistant_org_mapping"
                " WHERE org_id = %s",
                (ACME_ID,),
            ).fetchall()
        )
    store = open_store()
    assert store.org_for_assistant(mapped["inbound"]) == AssistantOrg(ACME_ID, "acme", "inbound")
    assert store.org_for_assistant(mapped["outbound"]) == AssistantOrg(ACME_ID, "acme", "outbound")
    assert store.org_for_assistant(str(uuid.uuid4())) is None
    assert store.org_for_assistant("not valid\n") is None
    # retired: its assistants' mappings go inactive and still resolve within the retention
    applied["path"].unlink()
    assert run("org", "retire", "acme", "--yes", "--path", str(specs.root)).code == 0
    assert store.org_for_assistant(mapped["inbound"]) == AssistantOrg(ACME_ID, "acme", "inbound")
    with pool.connection() as conn:  # past the retention (30 days by default)
        conn.execute(
            "UPDATE assistant_org_mapping SET inactive_at = now() - interval '31 days'"
            " WHERE org_id = %s",
            (ACME_ID,),
        )
    wait_until(
        lambda: store.org_for_assistant(mapped["inbound"]) is None, 5, "mapping past retention"
    )


# --- the cache follows Postgres ------------------------------------------------------------------


def _changed(run: Any, specs: SpecDir, token: str) -> None:
    twilio = {"accountSid": OTHERS["twilio"]["accountSid"], "authToken": token}
    specs.write(acme_doc(twilio=twilio))
    done = run("apply", str(specs.root))
    assert done.code == 0, done.out + done.err


def test_a_change_applied_is_seen_at_once_through_listen_notify(
    applied: dict[str, Any], run: Any, specs: SpecDir, open_store: Callable[..., CredentialStore]
) -> None:
    store = open_store(stale_after_s=3600)  # no version check: NOTIFY alone
    assert store.stats()["listening"] and store.stats()["confirmed_ago_s"] < 2
    assert store.twilio(ACME_ID).auth_token.get_secret_value() == OTHERS["twilio"]["authToken"]
    assert store.vapi(ACME_ID).api_key.get_secret_value() == VAPI["apiKey"]
    _changed(run, specs, f"new-{CANARY}-ü")
    wait_until(
        lambda: store.twilio(ACME_ID).auth_token.get_secret_value() == f"new-{CANARY}-ü",
        2.0,
        "the new token, through NOTIFY",
        every_s=0.01,
    )
    stats = store.stats()
    assert stats["version_checks"] == 0 and stats["invalidated"] >= 1
    assert store.vapi(ACME_ID).api_key.get_secret_value() == VAPI["apiKey"]


def test_without_a_listener_the_version_check_sees_changes(
    applied: dict[str, Any], run: Any, specs: SpecDir, open_store: Callable[..., CredentialStore]
) -> None:
    store = open_store(listen=False, check_every_s=0.5)
    store.twilio(ACME_ID)
    store.resend(ACME_ID)
    _changed(run, specs, f"polled-{CANARY}")
    wait_until(
        lambda: store.twilio(ACME_ID).auth_token.get_secret_value() == f"polled-{CANARY}",
        3.0,  # within two checks
        "the new token, through the version check",
        every_s=0.02,
    )
    assert store.stats()["version_checks"] >= 1
    # deactivated (removed from the spec) too
    specs.write(
        org_doc("acme", org_id=ACME_ID, api_key=VAPI["apiKey"], secret=VAPI["webhookSecret"])
    )
    assert run("apply", str(specs.root)).code == 0
    wait_until(lambda: _not_found(lambda: store.resend(ACME_ID)), 3.0, "resend deactivated")


def test_with_the_listener_cut_the_version_check_sees_changes(
    applied: dict[str, Any],
    run: Any,
    specs: SpecDir,
    database_url: str,
    master_key: MasterKey,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with cuttable(database_url) as proxy:
        store = CredentialStore.from_url(
            database_url,
            master_key.to_b64(),
            caller="cut-listener",
            listen_url=proxy.url(database_url),  # only the listener goes through the proxy
            check_every_s=0.25,
            stale_after_s=1.0,
        )
        try:
            assert store.stats()["listening"]
            store.twilio(ACME_ID)
            with caplog.at_level(logging.INFO, logger="reconciler.credentials"):
                proxy.cut(stay_down=True)  # its connection dies and cannot come back
                wait_until(lambda: not store.stats()["listening"], 5, "listener down")
                _changed(run, specs, f"missed-notify-{CANARY}")  # announced to nobody
                wait_until(
                    lambda: (
                        store.twilio(ACME_ID).auth_token.get_secret_value()
                        == f"missed-notify-{CANARY}"
                    ),
                    1.0 + 2 * 0.25 + 1.5,  # stale_after + two checks + the check's own time
                    "the new token, while the listener is down",
                    every_s=0.02,
                )
                assert store.stats()["version_checks"] >= 1
                proxy.restore()
                wait_until(lambda: store.stats()["listening"], 15, "listener back")
            logged = [r.getMessage() for r in caplog.records]
            assert any("listener: no connection" in m for m in logged)
            assert any("listening again" in m for m in logged)
            assert not any(CANARY in m for m in logged)
        finally:
            store.close()


def test_a_truncate_is_announced_too(
    applied: dict[str, Any], open_store: Callable[..., CredentialStore], pool: ConnectionPool
) -> None:
    store = open_store(stale_after_s=3600)
    store.twilio(ACME_ID)
    with pool.connection() as conn:
        conn.execute("TRUNCATE org_credentials")  # no row trigger fires
    wait_until(
        lambda: _not_found(lambda: store.twilio(ACME_ID)), 2.0, "cache dropped", every_s=0.01
    )


def test_the_listeners_session_killed_the_cache_is_cleared_on_reconnect(
    applied: dict[str, Any], open_store: Callable[..., CredentialStore], pool: ConnectionPool
) -> None:
    store = open_store(caller="killed-listener", stale_after_s=3600)
    store.twilio(ACME_ID)
    with pool.connection() as conn:
        killed = conn.execute(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = %s AND datname = current_database()) t",
            ("reconciler-credentials-listen:killed-listener",),
        ).fetchone()
    assert killed == (1,)
    # reconnected, it cannot know what it missed: everything cached is dropped
    wait_until(lambda: store.stats()["entries"] == 0, 5, "cache cleared on reconnect")
    wait_until(lambda: store.stats()["listening"], 5, "listening again")
    assert store.twilio(ACME_ID).org_id == ACME_ID


# --- the audit ---------------------------------------------------------------------------------


def test_reads_are_audited_and_reconciler_audit_prints_them(
    applied: dict[str, Any],
    run: Any,
    open_store: Callable[..., CredentialStore],
    pool: ConnectionPool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    sms = open_store(caller="sms-service")
    mail = open_store(caller="mail.worker_2")
    for _ in range(3):
        sms.twilio(ACME_ID)
    sms.vapi(GLOBEX_ID)
    with pytest.raises(CredentialNotFound):
        sms.twilio(GLOBEX_ID)
    mail.resend(ACME_ID)
    with pytest.raises(CredentialNotFound):
        mail.resend("not-an-org")
    assert audit_rows(pool) == []  # batched: not on the read path
    sms.close()
    mail.close()  # flushed on close
    rows = audit_rows(pool)
    assert sorted(rows, key=str) == sorted(
        [
            (ACME_ID, "twilio", "sms-service", "ok"),
            (ACME_ID, "twilio", "sms-service", "ok"),
            (ACME_ID, "twilio", "sms-service", "ok"),
            (GLOBEX_ID, "vapi", "sms-service", "ok"),
            (GLOBEX_ID, "twilio", "sms-service", "not_found"),
            (ACME_ID, "resend", "mail.worker_2", "ok"),
            (None, "resend", "mail.worker_2", "not_found"),
        ],
        key=str,
    )
    # `reconciler audit`: text, newest first
    text = run("audit")
    assert text.code == 0, text.err
    lines = text.out.splitlines()
    assert len(lines) == 7
    assert lines[0].split()[1:] == ["-", "resend", "mail.worker_2", "not_found"]
    assert lines[-1].split()[1:] == ["acme", "twilio", "sms-service", "ok"]
    stamps = [line.split()[0] for line in lines]
    assert stamps == sorted(stamps, reverse=True) and all(s.endswith("Z") for s in stamps)
    # json, --org, --limit
    data = json.loads(run("audit", "--format", "json", "--org", "acme").out)
    assert data["version"] == 1 and len(data["entries"]) == 4
    assert {e["provider"] for e in data["entries"]} == {"twilio", "resend"}
    assert set(data["entries"][0]) == {"at", "org_id", "slug", "provider", "caller", "outcome"}
    assert len(run("audit", "--limit", "2").out.splitlines()) == 2
    globex = run("audit", "--org", "globex")
    assert [line.split()[2:] for line in globex.out.splitlines()] == [
        ["twilio", "sms-service", "not_found"],
        ["vapi", "sms-service", "ok"],
    ]
    # --since: a duration or an ISO time
    assert len(run("audit", "--since", "1h").out.splitlines()) == 7
    future = run("audit", "--since", "2999-01-01T00:00:00Z")
    assert future.code == 0 and future.out.strip() == "no credential reads recorded in that window"
    assert (
        json.loads(run("audit", "--since", "2999-01-01", "--format", "json").out)["entries"] == []
    )
    with pool.connection() as conn:
        conn.execute(
            "UPDATE credential_audit SET at = now() - interval '3 days' WHERE caller = 'sms-service'"
        )
    assert len(run("audit", "--since", "2d").out.splitlines()) == 2
    assert len(run("audit", "--since", "7d").out.splitlines()) == 7
    # one-line errors
    unknown = run("audit", "--org", "nobody")
    assert unknown.code == 1 and unknown.err.strip() == "error: no org with slug nobody"
    with pytest.raises(SystemExit) as bad:
        run("audit", "--since", "yesterday")
    assert bad.value.code == 2
    # never a value: not in the table, the logs or the command's output
    with pool.connection() as conn:
        dump = conn.execute("SELECT string_agg(t::text, ' ') FROM credential_audit t").fetchone()
    everything = " ".join(
        [str(dump), text.out, text.err, json.dumps(data), caplog.text, globex.out]
    )
    assert CANARY not in everything
    assert not any(v in everything for v in ALL_VALUES)


def test_audit_retention_deletes_old_rows(
    applied: dict[str, Any], open_store: Callable[..., CredentialStore], pool: ConnectionPool
) -> None:
    with pool.connection() as conn:
        conn.execute(
            "INSERT INTO credential_audit (org_id, provider, caller, at, outcome)"
            " SELECT %s, 'twilio', 'old', now() - make_interval(days => d), 'ok'"
            " FROM generate_series(1, 40) AS d",
            (ACME_ID,),
        )
    store = open_store(audit_retention_s=10.5 * 86400, audit_every_s=0.05)
    store.twilio(ACME_ID)
    wait_until(
        lambda: len(audit_rows(pool)) == 11, 5, "rows older than the retention deleted"
    )  # 10 old days kept, and the new read


# --- a database outage ---------------------------------------------------------------------------


def test_a_database_outage_serves_cached_reads_and_counts_dropped_audit_rows(
    applied: dict[str, Any],
    database_url: str,
    master_key: MasterKey,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from reconciler import metrics

    with cuttable(database_url) as proxy:
        url = proxy.url(database_url)
        store = CredentialStore.from_url(
            url,
            master_key.to_b64(),
            caller="outage",
            audit_max_pending=5,
            audit_every_s=0.1,
            check_every_s=0.2,
            stale_after_s=0.5,
        )
        dropped_before = metrics.CREDENTIAL_AUDIT_ROWS.values().get(("dropped",), 0.0)
        try:
            tw = store.twilio(ACME_ID)
            store.flush()
            with caplog.at_level(logging.WARNING, logger="reconciler.credentials"):
                proxy.cut(stay_down=True)  # every connection, the pool's and the listener's
                time.sleep(1.0)  # the listener and the checker notice
                started = time.monotonic()
                for _ in range(20):
                    assert store.twilio(ACME_ID) == tw  # from memory, at once
                # from memory: a read that waited on the cut database would take seconds each
                assert time.monotonic() - started < 2.0
                # a miss cannot be answered: unavailable, never "not found"
                with pytest.raises(CredentialUnavailable, match="cannot read the resend"):
                    store.resend(ACME_ID)
                wait_until(lambda: store.stats()["audit_dropped"] >= 16, 30, "audit rows dropped")
                store.close()  # the rest cannot be written either: dropped, counted
            stats = store.stats()
            assert stats["audit_dropped"] == 21 and stats["audit_pending"] == 0
            assert stats["confirmed_ago_s"] > 1.0  # nothing has vouched for the cache since
            dropped = metrics.CREDENTIAL_AUDIT_ROWS.values()[("dropped",)] - dropped_before
            assert dropped == 21
            audit_lines = [
                r.getMessage() for r in caplog.records if "credential audit" in r.getMessage()
            ]
            assert len(audit_lines) == 2, audit_lines  # failing, then the drop at close
            assert not any(CANARY in r.getMessage() for r in caplog.records)
        finally:
            store.close()


# --- construction ------------------------------------------------------------------------------


def test_from_settings_checks_the_schema_and_never_migrates(
    server_url: str, master_key: MasterKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = f"reconciler_empty_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        info = psycopg.conninfo.conninfo_to_dict(server_url) | {"dbname": name}
        url = psycopg.conninfo.make_conninfo(**info)
        monkeypatch.setenv("RECONCILER_DATABASE_URL", url)
        monkeypatch.setenv("RECONCILER_MASTER_KEY", master_key.to_b64())
        monkeypatch.delenv("RECONCILER_MASTER_KEYS", raising=False)
        with pytest.raises(ConfigError, match="run `reconciler db migrate`"):
            CredentialStore.from_settings(caller="schema-check")
        with psycopg.connect(url) as conn:
            tables = conn.execute(
                "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
            ).fetchone()
        assert tables == (0,)  # nothing created
        monkeypatch.delenv("RECONCILER_MASTER_KEY")
        with pytest.raises(ConfigError, match="RECONCILER_MASTER_KEY"):
            CredentialStore.from_settings(caller="schema-check")
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def test_the_stores_connections_are_named_for_its_caller(
    applied: dict[str, Any], open_store: Callable[..., CredentialStore], pool: ConnectionPool
) -> None:
    open_store(caller="named-svc").twilio(ACME_ID)
    with pool.connection() as conn:
        names = {
            r[0]
            for r in conn.execute(
                "SELECT application_name FROM pg_stat_activity WHERE application_name LIKE %s",
                ("%named-svc%",),
            ).fetchall()
        }
    assert names == {"reconciler-credentials:named-svc", "reconciler-credentials-listen:named-svc"}


def test_audit_times_are_the_read_times(
    applied: dict[str, Any], open_store: Callable[..., CredentialStore], pool: ConnectionPool
) -> None:
    store = open_store(audit_every_s=60)
    before = datetime.now(UTC)
    store.twilio(ACME_ID)
    time.sleep(0.3)
    store.close()
    with pool.connection() as conn:
        row = conn.execute("SELECT at FROM credential_audit").fetchone()
    assert row is not None and before <= row[0] <= before + timedelta(seconds=0.25)
