"""`CredentialStore`: the credentials of an org, for the platform's services.

A read answered by the cache makes no I/O: a dict lookup, an LRU touch and an audit tuple
appended to a queue. A miss makes one query and one AES-GCM decrypt, and concurrent misses of
one credential share them. See `reconciler.credentials.listen` for how the cache follows
Postgres, `reconciler.credentials.audit` for the audit.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final, Protocol, cast

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from reconciler.credentials.audit import RETENTION_S, AuditLog
from reconciler.credentials.cache import MISS, Cache, Entry, Loaded
from reconciler.credentials.listen import CONNECT_DEFAULTS, LISTENER_NAME, Checker, Listener
from reconciler.credentials.models import (
    AssistantOrg,
    CredentialError,
    CredentialNotFound,
    Credentials,
    CredentialUnavailable,
    ElevenLabsCredentials,
    GoogleCalendarCredentials,
    OutboundNumber,
    ResendCredentials,
    TwilioCredentials,
    VapiCredentials,
    build,
)
from reconciler.credentials.queries import WAIT_S, AuditRow, CredentialQueries, one_line
from reconciler.errors import ConfigError, MasterKeyRefused
from reconciler.metrics import CREDENTIAL_AUDIT_ROWS, CREDENTIAL_CACHE, CREDENTIAL_CACHE_EVICTIONS
from reconciler.secrets.crypto import (
    CredentialDecryptError,
    KeyRing,
    Keys,
    UnknownKeyId,
    as_ring,
)

if TYPE_CHECKING:
    from reconciler.config import Settings

CALLER_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
"""A caller name: 1-64 of A-Z a-z 0-9 . _ -, starting with a letter or digit (it lands in the
audit table, in `reconciler audit` and in Postgres's `application_name`)."""
_ASSISTANT_ID: Final = re.compile(r"[\x21-\x7e]{1,128}")
"""As the webhook resolver: Vapi's ids are UUIDs, so nothing else can be mapped."""
CHECK_CHUNK = 5000
"""Keys per statement of the version check."""

TTL_S = 300.0
NEGATIVE_TTL_S = 5.0
MAX_ENTRIES = 10_000


class _Absent:
    """A cached 'no active credential' (kept `negative_ttl_s`)."""

    __slots__ = ()


_ABSENT: Final = _Absent()

CredKey = tuple[str, str]  # (org id, provider)
CredValue = Credentials | _Absent
AssistantValue = AssistantOrg | None


class Backend(Protocol):
    """What the store needs from Postgres (`CredentialQueries`; a fake in unit tests)."""

    def load_credential(self, org_id: str, provider: str) -> tuple[str, bool] | None: ...

    def check_credentials(
        self, keys: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], tuple[str, bool] | None]: ...

    def load_assistants(self, assistant_ids: Sequence[str]) -> dict[str, tuple[str, str, str]]: ...

    def load_outbound(self, org_id: str) -> tuple[str, str | None] | None: ...

    def write_audit(
        self, rows: Sequence[AuditRow], caller: str, *, timeout_s: float | None = None
    ) -> None: ...

    def expire_audit(self, retention_s: float, limit: int) -> int: ...


def validate_caller(caller: object) -> str:
    if not isinstance(caller, str) or not CALLER_PATTERN.fullmatch(caller):
        raise ConfigError(
            "caller must be 1-64 characters of A-Z a-z 0-9 . _ -, starting with a letter or "
            "digit (e.g. sms-service): it names the service in the credential audit"
        )
    return caller


def canonical_org_id(org_id: object) -> str | None:
    """The canonical text of a UUID (lower case, dashed), or None if it is not one."""
    if isinstance(org_id, uuid.UUID):
        return str(org_id)
    if not isinstance(org_id, str) or len(org_id) > 64:
        return None
    try:
        return str(uuid.UUID(org_id))
    except ValueError:
        return None


def token_digest(sealed: str) -> str:
    """What the version check compares a cached credential by: the md5 of its ciphertext, as
    Postgres's md5() computes it (a change detector, not a protection)."""
    return hashlib.md5(sealed.encode(), usedforsecurity=False).hexdigest()


