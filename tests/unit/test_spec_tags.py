"""A value whose explicit tag does not fit it (`!!int ""`, `!!bool x`, `!!map x`) is a problem
of its file at its line, not an internal error of the whole command."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.cli.main import main
from reconciler.spec.loader import parse_yaml


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('!!int ""', "not an integer (!!int) (line 2)"),
        ('!!float ""', "not a number (!!float) (line 2)"),
        ("!!float x", "not a number (!!float) (line 2)"),
        ('!!bool ""', "not a boolean (!!bool) (line 2)"),
        ("!!bool maybe", "not a boolean (!!bool) (line 2)"),
        ("!!map x", "not a mapping (!!map) (line 2)"),
    ],
)
def test_a_tag_that_does_not_fit_is_a_problem(value: str, message: str) -> None:
    doc, problems = parse_yaml(Path("x.yaml"), f"a: 1\nb: {value}\n")
    assert doc is None
    assert [str(p) for p in problems] == [f"x.yaml: {message}"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [("!!int '12'", 12), ("!!float '1'", 1.0), ("!!bool yes", True), ("!!map {k: v}", {"k": "v"})],
)
def test_a_tag_that_fits_still_reads(value: str, expected: object) -> None:
    doc, problems = parse_yaml(Path("x.yaml"), f"b: {value}\n")
    assert not problems and doc is not None
    assert doc["b"] == expected and type(doc["b"]) is type(expected)


def test_validate_reports_it_and_goes_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "x.yaml").write_text('apiVersion: reconciler/v1\nmetadata:\n  name: !!int ""\n')
    assert main(["validate", str(tmp_path)]) == 1
    out = capsys.readouterr()
    assert "not an integer (!!int) (line 3)" in out.out + out.err
    assert "internal error" not in out.out + out.err
