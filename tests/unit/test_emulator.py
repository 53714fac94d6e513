"""The emulator's JSON writer: numbers written as Node.js's JSON.stringify writes them, all else
as Starlette does; no server. The emulator over HTTP: tests/integration/test_emulator.py."""

from __future__ import annotations

import pytest
from starlette.responses import JSONResponse

from reconciler.vapi.emulator import js_dumps, js_number


@pytest.mark.parametrize(
    ("value", "expected"),  # each `expected` is what Node.js's JSON.stringify writes
    [
        (0.0, "0"),
        (-0.0, "0"),
        (1.0, "1"),
        (-2.5, "-2.5"),
        (0.1, "0.1"),
        (1 / 3, "0.3333333333333333"),
        (100.0, "100"),
        (1e16, "10000000000000000"),
        (123456789012345680000.0, "123456789012345680000"),
        (1e21, "1e+21"),
        (2.0**70, "1.1805916207174113e+21"),
        (1.5e300, "1.5e+300"),
        (1.7976931348623157e308, "1.7976931348623157e+308"),
        (1e-6, "0.000001"),
        (1.2345e-5, "0.000012345"),
        (1e-7, "1e-7"),
        (1.5e-7, "1.5e-7"),
        (5e-324, "5e-324"),
        (9007199254740993.0, "9007199254740992"),
        (float("inf"), "null"),
        (float("nan"), "null"),
    ],
)
def test_js_number_matches_json_stringify(value: float, expected: str) -> None:
    assert js_number(value) == expected


def test_js_dumps_writes_everything_else_like_starlette() -> None:
    content = {"a": [1, "é", None, True, False, {"q": '"\n\u0001'}], "b": {}, "c": []}
    assert js_dumps(content).encode() == JSONResponse(content).body
    assert js_dumps({"n": [2**53, -(2**53), 2**53 + 1, 1.0]}) == (
        '{"n":[9007199254740992,-9007199254740992,9007199254740992,1]}'
    )