class CredentialStore:
    """Typed, cached, audited reads of the credentials the reconciler stored. Thread-safe.

    Build it with `from_settings(caller=...)` (the CLI's settings) or `from_url`; `close()`
    stops its threads, writes the audit rows still queued and closes its pool. Build it in the
    process that uses it: threads and connections do not survive a fork.
    """

    def __init__(
        self,
        backend: Backend,
        keys: Keys,
        *,
        caller: str,
        ttl_s: float = TTL_S,
        negative_ttl_s: float = NEGATIVE_TTL_S,
        max_entries: int = MAX_ENTRIES,
        listen_url: str | None = None,
        check_every_s: float = 1.0,
        stale_after_s: float = 3.0,
        audit_every_s: float = 1.0,
        audit_batch: int = 1000,
        audit_max_pending: int = 100_000,
        audit_retention_s: float | None = RETENTION_S,
        start: bool = True,
    ) -> None:
        self.caller = validate_caller(caller)
        self._backend = backend
        self._keys: KeyRing = as_ring(keys)
        self._creds: Cache[CredKey, CredValue] = Cache(
            ttl_s=ttl_s, negative_ttl_s=negative_ttl_s, max_entries=max_entries
        )
        self._assistants: Cache[str, AssistantValue] = Cache(
            ttl_s=ttl_s, negative_ttl_s=negative_ttl_s, max_entries=max_entries
        )
        self._audit = AuditLog(
            backend,
            self.caller,
            every_s=audit_every_s,
            batch=audit_batch,
            max_pending=audit_max_pending,
            retention_s=audit_retention_s,
        )
        self._listener = (
            None
            if listen_url is None
            else Listener(self, listen_url, name=f"{LISTENER_NAME}:{self.caller}"[:63])
        )
        self._checker = Checker(
            self.check,
            self._confirmed_at,
            every_s=check_every_s,
            stale_after_s=stale_after_s,
        )
        self._closed = False
        self._closers: list[Callable[[], None]] = []
        self._detach = [
            CREDENTIAL_CACHE.attach(self._cache_counts),
            CREDENTIAL_CACHE_EVICTIONS.attach(self._eviction_counts),
            CREDENTIAL_AUDIT_ROWS.attach(self._audit_counts),
        ]
        if start:
            self.start()

    def start(self) -> None:
        """Starts the background threads (the constructor does, unless `start=False`)."""
        self._audit.start()
        if self._listener is not None:
            self._listener.start()
        self._checker.start()

    # --- construction -------------------------------------------------------------------------

    @classmethod
    def from_settings(
        cls,
        caller: str,
        *,
        settings: Settings | None = None,
        listen: bool = True,
        pool_size: int = 4,
        **options: Any,
    ) -> CredentialStore:
        """From the same environment as the CLI: RECONCILER_DATABASE_URL (unset: the embedded
        Postgres of RECONCILER_DATA_DIR), RECONCILER_MASTER_KEYS or RECONCILER_MASTER_KEY
        (with the embedded default, the key file the CLI generated there: never created here),
        RECONCILER_MAPPING_RETENTION. Never migrates: an out-of-date schema is a `ConfigError`
        that says to run `reconciler db migrate`. `options`: those of the constructor."""
        from reconciler.config import load_settings
        from reconciler.state.connect import database_url, master_keys

        validate_caller(caller)  # before any I/O
        settings = settings or load_settings()
        keys = master_keys(settings, create=False, must_exist=True)
        url = database_url(settings)
        return cls.from_url(
            url,
            keys,
            caller=caller,
            listen=listen,
            pool_size=pool_size,
            mapping_retention_s=settings.mapping_retention_s,
            **options,
        )

    @classmethod
    def from_url(
        cls,
        database_url: str,
        master_keys: Keys | str,
        *,
        caller: str,
        listen: bool = True,
        listen_url: str | None = None,
        pool_size: int = 4,
        pool_wait_s: float = WAIT_S,
        mapping_retention_s: float | None = None,
        **options: Any,
    ) -> CredentialStore:
        """A store with its own pool (`pool_size` connections) on `database_url`, and with
        `listen`, a LISTEN connection of its own (to `listen_url` if given: Postgres directly
        when `database_url` goes through a transaction-pooling proxy, where LISTEN does not
        work; with `listen=False` the version check alone keeps the cache true, within about
        `check_every_s`). A miss waits at most `pool_wait_s` for a connection. `master_keys`:
        a KeyRing, or the text of RECONCILER_MASTER_KEYS or RECONCILER_MASTER_KEY."""
        from reconciler.state.db import open_pool
        from reconciler.state.migrate import check_schema

        validate_caller(caller)
        name = f"reconciler-credentials:{caller}"
        keys = (
            master_keys if not isinstance(master_keys, str) else KeyRing.from_setting(master_keys)
        )
        pool = open_pool(_with_keepalives(database_url), max_size=pool_size, name=name)
        quiet = _quiet_pool_log(name)
        try:
            check_schema(pool)
            retention = (
                {} if mapping_retention_s is None else {"mapping_retention_s": mapping_retention_s}
            )
            backend = CredentialQueries(pool, wait_s=pool_wait_s, **retention)
            store = cls(
                backend,
                keys,
                caller=caller,
                listen_url=(listen_url or database_url) if listen else None,
                **options,
            )
        except BaseException:
            pool.close()
            quiet()
            raise
        store._closers += [pool.close, quiet]
        return store

    def close(self) -> None:
        """Stops the threads, writes the queued audit rows (what cannot be written is dropped
        and counted) and closes the pool. Reads after it raise `CredentialUnavailable`.
        Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._listener is not None:
            self._listener.close()
        self._checker.close()
        self._audit.close()
        for detach in self._detach:
            detach()
        closers, self._closers = self._closers, []
        for close in closers:
            close()

    def flush(self) -> bool:
        """Writes the queued audit rows now (the background thread does every
        `audit_every_s`); True if they were all written."""
        return self._audit.flush()

    def __enter__(self) -> CredentialStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- reads ------------------------------------------------------------------------------------

    def vapi(self, org_id: str | uuid.UUID) -> VapiCredentials:
        """`.api_key`, `.webhook_secret`. A retired org's webhook-only row is inactive: not
        found."""
        return cast(VapiCredentials, self._credential(org_id, "vapi"))

    def twilio(self, org_id: str | uuid.UUID) -> TwilioCredentials:
        """`.account_sid`, `.auth_token`."""
        return cast(TwilioCredentials, self._credential(org_id, "twilio"))

    def google_calendar(self, org_id: str | uuid.UUID) -> GoogleCalendarCredentials:
        """`.client_id`, `.client_secret`, `.refresh_token`."""
        return cast(GoogleCalendarCredentials, self._credential(org_id, "google_calendar"))

    def resend(self, org_id: str | uuid.UUID) -> ResendCredentials:
        """`.api_key`."""
        return cast(ResendCredentials, self._credential(org_id, "resend"))

    def elevenlabs(self, org_id: str | uuid.UUID) -> ElevenLabsCredentials:
        """`.api_key`."""
        return cast(ElevenLabsCredentials, self._credential(org_id, "elevenlabs"))

    def _credential(self, org_id: str | uuid.UUID, provider: str) -> CredValue:
        if self._closed:
            raise CredentialUnavailable("the credential store is closed")
        if type(org_id) is not str:
            org_id = str(org_id)
        value = self._creds.get((org_id, provider))
        audited: str | None = org_id
        if value is MISS:
            audited, value = self._miss(org_id, provider)
        if value is _ABSENT:
            self._audit.record(audited, provider, "not_found")
            raise CredentialNotFound(org_id, provider)
        self._audit.record(audited, provider, "ok")
        return cast(CredValue, value)

    def _miss(self, org_id: str, provider: str) -> tuple[str | None, CredValue]:
        canonical = canonical_org_id(org_id)
        if canonical is None:  # no org can have this id: not a query
            return None, _ABSENT
        key = (canonical, provider)
        if canonical != org_id:  # only canonical ids are cached
            value = self._creds.get(key)
            if value is not MISS:
                return canonical, cast(CredValue, value)
        try:
            return canonical, self._creds.load(
                key, lambda: self._load_credential(canonical, provider)
            )
        except CredentialError:
            self._audit.record(canonical, provider, "error")
            raise
        except Exception as exc:  # the database (StateError), a timeout
            self._audit.record(canonical, provider, "error")
            raise CredentialUnavailable(
                f"cannot read the {provider} credential of org {canonical}: {one_line(exc)}"
            ) from None

    def _load_credential(self, org_id: str, provider: str) -> Loaded[CredValue]:
        row = self._backend.load_credential(org_id, provider)
        if row is None:
            return Loaded(_ABSENT, None, org_id, negative=True)
        sealed, active = row
        token = (token_digest(sealed), active)
        if not active:
            return Loaded(_ABSENT, token, org_id, negative=True)
        try:
            config = self._keys.decrypt(sealed, aad=f"{org_id}:{provider}")
        except UnknownKeyId as exc:  # e.g. a process left behind by `keys rotate`
            raise CredentialUnavailable(
                str(MasterKeyRefused.missing(org_id, provider, exc.key_id))
            ) from None
        except (CredentialDecryptError, ValueError):
            raise CredentialUnavailable(
                f"stored {provider} credential of org {org_id} does not decrypt under the "
                "master keys (RECONCILER_MASTER_KEYS / RECONCILER_MASTER_KEY), or was tampered with"
            ) from None
        return Loaded(build(org_id, provider, config), token, org_id)

    def org_for_assistant(self, assistant_id: str) -> AssistantOrg | None:
        """The org that owns a Vapi assistant (`.org_id`, `.slug`, `.role`), as the webhook
        resolver finds it: its mapping is active, or went inactive within
        RECONCILER_MAPPING_RETENTION. None for an unknown id (cached `negative_ttl_s`, and
        dropped at once when the id gets mapped). Not audited: it reads no secret."""
        if self._closed:
            raise CredentialUnavailable("the credential store is closed")
        if not isinstance(assistant_id, str):
            return None
        value = self._assistants.get(assistant_id)
        if value is not MISS:
            return cast(AssistantValue, value)
        if not _ASSISTANT_ID.fullmatch(assistant_id):
            return None
        try:
            return self._assistants.load(assistant_id, lambda: self._load_assistant(assistant_id))
        except Exception as exc:
            raise CredentialUnavailable(
                f"cannot resolve an assistant id: {one_line(exc)}"
            ) from None

    def _load_assistant(self, assistant_id: str) -> Loaded[AssistantValue]:
        found = self._backend.load_assistants([assistant_id]).get(assistant_id)
        if found is None:
            return Loaded(None, None, None, negative=True)
        return Loaded(AssistantOrg(*found), found, found[0])

    def outbound_number(self, org_id: str | uuid.UUID) -> OutboundNumber | None:
        """The number the org's outbound assistant calls from (`spec.outbound.phoneNumber`):
        `.phone_number` and `.phone_number_id`, its Vapi id (None until `apply` has made or
        imported it), so a service places calls (`POST /call` with `phoneNumberId`) without
        a Vapi lookup of its own. None when the org declares no outbound number, is retired or
        unknown. Not cached (one indexed query: a number bought or moved counts at once) and
        not audited (it reads no secret); `CredentialUnavailable` when Postgres cannot answer."""
        if self._closed:
            raise CredentialUnavailable("the credential store is closed")
        canonical = canonical_org_id(org_id)
        if canonical is None:  # no org can have this id: not a query
            return None
        try:
            found = self._backend.load_outbound(canonical)
        except Exception as exc:  # the database (StateError), a timeout
            raise CredentialUnavailable(
                f"cannot read the outbound number of org {canonical}: {one_line(exc)}"
            ) from None
        return None if found is None else OutboundNumber(canonical, *found)

    # --- keeping the cache true (called by the listener and the checker) ------------------------

    def on_credential(self, org_id: str, provider: str) -> None:
        self._creds.invalidate((org_id, provider))

    def on_assistant(self, assistant_id: str) -> None:
        self._assistants.invalidate(assistant_id)

    def on_org(self, org_id: str) -> None:
        """The org's row (slug, retirement) or Vapi credential changed."""
        self._creds.invalidate_org(org_id)
        self._assistants.invalidate_org(org_id, negatives=True)

    def on_deaf(self) -> None:
        self._creds.clear()
        self._assistants.clear()

    def _confirmed_at(self) -> float:
        return float("-inf") if self._listener is None else self._listener.confirmed_at

    def check(self) -> None:
        """The version check: every cached entry against Postgres, in one statement per
        `CHECK_CHUNK` entries; those that differ are dropped. Run by the checker thread while
        the listener cannot vouch for the cache."""
        creds = self._creds.begin_check()
        assistants = self._assistants.begin_check()
        for chunk in _chunks(creds):
            found = self._backend.check_credentials([key for key, _ in chunk])
            for key, entry in chunk:
                if found.get(key) != entry.token:
                    self._creds.drop_if_same(key, entry)
        for achunk in _chunks(assistants):
            mapped = self._backend.load_assistants([key for key, _ in achunk])
            for akey, aentry in achunk:
                if mapped.get(akey) != aentry.token:
                    self._assistants.drop_if_same(akey, aentry)

    # --- statistics -----------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Cache counts (credentials and assistant look-ups together), the audit's, and how the
        cache follows Postgres. Plain numbers: no prometheus needed (the same counts are on
        `/metrics` in a process that serves it)."""
        creds = self._creds.stats_snapshot()
        assistants = self._assistants.stats_snapshot()
        out: dict[str, Any] = {k: creds[k] + assistants[k] for k in creds}
        out |= {f"audit_{k}": v for k, v in self._audit.counts().items()}
        out["listening"] = self._listener is not None and self._listener.listening.is_set()
        out["version_checks"] = self._checker.checks
        proved = max(self._confirmed_at(), self._checker.last_ok)
        # how long ago the cache was last proved true to Postgres (a listener ping or a version
        # check): a health check may alert on it; None before the first proof
        out["confirmed_ago_s"] = None if proved == float("-inf") else time.monotonic() - proved
        return out

    def _cache_counts(self) -> dict[tuple[str, ...], float]:
        a, b = self._creds.stats, self._assistants.stats
        return {("hit",): a.hits + b.hits, ("miss",): a.misses + b.misses}

    def _eviction_counts(self) -> dict[tuple[str, ...], float]:
        a, b = self._creds.stats, self._assistants.stats
        return {
            ("lru",): a.evictions + b.evictions,
            ("expired",): a.expired + b.expired,
            ("invalidated",): a.invalidated + b.invalidated,
        }

    def _audit_counts(self) -> dict[tuple[str, ...], float]:
        return {("written",): self._audit.written, ("dropped",): self._audit.dropped}


def _with_keepalives(url: str) -> str:
    """The URL with the listener's TCP keepalives and `tcp_user_timeout` unless it sets them:
    a statement on a connection whose network silently died fails in seconds, instead of
    holding a read for the kernel's retransmission timeout (minutes)."""
    given = conninfo_to_dict(url)
    return make_conninfo(url, **{k: v for k, v in CONNECT_DEFAULTS.items() if k not in given})


def _quiet_pool_log(pool_name: str) -> Callable[[], None]:
    """Drops psycopg-pool's log records about this pool (a multi-line warning per failed
    reconnect attempt): the store says an outage in one line per part (audit, listener,
    version check). Returns what removes the filter."""
    logger = logging.getLogger("psycopg.pool")

    def ours(record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        return pool_name not in args

    logger.addFilter(ours)
    return lambda: logger.removeFilter(ours)


def _chunks(items: list[tuple[Any, Entry[Any]]]) -> list[list[tuple[Any, Entry[Any]]]]:
    return [items[i : i + CHECK_CHUNK] for i in range(0, len(items), CHECK_CHUNK)]
