"""Plain SQL migrations, applied in order under a lock, each recorded with its checksum."""

from __future__ import annotations

import hashlib
from importlib import resources

from psycopg_pool import ConnectionPool

from reconciler.errors import ConfigError

_LOCK_KEY = 0x7EC0_0001  # pg_advisory_xact_lock key for migrations


def _migrations() -> list[tuple[str, str]]:
    folder = resources.files("reconciler.state") / "migrations"
    files = sorted((f for f in folder.iterdir() if f.name.endswith(".sql")), key=lambda f: f.name)
    return [(f.name.removesuffix(".sql"), f.read_text()) for f in files]


def migrate(pool: ConnectionPool) -> list[str]:
    """Apply what is missing; returns the names applied. Safe to run from many replicas."""
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
            checksum = hashlib.sha256(sql.encode()).hexdigest()
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
