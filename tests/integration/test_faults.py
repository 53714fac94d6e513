"""Property: whatever Vapi faults and crashes happen, applies never duplicate an assistant and,
once the faults stop, one more apply converges with Postgres matching the account."""

from __future__ import annotations

import contextlib
import uuid
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg_pool import ConnectionPool

from reconciler.controller.run import Controller
from reconciler.engine.model import tag_of
from reconciler.secrets.crypto import MasterKey
from reconciler.spec.loader import LoadResult
from reconciler.state.store import AssistantWriter, StateWriter
from reconciler.vapi.client import RetryPolicy, VapiReader, http_client
from tests.helpers import (
    FAST_RETRY,
    TABLES,
    active_mappings,
    clear_faults,
    fault,
    loaded,
    org_doc,
    reset_emulator,
)

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
    """The one org of this test, its two assistants greeting with `greeting`."""
    assistants = {
        "inbound": {"name": "In", "firstMessage": greeting},
        "outbound": {"name": "Out", "firstMessage": greeting},
    }
    return loaded(org_doc("acme", org_id=org_id, api_key=key, secret="s", assistants=assistants))


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
    reset_emulator(url)
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
                fault(url, **f, path=PATHS[f["method"]])

        # Round 1: create under faults, maybe crashing after the n-th record.
        inject(first)
        calls = {"n": 0}
        real = AssistantWriter.record

        def crashing(self: AssistantWriter, *args: Any, **kwargs: Any) -> None:
            if crash_after is not None and calls["n"] == crash_after:
                calls["n"] += 1
                raise KeyboardInterrupt
            calls["n"] += 1
            real(self, *args, **kwargs)

        with monkeypatch.context() as m:
            m.setattr(AssistantWriter, "record", crashing)
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
        clear_faults(url)
        ctl.create_grace_s = 0  # time travel: any unknown create outcome is old enough now
        final = ctl.apply(org(org_id, key, greeting))
        assert final.ok, [o.error for o in final.failed]
        check_no_duplicates()
        live = tagged_by_role(http, key)
        assert sorted(live) == ["inbound", "outbound"]
        assert not ctl.plan(org(org_id, key, greeting)).has_changes
        rows = {role: vid for _, role, vid in active_mappings(session_pool)}
        assert rows == {role: ids[0] for role, ids in live.items()}
        for a in VapiReader(http, key, retry=PATIENT).list_assistants():
            assert a["firstMessage"] == greeting
