"""The credential store's in-memory cache: TTL, an LRU bound, invalidation, statistics.

Thread-safe (one lock, held for dictionary work only, never during a load). A hit is a dict
lookup, a clock read and an LRU touch. Concurrent misses of one key share one load (single
flight). Every invalidation bumps a generation: a load that began before it is returned to
its caller but not stored, so an entry loaded from a snapshot older than an invalidation can
never be cached after it. Keys carry their org (`org_of`), so an org's entries are dropped
together without scanning the cache.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, NamedTuple, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

FLIGHT_WAIT_S = 30.0
"""How long a miss waits for a concurrent load of the same key (the pool times out first)."""


class _Miss:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISS"


MISS = _Miss()
"""What `Cache.get` returns when the key is not (or no longer) cached."""


class Loaded(NamedTuple, Generic[V]):
    """A load's answer: the value, what the version check compares it by (`token`), its org
    (for `invalidate_org`), and whether it is a negative answer (kept `negative_ttl_s`)."""

    value: V
    token: Hashable
    org_id: str | None
    negative: bool = False


@dataclass
class CacheStats:
    """Counts since the cache was made. `hits + misses` is every lookup."""

    hits: int = 0
    misses: int = 0
    loads: int = 0  # loads run (a miss that joined another's load ran none)
    load_errors: int = 0
    evictions: int = 0  # dropped by the LRU bound
    expired: int = 0  # dropped at their TTL
    invalidated: int = 0  # dropped by an invalidation (NOTIFY, the version check, clear)

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass(slots=True)
class Entry(Generic[V]):
    value: V
    token: Hashable
    org_id: str | None
    expires: float


@dataclass
class _Flight(Generic[V]):
    generation: int
    done: threading.Event = field(default_factory=threading.Event)
    loaded: Loaded[V] | None = None


class Cache(Generic[K, V]):
    def __init__(
        self,
        *,
        ttl_s: float,
        negative_ttl_s: float,
        max_entries: int,
        clock: Callable[[], float] = time.monotonic,
        flight_wait_s: float = FLIGHT_WAIT_S,
    ) -> None:
        if not ttl_s > 0 or not negative_ttl_s >= 0:
            raise ValueError("ttl_s must be > 0 and negative_ttl_s >= 0")
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.ttl_s = ttl_s
        self.negative_ttl_s = negative_ttl_s
        self.max_entries = max_entries
        self._clock = clock
        self._flight_wait_s = flight_wait_s
        self._lock = threading.Lock()
        self._entries: OrderedDict[K, Entry[V]] = OrderedDict()
        self._by_org: dict[str, set[K]] = {}
        self._flights: dict[K, _Flight[V]] = {}
        self._generation = 0
        self.stats = CacheStats()

    def __len__(self) -> int:
        return len(self._entries)

    # --- reads ---------------------------------------------------------------------------------

    def get(self, key: K) -> V | _Miss:
        """The cached value, or `MISS` (an expired entry is dropped). No I/O, ever."""
        now = self._clock()
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                if entry.expires > now:
                    self._entries.move_to_end(key)
                    self.stats.hits += 1
                    return entry.value
                self._remove(key, entry)
                self.stats.expired += 1
        return MISS

    def load(self, key: K, loader: Callable[[], Loaded[V]]) -> V:
        """Runs `loader` for a key `get` missed (or joins a load of it already running since the
        last invalidation) and caches its answer unless an invalidation came meanwhile. A
        failed load caches nothing and raises to its caller; the misses that joined it then
        load for themselves."""
        with self._lock:
            self.stats.misses += 1
        while True:
            with self._lock:
                flight = self._flights.get(key)
                leader = flight is None or flight.generation != self._generation
                if leader:
                    flight = self._flights[key] = _Flight(self._generation)
                    self.stats.loads += 1
            assert flight is not None
            if leader:
                return self._lead(key, flight, loader)
            if not flight.done.wait(self._flight_wait_s):
                raise TimeoutError("timed out waiting for a concurrent read of the same key")
            if flight.loaded is not None:
                return flight.loaded.value
            # the load we joined failed: try for ourselves (its error went to its caller)

    def _lead(self, key: K, flight: _Flight[V], loader: Callable[[], Loaded[V]]) -> V:
        try:
            loaded = loader()
        except BaseException:
            with self._lock:
                self.stats.load_errors += 1
            raise
        else:
            flight.loaded = loaded
            with self._lock:
                if flight.generation == self._generation:
                    self._store(key, loaded)
            return loaded.value
        finally:
            with self._lock:
                if self._flights.get(key) is flight:
                    del self._flights[key]
            flight.done.set()

    def _store(self, key: K, loaded: Loaded[V]) -> None:
        """Caches an answer (the lock held), evicting the least recently used past the bound."""
        ttl = self.negative_ttl_s if loaded.negative else self.ttl_s
        if ttl <= 0:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self._unindex(key, old)
        self._entries[key] = Entry(loaded.value, loaded.token, loaded.org_id, self._clock() + ttl)
        if loaded.org_id is not None:
            self._by_org.setdefault(loaded.org_id, set()).add(key)
        while len(self._entries) > self.max_entries:
            oldest, entry = self._entries.popitem(last=False)
            self._unindex(oldest, entry)
            self.stats.evictions += 1

    def _remove(self, key: K, entry: Entry[V]) -> None:
        del self._entries[key]
        self._unindex(key, entry)

    def _unindex(self, key: K, entry: Entry[V]) -> None:
        if entry.org_id is not None:
            keys = self._by_org.get(entry.org_id)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_org[entry.org_id]

    # --- invalidation ----------------------------------------------------------------------------

    def invalidate(self, key: K) -> None:
        """Drops one key; loads running now will not store their answer."""
        with self._lock:
            self._generation += 1
            entry = self._entries.get(key)
            if entry is not None:
                self._remove(key, entry)
                self.stats.invalidated += 1

    def invalidate_org(self, org_id: str, *, negatives: bool = False) -> None:
        """Drops every entry of the org and, with `negatives`, every entry of no org (a cached
        'unknown' that may resolve to it now)."""
        with self._lock:
            self._generation += 1
            keys = set(self._by_org.get(org_id, ()))
            if negatives:
                keys.update(k for k, e in self._entries.items() if e.org_id is None)
            for key in keys:
                entry = self._entries.get(key)
                if entry is not None:
                    self._remove(key, entry)
                    self.stats.invalidated += 1

    def clear(self) -> None:
        """Drops everything (the listener was deaf for a while)."""
        with self._lock:
            self._generation += 1
            self.stats.invalidated += len(self._entries)
            self._entries.clear()
            self._by_org.clear()

    # --- the version check ------------------------------------------------------------------------

    def begin_check(self) -> list[tuple[K, Entry[V]]]:
        """What a version check compares with Postgres: every entry (expired ones are dropped
        here). Bumps the generation, so a load from a snapshot older than the check's query
        is not stored behind its back."""
        now = self._clock()
        with self._lock:
            self._generation += 1
            stale = [(k, e) for k, e in self._entries.items() if e.expires <= now]
            for key, entry in stale:
                self._remove(key, entry)
                self.stats.expired += 1
            return list(self._entries.items())

    def drop_if_same(self, key: K, entry: Entry[V]) -> bool:
        """Drops `key` if it still holds this very entry (not one loaded since)."""
        with self._lock:
            if self._entries.get(key) is entry:
                self._remove(key, entry)
                self.stats.invalidated += 1
                return True
        return False

    def stats_snapshot(self) -> dict[str, int]:
        with self._lock:
            return self.stats.as_dict() | {"entries": len(self._entries)}
