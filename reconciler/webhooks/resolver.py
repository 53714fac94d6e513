"""Which org does an incoming Vapi webhook belong to, and is it authentic?

Resolution goes through `assistant_org_mapping`, else `resource_org_mapping` (a phone number's
id), else the org's Vapi account (cached in memory); verification checks the
`x-vapi-secret` header (compared in constant time) and/or an HMAC signature (`x-signature`,
hex HMAC-SHA256 of `"{x-timestamp}.{body}"`) against that org's webhook secret, and while a
secret is being rotated also against the one it replaced (of the same org only). The cache
keeps one-way digests of each secret, never the secret itself (see `_Key`).

A hit sends no query. An unknown id is cached for `negative_ttl_s` (5 s), so a flood of one
unknown id costs one query; an org without an active Vapi credential likewise. Concurrent
misses for one id share one query. `invalidate` / `invalidate_org` (called on Postgres NOTIFY
by `listen.CacheListener`) drop entries at once, so a newly created assistant resolves at once;
failures (database, credential) are never cached, so a repaired one works at once.

`WebhookResolver.resolve(headers, body)` returns a `ResolvedWebhook` or raises a
`WebhookError` subclass, whatever its input; nothing else escapes. In the order checked:

- `BodyTooLarge` (413): a body longer than `MAX_BODY_BYTES` (1 MiB), before parsing.
- `MalformedWebhook` (400), without a query:
  - a body that is not bytes-like (bytes, bytearray, memoryview), not UTF-8 (binary, UTF-16,
    a BOM), not JSON, or nested deeper than the parser can go (its RecursionError);
  - a top level that is not an object (array, number, string, null), or no `message` object;
  - a `message.call` that is present but not an object (a list, ...);
  - no org-deciding id: `message.call.assistantId`, else (when absent or null there) the
    `message.assistantId` that transcript events carry, else `message.call.phoneNumberId`
    (else `message.phoneNumber.id`; both given and different: malformed): a call to a number
    with no assistant (an `assistant-request`) resolves through `resource_org_mapping`, kind
    `phoneNumber`, as an assistant does (inactive rows within the retention too), else
    `message.call.orgId` (the Vapi account: the one org last seen in it), which is also tried
    when no org owns the number. Whichever way, verified the same way. An `assistantId`
    beside `message` (at the root) is not read: no Vapi message carries one;
  - an id (assistant, phone number, account) that is not a string of 1..128 visible ASCII
    characters: a number, "", a NUL or any other control or non-ASCII character, a space, a
    megabyte. Vapi's ids are UUIDs, so no such id can be mapped, and Postgres text cannot
    even hold a NUL;
  - headers that are not a mapping; `x-vapi-secret`, `x-signature` or `x-timestamp` given
    more than once (names differing only in case), or with a value that is neither str nor
    bytes.
- `VerificationUnavailable` (503, "cannot verify this webhook now"): the database failed
  (unavailable, connection terminated, pool closed or exhausted).
- `UnknownAssistant` (404): no org owns the id; the message echoes at most a 40-character
  escaped prefix of it.
- `VerificationUnavailable` (503): the org's current Vapi credential does not decrypt (master
  key changed, row tampered with or copied from another org) or holds no non-blank string
  `webhookSecret`. Not cached: a repaired row works at once. (A replaced credential that does
  not decrypt is just not accepted.)
- `BadSecret` (401): the org has no active Vapi credential; or neither `x-vapi-secret` nor
  `x-signature` was sent; or `x-vapi-secret` was sent and matches none of the org's secrets.
- `BadSignature` (401, a `BadSecret`): `x-signature` was sent, and `x-timestamp` is missing,
  not 1..16 ASCII digits, or more than 5 minutes away from now (seconds, or milliseconds from
  10^11 on: a replay), or the signature (hex, any case, optionally `sha256=`-prefixed)
  matches none of the org's secrets.

Both mechanisms may be sent: each one sent must verify (a present and wrong one is refused,
even beside a valid other), and one suffices. Each is checked against every secret of the org
that is usable now (the current one; the replaced one while `previous_left_s` is NULL or > 0).

Header names are matched case-insensitively and must be ASCII; a bytes name or value (the
wire form ASGI servers hand over) is accepted, a bytes value compared as is (a str value as
its UTF-8). Other headers are not read, whatever their types.

Messages are fixed text, one line, free of control characters; the only caller input they
echo is the short prefix of an unknown id. They never contain the body, a secret, a signature
or, for an unauthenticated caller, the org: `BadSecret` and `VerificationUnavailable` keep
`org_slug` (and the latter a `reason`) on the exception object for our own logs.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import psycopg

from reconciler.errors import ReconcilerError
from reconciler.metrics import RESOLVER_CACHE
from reconciler.protocol import SIGNATURE_HEADER, TIMESTAMP_HEADER, WEBHOOK_SECRET_HEADER
from reconciler.redact import printable, safe_message
from reconciler.secrets.crypto import CredentialDecryptError, KeyRing, Keys, as_ring
from reconciler.state.store import StateReader

SECRET_HEADER = WEBHOOK_SECRET_HEADER
MAX_BODY_BYTES = 1024 * 1024
MAX_ASSISTANT_ID = 128
ECHOED_ID_CHARS = 40
SIGNATURE_WINDOW_S = 300.0
"""How far `x-timestamp` may be from now, either way, before a signed webhook is a replay."""
SIGNATURE_PREFIX = b"sha256="
MILLISECONDS_FROM = 10**11
"""A timestamp at or above this is in milliseconds (10^11 seconds is the year 5138)."""
FLIGHT_WAIT_S = 30.0
"""How long a miss waits for another thread's query of the same id (the pool times out first)."""
_AUTH_HEADERS = (SECRET_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER)
_AUTH_NAMES = frozenset(name.encode() for name in _AUTH_HEADERS)
_ASSISTANT_ID = re.compile(rf"[\x21-\x7e]{{1,{MAX_ASSISTANT_ID}}}")
_HIT = RESOLVER_CACHE.labels("hit")
_NEGATIVE_HIT = RESOLVER_CACHE.labels("negative_hit")
_MISS = RESOLVER_CACHE.labels("miss")

