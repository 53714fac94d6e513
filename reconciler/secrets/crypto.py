"""Credentials at rest: AES-256-GCM under the master key, bound to their (org, provider) row.

Keys rotate: a `KeyRing` holds ordered `(key id, key)` pairs (`RECONCILER_MASTER_KEYS`); the
first encrypts, every one decrypts. A ciphertext names its key id (`v2:<id>:...`; the older
`v1:...` belongs to the id `default`, which `RECONCILER_MASTER_KEY` gives its one key), and a
fingerprint names it too unless it is `default`'s (so rows and configs written before key ids
existed keep theirs): a fingerprint is only ever compared with one made under the same key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from reconciler.errors import ConfigError, ReconcilerError

_VERSION = "v1"
_VERSION_KEYED = "v2"
DEFAULT_KEY_ID = "default"
KEY_ID_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")


class CredentialDecryptError(ReconcilerError):
    """A stored credential does not open under this master key (wrong key or tampered row)."""


class UnknownKeyId(CredentialDecryptError):
    """A stored credential names a key id the ring does not hold (`key_id`)."""

    def __init__(self, message: str, key_id: str) -> None:
        super().__init__(message)
        self.key_id = key_id


@dataclass(frozen=True)
class MasterKey:
    """32 bytes; repr never shows them."""

    raw: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.raw) != 32:
            raise ConfigError("RECONCILER_MASTER_KEY must be base64 of exactly 32 bytes")

    @classmethod
    def from_b64(cls, text: str) -> MasterKey:
        try:
            raw = base64.b64decode(text.strip(), validate=True)
        except ValueError:
            raise ConfigError("RECONCILER_MASTER_KEY is not valid base64") from None
        return cls(raw)

    @classmethod
    def generate(cls) -> MasterKey:
        return cls(os.urandom(32))

    def to_b64(self) -> str:
        return base64.b64encode(self.raw).decode()

    def _subkey(self, purpose: bytes) -> bytes:
        return hmac.new(self.raw, purpose, hashlib.sha256).digest()

    def encrypt(self, config: dict[str, Any], *, aad: str) -> str:
        """`aad` ties the ciphertext to its row: a row copied onto another org does not open."""
        nonce = os.urandom(12)
        plain = _canonical(config)
        sealed = AESGCM(self._subkey(b"encrypt")).encrypt(nonce, plain, aad.encode())
        return f"{_VERSION}:{base64.b64encode(nonce + sealed).decode()}"

    def decrypt(self, token: str, *, aad: str) -> dict[str, Any]:
        version, _, body = token.partition(":")
        if version != _VERSION:
            raise CredentialDecryptError(f"stored credential {aad}: unknown format {version!r}")
        try:
            blob = base64.b64decode(body)
            plain = AESGCM(self._subkey(b"encrypt")).decrypt(blob[:12], blob[12:], aad.encode())
        except (InvalidTag, ValueError):
            raise CredentialDecryptError(
                f"stored credential {aad} does not decrypt: wrong RECONCILER_MASTER_KEY "
                "or a tampered row"
            ) from None
        result: dict[str, Any] = json.loads(plain)
        return result

    def fingerprint(self, config: dict[str, Any]) -> str:
        """Keyed digest: tells a changed credential without decrypting, and leaks nothing."""
        return hmac.new(self._fingerprint_key, _canonical(config), hashlib.sha256).hexdigest()

    @cached_property
    def _fingerprint_key(self) -> bytes:
        # derived once: a run takes several fingerprints of each org's credentials
        return self._subkey(b"fingerprint")


def _canonical(config: dict[str, Any]) -> bytes:
    return json.dumps(config, sort_keys=True, separators=(",", ":")).encode()


def secret_digest(value: str) -> bytes:
    """What the webhook resolver keeps in memory instead of the secret itself."""
    return hashlib.sha256(value.encode()).digest()


@dataclass(frozen=True)
class KeyRing:
    """Ordered master keys by id: the first encrypts and fingerprints, all decrypt."""

    keys: tuple[tuple[str, MasterKey], ...]

    def __post_init__(self) -> None:
        ids = [kid for kid, _ in self.keys]
        if not ids:
            raise ConfigError("RECONCILER_MASTER_KEYS holds no key")
        if len(set(ids)) != len(ids):
            raise ConfigError("RECONCILER_MASTER_KEYS names a key id twice")
        bad = [kid for kid in ids if not KEY_ID_PATTERN.match(kid)]
        if bad:
            raise ConfigError(
                "RECONCILER_MASTER_KEYS: a key id must be 1-32 of A-Z a-z 0-9 _ . - "
                f"({len(bad)} is not)"
            )

    @classmethod
    def single(cls, key: MasterKey, key_id: str = DEFAULT_KEY_ID) -> KeyRing:
        return cls(((key_id, key),))

    @classmethod
    def parse(cls, text: str) -> KeyRing:
        """`id:base64,id2:base64`: the first encrypts. Errors never show a key."""
        pairs: list[tuple[str, MasterKey]] = []
        for n, item in enumerate(p for p in text.split(",") if p.strip()):
            kid, sep, b64 = item.strip().partition(":")
            if not sep:
                raise ConfigError(f"RECONCILER_MASTER_KEYS: entry {n + 1} is not key_id:base64key")
            try:
                raw = base64.b64decode(b64.strip(), validate=True)
            except ValueError:
                raise ConfigError(
                    f"RECONCILER_MASTER_KEYS: the key of {kid!r} is not valid base64"
                ) from None
            if len(raw) != 32:
                raise ConfigError(
                    f"RECONCILER_MASTER_KEYS: the key of {kid!r} is not exactly 32 bytes"
                )
            pairs.append((kid.strip(), MasterKey(raw)))
        return cls(tuple(pairs))

    @classmethod
    def from_setting(cls, text: str) -> KeyRing:
        """Either form: `id:base64,...` (RECONCILER_MASTER_KEYS) or one bare base64 key
        (RECONCILER_MASTER_KEY, the id `default`). Base64 holds no colon."""
        return cls.parse(text) if ":" in text else cls.single(MasterKey.from_b64(text))

    @property
    def active_id(self) -> str:
        return self.keys[0][0]

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(kid for kid, _ in self.keys)

    def _key(self, kid: str, aad: str) -> MasterKey:
        for have, key in self.keys:
            if have == kid:
                return key
        raise UnknownKeyId(
            f"stored credential {aad} is encrypted under key id {kid!r}, which "
            "RECONCILER_MASTER_KEYS does not hold",
            kid,
        )

    def encrypt(self, config: dict[str, Any], *, aad: str) -> str:
        kid, key = self.keys[0]
        token = key.encrypt(config, aad=aad)
        if kid == DEFAULT_KEY_ID:
            return token
        return f"{_VERSION_KEYED}:{kid}:{token.partition(':')[2]}"

    def decrypt(self, token: str, *, aad: str) -> dict[str, Any]:
        kid, body = DEFAULT_KEY_ID, token
        if token.startswith(f"{_VERSION_KEYED}:"):
            parts = token.split(":", 2)
            if len(parts) != 3 or not KEY_ID_PATTERN.match(parts[1]):
                raise CredentialDecryptError(f"stored credential {aad}: unknown format")
            kid, body = parts[1], f"{_VERSION}:{parts[2]}"
        return self._key(kid, aad).decrypt(body, aad=aad)

    def fingerprint(self, config: dict[str, Any]) -> str:
        """Under the active key; named by its id unless that is `default`."""
        return self.fingerprint_as(self.active_id, config)

    def fingerprint_as(self, kid: str, config: dict[str, Any]) -> str:
        digest = self._key(kid, "fingerprint").fingerprint(config)
        return digest if kid == DEFAULT_KEY_ID else f"{kid}:{digest}"

    def check_value(self) -> str:
        """A keyed digest of a constant under the active key: Postgres records it with the
        active key id, so a process with another key under that id (a wrong key) is told
        apart without decrypting anything. Reveals nothing of the key."""
        return self.keys[0][1]._subkey(b"master key check").hex()[:32]

    def fingerprints(self, config: dict[str, Any]) -> dict[str, str]:
        """Under every key: compared with a stored one made under any of them."""
        return {kid: self.fingerprint_as(kid, config) for kid in self.ids}


Keys = MasterKey | KeyRing


def as_ring(key: Keys) -> KeyRing:
    return key if isinstance(key, KeyRing) else KeyRing.single(key)


def token_key_id(token: str) -> str:
    """The key id a ciphertext names (`v1` tokens: `default`)."""
    if token.startswith(f"{_VERSION_KEYED}:"):
        return token.split(":", 2)[1]  # a damaged token names no real id: it will not open
    return DEFAULT_KEY_ID
