"""The planner's comparisons, held to their definitions on generated JSON: `contains` (written
with loops for speed) against the plain recursive definition, and the `asked_same` that
`compare_fields` derives from its per-field comparisons against `same(asked, stored)` over
the whole object, which the planner used to compute again for every object of every org."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.engine.diff import contains, same
from reconciler.engine.fields import compare_fields
from reconciler.engine.model import FINGERPRINT_PREFIX, MASKED_BY_VAPI


def defined_contains(live: Any, desired: Any) -> bool:
    """`contains` as first written: the definition the faster loops must keep."""
    if live == MASKED_BY_VAPI and desired is not None:
        return True
    if isinstance(desired, dict):
        return isinstance(live, dict) and all(
            defined_contains(live.get(k), v) if v is not None else live.get(k) is None
            for k, v in desired.items()
        )
    if isinstance(desired, list):
        return (
            isinstance(live, list)
            and len(live) == len(desired)
            and all(defined_contains(a, b) for a, b in zip(live, desired, strict=True))
        )
    if isinstance(desired, bool) or isinstance(live, bool):
        return live is desired
    if isinstance(desired, int | float) and isinstance(live, int | float):
        return live == desired
    return bool(live == desired)


KEYS = ("a", "b", "c", "d")
LEAVES = st.sampled_from(
    [
        None,
        "x",
        "",
        0,
        1,
        1.0,
        True,
        False,
        2**53,
        2**53 + 1,
        float(2**53),
        MASKED_BY_VAPI,
        f"{FINGERPRINT_PREFIX}k1:aa",  # the same secret under two master keys, and another
        f"{FINGERPRINT_PREFIX}k2:aa",
        f"{FINGERPRINT_PREFIX}k1:bb",
    ]
)
JSON = st.recursive(
    LEAVES,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(KEYS), inner),
    max_leaves=8,
)
OBJECTS = st.dictionaries(st.sampled_from(KEYS), JSON, max_size=4)


@settings(max_examples=400, deadline=None)
@given(JSON, JSON)
def test_contains_is_its_definition(live: Any, desired: Any) -> None:
    assert contains(live, desired) is defined_contains(live, desired)


@settings(max_examples=200, deadline=None)
@given(JSON)
def test_a_value_contains_itself(value: Any) -> None:
    assert contains(value, value) and same(value, value)


@settings(max_examples=600, deadline=None)
@given(
    OBJECTS,
    OBJECTS,
    OBJECTS,
    st.frozensets(st.sampled_from(KEYS)),
    st.none() | OBJECTS,
    st.frozensets(st.sampled_from(KEYS)),
    st.frozensets(st.sampled_from(KEYS)),
)
def test_asked_same_is_same_over_the_whole_object(
    stored: dict[str, Any],
    live: dict[str, Any],
    changed: dict[str, Any],
    dropped: frozenset[str],
    answer: dict[str, Any] | None,
    write_only: frozenset[str],
    immutable: frozenset[str],
) -> None:
    # what we asked for: the spec as it is now, with some fields changed, added or dropped
    asked = {k: v for k, v in {**stored, **changed}.items() if k not in dropped}
    fields = compare_fields(
        "thing",
        stored,
        stored,
        live,
        asked,
        answer,
        {},
        write_only=write_only,
        immutable=immutable,
    )
    assert fields.asked_same is same(asked, stored)
    assert compare_fields("thing", stored, stored, live, None, answer, {}).asked_same is False


def test_a_field_recorded_under_a_rotated_master_key_is_judged_by_the_live_value() -> None:
    """Fingerprints under another master key cannot say whether the spec changed: an object
    Vapi still shows as we want it is not written again after a rotation."""
    old, new = f"{FINGERPRINT_PREFIX}k1:aa", f"{FINGERPRINT_PREFIX}k2:aa"
    stored = {"server": {"url": "https://x", "secret": new}, "name": "n"}
    asked = {"server": {"url": "https://x", "secret": old}, "name": "n"}
    live = {"server": {"url": "https://x", "secret": MASKED_BY_VAPI}, "name": "n"}
    fields = compare_fields("thing", stored, stored, live, asked, asked, {})
    assert fields.patch == {} and fields.changes == ()
    assert fields.asked_same is False  # the row is written again, under today's key
    moved = {**live, "server": {"url": "https://y", "secret": MASKED_BY_VAPI}}
    assert compare_fields("thing", stored, stored, moved, asked, asked, {}).patch.keys() == {
        "server"
    }
