"""Reconcile runs (`reconcile_runs`): one row a run, for `status` and the history; written
only (an org's own runs are read with its status)."""

from __future__ import annotations

from psycopg.types.json import Jsonb

from reconciler.state._base import Repository

RUN_ROWS_KEPT = 10_000
"""`reconcile_runs` rows kept (a serve replica adds about one per interval)."""


class RunWriter(Repository):
    def start(self, command: str, orgs_total: int) -> int:
        with self._db.tx(1) as conn:
            row = conn.execute(
                "INSERT INTO reconcile_runs (command, orgs_total) VALUES (%s, %s) RETURNING id",
                (command, orgs_total),
            ).fetchone()
        assert row is not None
        return int(row[0])

    def finish(
        self,
        run_id: int,
        *,
        orgs_failed: int,
        files_failed: int,
        orgs_skipped: int,
        changes: dict[str, int],
        errors: list[dict[str, str]],
    ) -> None:
        with self._db.tx(1, patient=True) as conn:
            conn.execute(
                "UPDATE reconcile_runs SET finished_at = now(), orgs_failed = %s,"
                " files_failed = %s, orgs_skipped = %s, changes = %s, errors = %s WHERE id = %s",
                (orgs_failed, files_failed, orgs_skipped, Jsonb(changes), Jsonb(errors), run_id),
            )
            if run_id % 100 == 0:  # now and then, by primary key: a cheap delete
                conn.execute("DELETE FROM reconcile_runs WHERE id <= %s", (run_id - RUN_ROWS_KEPT,))
