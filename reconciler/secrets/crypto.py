"""Credentials at rest: AES-256-GCM under the master key, bound to their (org, provider) row."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from reconciler.errors import ConfigError, ReconcilerError

_VERSION = "v1"


class CredentialDecryptError(ReconcilerError):
    """A stored credential does not open under this master key (wrong key or tampered row)."""


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
        return hmac.new(
            self._subkey(b"fingerprint"), _canonical(config), hashlib.sha256
        ).hexdigest()


def _canonical(config: dict[str, Any]) -> bytes:
    return json.dumps(config, sort_keys=True, separators=(",", ":")).encode()


def secret_digest(value: str) -> bytes:
    """What the webhook resolver keeps in memory instead of the secret itself."""
    return hashlib.sha256(value.encode()).digest()
