"""Plain SQL migrations, applied in order under a lock, each recorded with its checksum."""

from __future__ import annotations

import hashlib
from importlib import resources

import psycopg
from psycopg_pool import ConnectionPool

from reconciler.errors import ConfigError
from reconciler.redact import printable

_LOCK_KEY = 0x7EC0_0001  # pg_advisory_xact_lock key for migrations


def _migrations() -> list[tuple[str, str]]:
    folder = resources.files("reconciler.state") / "migrations"
    files = sorted((f for f in folder.iterdir() if f.name.endswith(".sql")), key=lambda f: f.name)
    return [(f.name.removesuffix(".sql"), f.read_text()) for f in files]


def _applied(pool: ConnectionPool) -> dict[str, str]:
    """Version -> checksum of what the database has (nothing when it has no schema yet)."""
    with pool.connection() as conn:
        exists = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
        if not (exists and exists[0]):
            return {}
        return dict(conn.execute("SELECT version, checksum FROM schema_migrations").fetchall())


def _one_line(exc: psycopg.Error) -> str:
    lines = str(exc).strip().splitlines()
    return printable(lines[0].strip() if lines else type(exc).__name__, 200)


def migrate(pool: ConnectionPool) -> list[str]:
    """Apply what is missing; returns the names applied. Safe to run from many replicas. An
    up-to-date database is only read (so a read-only role may run it); a database error is
    one line."""
    try:
        done = _applied(pool)
        if all(done.get(v) == _checksum(sql) for v, sql in _migrations()):
            return []
        return _migrate(pool)
    except psycopg.Error as exc:
        raise ConfigError(f"cannot migrate the database: {_one_line(exc)}") from None


def _checksum(sql: str) -> str:
    return hashlib.sha256(sql.encode()).hexdigest()


def _migrate(pool: ConnectionPool) -> list[str]:
    applied_now: list[str] = []
    with pool.connection() as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version text PRIMARY KEY, checksum text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done: dict[str, str] = dict(
            conn.execute("SELECT version, checksum FROM schema_migrations").fetchall()
        )
        for version, sql in _migrations():
            checksum = _checksum(sql)
            if version in done:
                if done[version] != checksum:
                    raise ConfigError(f"migration {version} was changed after it was applied")
                continue
            conn.execute(sql.encode())
            conn.execute(
                "INSERT INTO schema_migrations (version, checksum) VALUES (%s, %s)",
                (version, checksum),
            )
            applied_now.append(version)
    return applied_now


def check_schema(pool: ConnectionPool) -> None:
    """For commands that write nothing (`plan`, `resolve`): the schema must be current, and
    nothing is migrated here. Reads only, so a read-only database role is enough."""
    try:
        done = set(_applied(pool))
    except psycopg.Error as exc:
        raise ConfigError(f"cannot read the database schema: {_one_line(exc)}") from None
    known = [version for version, _ in _migrations()]
    missing = [v for v in known if v not in done]
    if not done:
        raise ConfigError("the database has no reconciler schema yet: run `reconciler db migrate`")
    if missing:
        raise ConfigError(
            f"the database schema is out of date (missing {', '.join(missing)}): "
            "run `reconciler db migrate`"
        )
    unknown = sorted(done - set(known))
    if unknown:
        raise ConfigError(
            f"the database schema is newer than this reconciler ({', '.join(unknown)}): "
            "upgrade the reconciler"
        )
