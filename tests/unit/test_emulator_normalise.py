"""The emulator's `normalise` tables, without a server: every server default is one Vapi's
schema declares and accepts, and nested keys sort in Postgres jsonb order. The normalising
emulator over HTTP: tests/integration/test_emulator_normalise.py."""

from __future__ import annotations

from reconciler.vapi.emulator_schema import SERVER_DEFAULTS, AssistantValidator, jsonb_order
from tests.helpers import providers_declaring


def test_every_default_has_a_source_and_fits_the_schema() -> None:
    """The table is not stale: each default is a field that Vapi's schema declares (for each
    provider it names), and its value passes Vapi's validation."""
    validator = AssistantValidator.load()
    for default in SERVER_DEFAULTS:
        assert default.source, default
        if default.sub is None:
            assert validator.validate({default.field: default.value}, "create") == [], default
            continue
        declaring = providers_declaring(validator, default.field, default.sub)
        assert set(default.providers) <= set(declaring), default
        for provider in default.providers or declaring:
            value = {"provider": provider} if provider else {}
            errors = validator.validate(
                {default.field: {**value, default.sub: default.value}}, "create"
            )
            assert not [e for e in errors if default.sub in e], (default, errors)


def test_jsonb_order_sorts_by_length_then_bytes() -> None:
    assert list(jsonb_order({"provider": 1, "voiceId": 2, "model": 3})) == [
        "model",
        "voiceId",
        "provider",
    ]
    assert list(jsonb_order({"b": 1, "a": 2, "é": 3, "aa": 4})) == ["a", "b", "aa", "é"]
    assert jsonb_order([{"b": 1, "a": 2}]) == [{"a": 2, "b": 1}]
