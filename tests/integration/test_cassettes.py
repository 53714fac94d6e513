"""The exact HTTP conversation of a reconcile, pinned in a vcrpy cassette.

A change in the requests we send to Vapi (paths, queries, bodies, their number or order) fails
this test and shows in review as a cassette diff. To accept a deliberate change, re-record
against the emulator: `RECONCILER_RECORD_CASSETTES=1 pytest tests/integration/test_cassettes.py`.
"""

from __future__ import annotations

import copy
import os
from typing import Any

import vcr

from reconciler.controller.run import Controller
from reconciler.secrets.crypto import MasterKey
from reconciler.state.store import StateWriter
from reconciler.vapi.client import http_client
from tests.helpers import FAST_RETRY, ROOT, loaded

CASSETTES = ROOT / "tests" / "cassettes"
RECORD = os.environ.get("RECONCILER_RECORD_CASSETTES") == "1"

DOC: dict[str, Any] = {
    "apiVersion": "reconciler/v1",
    "kind": "Organization",
    "metadata": {"id": "00000000-0000-4000-8000-00000000ca55", "slug": "cassette", "name": "C"},
    "spec": {
        "credentials": {
            "vapi": {"apiKey": "cassette-test-key", "webhookSecret": "cassette-test-secret"}
        },
        "assistants": {
            "inbound": {
                "name": "Cassette inbound",
                "firstMessage": "Hello",
                "server": {"url": "https://hooks.example.com/vapi"},
            },
            "outbound": {"name": "Cassette outbound", "maxDurationSeconds": 300},
        },
    },
}


def test_reconcile_conversation_is_pinned(state: StateWriter, emulator: str) -> None:
    name = "apply_update_noop.yaml"
    if RECORD:
        (CASSETTES / name).unlink(missing_ok=True)
    else:
        assert (CASSETTES / name).is_file(), (
            f"{CASSETTES / name} is missing: record it with RECONCILER_RECORD_CASSETTES=1"
        )
    recorder = vcr.VCR(
        cassette_library_dir=str(CASSETTES),
        record_mode="once" if RECORD else "none",
        match_on=["method", "path", "query", "body"],
        filter_headers=["authorization", "user-agent"],
    )
    edited = copy.deepcopy(DOC)
    edited["spec"]["assistants"]["inbound"]["firstMessage"] = "Hello again"

    with (
        recorder.use_cassette(name, allow_playback_repeats=False) as cassette,
        http_client(emulator, timeout_s=5) as http,
    ):
        ctl = Controller(state, http, MasterKey.generate(), concurrency=1, retry=FAST_RETRY)
        for doc in (DOC, edited, edited):  # create both, patch one field, then nothing
            report = ctl.apply(loaded(doc))
            assert report.ok, [o.error for o in report.failed]

    conversation = [(r.method, r.path) for r in cassette.requests]
    assert conversation[0] == ("GET", "/assistant")
    assert [m for m, _ in conversation] == ["GET", "POST", "POST", "GET", "PATCH", "GET"]
    assert RECORD or cassette.all_played
