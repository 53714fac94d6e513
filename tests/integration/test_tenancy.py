"""Org isolation in Postgres: a login role granted `reconciler_tenant` sees and writes only the
rows of the org in `app.org_id`, nothing without it, and nothing of the reconciler's own
tables; every table with an org column is under that policy (checked from the catalog, so a
new table without it fails here)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from reconciler.controller.run import Controller
from reconciler.spec.loader import load_tree
from reconciler.state.store import StateWriter
from tests.helpers import SpecDir, org_doc

ORG_TABLES = {  # table -> its org column
    "organizations": "id",
    "org_credentials": "org_id",
    "assistants": "org_id",
    "assistant_org_mapping": "org_id",
    "org_runs": "org_id",
    "org_schedule": "org_id",
    "credential_audit": "org_id",
}

APPEND_ONLY = {"credential_audit"}  # a tenant adds rows, never changes or removes one


@pytest.fixture
def tenant_url(database_url: str) -> Iterator[str]:
    """A login role of a platform service, granted `reconciler_tenant` (and nothing else)."""
    role = f"svc_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        admin.execute(sql.SQL("GRANT reconciler_tenant TO {}").format(sql.Identifier(role)))
    info = psycopg.conninfo.conninfo_to_dict(database_url)
    info["user"] = role
    yield psycopg.conninfo.make_conninfo(**info)
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


@pytest.fixture
def two_orgs(specs: SpecDir, controller: Controller, state: StateWriter) -> tuple[str, str]:
    a, b = org_doc("acme"), org_doc("globex")
    specs.write(a)
    specs.write(b)
    assert controller.apply(load_tree(specs.root)).ok
    with state.pool.connection() as conn:  # `serve` and the credential API write these
        for doc in (a, b):
            org_id = doc["metadata"]["id"]
            conn.execute("INSERT INTO org_schedule (org_id) VALUES (%s)", (org_id,))
            conn.execute(
                "INSERT INTO credential_audit (org_id, provider, caller, at, outcome)"
                " VALUES (%s, 'vapi', 'svc', now(), 'ok')",
                (org_id,),
            )
    return a["metadata"]["id"], b["metadata"]["id"]


def counts(conn: psycopg.Connection[Any], org_id: str | None = None) -> dict[str, int]:
    out = {}
    for table, column in ORG_TABLES.items():
        query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))
        if org_id is not None:
            query += sql.SQL(" WHERE {} = %s").format(sql.Identifier(column))
        row = conn.execute(query, (org_id,) if org_id else ()).fetchone()
        out[table] = row[0] if row else 0
    return out


def test_a_tenant_sees_and_writes_only_its_org(
    two_orgs: tuple[str, str], tenant_url: str, database_url: str
) -> None:
    a, b = two_orgs
    with psycopg.connect(database_url) as admin:
        mine, theirs = counts(admin, a), counts(admin, b)
    assert all(n > 0 for n in mine.values()) and all(n > 0 for n in theirs.values())

    with psycopg.connect(tenant_url, autocommit=True) as conn:
        assert counts(conn) == dict.fromkeys(ORG_TABLES, 0)  # no app.org_id: nothing
        conn.execute("SET app.org_id = ''")
        assert counts(conn) == dict.fromkeys(ORG_TABLES, 0)
        conn.execute("SELECT set_config('app.org_id', %s, false)", (a,))
        assert counts(conn) == mine  # all of its own rows ...
        assert counts(conn, b) == dict.fromkeys(ORG_TABLES, 0)  # ... and none of the other's
        for table, column in ORG_TABLES.items():
            if table in APPEND_ONLY:
                continue  # refused outright, for every org (the test below)
            name, col = sql.Identifier(table), sql.Identifier(column)
            cur = conn.execute(
                sql.SQL("UPDATE {} SET {} = {} WHERE {} = %s").format(name, col, col, col), (b,)
            )
            assert cur.rowcount == 0, table  # B's rows cannot be updated ...
            cur = conn.execute(sql.SQL("DELETE FROM {} WHERE {} = %s").format(name, col), (b,))
            assert cur.rowcount == 0, table  # ... nor deleted
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
            conn.execute("INSERT INTO org_schedule (org_id) VALUES (%s)", (str(uuid.uuid4()),))
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
            conn.execute(  # moving its own row to another org is refused too
                "UPDATE org_runs SET org_id = %s WHERE org_id = %s", (b, a)
            )
        cur = conn.execute("UPDATE organizations SET name = 'Acme (svc)' WHERE id = %s", (a,))
        assert cur.rowcount == 1  # its own org's rows are writable
        for table in ("reconcile_runs", "schema_migrations"):  # the reconciler's own
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(sql.SQL("SELECT 1 FROM {}").format(sql.Identifier(table)))
    with psycopg.connect(database_url) as admin:
        assert counts(admin, b) == theirs  # nothing of B changed


def test_a_tenant_adds_audit_rows_for_its_org_but_never_changes_one(
    two_orgs: tuple[str, str], tenant_url: str, database_url: str
) -> None:
    a, b = two_orgs
    with psycopg.connect(database_url) as admin:
        before = admin.execute(
            "SELECT id, org_id::text, caller, outcome FROM credential_audit ORDER BY id"
        ).fetchall()
    with psycopg.connect(tenant_url, autocommit=True) as conn:
        conn.execute("SELECT set_config('app.org_id', %s, false)", (a,))
        conn.execute(  # its reads as they happen: allowed, for its own org
            "INSERT INTO credential_audit (org_id, provider, caller, at, outcome)"
            " VALUES (%s, 'vapi', 'sms-service', now(), 'ok')",
            (a,),
        )
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
            conn.execute(  # ... and for its own org only
                "INSERT INTO credential_audit (org_id, provider, caller, at, outcome)"
                " VALUES (%s, 'vapi', 'sms-service', now(), 'ok')",
                (b,),
            )
        [(mine,)] = conn.execute("SELECT count(*) FROM credential_audit").fetchall()
        assert mine == 2  # the one from the fixture and its own
        for statement in (
            "UPDATE credential_audit SET outcome = 'error' WHERE org_id = %s",
            "UPDATE credential_audit SET caller = 'someone-else' WHERE org_id = %s",
            "DELETE FROM credential_audit WHERE org_id = %s",
        ):
            for org in (a, b):  # its own org's rows included
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(statement, (org,))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("TRUNCATE credential_audit")
    with psycopg.connect(database_url) as admin:
        after = admin.execute(
            "SELECT id, org_id::text, caller, outcome FROM credential_audit ORDER BY id"
        ).fetchall()
    assert after[: len(before)] == before  # every earlier row as it was
    assert [(org, caller) for _, org, caller, _ in after[len(before) :]] == [(a, "sms-service")]


def test_every_table_with_an_org_column_is_isolated(database_url: str, state: StateWriter) -> None:
    with psycopg.connect(database_url) as conn:
        tables = conn.execute(
            "SELECT c.relname, c.relrowsecurity,"
            " EXISTS (SELECT FROM pg_policy p WHERE p.polrelid = c.oid"
            "   AND p.polname = 'tenant_isolation')"
            " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = current_schema() AND c.relkind = 'r'"
            " AND (c.relname = 'organizations' OR EXISTS (SELECT FROM pg_attribute a"
            "   WHERE a.attrelid = c.oid AND a.attname = 'org_id' AND NOT a.attisdropped))"
        ).fetchall()
    names = {name for name, _, _ in tables}
    assert set(ORG_TABLES) <= names
    unprotected = [name for name, rls, policy in tables if not (rls and policy)]
    assert unprotected == [], f"call reconciler_tenant_isolate() in the migration: {unprotected}"
