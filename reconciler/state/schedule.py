"""When each org is due, shared by every `serve` replica through the `org_schedule` table.

A replica claims the due orgs of its specs in one statement (`FOR UPDATE SKIP LOCKED`, then
their `next_run_at` pushed one interval ahead), so two replicas never claim one org in the
same interval and nothing depends on a session (it works behind a transaction pooler). A
replica killed after claiming loses nothing: its orgs are due again one interval later, for
whichever replica comes first. The org's advisory lock still guards the apply itself.

`failures` counts an org's consecutive failed runs: the next attempt waits
`min(cap, base * 2**(failures - 1))`, and a success resets it. A spec whose digest changed is
due at once, whatever its backoff.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from reconciler.state.store import StateWriter

_CLAIM_SQL = """
WITH wanted AS (
  SELECT * FROM jsonb_to_recordset(%(orgs)s::jsonb) AS w(id uuid, digest text)
), due AS (
  SELECT s.org_id FROM org_schedule s JOIN wanted w ON w.id = s.org_id
  WHERE s.next_run_at <= now() OR s.spec_digest IS DISTINCT FROM w.digest OR %(force)s
  ORDER BY s.next_run_at
  LIMIT %(limit)s
  FOR UPDATE OF s SKIP LOCKED
)
UPDATE org_schedule s SET
  next_run_at = now() + make_interval(secs => %(next_in_s)s),
  spec_digest = w.digest, claimed_by = %(replica)s, claimed_at = now()
FROM due, wanted w
WHERE s.org_id = due.org_id AND w.id = s.org_id
RETURNING s.org_id::text, s.failures
"""


@dataclass(frozen=True)
class Backoff:
    """After n consecutive failures the next attempt waits min(cap, base * 2**(n-1)):
    computed by `Schedule.finished` in SQL."""

    base_s: float = 60.0
    cap_s: float = 600.0


class Schedule:
    def __init__(self, state: StateWriter, replica: str) -> None:
        self.state = state
        self.replica = replica

    def claim(
        self,
        digests: dict[str, str],
        *,
        next_in_s: float,
        limit: int = 100_000,
        force: bool = False,
    ) -> set[str]:
        """The orgs (id -> spec digest) that are due now and were not claimed by another
        replica; they are pushed `next_in_s` ahead. An org new to the table is due at once
        (its first row is inserted by the same statement; one claimed by a concurrent
        replica is simply not ours). `force` (asked to reconcile now): due whatever their
        schedule or backoff, except those another replica holds this very moment."""
        if not digests:
            return set()
        # as text, made once for both statements (each `Jsonb` parameter is dumped again)
        orgs = json.dumps([{"id": org_id, "digest": digest} for org_id, digest in digests.items()])
        params = {
            "orgs": orgs,
            "limit": limit,
            "next_in_s": next_in_s,
            "replica": self.replica,
            "force": force,
        }
        with self.state._db.tx(2) as conn:
            conn.execute(
                "INSERT INTO org_schedule (org_id) SELECT w.id"
                " FROM jsonb_to_recordset(%s::jsonb) AS w(id uuid) ON CONFLICT (org_id) DO NOTHING",
                (orgs,),
            )
            rows = conn.execute(_CLAIM_SQL, params).fetchall()
        return {str(r[0]) for r in rows}

    def finished(self, results: dict[str, bool], backoff: Backoff) -> None:
        """After a run: failures reset on success, counted and backed off on failure."""
        if not results:
            return
        with self.state._db.tx(1) as conn:
            conn.execute(
                "UPDATE org_schedule s SET"
                " failures = CASE WHEN r.ok THEN 0 ELSE s.failures + 1 END,"
                " next_run_at = CASE WHEN r.ok THEN s.next_run_at"
                "   ELSE GREATEST(s.next_run_at, now() + make_interval(secs =>"
                "     least(%s, %s * power(2, least(s.failures, 30))))) END"
                " FROM unnest(%s::uuid[], %s::bool[]) AS r(id, ok) WHERE s.org_id = r.id",
                (backoff.cap_s, backoff.base_s, list(results), list(results.values())),
            )

    def release(self, org_ids: list[str]) -> None:
        """Claimed but not worked on (shutting down): due again now, for another replica."""
        if not org_ids:
            return
        with self.state._db.tx(1) as conn:
            conn.execute(
                "UPDATE org_schedule SET next_run_at = now(), claimed_by = NULL"
                " WHERE org_id = ANY(%s::uuid[]) AND claimed_by = %s",
                (org_ids, self.replica),
            )
