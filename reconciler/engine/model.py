"""The data the planner works on: desired state (from specs) and observed state (Postgres + Vapi).

Plain frozen dataclasses: no I/O, cheap to build in tests. Secret-bearing leaves of assistant
configs never reach the planner in clear: desired and live configs alike carry keyed
fingerprints in their place (`FINGERPRINT_PREFIX...`), or `MASKED_BY_VAPI` where Vapi showed a
masked value, so they compare by value without being revealed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

TAG_MANAGED_BY = "reconciler"
FINGERPRINT_PREFIX = "sha256-hmac:"
MASKED_BY_VAPI = "(masked by Vapi)"

Fingerprint = Callable[[Any], str]
"""A secret leaf -> `FINGERPRINT_PREFIX` + keyed digest (same value, same fingerprint)."""


class Sensitive:
    """Holds a secret value; its repr and str never show it."""

    __slots__ = ("_value",)

    def __init__(self, value: Any) -> None:
        self._value = value

    def reveal(self) -> Any:
        return self._value

    def __repr__(self) -> str:
        return "(sensitive)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sensitive) and other._value == self._value

    def __hash__(self) -> int:
        return hash(repr(self._value))


@dataclass(frozen=True)
class DesiredCredential:
    provider: str
    fingerprint: str  # under the active master key
    config: Sensitive
    # under every master key of the ring, by key id: a stored fingerprint is compared with the
    # one made under its own key, so rotating the master key is never a credential change
    by_key: dict[str, str] = field(default_factory=dict)

    def matches(self, stored_fingerprint: str) -> bool:
        kid = fingerprint_key_id(stored_fingerprint)
        return self.by_key.get(kid, self.fingerprint) == stored_fingerprint


def fingerprint_key_id(fingerprint: str) -> str:
    """The master key id a fingerprint names (`<id>:<hex>`; bare hex: `default`)."""
    kid, sep, _ = fingerprint.rpartition(":")
    return kid if sep else "default"


def leaf_key_ids(value: Any) -> set[str]:
    """Master key ids of the secret-leaf fingerprints in a config value
    (`sha256-hmac:<id>:<hex>`; `sha256-hmac:<hex>`: `default`)."""
    found: set[str] = set()
    if isinstance(value, str) and value.startswith(FINGERPRINT_PREFIX):
        found.add(fingerprint_key_id(value.removeprefix(FINGERPRINT_PREFIX)))
    elif isinstance(value, dict):
        for v in value.values():
            found |= leaf_key_ids(v)
    elif isinstance(value, list):
        for v in value:
            found |= leaf_key_ids(v)
    return found


@dataclass(frozen=True)
class DesiredAssistant:
    role: str
    # what we send to Vapi, ownership tag and webhook secret included: never in a repr
    body: dict[str, Any] = field(repr=False)
    stored: dict[str, Any] = field(default_factory=dict)  # secret leaves as fingerprints
    # its write-only fields (`ResourceKind.write_only`) fingerprinted under each other master key id
    # of the ring: what we asked for under a key rotated out since still compares
    write_only_by_key: dict[str, dict[str, Any]] = field(default_factory=dict)
    template: str | None = None  # `name@version` it is rendered from (None: written in full)
    overridden: frozenset[str] = frozenset()  # paths of its values the org's overrides set

    @property
    def name(self) -> str:
        return str(self.body.get("name", ""))


@dataclass(frozen=True)
class DesiredResource:
    """An object of a `ResourceKind` the spec wants. `name` is its key in the state (a tool's
    name, a number); `key` its natural key in Vapi (`ResourceKind.natural_key`). `refs`: the
    fields of `body` that name another object of the org, filled in with ids by the planner
    (or, for objects created in the same run, by the applier)."""

    kind: str
    name: str
    key: str
    body: dict[str, Any] = field(repr=False)  # sent to Vapi: secrets in clear
    stored: dict[str, Any] = field(default_factory=dict)  # secret leaves as fingerprints
    refs: tuple[tuple[str, str, str], ...] = ()  # (field, kind, name)


@dataclass(frozen=True)
class DesiredOrg:
    org_id: str
    slug: str
    name: str
    credentials: dict[str, DesiredCredential]
    assistants: dict[str, DesiredAssistant]
    vapi_api_key: Sensitive | None = None
    # kind name -> name -> object, for the kinds beyond assistants (`engine.kinds`)
    resources: dict[str, dict[str, DesiredResource]] = field(default_factory=dict)
    # assistant role -> names of its tools (`tools:`), written into `model.toolIds`
    tool_refs: dict[str, tuple[str, ...]] = field(default_factory=dict)
    outbound_number: str | None = None  # `spec.outbound.phoneNumber`
    source: str = ""
    forward_url: str | None = None
    adopt_by_name: bool = False  # `spec.adopt: byName`
    # role -> why its templated assistant stays as it is in this run (a rollout's later wave)
    held: dict[str, str] = field(default_factory=dict)
    # set: the org is to be retired (its spec is gone, or `org retire`), and says why; its
    # credentials are then the stored ones (the Vapi key lists the account to clean)
    retire: str = ""
    key_id: str = "default"  # the master key id this process encrypts under (its active one)
    key_ids: tuple[str, ...] = ()  # every master key id it holds (empty: `key_id` alone)
    key_check: str | None = None  # its active key's check value (`KeyRing.check_value`)


@dataclass(frozen=True)
class StoredOrg:
    slug: str
    name: str
    vapi_account_id: str | None = None
    forward_url: str | None = None
    outbound_number: str | None = None


@dataclass(frozen=True)
class StoredCredential:
    provider: str
    fingerprint: str
    is_active: bool
    key_id: str | None = None  # the master key id its ciphertext names (None: not known)


@dataclass(frozen=True)
class StoredAssistant:
    role: str
    vapi_assistant_id: str | None
    status: str  # 'creating' | 'ready'
    applied_config: dict[str, Any] | None  # Vapi's answer to our last write
    pending_s: float | None = None  # seconds since a create began that has no known outcome
    desired_config: dict[str, Any] | None = None  # what we asked for at our last write
    # our last PATCH, per field: {"sent": value, "before": the live value it replaced}
    last_patch: dict[str, Any] | None = None
    template: str | None = None  # the template (`name@version`) of our last write

    @property
    def asked(self) -> dict[str, Any] | None:
        """What we asked for at the last write (rows older than that column: the answer)."""
        return self.desired_config if self.desired_config is not None else self.applied_config


@dataclass(frozen=True)
class StoredResource:
    """A `vapi_resources` row: as `StoredAssistant`, for any kind."""

    kind: str
    name: str
    vapi_id: str | None
    status: str  # 'creating' | 'ready'
    desired_config: dict[str, Any] | None
    applied_config: dict[str, Any] | None
    pending_s: float | None = None
    last_patch: dict[str, Any] | None = None


@dataclass(frozen=True)
class MappingRow:
    vapi_assistant_id: str
    role: str
    name: str | None


@dataclass(frozen=True)
class ObservedOrg:
    """What Postgres and the org's Vapi account say now. `live` is None when not listed; its
    secret leaves are fingerprinted. `shared_with` names other orgs (id -> slug) that reach
    the same Vapi account (by the account's `orgId`)."""

    org: StoredOrg | None = None
    credentials: dict[str, StoredCredential] = field(default_factory=dict)
    assistants: dict[str, StoredAssistant] = field(default_factory=dict)
    mappings: dict[str, MappingRow] = field(default_factory=dict)
    live: list[dict[str, Any]] | None = None
    shared_with: dict[str, str] = field(default_factory=dict)
    # ids of assistants in this account that Postgres maps to another org: never strays
    mapped_elsewhere: frozenset[str] = frozenset()
    # the active master key id Postgres records (`keys rotate`); None: none recorded yet
    master_key_id: str | None = None
    master_key_check: str | None = None  # and its check value (None: not recorded)
    # kind name -> name -> row (`vapi_resources`)
    resources: dict[str, dict[str, StoredResource]] = field(default_factory=dict)
    # kind name -> the account's objects of that kind, masked; a kind not listed is absent
    live_resources: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    # (kind, name) -> slug of another org Postgres gives it to (one org per number)
    held_elsewhere: dict[tuple[str, str], str] = field(default_factory=dict)


def ownership_tag(org_id: str, role: str) -> dict[str, str]:
    return {"managedBy": TAG_MANAGED_BY, "orgId": org_id, "role": role}


def tag_of(assistant: dict[str, Any]) -> tuple[str, str] | None:
    """(org_id, role) of an assistant we manage, else None."""
    meta = assistant.get("metadata")
    if not isinstance(meta, dict) or meta.get("managedBy") != TAG_MANAGED_BY:
        return None
    org_id, role = meta.get("orgId"), meta.get("role")
    if isinstance(org_id, str) and isinstance(role, str):
        return org_id, role
    return None


def account_ids(live: list[dict[str, Any]] | None) -> frozenset[str]:
    """The Vapi account (`orgId`) an account listing shows: one id, or none when empty."""
    return frozenset(a["orgId"] for a in live or () if isinstance(a.get("orgId"), str))
