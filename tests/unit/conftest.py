"""Unit tests need neither Postgres nor the Vapi emulator nor a `reconciler` subprocess, so that
`pytest tests/unit` runs in seconds on a machine without Postgres. Each fixture of
tests/conftest.py that would reach one is replaced here by one that fails the test at once,
saying so: such a test belongs in tests/integration."""

from __future__ import annotations

from typing import Any, NoReturn

import pytest


def _refuse(name: str) -> NoReturn:
    pytest.fail(
        f"unit tests use no Postgres/emulator: this test asks for the `{name}` fixture;"
        " move it to tests/integration",
        pytrace=False,
    )


@pytest.fixture
def server_url() -> Any:
    _refuse("server_url")


@pytest.fixture
def database_url() -> Any:
    _refuse("database_url")


@pytest.fixture
def session_pool() -> Any:
    _refuse("session_pool")


@pytest.fixture
def pool() -> Any:
    _refuse("pool")


@pytest.fixture
def state() -> Any:
    _refuse("state")


@pytest.fixture
def emulator_session() -> Any:
    _refuse("emulator_session")


@pytest.fixture
def emulator() -> Any:
    _refuse("emulator")


@pytest.fixture
def controller() -> Any:
    _refuse("controller")


@pytest.fixture
def cli() -> Any:
    _refuse("cli")
