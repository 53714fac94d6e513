"""The lifecycle settings, without a database: RECONCILER_MAPPING_RETENTION. The lifecycle of an
org against Postgres and the emulator: tests/integration/test_lifecycle.py."""

from __future__ import annotations

import pytest

from reconciler.config import load_settings
from reconciler.errors import ConfigError


def test_mapping_retention_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECONCILER_MAPPING_RETENTION", "7d")
    assert load_settings().mapping_retention_s == 7 * 86400
    monkeypatch.setenv("RECONCILER_MAPPING_RETENTION", "3600")
    assert load_settings().mapping_retention_s == 3600
    monkeypatch.setenv("RECONCILER_MAPPING_RETENTION", "a month")
    with pytest.raises(ConfigError, match="RECONCILER_MAPPING_RETENTION"):
        load_settings()