Headers = Mapping[str, str] | Mapping[bytes, bytes]
"""Decoded (most frameworks) or raw (ASGI) headers; other types are refused, not raised on."""


class WebhookError(ReconcilerError):
    status = 400
    outcome = "malformed"  # the label of `WEBHOOK_REQUESTS`


class MalformedWebhook(WebhookError):
    """The body is not a JSON object with a valid `message.call.assistantId`, or the
    headers are unusable (see the module docstring)."""


class BodyTooLarge(WebhookError):
    """The body is longer than `MAX_BODY_BYTES`; it is not parsed."""

    status = 413
    outcome = "too_large"


class UnknownAssistant(WebhookError):
    """No org owns this assistant id."""

    status = 404
    outcome = "unknown_assistant"


class BadSecret(WebhookError):
    """Missing or wrong credentials. The message does not name the org (the caller is not
    authenticated); `org_slug` is there for our own logs."""

    status = 401
    outcome = "bad_secret"

    def __init__(self, message: str, org_slug: str) -> None:
        super().__init__(message)
        self.org_slug = org_slug


class BadSignature(BadSecret):
    """`x-signature` was sent and does not verify: wrong, or its timestamp is missing or
    outside the window (a replay)."""

    outcome = "bad_signature"


class VerificationUnavailable(WebhookError):
    """The webhook cannot be verified now: the database failed, or the org's stored Vapi
    credential cannot be read. The message names neither the org nor the reason; `org_slug`
    (None when the org is not known yet) and `reason` are for our own logs."""

    status = 503
    outcome = "unavailable"

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
    forward_url: str | None = field(default=None, repr=False)
    """The org's own `spec.webhook.forwardUrl`, if any (it may hold a token: not in repr)."""
    phone_number_id: str = ""
    """The Vapi phone-number id the org was found by (no assistant id in the body), else ''."""


