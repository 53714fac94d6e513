"""Property: whatever Vapi faults and crashes happen, applies never duplicate an assistant and,
once the faults stop, one more apply converges with Postgres matching the account."""

from __future__ import annotations

import contextlib
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg_pool import ConnectionPool

from reconciler.controller.run import Controller
from reconciler.engine.model import tag_of
from reconciler.secrets.crypto import MasterKey
from reconciler.spec.loader import LoadResult, SpecFile
from reconciler.spec.models import Organization
from reconciler.state.store import StateWriter
from reconciler.vapi.client import RetryPolicy, VapiReader, http_client
from tests.conftest import FAST_RETRY, TABLES

PATHS = {"POST": "/assistant", "PATCH": "/assistant/{id}", "GET": "/assistant"}

faults = st.lists(
    st.fixed_dictionaries(
        {
            "method": st.sampled_from(sorted(PATHS)),
            "mode": st.sampled_from(["error", "error_after_commit"]),
            "status": st.sampled_from([429, 500, 502, 503]),
            "times": st.integers(1, 3),
        }
    ),
    max_size=4,
)


def org(org_id: str, key: str, greeting: str) -> LoadResult:
    doc = {
        "apiVersion": "reconciler/v1",
        "kind": "Organization",
        "metadata": {"id": org_id, "slug": "acme", "name": "Acme"},
        "spec": {
            "credentials": {"vapi": {"apiKey": key, "webhookSecret": "s"}},
            "assistants": {
                "inbound": {"name": "In", "firstMessage": greeting},
                "outbound": {"name": "Out", "firstMessage": greeting},
            },
        },
    }
    return LoadResult([SpecFile(Path("acme.yaml"), Organization.model_validate(doc))], [])


# The test's own look at the account outlasts any fault batch (at most 12 faulted requests).
PATIENT = RetryPolicy(attempts=20, base_s=0, cap_s=0, sleep=lambda _s: None)


def tagged_by_role(http: httpx.Client, key: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for a in VapiReader(http, key, retry=PATIENT).list_assistants():
        tag = tag_of(a)
        if tag is not None:
            out.setdefault(tag[1], []).append(a["id"])
    return out


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    first=faults,
    second=faults,
    edit=st.booleans(),
    crash_after=st.sampled_from([None, 0, 1]),
)
def test_faults_and_crashes_never_duplicate(
    session_pool: ConnectionPool,
    emulator_session: str,
    first: list[dict[str, Any]],
    second: list[dict[str, Any]],
    edit: bool,
    crash_after: int | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = emulator_session
    httpx.post(f"{url}/_emulator/reset").raise_for_status()
    with session_pool.connection() as conn:
        conn.execute(f"TRUNCATE {TABLES} CASCADE")
    org_id, key = str(uuid.uuid4()), f"key-{uuid.uuid4().hex[:8]}"
    state = StateWriter(session_pool)

    with http_client(url, timeout_s=5) as http:
        ctl = Controller(state, http, MasterKey.generate(), concurrency=2, retry=FAST_RETRY)

        def check_no_duplicates() -> None:
            for role, ids in tagged_by_role(http, key).items():
                assert len(ids) == 1, f"duplicate {role} assistants: {ids}"

        def inject(batch: list[dict[str, Any]]) -> None:
            for f in batch:
                httpx.post(
                    f"{url}/_emulator/faults", json={**f, "path": PATHS[f["method"]]}
                ).raise_for_status()

        # Round 1: create under faults, maybe crashing after the n-th record.
        inject(first)
        calls = {"n": 0}
        real = StateWriter.record_assistant

        def crashing(self: StateWriter, *args: Any, **kwargs: Any) -> None:
            if crash_after is not None and calls["n"] == crash_after:
                calls["n"] += 1
                raise KeyboardInterrupt
            calls["n"] += 1
            real(self, *args, **kwargs)

        with monkeypatch.context() as m:
            m.setattr(StateWriter, "record_assistant", crashing)
            with contextlib.suppress(KeyboardInterrupt):
                ctl.apply(org(org_id, key, "Hello"))
        check_no_duplicates()

        # Round 2: maybe an edit (PATCH path), under more faults.
        greeting = "Hi there" if edit else "Hello"
        inject(second)
        for _ in range(2):
            ctl.apply(org(org_id, key, greeting))
            check_no_duplicates()

        # Faults stop: one apply converges, and a plan after it is empty.
        httpx.delete(f"{url}/_emulator/faults").raise_for_status()
        ctl.create_grace_s = 0  # time travel: any unknown create outcome is old enough now
        final = ctl.apply(org(org_id, key, greeting))
        assert final.ok, [o.error for o in final.failed]
        check_no_duplicates()
        live = tagged_by_role(http, key)
        assert sorted(live) == ["inbound", "outbound"]
        assert not ctl.plan(org(org_id, key, greeting)).has_changes
        with session_pool.connection() as conn:
            rows = dict(
                conn.execute(
                    "SELECT assistant_role, vapi_assistant_id FROM assistant_org_mapping"
                    " WHERE inactive_at IS NULL"
                ).fetchall()
            )
        assert rows == {role: ids[0] for role, ids in live.items()}
        for a in VapiReader(http, key, retry=PATIENT).list_assistants():
            assert a["firstMessage"] == greeting
