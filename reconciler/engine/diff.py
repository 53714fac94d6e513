"""Comparing assistant configs. Pure functions over configs whose secret leaves are already
fingerprints (see `engine.model`), so a changed or drifted secret is seen without being shown."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from reconciler.engine.model import FINGERPRINT_PREFIX, MASKED_BY_VAPI
from reconciler.redact import SENSITIVE

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
SENSITIVE_CHANGED = "(sensitive value changed)"
SENSITIVE_DRIFTED = "(sensitive value drifted)"
SENSITIVE_UNCHECKED = "(sensitive: Vapi masks it, cannot be checked)"


def strip_server_owned(assistant: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in assistant.items() if k not in SERVER_OWNED}


def is_secret_leaf(value: Any) -> bool:
    return isinstance(value, str) and (
        value.startswith(FINGERPRINT_PREFIX) or value == MASKED_BY_VAPI
    )


def contains(live: Any, desired: Any) -> bool:
    """True when `live` has everything `desired` sets (Vapi may add defaults we did not send).

    Numbers compare by exact value (`1 == 1.0`, but 2**53 + 1 is not 2**53), booleans only
    with booleans. A leaf Vapi showed masked cannot be checked, so it counts as holding ours.
    (Loops, not generators: the planner asks this of every field of every object each run.)
    """
    if live == MASKED_BY_VAPI and desired is not None:
        return True
    if isinstance(desired, dict):
        if not isinstance(live, dict):
            return False
        get = live.get
        for k, v in desired.items():
            if v is None:
                if get(k) is not None:
                    return False
            elif not contains(get(k), v):
                return False
        return True
    if isinstance(desired, list):
        if not isinstance(live, list) or len(live) != len(desired):
            return False
        for a, b in zip(live, desired, strict=True):  # noqa: SIM110 - no generator
            if not contains(a, b):
                return False
        return True
    if isinstance(desired, bool) or isinstance(live, bool):
        return live is desired
    if isinstance(desired, int | float) and isinstance(live, int | float):
        return live == desired  # Python compares int and float exactly
    return bool(live == desired)


def unchecked_paths(live: Any, desired: Any, path: str = "") -> list[str]:
    """Where `desired` sets a secret that Vapi shows masked: drift there cannot be seen."""
    if live == MASKED_BY_VAPI and desired is not None:
        return [path]
    if isinstance(desired, dict) and isinstance(live, dict):
        return [
            p
            for k in sorted(desired, key=str)
            for p in unchecked_paths(live.get(k), desired[k], f"{path}.{k}" if path else str(k))
        ]
    if isinstance(desired, list) and isinstance(live, list) and len(live) == len(desired):
        return [
            p
            for i, (a, b) in enumerate(zip(live, desired, strict=True))
            for p in unchecked_paths(a, b, f"{path}[{i}]")
        ]
    return []


@dataclass(frozen=True)
class FieldChange:
    path: str
    old: Any
    new: Any
    sensitive: bool = False
    drift: bool = False  # the live value moved away from what we applied (not a spec change)


_ABSENT = object()


def field_changes(old: Any, new: Any, path: str = "", *, drift: bool = False) -> list[FieldChange]:
    """Leaf-level differences for display, from masked configs: secret leaves show as
    "(sensitive value changed)" or "(sensitive value drifted)", never as values."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[FieldChange] = []
        for key in sorted(set(old) | set(new), key=str):
            sub = f"{path}.{key}" if path else str(key)
            o, n = old.get(key, _ABSENT), new.get(key, _ABSENT)
            if n is _ABSENT:  # a field Vapi added is not a change we make
                continue
            out += field_changes(None if o is _ABSENT else o, n, sub, drift=drift)
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        out = []
        for i, (o, n) in enumerate(zip(old, new, strict=True)):
            out += field_changes(o, n, f"{path}[{i}]", drift=drift)
        return out
    if contains(old, new):
        return []
    if is_secret_leaf(old) or is_secret_leaf(new):
        if old is None:
            return [FieldChange(path, None, SENSITIVE, sensitive=True)]
        shown = SENSITIVE_DRIFTED if drift else SENSITIVE_CHANGED
        return [FieldChange(path, SENSITIVE, shown if new is not None else None, True, drift)]
    return [FieldChange(path, shown_value(old), shown_value(new), drift=drift)]


def shown_value(value: Any) -> Any:
    """A masked config for display: fingerprints become "(sensitive)"."""
    if isinstance(value, dict):
        return {k: shown_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shown_value(v) for v in value]
    return SENSITIVE if is_secret_leaf(value) else value


def same(a: Any, b: Any) -> bool:
    """Equal as JSON values: exact numbers (`1` is `1.0`), booleans apart from numbers."""
    return contains(a, b) and contains(b, a)


def not_kept(
    key: str,
    now: Any,
    wanted: Any,
    answer: Mapping[str, Any] | None,
    last_patch: Mapping[str, Any],
) -> bool:
    """With the spec unchanged since our last write, does the live value lack `wanted` only
    because Vapi does not keep it? Either the answer to that write already lacked it and the
    value has not moved since, or our last PATCH sent exactly it and the value is back where
    that PATCH found it (Vapi normalises it on read): sending it again would change nothing."""
    if answer is not None and same(now, answer.get(key)) and not contains(answer.get(key), wanted):
        return True
    last = last_patch.get(key)
    return (
        isinstance(last, dict)
        and same(last.get("sent"), wanted)
        # compared where we set something: defaults Vapi adds elsewhere do not matter
        and same(within(now, wanted), within(last.get("before"), wanted))
    )


def within(value: Any, shape: Any) -> Any:
    """`value` cut down to the keys `shape` sets (recursively)."""
    if isinstance(shape, dict) and isinstance(value, dict):
        return {k: within(value.get(k), v) for k, v in shape.items()}
    if isinstance(shape, list) and isinstance(value, list) and len(shape) == len(value):
        return [within(v, s) for v, s in zip(value, shape, strict=True)]
    return value
