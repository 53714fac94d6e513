"""The emulator must look like Vapi to Vapi's official Python SDK (vapi-server-sdk), and its
answers must fit Vapi's OpenAPI `Assistant` schema (tests/fixtures/vapi-openapi-assistant.json)
and, for phone numbers and tools, the answer schemas of `reconciler/vapi/openapi_kinds.json`.

The SDK's models are lenient (`UncheckedBaseModel`: a field of the wrong shape does not fail the
parse), so the kinds' tests also record every answer the SDK receives and check each against
Vapi's schema for its route, and that none was an error."""

from __future__ import annotations

import datetime as dt
import importlib
import re
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from reconciler.vapi.emulator_schema import KindValidator
from tests.helpers import add_key, vapi_openapi_schemas
from tests.helpers.sdk import load_sdk_lazily

if TYPE_CHECKING:  # at run time these come from `_sdk`, below
    from vapi import (
        CreateAssistantDtoModel_Openai,
        CreateAssistantDtoVoice_11Labs,
        JsonSchema,
        OpenAiFunction,
        OpenAiFunctionParameters,
        OpenAiMessage,
        Server,
        UpdateAssistantDtoVoice_11Labs,
        Vapi,
    )
    from vapi.core.api_error import ApiError
    from vapi.phone_numbers import (
        CreatePhoneNumbersRequest_Twilio,
        CreatePhoneNumbersRequest_Vapi,
        UpdatePhoneNumbersRequestBody_Twilio,
    )
    from vapi.tools import (
        CreateToolsRequest_EndCall,
        CreateToolsRequest_Function,
        UpdateToolsRequestBody_Function,
    )


_SDK_NAMES = {
    "vapi": (
        "CreateAssistantDtoModel_Openai",
        "CreateAssistantDtoVoice_11Labs",
        "JsonSchema",
        "OpenAiFunction",
        "OpenAiFunctionParameters",
        "OpenAiMessage",
        "Server",
        "UpdateAssistantDtoVoice_11Labs",
        "Vapi",
    ),
    "vapi.core.api_error": ("ApiError",),
    "vapi.phone_numbers": (
        "CreatePhoneNumbersRequest_Twilio",
        "CreatePhoneNumbersRequest_Vapi",
        "UpdatePhoneNumbersRequestBody_Twilio",
    ),
    "vapi.tools": (
        "CreateToolsRequest_EndCall",
        "CreateToolsRequest_Function",
        "UpdateToolsRequestBody_Function",
    ),
}


@pytest.fixture(scope="module", autouse=True)
def _sdk() -> None:
    """The SDK's names, imported when this module's first test runs: its types take seconds
    to load, which every pytest-xdist worker would otherwise pay while collecting."""
    load_sdk_lazily()
    for module, names in _SDK_NAMES.items():
        loaded = importlib.import_module(module)
        globals().update({name: getattr(loaded, name) for name in names})


# The SDK itself uses pydantic's deprecated `__fields__`; that noise is not ours.
pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning:vapi"),
    # one worker pays for the SDK's types (seconds of CPU), not each (`--dist loadgroup`)
    pytest.mark.xdist_group("vapi-sdk"),
]


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


# -- phone numbers and tools ---------------------------------------------------------------------

KIND_ROUTES = (  # (method, route pattern as the OpenAPI document names it)
    ("GET", re.compile(r"^/v2/phone-number$"), "/v2/phone-number"),
    ("GET", re.compile(r"^/phone-number$"), "/phone-number"),
    ("POST", re.compile(r"^/phone-number$"), "/phone-number"),
    (None, re.compile(r"^/phone-number/[^/]+$"), "/phone-number/{id}"),
    ("GET", re.compile(r"^/tool$"), "/tool"),
    ("POST", re.compile(r"^/tool$"), "/tool"),
    (None, re.compile(r"^/tool/[^/]+$"), "/tool/{id}"),
)


class _Answers:
    """Every answer the SDK's httpx client receives: (method, route, status, JSON body)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, int, Any]] = []

    def __call__(self, response: httpx.Response) -> None:
        response.read()
        method, path = response.request.method, response.request.url.path
        route = next(
            (r for m, rx, r in KIND_ROUTES if rx.match(path) and m in (None, method)), path
        )
        self.seen.append((method, route, response.status_code, response.json()))

    def check(self, validator: KindValidator) -> None:
        """Zero errors: each answer 2xx and what Vapi's document says the route answers."""
        assert self.seen
        for method, route, status, body in self.seen:
            assert status < 400, (method, route, status, body)
            errors = validator.answer_errors(body, route, method.lower(), str(status))
            assert errors == [], (method, route, body)


@pytest.fixture
def answers() -> _Answers:
    return _Answers()


@pytest.fixture
def watched(base_url: str, answers: _Answers) -> Vapi:
    """An SDK client whose every answer is recorded in `answers`."""
    http = httpx.Client(event_hooks={"response": [answers]}, timeout=10)
    return Vapi(token="sdk-kinds-key", base_url=base_url, httpx_client=http)


def _twilio(number: str = "+15551230001", name: str = "Front line") -> Any:
    return CreatePhoneNumbersRequest_Twilio(
        number=number,
        twilio_account_sid="AC" + "0" * 32,
        twilio_auth_token="twilio-secret-token",
        name=name,
        server=Server(url="https://hooks.example/numbers"),
    )


