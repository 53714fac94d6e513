"""The embedded Postgres, the part that needs no server: a data directory that cannot be made is
one config error. Real servers, SIGKILLs and watchdogs: tests/integration/test_embedded.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.errors import ConfigError
from reconciler.state import embedded


def test_unusable_data_dir_is_a_config_error(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    data_dir = not_a_dir / "data"
    with pytest.raises(ConfigError) as caught:
        embedded.embedded_url(data_dir)
    message = str(caught.value)
    assert message.startswith(f"cannot start the embedded Postgres in {data_dir}: ")
    assert "\n" not in message