@dataclass(frozen=True)
class Webhook:
    """A webhook whose body and headers parse; nothing is verified yet. It holds the digest
    of the `x-vapi-secret` sent, never the value."""

    assistant_id: str
    message_type: str | None
    body: bytes = field(repr=False)
    secret_digest: bytes | None = field(repr=False)
    signature: bytes | None = field(repr=False)  # as sent, lower-cased, prefix dropped
    timestamp: bytes | None
    fallback: str | None = None
    """The Vapi account's lookup key, tried when `assistant_id` is a phone number's that no
    org owns (a number the reconciler does not manage, in an org's own account)."""


class _Key:
    """One accepted webhook secret, kept as one-way digests only: its SHA-256 (compared with
    the SHA-256 of a sent `x-vapi-secret`) and HMAC-SHA256's two keyed midstates (SHA-256 of
    the padded key xor ipad/opad, one block each), which check `x-signature` without the
    secret. Neither gives the secret back; the midstates can sign, as any HMAC verifier must."""

    __slots__ = ("_inner", "_outer", "digest")

    def __init__(self, secret: bytes) -> None:
        self.digest = hashlib.sha256(secret).digest()
        block = hashlib.sha256(secret).digest() if len(secret) > 64 else secret
        block = block.ljust(64, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in block))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in block))

    def sign(self, timestamp: bytes, body: bytes) -> bytes:
        """Hex HMAC-SHA256 of `"{timestamp}.{body}"`, as ASCII bytes."""
        inner = self._inner.copy()
        inner.update(timestamp + b".")
        inner.update(body)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.hexdigest().encode()


@dataclass(frozen=True, slots=True)
class _Entry:
    org_id: str
    slug: str
    role: str
    forward_url: str | None
    keys: tuple[_Key, ...]  # empty: no active Vapi credential, so everything is refused
    expires: float


_UNKNOWN: Final = _Entry("", "", "", None, (), math.inf)
"""What a lookup of an id that no org owns gives."""


class _Flight:
    """One query in progress for an id; concurrent misses of that id wait for its result."""

    __slots__ = ("done", "entry", "error")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.entry: _Entry | None = None
        self.error: VerificationUnavailable | None = None


ACCOUNT_KEY = "account "
"""Prefix of the lookup key of a webhook resolved by its Vapi account (`message.call.orgId`):
a space, which no assistant id may hold, so the two can never be confused."""
NUMBER_KEY = "number "
"""Prefix of the lookup key of a webhook resolved by its phone number
(`message.call.phoneNumberId`), for the same reason. A NOTIFY names the bare id: `invalidate`
drops both forms."""


ORG_KEYS: Final = frozenset(
    {
        "message",
        "call",
        "type",
        "assistantId",
        "assistant",
        "orgId",
        "phoneNumberId",
        "phoneNumber",
        "id",  # `message.phoneNumber.id`
        "squadId",
        "squad",
        "workflowId",
        "workflow",
    }
)
"""Keys that decide, or could decide for a downstream parser, which org a webhook is: given
twice in one object (at any depth) the body is refused, since parsers disagree on which copy
counts (Python's `json` keeps the last, others the first) and the org verified must be the
one every reader sees."""


_FOLDED_ORG_KEYS: Final = {k.casefold(): k for k in ORG_KEYS}


class DuplicateKey(ValueError):
    pass


def _no_case_variants(objects: Iterable[object]) -> None:
    """In each of the objects the org is read from, a key that is one of `ORG_KEYS` but for
    case (`AssistantId`, `assi\u017ftantId`: Go's and .NET's case-insensitive readers take it
    for `assistantId`, the last copy winning in Go) is refused: the org verified must be the
    one every reader sees, and Vapi writes these keys one way only. Only these objects: deeper
    down, a key is the call's content (tool arguments, variables), which may say `Type`."""
    for obj in objects:
        if not isinstance(obj, dict):
            continue
        for key in obj:
            if key not in ORG_KEYS:
                exact = _FOLDED_ORG_KEYS.get(key.casefold())
                if exact is not None:
                    raise MalformedWebhook(
                        f"the body gives {printable(key, 40)} where {exact} is read"
                    )


