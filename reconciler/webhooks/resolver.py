"""Which org does an incoming Vapi webhook belong to, and is it authentic?

Resolution goes through `assistant_org_mapping` (cached in memory); verification compares the
`x-vapi-secret` header with that org's webhook secret in constant time. The cache keeps a
digest of the secret, never the secret itself.
"""

from __future__ import annotations

import hmac
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

from reconciler.engine.desired import WEBHOOK_SECRET_HEADER
from reconciler.errors import ReconcilerError
from reconciler.secrets.crypto import MasterKey, secret_digest
from reconciler.state.store import StateReader

SECRET_HEADER = WEBHOOK_SECRET_HEADER


class WebhookError(ReconcilerError):
    status = 400


class MalformedWebhook(WebhookError):
    """The body is not JSON or has no `message.call.assistantId`."""


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
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise MalformedWebhook("body is not JSON") from None
    message = doc.get("message") if isinstance(doc, dict) else None
    if not isinstance(message, dict):
        raise MalformedWebhook("body has no `message` object")
    call = message.get("call")
    assistant_id = call.get("assistantId") if isinstance(call, dict) else None
    if not isinstance(assistant_id, str) or not assistant_id:
        assistant_id = message.get("assistantId")  # transcript events carry it at top level
    if not isinstance(assistant_id, str) or not assistant_id:
        raise MalformedWebhook("no message.call.assistantId in the body")
    kind = message.get("type")
    return assistant_id, kind if isinstance(kind, str) else None


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
        row = self._state.resolve_assistant(assistant_id)
        if row is None:
            return None  # unknown ids are not cached: a new assistant must resolve at once
        digest = None
        if row["encrypted_config"]:
            config = self._key.decrypt(row["encrypted_config"], aad=f"{row['org_id']}:vapi")
            digest = secret_digest(config["webhookSecret"])
        entry = _Entry(row["org_id"], row["slug"], row["role"], digest, now + self._ttl)
        with self._lock:
            self._cache[assistant_id] = entry
            while len(self._cache) > self._max:
                self._cache.popitem(last=False)
        return entry

    def resolve(self, headers: Mapping[str, str], body: bytes) -> ResolvedWebhook:
        assistant_id, kind = assistant_id_of(body)
        entry = self._lookup(assistant_id)
        if entry is None:
            raise UnknownAssistant(f"assistant {assistant_id} belongs to no known org")
        given = next((v for k, v in headers.items() if k.lower() == SECRET_HEADER), None)
        if entry.secret_digest is None:
            raise BadSecret("no active webhook secret for this assistant", entry.slug)
        if given is None or not hmac.compare_digest(secret_digest(given), entry.secret_digest):
            raise BadSecret(f"bad or missing {SECRET_HEADER}", entry.slug)
        return ResolvedWebhook(entry.org_id, entry.slug, assistant_id, entry.role, kind)