def test_sdk_drives_phone_numbers(watched: Vapi, answers: _Answers) -> None:
    created = watched.phone_numbers.create(request=_twilio())
    assert type(created).__name__.endswith("_Twilio")
    assert uuid.UUID(created.id)
    assert created.org_id
    assert isinstance(created.created_at, dt.datetime)
    assert created.created_at.tzinfo is not None
    assert created.number == "+15551230001"
    assert created.twilio_account_sid == "AC" + "0" * 32
    assert created.twilio_auth_token is None  # never answered back
    assert created.status == "active"
    assert created.server is not None
    assert created.server.url == "https://hooks.example/numbers"

    again = watched.phone_numbers.create(request=_twilio())  # the same number, a second record
    assert again.id != created.id
    free = watched.phone_numbers.create(request=CreatePhoneNumbersRequest_Vapi(name="Free"))
    assert type(free).__name__.endswith("_Vapi")
    assert free.number

    listed = watched.phone_numbers.list(limit=10)
    assert [n.id for n in listed] == [free.id, again.id, created.id]
    assert [n.id for n in watched.phone_numbers.list(limit=1)] == [free.id]
    older = watched.phone_numbers.list(created_at_lt=again.created_at)
    assert [n.id for n in older] == [created.id]

    paged = watched.phone_numbers.phone_number_controller_find_all_paginated(page=2, limit=2)
    assert [n.id for n in paged.results] == [created.id]
    assert paged.metadata.total_items == 3
    assert paged.metadata.current_page == 2
    assert paged.metadata.items_per_page == 2
    found = watched.phone_numbers.phone_number_controller_find_all_paginated(search="5551230001")
    assert [n.id for n in found.results] == [again.id, created.id]
    assert found.metadata.has_next_page is False

    fetched = watched.phone_numbers.get(created.id)
    assert (fetched.id, fetched.name) == (created.id, "Front line")

    updated = watched.phone_numbers.update(
        created.id,
        request=UpdatePhoneNumbersRequestBody_Twilio(name="Renamed", assistant_id="asst-1"),
    )
    assert type(updated).__name__.endswith("_Twilio")
    assert (updated.name, updated.assistant_id) == ("Renamed", "asst-1")
    assert updated.number == created.number
    assert updated.updated_at >= updated.created_at

    deleted = watched.phone_numbers.delete(again.id)
    assert deleted.id == again.id
    assert [n.id for n in watched.phone_numbers.list()] == [free.id, created.id]
    answers.check(KindValidator.load())


def test_sdk_drives_tools(watched: Vapi, answers: _Answers) -> None:
    function = watched.tools.create(
        request=CreateToolsRequest_Function(
            function=OpenAiFunction(
                name="lookup_order",
                description="Find an order",
                parameters=OpenAiFunctionParameters(
                    type="object", properties={"id": JsonSchema(type="string")}
                ),
            ),
            server=Server(url="https://hooks.example/tools", timeout_seconds=20),
        )
    )
    assert type(function).__name__.endswith("_Function")
    assert uuid.UUID(function.id)
    assert function.function is not None
    assert function.function.name == "lookup_order"
    assert function.server is not None
    assert function.server.url == "https://hooks.example/tools"
    end_call = watched.tools.create(request=CreateToolsRequest_EndCall())
    assert type(end_call).__name__.endswith("_EndCall")

    assert [t.id for t in watched.tools.list()] == [end_call.id, function.id]
    assert [t.id for t in watched.tools.list(limit=1)] == [end_call.id]
    assert [t.id for t in watched.tools.list(created_at_lt=end_call.created_at)] == [function.id]

    fetched = watched.tools.get(function.id)
    assert fetched.id == function.id
    assert type(fetched).__name__.endswith("_Function")

    updated = watched.tools.update(
        function.id,
        request=UpdateToolsRequestBody_Function(
            function=OpenAiFunction(name="lookup_order_v2"), async_=True
        ),
    )
    assert updated.function is not None
    assert updated.function.name == "lookup_order_v2"
    assert updated.async_ is True
    assert updated.server is not None  # untouched

    deleted = watched.tools.delete(end_call.id)
    assert deleted.id == end_call.id
    assert [t.id for t in watched.tools.list()] == [function.id]
    answers.check(KindValidator.load())


def test_sdk_sees_404_and_400_for_the_kinds(base_url: str, client: Vapi) -> None:
    number = client.phone_numbers.create(request=_twilio())
    tool = client.tools.create(request=CreateToolsRequest_EndCall())
    stranger = Vapi(token="another-tenant", base_url=base_url)
    calls: list[Callable[[], object]] = [
        lambda: stranger.phone_numbers.get(number.id),
        lambda: stranger.phone_numbers.delete(number.id),
        lambda: stranger.tools.get(tool.id),
        lambda: stranger.tools.delete(tool.id),
        lambda: client.tools.get(str(uuid.uuid4())),
    ]
    for call in calls:
        with pytest.raises(ApiError) as raised:
            call()
        assert raised.value.status_code == 404
    assert stranger.phone_numbers.list() == []
    with pytest.raises(ApiError) as raised:
        client.phone_numbers.create(request=_twilio(name="n" * 41))
    assert raised.value.status_code == 400
    assert raised.value.body["message"] == ["name must be shorter than or equal to 40 characters"]
