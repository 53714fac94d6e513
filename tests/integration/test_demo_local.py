"""`reconciler demo` sends nothing to a third party: every provider's verification (and Vapi)
goes to the in-process emulator through RECONCILER_PROVIDER_STUBS."""

from __future__ import annotations

import io
import os
import socket
from typing import Any

import pytest
from rich.console import Console

from reconciler.cli.demo import run_demo
from tests.helpers import ROOT


def test_the_demo_verifies_every_credential_on_this_machine(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in [k for k in os.environ if k.startswith(("RECONCILER_", "VAPI_", "SOPS_AGE"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("SOPS_AGE_KEY_FILE", "")  # restored after the demo sets its own
    opened: list[str] = []
    real = socket.create_connection

    def guarded(address: tuple[str, int], *args: Any, **kwargs: Any) -> socket.socket:
        opened.append(str(address[0]))
        if address[0] not in ("127.0.0.1", "localhost", "::1"):
            raise AssertionError(f"a connection to {address[0]} left this machine")
        return real(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", guarded)
    out = io.StringIO()
    monkeypatch.chdir(ROOT)
    code = run_demo(ROOT / "specs" / "examples", Console(file=out, width=200, highlight=False))
    text = out.getvalue()
    assert code == 0, text
    section = text.split("6. verify every stored credential", 1)[1]
    verdicts = [ln.split() for ln in section.splitlines() if ln.split()[-1:] == ["ok"]]
    assert {v[1] for v in verdicts} == {
        "vapi", "twilio", "google_calendar", "resend", "elevenlabs"
    }  # fmt: skip
    assert "error" not in section
    assert "verified 8 credential(s), none of them with a third party" in section
    assert opened and set(opened) == {"127.0.0.1"}
