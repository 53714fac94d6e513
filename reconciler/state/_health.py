"""The database itself, not one aggregate: is it answering, and how many connections it can
still take (for /readyz and the server's pool sizing)."""

from __future__ import annotations

from reconciler.state._base import Repository


class HealthReader(Repository):
    def ping(self) -> None:
        """Raises `StateError` unless the database answers (for /readyz)."""
        with self._db.read() as cur:
            cur.execute("SELECT 1")

    def free_connections(self) -> int:
        """Connections the server can still accept from us (not counting reserved ones)."""
        with self._db.read() as cur:
            row = cur.execute(
                "SELECT current_setting('max_connections')::int"
                " - current_setting('superuser_reserved_connections')::int"
                " - (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')"
                " AS free"
            ).fetchone()
        return int(row["free"]) if row else 0
