"""What every part of native SOPS decryption shares: its two ways out (`Fallback` to the
binary, `Suspect` for a verdict the binary confirms), the constants sops fixes, and the crypto
libraries (pyrage, cryptography), imported once on first use."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from reconciler.errors import DecryptionError

log = logging.getLogger(__name__)


MAX_DEPTH = 64
"""Nesting deeper than the spec loader allows goes to the binary (as it did before)."""

# sha256(b"sops"): what sops feeds the MAC first when `mac_only_encrypted` is set.
MAC_ONLY_ENCRYPTED_INIT = bytes.fromhex(
    "8a3fd2ad54ce66527b1034f3d147be0b0b975b3bf44f72c6fdadec8176f27d69"
)
DEFAULT_UNENCRYPTED_SUFFIX = "_unencrypted"
_NO_KEY = "Failed to get the data key"  # sops's words, turned into our one line by _REASONS
_TAMPERED = "message authentication failed"


class Fallback(Exception):
    """The native path cannot prove it would do what the binary does: ask the binary."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Suspect(DecryptionError):
    """A failed MAC or value check: reported only once the binary agrees."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class _Crypto:
    """The two libraries, imported on first use (a `validate` run needs neither)."""

    aesgcm: Callable[[bytes], Any]
    invalid_tag: type[Exception]
    pyrage: Any


_crypto_lock = threading.Lock()
_crypto_cache: list[_Crypto] = []


def _crypto() -> _Crypto:
    with _crypto_lock:
        if not _crypto_cache:
            try:
                import pyrage
                from cryptography.exceptions import InvalidTag
                from cryptography.hazmat.primitives.ciphers.aead import AESGCM
            except ImportError as exc:  # pragma: no cover - both are dependencies
                raise Fallback(f"import {exc.name}") from None
            _crypto_cache.append(_Crypto(AESGCM, InvalidTag, pyrage))
        return _crypto_cache[0]
