"""Comparing assistant configs. Pure functions."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

# Fields Vapi owns: returned by GET, never sent.
SERVER_OWNED = frozenset(
    {
        "id",
        "orgId",
        "createdAt",
        "updatedAt",
        "isServerUrlSecretSet",
        "analyticsMetadata",
        "latestVersion",
    }
)
# A key is sensitive when one of its words (camelCase, kebab-case, snake_case) is one of these.
# HTTP headers carry secrets under any name, so a `headers` object is sensitive as a whole.
_SENSITIVE_WORDS = frozenset(
    {
        "secret", "token", "password", "passwd", "key", "apikey", "authorization", "auth",
        "cookie", "signature", "private", "credential", "credentials", "headers",
    }
)  # fmt: skip
_WORD = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")
SENSITIVE = "(sensitive)"


def is_sensitive_key(key: str) -> bool:
    words = [w.lower() for w in _WORD.findall(key)]
    if words and words[-1] in ("id", "ids"):  # credentialId(s) name a secret, are not one
        return False
    return any(w in _SENSITIVE_WORDS for w in words)


def strip_server_owned(assistant: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in assistant.items() if k not in SERVER_OWNED}


def contains(live: Any, desired: Any) -> bool:
    """True when `live` has everything `desired` sets (Vapi may add defaults we did not send)."""
    if isinstance(desired, dict):
        return isinstance(live, dict) and all(
            contains(live.get(k), v) if v is not None else live.get(k) is None
            for k, v in desired.items()
        )
    if isinstance(desired, list):
        return (
            isinstance(live, list)
            and len(live) == len(desired)
            and all(contains(a, b) for a, b in zip(live, desired, strict=True))
        )
    if isinstance(desired, bool) or isinstance(live, bool):
        return live is desired
    if isinstance(desired, int | float) and isinstance(live, int | float):
        return float(live) == float(desired)
    return bool(live == desired)


@dataclass(frozen=True)
class FieldChange:
    path: str
    old: Any
    new: Any
    sensitive: bool = False


_ABSENT = object()


def field_changes(old: Any, new: Any, path: str = "") -> list[FieldChange]:
    """Leaf-level differences for display; values under secret-looking keys are masked."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[FieldChange] = []
        for key in sorted(set(old) | set(new), key=str):
            sub = f"{path}.{key}" if path else str(key)
            o, n = old.get(key, _ABSENT), new.get(key, _ABSENT)
            if n is _ABSENT:  # a field Vapi added is not a change we make
                continue
            if is_sensitive_key(str(key)):
                if not contains(o if o is not _ABSENT else None, n):
                    out.append(FieldChange(sub, SENSITIVE, SENSITIVE, sensitive=True))
                continue
            out += field_changes(None if o is _ABSENT else o, n, sub)
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        out = []
        for i, (o, n) in enumerate(zip(old, new, strict=True)):
            out += field_changes(o, n, f"{path}[{i}]")
        return out
    if contains(old, new):
        return []
    return [FieldChange(path, redact(old), redact(new))]


def redact(value: Any) -> Any:
    """For display: secret-looking leaves become "(sensitive)"."""
    return mask(value, lambda _: SENSITIVE)


def mask(value: Any, fingerprint: Any) -> Any:
    """`value` with leaves under secret-looking keys replaced by `fingerprint(leaf)`."""
    if isinstance(value, dict):
        return {
            k: (
                fingerprint(v)
                if is_sensitive_key(str(k)) and v is not None
                else mask(v, fingerprint)
            )
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [mask(v, fingerprint) for v in value]
    return value
