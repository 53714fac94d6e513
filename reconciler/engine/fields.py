"""Which top-level fields of one object to PATCH: the same rules for every kind. Pure.

A field is sent when the spec changed it since our last write, or when the live value no
longer holds the desired one (drift), unless Vapi's own answer to our last write already
lacked it and nothing moved since (Vapi does not keep it: reported instead of sent on every
run). A write-only field (Vapi never shows it back whole: secrets) is compared with what we
asked for at our last write, never with the live value. An immutable field (part of the
natural key) is never sent.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from reconciler.engine.diff import (
    FieldChange,
    contains,
    field_changes,
    not_kept,
    same,
    shown_value,
    unchecked_paths,
)
from reconciler.engine.model import leaf_key_ids


@dataclass(frozen=True)
class FieldPlan:
    patch: dict[str, Any]  # sent to Vapi: secrets in clear
    before: dict[str, Any]  # the live values it replaces, masked
    changes: tuple[FieldChange, ...]
    warnings: tuple[str, ...]
    notes: tuple[str, ...]
    # `same(asked, stored)`: what our last write asked for is what the spec wants now (from
    # the comparisons of each field already made: a no-op plan walks each value once less)
    asked_same: bool = False


def compare_fields(
    where: str,
    body: Mapping[str, Any],
    stored: Mapping[str, Any],
    live: Mapping[str, Any],
    asked: Mapping[str, Any] | None,
    answer: Mapping[str, Any] | None,
    last_patch: Mapping[str, Any],
    *,
    write_only: frozenset[str] = frozenset(),
    immutable: frozenset[str] = frozenset(),
    under: Mapping[str, Mapping[str, Any]] | None = None,
) -> FieldPlan:
    """`body` (clear) and `stored` (masked) are the desired object, `live` what Vapi holds
    (masked), `asked`/`answer`/`last_patch` what our last write asked for, got back and
    replaced (None: the object is not ours yet). `under`: the desired value of each
    write-only field fingerprinted under each other master key, by key id."""
    patch: dict[str, Any] = {}
    before: dict[str, Any] = {}
    changes: list[FieldChange] = []
    warnings: list[str] = []
    notes: list[str] = []
    matched: set[str] = set()  # fields where `same(asked[key], stored[key])` holds
    for key, value in body.items():
        if key in immutable:
            continue  # part of the natural key: equal by construction
        wanted, now = stored.get(key), live.get(key)
        if key in write_only:
            by_key = {kid: v.get(key) for kid, v in (under or {}).items()}
            shown = write_only_changes(key, asked, wanted, answer, now, by_key)
            if shown is not None:
                patch[key], before[key] = value, now
                changes += shown
            continue
        # recorded under a master key rotated out since: its fingerprints cannot be compared
        # with today's, so whether the spec changed is judged by the live value alone
        was = asked.get(key) if asked is not None else None
        # equal values hold the same fingerprints: no key id to compare
        rekeyed = (
            asked is not None and was != wanted and bool(leaf_key_ids(was) - leaf_key_ids(wanted))
        )
        spec_changed = asked is not None and not rekeyed and not same(was, wanted)
        if asked is not None and not rekeyed and not spec_changed:
            matched.add(key)
        if not spec_changed and contains(now, wanted):
            notes += [
                f"{where}: {path}: Vapi masks this value on read; its drift cannot be checked"
                for path in unchecked_paths(now, wanted, key)
            ]
            continue
        if not spec_changed and not_kept(key, now, wanted, answer, last_patch):
            warnings.append(
                f"{where}: {key}: Vapi does not keep this value (it did not hold it after our "
                "last write); not sent again until the spec changes"
            )
            continue
        patch[key] = value
        before[key] = now
        changes += field_changes(now, wanted, key, drift=asked is not None and not spec_changed)
    for key, was in (asked or {}).items():  # removed from the spec since our last write
        if key in body or key in immutable:
            continue
        if key in write_only or live.get(key) is not None:
            patch[key] = None
            changes += field_changes(was if key in write_only else live.get(key), None, key)
    # two JSON objects are `same` exactly when each of their fields is
    asked_same = asked is not None and all(
        same(asked.get(key), stored.get(key)) for key in (asked.keys() | stored.keys()) - matched
    )
    return FieldPlan(patch, before, tuple(changes), tuple(warnings), tuple(notes), asked_same)


def write_only_changes(
    key: str,
    asked: Mapping[str, Any] | None,
    wanted: Any,
    answer: Mapping[str, Any] | None,
    now: Any,
    under: Mapping[str, Any],
) -> list[FieldChange] | None:
    """A field Vapi never shows back whole: None when what we asked for at our last write is
    what we want now, else the changes to show. Never compared with the live value (it lacks
    the secrets: that would write on every run, or never see a rotation), with one exception:
    the answer to our last write showed the field and it is gone now (cleared by hand). Asked
    under a master key rotated out since: compared with the desired value fingerprinted under
    that key (`under`, by key id). Nothing asked (adopted, or no state), or under a key this
    process lacks: sent once."""
    old = asked.get(key) if asked is not None else None
    kids, compared = leaf_key_ids(old), wanted
    if kids - leaf_key_ids(wanted):  # recorded under another master key
        compared = under.get(next(iter(kids))) if len(kids) == 1 else None
    if asked is not None and compared is not None and same(old, compared):
        if now is None and answer is not None and answer.get(key) is not None:
            return field_changes(None, wanted, key, drift=True)
        return None
    shown = field_changes(old, wanted if compared is None else compared, key)
    return shown or [FieldChange(key, None, shown_value(wanted))]
