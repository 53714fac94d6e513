"""Spec files already checked and decrypted, by content digest, so a loop over unchanged specs
parses nothing and spawns no `sops` process.

Keyed by (path, sha256 of the exact bytes read): any change to a file is a new key, and the
entry of its old content ages out (LRU, bounded). Failures are cached too: a file that failed
validation or decryption is not tried again until it changes (or `forget_failures()`, which
`serve` calls when asked to reconcile now, e.g. after the age key was fixed). Decrypted
entries hold plaintext credentials in memory, as the reconciler does anyway while it runs;
nothing is written anywhere.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

T = TypeVar("T")
Key = tuple[Path, str, str]  # (path, digest, stage)

DEFAULT_ENTRIES = 8192


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class SpecCache(Generic[T]):
    """A bounded LRU of per-file outcomes `(value or None, problems)`; thread-safe."""

    def __init__(self, max_entries: int = DEFAULT_ENTRIES) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[Key, T] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, path: Path, data_digest: str, stage: str) -> T | None:
        """The outcome kept for these bytes, if any (a miss is counted by `get_or_compute`)."""
        key = (path, data_digest, stage)
        with self._lock:
            return self._hit(key) if key in self._entries else None

    def _hit(self, key: Key) -> T:
        """Under the lock, for a key it holds: its entry, counted and made the newest."""
        self._entries.move_to_end(key)
        self.hits += 1
        return self._entries[key]

    def get_or_compute(
        self, path: Path, data_digest: str, stage: str, compute: Callable[[], T]
    ) -> T:
        key = (path, data_digest, stage)
        with self._lock:
            if key in self._entries:
                return self._hit(key)
            self.misses += 1
        value = compute()  # outside the lock: sops runs concurrently for different files
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return value

    def forget(self, keep: Callable[[T], bool]) -> int:
        """Drop the entries for which `keep` is false; returns how many went."""
        with self._lock:
            gone = [k for k, v in self._entries.items() if not keep(v)]
            for k in gone:
                del self._entries[k]
        return len(gone)

    def __len__(self) -> int:
        return len(self._entries)
