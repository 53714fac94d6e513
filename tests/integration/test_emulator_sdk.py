"""The emulator must look like Vapi to Vapi's official Python SDK (vapi-server-sdk), and its
answers must fit Vapi's OpenAPI `Assistant` schema (tests/fixtures/vapi-openapi-assistant.json)."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from vapi import (
    CreateAssistantDtoModel_Openai,
    CreateAssistantDtoVoice_11Labs,
    OpenAiMessage,
    Server,
    UpdateAssistantDtoVoice_11Labs,
    Vapi,
)
from vapi.core.api_error import ApiError

from tests.helpers import add_key, vapi_openapi_schemas

# The SDK itself uses pydantic's deprecated `__fields__`; that noise is not ours.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:vapi")


@pytest.fixture
def base_url(emulator: str) -> str:
    """The session's emulator (tests/conftest.py), reset for each test."""
    return emulator


@pytest.fixture
def client(base_url: str) -> Vapi:
    return Vapi(token="sdk-tenant-key", base_url=base_url)


def _create(client: Vapi, name: str = "Front desk") -> Any:
    return client.assistants.create(
        name=name,
        metadata={"managed-by": "reconciler", "key": "k-1"},
        first_message="Hello!",
        model=CreateAssistantDtoModel_Openai(
            model="gpt-4o", messages=[OpenAiMessage(role="system", content="Be brief.")]
        ),
        voice=CreateAssistantDtoVoice_11Labs(voice_id="burt"),
        server=Server(url="https://hooks.example/vapi", timeout_seconds=20),
    )


def test_sdk_create_get_list_update_delete(client: Vapi) -> None:
    created = _create(client)
    assert uuid.UUID(created.id)
    assert created.org_id
    assert isinstance(created.created_at, dt.datetime)
    assert created.created_at.tzinfo is not None
    assert created.updated_at == created.created_at
    assert created.name == "Front desk"
    assert created.first_message == "Hello!"
    assert created.metadata == {"managed-by": "reconciler", "key": "k-1"}
    assert created.model is not None
    assert created.model.provider == "openai"
    assert created.model.model == "gpt-4o"
    assert created.model.messages is not None
    assert created.model.messages[0].content == "Be brief."
    assert created.voice is not None
    assert created.voice.provider == "11labs"
    assert created.voice.voice_id == "burt"
    assert created.server is not None
    assert created.server.url == "https://hooks.example/vapi"

    fetched = client.assistants.get(created.id)
    assert fetched.id == created.id
    assert fetched.name == created.name

    second = _create(client, name="Second")
    listed = client.assistants.list(limit=10)
    assert [a.id for a in listed] == [second.id, created.id]
    assert len(client.assistants.list(limit=1)) == 1
    older = client.assistants.list(created_at_lt=second.created_at)
    assert [a.id for a in older] == [created.id]

    updated = client.assistants.update(
        created.id, name="Renamed", voice=UpdateAssistantDtoVoice_11Labs(voice_id="sarah")
    )
    assert updated.name == "Renamed"
    assert updated.voice is not None
    assert updated.voice.voice_id == "sarah"
    assert updated.first_message == "Hello!"
    assert updated.updated_at >= updated.created_at

    deleted = client.assistants.delete(created.id)
    assert deleted.id == created.id
    assert [a.id for a in client.assistants.list()] == [second.id]


def test_sdk_sees_404_for_a_missing_or_foreign_id(base_url: str, client: Vapi) -> None:
    mine = _create(client)
    stranger = Vapi(token="another-tenant", base_url=base_url)
    missing = str(uuid.uuid4())
    calls: list[Callable[[], object]] = [
        lambda: stranger.assistants.get(mine.id),
        lambda: stranger.assistants.update(mine.id, name="stolen"),
        lambda: stranger.assistants.delete(mine.id),
        lambda: client.assistants.get(missing),
    ]
    for call in calls:
        with pytest.raises(ApiError) as raised:
            call()
        assert raised.value.status_code == 404
    assert client.assistants.get(mine.id).name == "Front desk"


def test_sdk_sees_the_same_assistant_under_a_second_key(base_url: str, client: Vapi) -> None:
    mine = _create(client)
    added = add_key(base_url, "sdk-tenant-key", "sdk-second-key")
    assert added["orgId"] == mine.org_id

    second = Vapi(token="sdk-second-key", base_url=base_url)
    fetched = second.assistants.get(mine.id)
    assert (fetched.id, fetched.org_id, fetched.name) == (mine.id, mine.org_id, "Front desk")
    assert fetched.created_at == mine.created_at
    assert [a.id for a in second.assistants.list()] == [mine.id]

    theirs = _create(second, name="Via second key")
    assert theirs.org_id == mine.org_id
    assert [a.id for a in client.assistants.list()] == [theirs.id, mine.id]
    assert client.assistants.update(theirs.id, name="Renamed").name == "Renamed"
    assert second.assistants.get(theirs.id).name == "Renamed"

    stranger = Vapi(token="another-tenant", base_url=base_url)
    with pytest.raises(ApiError) as raised:
        stranger.assistants.get(mine.id)
    assert raised.value.status_code == 404


def test_sdk_sees_401_for_a_wrong_key(base_url: str) -> None:
    wrong = Vapi(token="invalid-key", base_url=base_url)
    with pytest.raises(ApiError) as raised:
        wrong.assistants.list()
    assert raised.value.status_code == 401
    assert raised.value.body["error"] == "Unauthorized"


def test_sdk_sees_400_with_the_validation_messages(client: Vapi) -> None:
    with pytest.raises(ApiError) as raised:
        client.assistants.create(name="n" * 41)
    assert raised.value.status_code == 400
    assert raised.value.body["message"] == ["name must be shorter than or equal to 40 characters"]


def test_responses_match_the_openapi_assistant_schema(base_url: str) -> None:
    schema = vapi_openapi_schemas()["Assistant"]
    body = {
        "name": "Schema check",
        "metadata": {"k": "v"},
        "voice": {"provider": "11labs", "voiceId": "burt"},
        "model": {"provider": "openai", "model": "gpt-4o"},
        "maxDurationSeconds": 600,
    }
    headers = {"Authorization": "Bearer schema-key"}
    created = httpx.post(f"{base_url}/assistant", json=body, headers=headers)
    assert created.status_code == 201
    listed = httpx.get(f"{base_url}/assistant", headers=headers).json()
    for assistant in (created.json(), listed[0]):
        assert set(schema["required"]) <= set(assistant)
        assert set(assistant) <= set(schema["properties"]), set(assistant) - set(
            schema["properties"]
        )
        for key in ("id", "orgId", "createdAt", "updatedAt"):
            assert schema["properties"][key]["type"] == "string"
            assert isinstance(assistant[key], str)
        for key in ("createdAt", "updatedAt"):
            assert schema["properties"][key].get("format") == "date-time"
            assert dt.datetime.fromisoformat(assistant[key]).tzinfo is not None
