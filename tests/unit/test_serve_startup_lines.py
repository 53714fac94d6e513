"""`serve`'s start-up lines as built, before the log's own redaction: each secret is already
left out here (the log's redaction is a second layer, tested through a real process in
tests/integration/test_serve_startup.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from reconciler.config import load_settings
from reconciler.server.serve import ServeOptions, startup_lines


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [k for k in os.environ if k.startswith(("RECONCILER_", "VAPI_"))]:
        monkeypatch.delenv(name)


def test_git_token_forward_path_and_endpoint_query_are_left_out(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("RECONCILER_FORWARD_URL", "https://app.example.com:8443/h/PATHTOKEN?k=Q1")
    monkeypatch.setenv("RECONCILER_TWILIO_BASE_URL", "https://proxy.internal/twilio?key=Q2")
    monkeypatch.setenv("RECONCILER_DATA_DIR", str(tmp_path))
    options = ServeOptions(
        Path("specs"),
        interval_s=300,
        git_url="https://x-access-token:GITTOKEN@github.com/acme/specs.git",
        git_ref="main",
    )
    lines = startup_lines(load_settings(), options, "web-1")
    text = "\n".join(lines)
    assert "specs: git https://x-access-token:***@github.com/acme/specs.git at main" in text
    assert "reconciling every 5m" in text
    assert "forwarded to https://app.example.com:8443 (RECONCILER_FORWARD_URL" in text
    assert "twilio https://proxy.internal/twilio," in text
    for secret in ("GITTOKEN", "PATHTOKEN", "Q1", "Q2"):
        assert secret not in text
    assert "status API: off (RECONCILER_ADMIN_TOKEN is not set)" in lines
