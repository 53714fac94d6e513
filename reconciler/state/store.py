"""The two typed faces of the state: `StateReader` only reads (for `plan` and the resolver),
`StateWriter` adds the writes, each in one transaction with what it describes. Each face is
one repository per aggregate (`orgs`, `credentials`, `assistants`, `resources`, `accounts`,
`runs`, `health`, `rollouts`), all sharing one pool, outage breaker and statement counter; a
reader's repositories have no write method, so `plan` cannot write by construction.

The queries live in the private modules beside this one (`_orgs`, `_credentials`, ...); this
module is their only public import path.

A database error surfaces as one `StateError` line (the first line of Postgres's message, which
names constraints, never values), so a database that dies mid-run fails the orgs in hand with
a clear reason instead of an internal error.
"""

from __future__ import annotations

from psycopg_pool import ConnectionPool

from reconciler.state._accounts import AccountReader, AccountWriter
from reconciler.state._assistants import AssistantReader, AssistantWriter
from reconciler.state._base import (
    MAPPING_RETENTION_S,
    OUTAGE_PAUSE_S,
    Db,
    StateError,
    config_jsonb,
    exact_numbers,
    holdable,
    state_error,
    writer_name,
)
from reconciler.state._credentials import PREVIOUS_KEPT, CredentialReader, CredentialWriter
from reconciler.state._health import HealthReader
from reconciler.state._orgs import (
    RUNS_KEPT,
    SECRET_GRACE_S,
    STATUS_HEARTBEAT_S,
    OrgIndexRow,
    OrgLock,
    OrgReader,
    OrgStatus,
    OrgWriter,
)
from reconciler.state._resources import ResourceReader, ResourceWriter
from reconciler.state._rollouts import RolloutReader, RolloutRow, RolloutWriter
from reconciler.state._runs import RUN_ROWS_KEPT, RunWriter

__all__ = [
    "MAPPING_RETENTION_S",
    "OUTAGE_PAUSE_S",
    "PREVIOUS_KEPT",
    "RUNS_KEPT",
    "RUN_ROWS_KEPT",
    "SECRET_GRACE_S",
    "STATUS_HEARTBEAT_S",
    "AccountReader",
    "AccountWriter",
    "AssistantReader",
    "AssistantWriter",
    "CredentialReader",
    "CredentialWriter",
    "Db",
    "HealthReader",
    "OrgIndexRow",
    "OrgLock",
    "OrgReader",
    "OrgStatus",
    "OrgWriter",
    "ResourceReader",
    "ResourceWriter",
    "RolloutReader",
    "RolloutRow",
    "RolloutWriter",
    "RunWriter",
    "StateError",
    "StateReader",
    "StateWriter",
    "config_jsonb",
    "exact_numbers",
    "holdable",
    "state_error",
    "writer_name",
]


class StateReader:
    """Every read-only repository over one pool."""

    orgs: OrgReader
    credentials: CredentialReader
    assistants: AssistantReader
    resources: ResourceReader
    accounts: AccountReader
    health: HealthReader
    rollouts: RolloutReader

    def __init__(
        self,
        pool: ConnectionPool,
        *,
        outage_pause_s: float = OUTAGE_PAUSE_S,
        mapping_retention_s: float = MAPPING_RETENTION_S,
    ) -> None:
        self.pool = pool
        self.mapping_retention_s = mapping_retention_s
        self._db = Db(pool, outage_pause_s=outage_pause_s, retention_s=mapping_retention_s)
        self._compose(self._db)

    def _compose(self, db: Db) -> None:
        self.orgs = OrgReader(db)
        self.credentials = CredentialReader(db)
        self.assistants = AssistantReader(db)
        self.resources = ResourceReader(db)
        self.accounts = AccountReader(db)
        self.health = HealthReader(db)
        self.rollouts = RolloutReader(db)

    @property
    def queries(self) -> int:
        """Statements sent by every repository of this store (benchmarks count them)."""
        return self._db.queries


class StateWriter(StateReader):
    """The same repositories with their writes (and the runs'), over the same plumbing."""

    orgs: OrgWriter
    credentials: CredentialWriter
    assistants: AssistantWriter
    resources: ResourceWriter
    accounts: AccountWriter
    runs: RunWriter
    rollouts: RolloutWriter

    def _compose(self, db: Db) -> None:
        self.orgs = OrgWriter(db)
        self.credentials = CredentialWriter(db)
        self.assistants = AssistantWriter(db)
        self.resources = ResourceWriter(db)
        self.accounts = AccountWriter(db)
        self.health = HealthReader(db)
        self.runs = RunWriter(db)
        self.rollouts = RolloutWriter(db)