def _one_meaning(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """`json.loads`'s `object_pairs_hook`: the object, refused (`DuplicateKey`) when one of
    `ORG_KEYS` appears twice in it. The usual case (no key twice) costs a length check."""
    doc = dict(pairs)
    if len(doc) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen and key in ORG_KEYS:
                raise DuplicateKey(f"the body gives {printable(key, 40)} more than once")
            seen.add(key)
    return doc


def assistant_id_of(body: bytes) -> tuple[str, str | None]:
    """The lookup key (an assistant id, else `NUMBER_KEY` + a phone-number id, else
    `ACCOUNT_KEY` + a Vapi account id) and message type of a webhook body; `MalformedWebhook`
    otherwise (`BodyTooLarge` beyond `MAX_BODY_BYTES`, before parsing)."""
    key, _fallback, kind = lookup_keys(body)
    return key, kind


def _usable_id(value: object, what: str) -> str:
    if not isinstance(value, str) or not _ASSISTANT_ID.fullmatch(value):
        raise MalformedWebhook(f"the {what} is not 1..{MAX_ASSISTANT_ID} visible ASCII characters")
    return value


def lookup_keys(body: bytes) -> tuple[str, str | None, str | None]:
    """The lookup key, the key to try when it is a phone number no org owns (the account's,
    or None), and the message type of a webhook body (see `assistant_id_of`)."""
    if not isinstance(body, bytes | bytearray | memoryview):
        raise MalformedWebhook("body is not bytes")
    if memoryview(body).nbytes > MAX_BODY_BYTES:
        raise BodyTooLarge(f"body is larger than {MAX_BODY_BYTES} bytes")
    try:
        doc = json.loads(bytes(body).decode("utf-8"), object_pairs_hook=_one_meaning)
    except DuplicateKey as exc:  # a ValueError too: caught first
        raise MalformedWebhook(str(exc)) from None
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
    _no_case_variants((doc, message, call, message.get("phoneNumber")))
    kind = message.get("type")
    kind = kind if isinstance(kind, str) else None
    assistant_id = call.get("assistantId") if call is not None else None
    if assistant_id is None:
        assistant_id = message.get("assistantId")  # transcript events carry it at top level
    if assistant_id is not None:
        return _usable_id(assistant_id, "assistant id"), None, kind
    # no assistant (an `assistant-request` of a phone number without one): the phone number,
    # which is one org's (`resource_org_mapping`), else the Vapi account, one org's (BYOC)
    number = call.get("phoneNumberId") if call is not None else None
    phone = message.get("phoneNumber")
    listed = phone.get("id") if isinstance(phone, dict) else None
    if number is None:
        number = listed
    elif listed is not None and listed != number:  # two answers: which one a reader takes varies
        raise MalformedWebhook("message.phoneNumber.id differs from message.call.phoneNumberId")
    account = call.get("orgId") if call is not None else None
    if account is not None:
        account = ACCOUNT_KEY + _usable_id(account, "Vapi account id (call.orgId)")
    if number is not None:
        return NUMBER_KEY + _usable_id(number, "phone number id"), account, kind
    if account is not None:
        return account, None, kind
    raise MalformedWebhook(
        "no message.call.assistantId (nor message.call.phoneNumberId, message.call.orgId)"
        " in the body"
    )


def _auth_headers(headers: Headers) -> dict[str, bytes]:
    """The values of the secret, signature and timestamp headers that were sent, by lower-case
    name (a str value as its UTF-8); `MalformedWebhook` when one is ambiguous or not text."""
    if not isinstance(headers, Mapping):
        raise MalformedWebhook("headers are not a mapping")
    found: dict[str, bytes] = {}
    for name, value in headers.items():
        key: object = name
        if isinstance(key, bytes | bytearray):
            key = bytes(key).decode("latin-1")
        if not isinstance(key, str) or not key.isascii() or key.lower() not in _AUTH_HEADERS:
            continue
        key = key.lower()
        if key in found:
            raise MalformedWebhook(f"{key} given more than once")
        if isinstance(value, str):
            # a lone surrogate gets bytes that no secret has, instead of an encoding error
            found[key] = value.encode("utf-8", "surrogatepass")
        elif isinstance(value, bytes | bytearray):
            found[key] = bytes(value)
        else:
            raise MalformedWebhook(f"{key} is not text")
    return found


def asgi_headers(raw: Iterable[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
    """The authentication headers of an ASGI scope's header list (lower-case names, where a
    repeat would be lost in a dict): `MalformedWebhook` when one is given more than once."""
    found: dict[bytes, bytes] = {}
    for name, value in raw:
        lowered = name.lower()
        if lowered in _AUTH_NAMES:
            if lowered in found:
                raise MalformedWebhook(f"{lowered.decode()} given more than once")
            found[lowered] = value
    return found


def parse_webhook(headers: Headers, body: bytes) -> Webhook:
    """The assistant id, type and credentials of a webhook, checked for form only (no
    query); `MalformedWebhook` or `BodyTooLarge` otherwise."""
    assistant_id, fallback, kind = lookup_keys(body)
    auth = _auth_headers(headers)
    secret = auth.get(SECRET_HEADER)
    signature = auth.get(SIGNATURE_HEADER)
    if signature is not None:
        signature = signature.lower()
        if signature.startswith(SIGNATURE_PREFIX):
            signature = signature[len(SIGNATURE_PREFIX) :]
    return Webhook(
        assistant_id,
        kind,
        bytes(body),
        hashlib.sha256(secret).digest() if secret is not None else None,
        signature,
        auth.get(TIMESTAMP_HEADER),
        fallback,
    )


def _timestamp_s(raw: bytes | None) -> float | None:
    """Seconds since the epoch of an `x-timestamp` in seconds or milliseconds; None when
    absent or not 1..16 ASCII digits."""
    if raw is None or not 0 < len(raw) <= 16 or not raw.isdigit():
        return None
    value = int(raw)
    return value / 1000 if value >= MILLISECONDS_FROM else float(value)


class WebhookResolver:
    """Resolves and verifies webhooks (see the module docstring). Thread-safe: the HTTP
    endpoint checks the cache on its event loop and queries from worker threads."""

    def __init__(
        self,
        state: StateReader,
        key: Keys,
        *,
        ttl_s: float = 60.0,
        negative_ttl_s: float = 5.0,
        max_entries: int = 10_000,
    ) -> None:
        self._state = state
        self._key = as_ring(key)
        self._ttl = ttl_s
        self._negative_ttl = negative_ttl_s
        self._max = max_entries
        self._cache: OrderedDict[str, _Entry] = OrderedDict()
        self._negative: OrderedDict[str, float] = OrderedDict()  # unknown id -> expiry
        self._flights: dict[str, _Flight] = {}
        self._generation = 0  # bumped by every invalidation: a query begun before it is stale
        self._used: set[str] = set()  # resolved ids, for `last_used_at` (see `take_used`)
        self._lock = threading.Lock()
        self._closers: list[Callable[[], None]] = []
        self.hits = 0
        self.misses = 0  # lookups that queried the database

    @classmethod
    def from_url(
        cls,
        database_url: str,
        master_key: Keys | str,
        *,
        listen: bool = True,
        flush_every_s: float = 5.0,
        pool_size: int = 8,
        ttl_s: float = 60.0,
        negative_ttl_s: float = 5.0,
        mapping_retention_s: float | None = None,
    ) -> WebhookResolver:
        """A resolver with everything it needs, for a process of its own or a user's app:
        a connection pool, the cache-invalidation listener (`listen=False` behind a
        transaction-pooling proxy, where LISTEN does not work: `ttl_s` then bounds staleness)
        and the `last_used_at` flusher. `mapping_retention_s`: how long a deleted assistant's
        mapping still resolves (default 30 days, as `RECONCILER_MAPPING_RETENTION`).
        `close()` stops them (flushing) and closes the pool.
        Build it in the process that serves (threads and connections do not survive a fork)."""
        from reconciler.state.db import open_pool
        from reconciler.state.store import StateWriter

        key = master_key if not isinstance(master_key, str) else KeyRing.from_setting(master_key)
        pool = open_pool(database_url, max_size=pool_size, name="reconciler-webhooks")
        state = (
            StateWriter(pool)
            if mapping_retention_s is None
            else StateWriter(pool, mapping_retention_s=mapping_retention_s)
        )
        resolver = cls(state, key, ttl_s=ttl_s, negative_ttl_s=negative_ttl_s)
        resolver._closers.append(pool.close)
        resolver.start_background(
            database_url,
            state.assistants.touch_mappings,
            listen=listen,
            flush_every_s=flush_every_s,
        )
        return resolver

    def start_background(
        self,
        database_url: str,
        touch: Callable[[list[str]], None],
        *,
        listen: bool = True,
        flush_every_s: float = 5.0,
    ) -> None:
        """Starts the `last_used_at` flusher (`touch`, e.g.
        `StateWriter.assistants.touch_mappings`) and, with `listen`, the cache-invalidation
        listener on its own connection to `database_url`; `close()` stops both, flushing, before
        anything `from_url` opened."""
        from reconciler.webhooks.listen import CacheListener, UsageFlusher

        flusher = UsageFlusher(self, touch, every_s=flush_every_s)
        flusher.start()
        self._closers.insert(0, flusher.close)
        if listen:
            listener = CacheListener(self, database_url)
            listener.start()
            self._closers.insert(0, listener.close)

    def close(self) -> None:
        """Stops what `from_url` or `start_background` started (the last `last_used_at` flush
        included) and closes the pool `from_url` opened. Idempotent."""
        closers, self._closers = self._closers, []
        for close in closers:
            close()

    # --- the cache ---------------------------------------------------------------------------

    def invalidate(self, assistant_id: str | None = None) -> None:
        """Forgets one id (known or unknown), or everything."""
        with self._lock:
            self._generation += 1
            if assistant_id is None:
                self._cache.clear()
                self._negative.clear()
            else:  # a NOTIFY names a phone number's id bare, as an assistant's
                for key in (assistant_id, NUMBER_KEY + assistant_id):
                    self._cache.pop(key, None)
                    self._negative.pop(key, None)

    def invalidate_org(self, org_id: str) -> None:
        """Forgets every id of the org (its credential, slug or forward URL changed) and every
        unknown id (cheap, and an id is never wrongly unknown for long)."""
        with self._lock:
            self._generation += 1
            for assistant_id in [k for k, e in self._cache.items() if e.org_id == org_id]:
                del self._cache[assistant_id]
            self._negative.clear()

    def take_used(self) -> list[str]:
        """The ids resolved since the last call, for a batched `last_used_at` write."""
        with self._lock:
            used, self._used = self._used, set()
        return sorted(used)

    def keep_used(self, assistant_ids: Iterable[str]) -> None:
        """Puts back ids whose write failed, for the next flush."""
        with self._lock:
            self._used.update(assistant_ids)

    def _cached(self, assistant_id: str) -> _Entry | None:
        """The cached entry (`_UNKNOWN` for a cached unknown id); None on a miss."""
        now = time.monotonic()
        with self._lock:
            entry = self._cache.get(assistant_id)
            if entry is not None and entry.expires > now:
                self._cache.move_to_end(assistant_id)
                self.hits += 1
            elif (expires := self._negative.get(assistant_id)) is not None and expires > now:
                entry = _UNKNOWN
                self.hits += 1
            else:
                return None
        (_NEGATIVE_HIT if entry is _UNKNOWN else _HIT).inc()
        return entry

    def _load(self, assistant_id: str) -> _Entry:
        """Queries the id (one query for concurrent misses of it) and caches the answer."""
        with self._lock:
            flight = self._flights.get(assistant_id)
            leader = flight is None
            if flight is None:
                flight = self._flights[assistant_id] = _Flight()
            generation = self._generation
        if not leader:
            return self._await(flight)
        try:
            flight.entry = self._query(assistant_id)
        except VerificationUnavailable as exc:
            flight.error = exc
            raise
        finally:
            with self._lock:
                del self._flights[assistant_id]
                if flight.entry is not None and generation == self._generation:
                    self._store(assistant_id, flight.entry)
            flight.done.set()
        return flight.entry

    def _await(self, flight: _Flight) -> _Entry:
        if not flight.done.wait(FLIGHT_WAIT_S):
            raise VerificationUnavailable("timed out waiting for a lookup of the same id")
        if flight.error is not None:
            raise VerificationUnavailable(flight.error.reason, flight.error.org_slug)
        if flight.entry is None:  # the query failed with a bug: its own caller reports it
            raise VerificationUnavailable("a lookup of the same id failed")
        with self._lock:
            self.hits += 1
        (_NEGATIVE_HIT if flight.entry is _UNKNOWN else _HIT).inc()
        return flight.entry

    def _store(self, assistant_id: str, entry: _Entry) -> None:
        """Caches an answer (the lock held): unknown ids in their own bounded LRU, so a flood
        of them cannot evict the known ones."""
        if entry is _UNKNOWN:
            self._negative[assistant_id] = time.monotonic() + self._negative_ttl
            self._negative.move_to_end(assistant_id)
            while len(self._negative) > self._max:
                self._negative.popitem(last=False)
            return
        self._cache[assistant_id] = entry
        self._cache.move_to_end(assistant_id)
        while len(self._cache) > self._max:
            self._cache.popitem(last=False)

    def _query(self, assistant_id: str) -> _Entry:
        with self._lock:
            self.misses += 1
        _MISS.inc()
        try:
            if assistant_id.startswith(ACCOUNT_KEY):
                row = self._state.accounts.resolve(assistant_id.removeprefix(ACCOUNT_KEY))
            elif assistant_id.startswith(NUMBER_KEY):
                row = self._state.resources.resolve_number(assistant_id.removeprefix(NUMBER_KEY))
            else:
                row = self._state.assistants.resolve(assistant_id)
        except (psycopg.Error, ReconcilerError) as exc:  # pool closed, connection lost, ...
            # (psycopg's own errors, or the state layer's one-line wrapping of them)
            raise VerificationUnavailable(
                f"database error ({type(exc).__name__}): {safe_message(str(exc), limit=200)}"
            ) from None
        if row is None:
            return _UNKNOWN
        now = time.monotonic()
        current = self._secret(row, row["encrypted_config"])
        if current is None:  # no active credential: refused until one is stored (NOTIFY)
            return _Entry(
                row["org_id"], row["slug"], row["role"], None, (), now + self._negative_ttl
            )
        keys = [_Key(current)]
        expires = now + self._ttl
        previous_left = row.get("previous_left_s")
        replaced = row.get("previous_encrypted_config") or ""
        if replaced and (previous_left is None or previous_left > 0):
            seen = {current}
            for token in replaced.split():  # overlapping rotations keep a few, oldest first
                try:
                    previous = self._secret(row, token)
                except VerificationUnavailable:
                    previous = None  # an unreadable replaced secret is just not accepted
                if previous is not None and previous not in seen:
                    seen.add(previous)
                    keys.append(_Key(previous))
            if previous_left is not None:  # the cache must not outlive its validity
                expires = min(expires, now + previous_left)
        return _Entry(
            row["org_id"], row["slug"], row["role"], row.get("forward_url"), tuple(keys), expires
        )

    def _secret(self, row: dict[str, Any], token: str | None) -> bytes | None:
        """The webhook secret of a stored Vapi credential, as UTF-8; None when there is no
        credential; `VerificationUnavailable` when it cannot be used."""
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
            return secret.encode()
        except UnicodeError:
            raise VerificationUnavailable(
                "the stored webhookSecret is not valid Unicode", row["slug"]
            ) from None

    # --- verification --------------------------------------------------------------------------

    def resolve(self, headers: Headers, body: bytes) -> ResolvedWebhook:
        """The org of a webhook whose credentials check out; a `WebhookError` for any other
        input (see the module docstring). May query the database (blocking)."""
        return self.verify(parse_webhook(headers, body))

    def resolve_cached(self, headers: Headers, body: bytes) -> ResolvedWebhook | None:
        """As `resolve`, from the cache only: None when the id is not cached (no I/O)."""
        return self.verify_cached(parse_webhook(headers, body))

    def verify(self, webhook: Webhook) -> ResolvedWebhook:
        """`resolve` for a parsed webhook."""
        key = webhook.assistant_id
        entry = self._cached(key)
        if entry is None:
            entry = self._load(key)
        if entry is _UNKNOWN and webhook.fallback is not None:  # a number no org owns
            key = webhook.fallback
            entry = self._cached(key)
            if entry is None:
                entry = self._load(key)
        return self._check(webhook, key, entry)

    def verify_cached(self, webhook: Webhook) -> ResolvedWebhook | None:
        """`resolve_cached` for a parsed webhook: every check runs on a cached entry too."""
        key = webhook.assistant_id
        entry = self._cached(key)
        if entry is _UNKNOWN and webhook.fallback is not None:
            key = webhook.fallback
            entry = self._cached(key)
        return None if entry is None else self._check(webhook, key, entry)

    def _check(self, webhook: Webhook, lookup: str, entry: _Entry) -> ResolvedWebhook:
        if entry is _UNKNOWN:
            what, shown = "assistant", lookup
            if lookup.startswith(ACCOUNT_KEY):
                what, shown = "Vapi account", lookup.removeprefix(ACCOUNT_KEY)
            elif lookup.startswith(NUMBER_KEY):
                what, shown = "phone number", lookup.removeprefix(NUMBER_KEY)
            raise UnknownAssistant(
                f"{what} {printable(shown, ECHOED_ID_CHARS)} belongs to no known org"
            )
        if not entry.keys:
            raise BadSecret("no active webhook secret for this assistant", entry.slug)
        if webhook.secret_digest is None and webhook.signature is None:
            raise BadSecret(f"missing {SECRET_HEADER} or {SIGNATURE_HEADER}", entry.slug)
        if webhook.secret_digest is not None:
            matched = False
            for key in entry.keys:  # every one compared, in constant time
                matched |= hmac.compare_digest(webhook.secret_digest, key.digest)
            if not matched:
                raise BadSecret(f"bad or missing {SECRET_HEADER}", entry.slug)
        if webhook.signature is not None:
            _check_signature(webhook, entry)
        by_account = lookup.startswith(ACCOUNT_KEY)
        number = lookup.removeprefix(NUMBER_KEY) if lookup.startswith(NUMBER_KEY) else ""
        if not by_account:  # an assistant's or a number's mapping: its `last_used_at`
            with self._lock:
                self._used.add(number or lookup)
        return ResolvedWebhook(
            entry.org_id,
            entry.slug,
            "" if by_account or number else lookup,
            entry.role,
            webhook.message_type,
            entry.forward_url,
            number,
        )


def _check_signature(webhook: Webhook, entry: _Entry) -> None:
    assert webhook.signature is not None
    sent_at = _timestamp_s(webhook.timestamp)
    if sent_at is None or abs(time.time() - sent_at) > SIGNATURE_WINDOW_S:
        raise BadSignature(f"{TIMESTAMP_HEADER} missing or not within 5 minutes of now", entry.slug)
    assert webhook.timestamp is not None
    matched = False
    for key in entry.keys:
        matched |= hmac.compare_digest(key.sign(webhook.timestamp, webhook.body), webhook.signature)
    if not matched:
        raise BadSignature(f"bad {SIGNATURE_HEADER}", entry.slug)
