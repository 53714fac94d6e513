"""Which orgs reach which Vapi account, this run and before.

Vapi has no "who am I" call, but every assistant names its account (`orgId`), in a listing and
in the answer to a create. Two orgs whose keys reach one account would fight over it (and
BYOC means one account per org), so both are refused as soon as it is seen: from what Postgres
recorded at earlier runs, from this run's listings, or from the answer to a create. A create
into an account not identified yet (empty, never recorded) is serialised with every other
such create in the run, and the account is listed again just before it: an earlier create
into the same account names it by then. Only a create whose outcome is unknown (so not yet
listed) can let a second org's create through, so at most one stray assistant comes of it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from reconciler.state.store import OrgIndexRow


class AccountRegistry:
    def __init__(self, index: Iterable[OrgIndexRow]) -> None:
        self._lock = threading.Lock()
        self._first_create = threading.Lock()
        self._slugs: dict[str, str] = {}
        self._accounts: dict[str, frozenset[str]] = {}  # org id -> the account(s) it reaches
        self._creates = 0  # creates answered in this run, by any org
        self._listed_at: dict[str, int] = {}  # org id -> `_creates` when its listing was asked
        self._seen: set[str] = set()  # orgs whose account a listing or an answer showed now
        self._members: dict[str, set[str]] = {}  # account -> org ids reaching it (the reverse)
        self.index = list(index)  # every org Postgres knows, as the run started
        slugs, accounts, members = self._slugs, self._accounts, self._members
        for row in self.index:  # `_set_accounts` inlined: an org's first row replaces nothing
            org_id, account = row.org_id, row.vapi_account_id
            slugs[org_id] = row.slug
            if not account:
                continue
            if org_id in accounts:
                self._set_accounts(org_id, frozenset((account,)))
            else:
                accounts[org_id] = frozenset((account,))
                members.setdefault(account, set()).add(org_id)

    def _set_accounts(self, org_id: str, accounts: frozenset[str]) -> None:
        """Under the lock (or in __init__): both maps at once, so lookups stay O(1)."""
        for old in self._accounts.get(org_id, frozenset()) - accounts:
            self._members.get(old, set()).discard(org_id)
        for new in accounts:
            self._members.setdefault(new, set()).add(org_id)
        self._accounts[org_id] = accounts

    def mark(self) -> int:
        """Taken just before a listing is asked for, and handed to `see` with its result: a
        create answered after it may not show in that listing."""
        with self._lock:
            return self._creates

    def see(self, org_id: str, slug: str, accounts: Iterable[str], *, asked_at: int) -> None:
        """The org's key reaches these accounts now (a listing asked at `asked_at`, or a
        create's answer, shows them), replacing what was recorded before."""
        found = frozenset(accounts)
        with self._lock:
            self._slugs[org_id] = slug
            self._listed_at[org_id] = asked_at
            if found:
                self._set_accounts(org_id, found)
                self._seen.add(org_id)

    def created(self) -> None:
        """A create was answered (by any org): listings made before it may be out of date."""
        with self._lock:
            self._creates += 1

    def account(self, org_id: str) -> str | None:
        """The account the org reaches, when known and unambiguous."""
        with self._lock:
            accounts = self._accounts.get(org_id, frozenset())
        return next(iter(accounts)) if len(accounts) == 1 else None

    def shared_with(self, org_id: str) -> dict[str, str]:
        """Other orgs (id -> slug) that reach an account this one reaches."""
        with self._lock:
            mine = self._accounts.get(org_id, frozenset())
            others = {o for account in mine for o in self._members.get(account, ())}
            others.discard(org_id)
            return {other: self._slugs.get(other, other) for other in others}

    @contextmanager
    def first_create(self, org_id: str) -> Iterator[bool]:
        """Held around a create while no listing or answer of this run has shown the org's
        account: such creates go one at a time, each answer naming its account before the next
        is sent. Yields whether the caller must list its account again first: when a create
        was answered since its listing was asked for (whatever that create put there would name
        the account)."""
        with self._lock:  # what Postgres recorded may be stale (a new key): only this run counts
            known = org_id in self._seen
        if known:
            yield False
            return
        with self._first_create:
            with self._lock:
                stale = self._listed_at.get(org_id) != self._creates
            yield stale
