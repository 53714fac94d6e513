"""The Vapi client against the emulator over HTTP: paging through thousands of assistants,
accounts kept apart, and writes whose outcome is unknown (faults injected in the emulator). Its
behaviour against scripted answers is in tests/unit/test_vapi_client.py."""

from __future__ import annotations

import time

import httpx
import pytest

from reconciler.engine.model import ownership_tag, tag_of
from reconciler.vapi.client import (
    PAGE_LIMIT,
    RetryPolicy,
    VapiAmbiguousWrite,
    VapiAuthError,
    VapiError,
    VapiNotFound,
    VapiRateLimited,
    VapiReader,
    VapiRejected,
    VapiWriter,
    http_client,
)
from tests.helpers import FAST_RETRY, emulator_stats, fault


def expected_pages(n: int, limit: int) -> int:
    """Newest first (the emulator): each full page repeats one assistant at its older edge,
    and the first full page costs one more request for its newer side (which is empty)."""
    if n < limit:
        return 1
    return 3 + (n - limit) // (limit - 1)


N_ASSISTANTS = 2345


@pytest.fixture
def filled(emulator: str) -> tuple[str, set[str]]:
    token = "tenant-paging-key"
    with httpx.Client(
        base_url=emulator, headers={"Authorization": f"Bearer {token}"}, timeout=10
    ) as api:
        ids = set()
        for i in range(N_ASSISTANTS):
            resp = api.post("/assistant", json={"name": f"a{i}"})
            resp.raise_for_status()
            ids.add(resp.json()["id"])
    return token, ids


@pytest.mark.parametrize("limit", [PAGE_LIMIT, 100])
def test_paging_the_emulator_returns_each_once(
    emulator: str, filled: tuple[str, set[str]], limit: int
) -> None:
    token, ids = filled
    before = emulator_stats(emulator)["GET /assistant"]
    with http_client(emulator, timeout_s=10) as http:
        got = VapiReader(http, token, retry=FAST_RETRY).list_assistants(limit=limit)
    listed = [a["id"] for a in got]
    assert len(listed) == len(set(listed)) == N_ASSISTANTS
    assert set(listed) == ids
    pages = emulator_stats(emulator)["GET /assistant"] - before
    assert pages == expected_pages(N_ASSISTANTS, limit)
    assert pages == {1000: 4, 100: 25}[limit]


def test_paging_isolated_per_account(emulator: str) -> None:
    with http_client(emulator, timeout_s=10) as http:
        a = VapiWriter(http, "tenant-a", retry=FAST_RETRY)
        b = VapiWriter(http, "tenant-b", retry=FAST_RETRY)
        made = a.create_assistant({"name": "only-a"})
        assert [x["id"] for x in a.list_assistants()] == [made["id"]]
        assert b.list_assistants() == []
        with pytest.raises(VapiNotFound):
            b.get_assistant(made["id"])


def test_ambiguous_create_after_commit(emulator: str) -> None:
    fault(
        emulator, method="POST", path="/assistant", mode="error_after_commit", status=500, times=1
    )
    body = {"name": "tagged", "metadata": ownership_tag("org-1", "inbound")}
    with http_client(emulator, timeout_s=10) as http:
        vapi = VapiWriter(http, "tenant-ambiguous", retry=FAST_RETRY)
        with pytest.raises(VapiAmbiguousWrite) as info:
            vapi.create_assistant(body)
        assert info.value.status == 500
        [made] = vapi.list_assistants()
    assert tag_of(made) == ("org-1", "inbound")
    assert emulator_stats(emulator)["POST /assistant"] == 1  # never retried blindly


def test_ambiguous_create_that_did_not_happen(emulator: str) -> None:
    fault(emulator, method="POST", path="/assistant", mode="error", status=502, times=1)
    with http_client(emulator, timeout_s=10) as http:
        vapi = VapiWriter(http, "tenant-ambiguous", retry=FAST_RETRY)
        with pytest.raises(VapiAmbiguousWrite):
            vapi.create_assistant({"name": "x"})
        assert vapi.list_assistants() == []
    assert emulator_stats(emulator)["POST /assistant"] == 1


def test_delete_whose_answer_was_lost_is_retried_and_succeeds(emulator: str) -> None:
    with http_client(emulator, timeout_s=10) as http:
        vapi = VapiWriter(http, "tenant-delete", retry=FAST_RETRY)
        made = vapi.create_assistant({"name": "x"})
        fault(
            emulator,
            method="DELETE",
            path="/assistant/{id}",
            mode="error_after_commit",
            status=502,
            times=1,
        )
        vapi.delete_assistant(made["id"])  # 502 after the delete, then 404: the goal holds
        assert vapi.list_assistants() == []
    assert emulator_stats(emulator)["DELETE /assistant/{id}"] == 2


