"""Which org does an incoming Vapi webhook belong to, and is it authentic?

Resolution goes through `assistant_org_mapping` (cached in memory); verification compares the
`x-vapi-secret` header with that org's webhook secret in constant time. The cache keeps a
digest of the secret, never the secret itself. A hit sends no query; unknown ids and failures
are never cached, so a newly created assistant (or a repaired credential) resolves at once.

`WebhookResolver.resolve(headers, body)` returns a `ResolvedWebhook` or raises a
`WebhookError` subclass, whatever its input; nothing else escapes. In the order checked:

- `BodyTooLarge` (413): a body longer than `MAX_BODY_BYTES` (1 MiB), before parsing.
- `MalformedWebhook` (400), without a query:
  - a body that is not bytes-like (bytes, bytearray, memoryview), not UTF-8 (binary, UTF-16,
    a BOM), not JSON, or nested deeper than the parser can go (its RecursionError);
  - a top level that is not an object (array, number, string, null), or no `message` object;
  - a `message.call` that is present but not an object (a list, ...);
  - no assistant id: `message.call.assistantId`, else (when absent or null there) the
    `message.assistantId` that transcript events carry;
  - an assistant id that is not a string of 1..128 visible ASCII characters: a number, "",
    a NUL or any other control or non-ASCII character, a space, a megabyte. Vapi's ids are
    UUIDs, so no such id can be mapped, and Postgres text cannot even hold a NUL;
  - headers that are not a mapping; `x-vapi-secret` given more than once (names differing
    only in case), or with a value that is neither str nor bytes.
- `VerificationUnavailable` (503, "cannot verify this webhook now"): the database failed
  (unavailable, connection terminated, pool closed or exhausted).
- `UnknownAssistant` (404): no org owns the id; the message echoes at most a 40-character
  escaped prefix of it.
- `VerificationUnavailable` (503): the org's stored Vapi credential does not decrypt (master
  key changed, row tampered with or copied from another org) or holds no non-blank string
  `webhookSecret`. Not cached: a repaired row works at once.
- `BadSecret` (401): the org has no active Vapi credential, or `x-vapi-secret` is missing or
  wrong (compared in constant time).

Header names are matched case-insensitively and must be ASCII; a bytes name or value (the
wire form ASGI servers hand over) is accepted, a bytes value compared as is (a str value as
its UTF-8). Headers other than the secret are not read, whatever their types.

Messages are fixed text, one line, free of control characters; the only caller input they
echo is the short prefix of an unknown id. They never contain the body, a secret or, for an
unauthenticated caller, the org: `BadSecret` and `VerificationUnavailable` keep `org_slug`
(and the latter a `reason`) on the exception object for our own logs.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import psycopg

from reconciler.errors import ReconcilerError
from reconciler.protocol import WEBHOOK_SECRET_HEADER
from reconciler.redact import printable, safe_message
from reconciler.secrets.crypto import CredentialDecryptError, MasterKey, secret_digest
from reconciler.state.store import StateReader

SECRET_HEADER = WEBHOOK_SECRET_HEADER
MAX_BODY_BYTES = 1024 * 1024
MAX_ASSISTANT_ID = 128
ECHOED_ID_CHARS = 40
_ASSISTANT_ID = re.compile(rf"[\x21-\x7e]{{1,{MAX_ASSISTANT_ID}}}")

Headers = Mapping[str, str] | Mapping[bytes, bytes]
"""Decoded (most frameworks) or raw (ASGI) headers; other types are refused, not raised on."""


class WebhookError(ReconcilerError):
    status = 400


class MalformedWebhook(WebhookError):
    """The body is not a JSON object with a valid `message.call.assistantId`, or the
    headers are unusable (see the module docstring)."""


class BodyTooLarge(WebhookError):
    """The body is longer than `MAX_BODY_BYTES`; it is not parsed."""

    status = 413


class UnknownAssistant(WebhookError):
    """No org owns this assistant id."""

    status = 404


class BadSecret(WebhookError):
    """Missing or wrong `x-vapi-secret`. The message does not name the org (the caller is
    not authenticated); `org_slug` is there for our own logs."""

    status = 401

    def __init__(self, message: str, org_slug: str) -> None:
        super().__init__(message)
        self.org_slug = org_slug


class VerificationUnavailable(WebhookError):
    """The webhook cannot be verified now: the database failed, or the org's stored Vapi
    credential cannot be read. The message names neither the org nor the reason; `org_slug`
    (None when the org is not known yet) and `reason` are for our own logs."""

    status = 503

    def __init__(self, reason: str, org_slug: str | None = None) -> None:
        super().__init__("cannot verify this webhook now")
        self.reason = reason
        self.org_slug = org_slug


@dataclass(frozen=True)
class ResolvedWebhook:
    org_id: str
    slug: str
    assistant_id: str
    role: str
    message_type: str | None


@dataclass(frozen=True)
class _Entry:
    org_id: str
    slug: str
    role: str
    secret_digest: bytes | None
    expires: float


def assistant_id_of(body: bytes) -> tuple[str, str | None]:
    """The assistant id and message type of a webhook body; `MalformedWebhook` otherwise
    (`BodyTooLarge` beyond `MAX_BODY_BYTES`, before parsing)."""
    if not isinstance(body, bytes | bytearray | memoryview):
        raise MalformedWebhook("body is not bytes")
    if memoryview(body).nbytes > MAX_BODY_BYTES:
        raise BodyTooLarge(f"body is larger than {MAX_BODY_BYTES} bytes")
    try:
        doc = json.loads(bytes(body).decode("utf-8"))
    except ValueError:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise MalformedWebhook("body is not UTF-8 JSON") from None
    except RecursionError:  # not a ValueError: the C parser nests one frame per level
        raise MalformedWebhook("body is nested too deeply") from None
    message = doc.get("message") if isinstance(doc, dict) else None
    if not isinstance(message, dict):
        raise MalformedWebhook("body has no `message` object")
    call = message.get("call")
    if call is not None and not isinstance(call, dict):
        raise MalformedWebhook("message.call is not an object")
    assistant_id = call.get("assistantId") if call is not None else None
    if assistant_id is None:
        assistant_id = message.get("assistantId")  # transcript events carry it at top level
    if assistant_id is None:
        raise MalformedWebhook("no message.call.assistantId in the body")
    if not isinstance(assistant_id, str) or not _ASSISTANT_ID.fullmatch(assistant_id):
        raise MalformedWebhook(
            f"the assistant id is not 1..{MAX_ASSISTANT_ID} visible ASCII characters"
        )
    kind = message.get("type")
    return assistant_id, kind if isinstance(kind, str) else None


def _secret_header(headers: Headers) -> str | bytes | None:
    """The one `x-vapi-secret` value, None when absent; `MalformedWebhook` when ambiguous."""
    if not isinstance(headers, Mapping):
        raise MalformedWebhook("headers are not a mapping")
    found: list[object] = []
    for name, value in headers.items():
        key: object = name
        if isinstance(key, bytes | bytearray):
            key = bytes(key).decode("latin-1")
        if isinstance(key, str) and key.isascii() and key.lower() == SECRET_HEADER:
            found.append(value)
    if len(found) > 1:
        raise MalformedWebhook(f"{SECRET_HEADER} given more than once")
    if not found:
        return None
    given = found[0]
    if isinstance(given, str):
        return given
    if isinstance(given, bytes | bytearray):
        return bytes(given)
    raise MalformedWebhook(f"{SECRET_HEADER} is not text")


def _given_digest(given: str | bytes) -> bytes:
    """`secret_digest` of what the caller sent; a str that is not valid Unicode (a lone
    surrogate) gets a digest that no secret has, instead of an encoding error."""
    raw = given if isinstance(given, bytes) else given.encode("utf-8", "surrogatepass")
    return hashlib.sha256(raw).digest()


class WebhookResolver:
    def __init__(
        self, state: StateReader, key: MasterKey, *, ttl_s: float = 60.0, max_entries: int = 10_000
    ) -> None:
        self._state = state
        self._key = key
        self._ttl = ttl_s
        self._max = max_entries
        self._cache: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def invalidate(self, assistant_id: str | None = None) -> None:
        with self._lock:
            if assistant_id is None:
                self._cache.clear()
            else:
                self._cache.pop(assistant_id, None)

    def _lookup(self, assistant_id: str) -> _Entry | None:
        now = time.monotonic()
        with self._lock:
            entry = self._cache.get(assistant_id)
            if entry is not None and entry.expires > now:
                self._cache.move_to_end(assistant_id)
                self.hits += 1
                return entry
            self.misses += 1
        try:
            row = self._state.resolve_assistant(assistant_id)
        except (psycopg.Error, ReconcilerError) as exc:  # pool closed, connection lost, ...
            # (psycopg's own errors, or the state layer's one-line wrapping of them)
            raise VerificationUnavailable(
                f"database error ({type(exc).__name__}): {safe_message(str(exc), limit=200)}"
            ) from None
        if row is None:
            return None  # unknown ids are not cached: a new assistant must resolve at once
        digest = self._secret_digest(row)
        entry = _Entry(row["org_id"], row["slug"], row["role"], digest, now + self._ttl)
        if digest is None:  # no active credential yet: not cached, so a stored one counts at once
            return entry
        with self._lock:
            self._cache[assistant_id] = entry
            while len(self._cache) > self._max:
                self._cache.popitem(last=False)
        return entry

    def _secret_digest(self, row: dict[str, Any]) -> bytes | None:
        """Digest of the org's webhook secret; None when the org has no active Vapi
        credential; `VerificationUnavailable` when the stored one cannot be used."""
        token = row["encrypted_config"]
        if not token:
            return None
        try:
            config = self._key.decrypt(token, aad=f"{row['org_id']}:vapi")
        except (CredentialDecryptError, ValueError):
            raise VerificationUnavailable(
                "the stored Vapi credential does not decrypt (master key or row changed)",
                row["slug"],
            ) from None
        secret = config.get("webhookSecret") if isinstance(config, dict) else None
        if not isinstance(secret, str) or not secret.strip():
            raise VerificationUnavailable(
                "the stored Vapi credential has no webhookSecret", row["slug"]
            )
        try:
            return secret_digest(secret)
        except UnicodeError:
            raise VerificationUnavailable(
                "the stored webhookSecret is not valid Unicode", row["slug"]
            ) from None

    def resolve(self, headers: Headers, body: bytes) -> ResolvedWebhook:
        """The org of a webhook whose secret checks out; a `WebhookError` for any other
        input (see the module docstring)."""
        assistant_id, kind = assistant_id_of(body)
        given = _secret_header(headers)
        entry = self._lookup(assistant_id)
        if entry is None:
            raise UnknownAssistant(
                f"assistant {printable(assistant_id, ECHOED_ID_CHARS)} belongs to no known org"
            )
        if entry.secret_digest is None:
            raise BadSecret("no active webhook secret for this assistant", entry.slug)
        if given is None or not hmac.compare_digest(_given_digest(given), entry.secret_digest):
            raise BadSecret(f"bad or missing {SECRET_HEADER}", entry.slug)
        return ResolvedWebhook(entry.org_id, entry.slug, assistant_id, entry.role, kind)