@pytest.mark.parametrize(("mode", "made"), [("error", 0), ("error_after_commit", 1)])
def test_throttled_create_is_ambiguous_and_never_waited_on(
    emulator: str, mode: str, made: int
) -> None:
    fault(emulator, method="POST", path="/assistant", mode=mode, status=429, retry_after="30")
    sleeps: list[float] = []
    policy = RetryPolicy(attempts=3, sleep=sleeps.append)
    with http_client(emulator, timeout_s=10) as http:
        vapi = VapiWriter(http, "tenant-throttled", retry=policy)
        started = time.monotonic()
        with pytest.raises(VapiRateLimited) as info:
            vapi.create_assistant({"name": "x"})
        assert time.monotonic() - started < 2
        assert info.value.retry_after_s == 30.0
        assert "Retry-After 30 s" in str(info.value)
        assert len(vapi.list_assistants()) == made  # never a duplicate
    assert sleeps == []
    assert emulator_stats(emulator)["POST /assistant"] == 1


def test_emulator_refused_create_is_definite(emulator: str) -> None:
    with http_client(emulator, timeout_s=10) as http:
        vapi = VapiWriter(http, "tenant-refused", retry=FAST_RETRY)
        with pytest.raises(VapiRejected) as info:
            vapi.create_assistant({"name": "x" * 41, "bogus": 1})
        assert not isinstance(info.value, VapiAmbiguousWrite)
        assert info.value.status == 400
        assert "bogus should not exist" in info.value.reason
        assert vapi.list_assistants() == []  # indeed nothing was created
    assert emulator_stats(emulator)["POST /assistant"] == 1


@pytest.mark.parametrize(("status", "kind"), [(422, VapiRejected), (503, VapiAmbiguousWrite)])
def test_emulator_error_body_echoing_secrets_is_masked(
    emulator: str, status: int, kind: type[VapiError]
) -> None:
    key = "tenant-echo-SECRETKEY-1234"
    body = {
        "message": [f"key {key} is over quota", "see below"],
        "request": {"authorization": f"Bearer {key}", "apiKey": key},
        "statusCode": status,
    }
    fault(emulator, method="POST", path="/assistant", mode="error", status=status, body=body)
    with http_client(emulator, timeout_s=10) as http:
        vapi = VapiWriter(http, key, retry=FAST_RETRY)
        with pytest.raises(kind) as info:
            vapi.create_assistant({"name": "x"})
    message = str(info.value)
    assert key not in message
    assert "SECRETKEY" not in message
    assert "key (sensitive) is over quota; see below" in message
    assert info.value.status == status


def test_emulator_get_waits_only_as_asked_within_the_cap(emulator: str) -> None:
    fault(emulator, method="GET", path="/assistant", mode="error", status=429, retry_after="2")
    fault(emulator, method="GET", path="/assistant", mode="error", status=429, retry_after="60")
    sleeps: list[float] = []
    with http_client(emulator, timeout_s=10) as http:
        vapi = VapiReader(http, "tenant-patient", retry=RetryPolicy(sleep=sleeps.append))
        with pytest.raises(VapiError, match="asks to retry after 60 s; giving up for this run"):
            vapi.list_assistants()
        assert vapi.list_assistants() == []
    assert sleeps == [2.0]
    assert emulator_stats(emulator)["GET /assistant"] == 3


def test_emulator_rejected_key(emulator: str) -> None:
    key = "invalid-key-ABC123SECRET"
    with http_client(emulator, timeout_s=10) as http:
        reader = VapiReader(http, key, retry=FAST_RETRY)
        with pytest.raises(VapiAuthError) as info:
            reader.list_assistants()
    assert info.value.status == 401
    assert key not in str(info.value)
    assert key not in repr(reader)
    assert emulator_stats(emulator)["GET /assistant"] == 1


def test_emulator_get_retried_after_server_error(emulator: str) -> None:
    fault(emulator, method="GET", path="/assistant", mode="error", status=503, times=2)
    with http_client(emulator, timeout_s=10) as http:
        assert VapiReader(http, "tenant-x", retry=FAST_RETRY).list_assistants() == []
    assert emulator_stats(emulator)["GET /assistant"] == 3
