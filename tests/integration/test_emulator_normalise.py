"""The emulator's `normalise` mode: Vapi's server defaults and key order, and no perpetual diff.

With `normalise=True` the emulator answers with fields the reconciler never sent and in an order
it never used, as Vapi does. Every test here runs against such an emulator (the module overrides
conftest's `emulator_session`), so the integration tests show a reconciler that would PATCH on
every run because of what Vapi adds.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from reconciler.controller.run import Controller, RunReport
from reconciler.spec.loader import load_tree
from reconciler.state.store import StateWriter
from reconciler.vapi.emulator import running_emulator
from reconciler.vapi.emulator_schema import (
    TOP_LEVEL_ORDER,
    AssistantValidator,
)
from tests.helpers import (
    ROOT,
    SpecDir,
    emulator_stats,
    live,
    org_doc,
    providers_declaring,
    union_providers,
    writes,
)
from tests.helpers.sdk import load_sdk_lazily

# The SDK itself uses pydantic's deprecated `__fields__`; that noise is not ours.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:vapi")

EXAMPLES = ROOT / "specs" / "examples"
SERVER_FIELDS = ("id", "orgId", "createdAt", "updatedAt", "isServerUrlSecretSet")
BODY: dict[str, Any] = {
    "name": "Front desk",
    "firstMessage": "Hello!",
    "metadata": {"zeta": 1, "alpha": {"bb": 1, "a": 2}},
    "model": {
        "provider": "openai",
        "model": "gpt-4o",
        "messages": [{"role": "system", "content": "Be brief."}],
        "temperature": 0.7,
    },
    "voice": {"provider": "11labs", "voiceId": "burt"},
    "transcriber": {"provider": "deepgram", "model": "nova-2"},
    "server": {"url": "https://hooks.example/vapi"},
}


@pytest.fixture(scope="module")
def emulator_session() -> Iterator[str]:
    """Overrides conftest's: `emulator`, `controller` and `cli` here reach a normalising one."""
    with running_emulator(normalise=True) as url:
        yield url


@pytest.fixture
def api(emulator: str) -> Iterator[httpx.Client]:
    headers = {"Authorization": "Bearer tenant-key"}
    with httpx.Client(base_url=emulator, headers=headers, timeout=10) as client:
        yield client


def _create(api: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    response = api.post("/assistant", json=body)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def _patch(api: httpx.Client, assistant_id: str, body: dict[str, Any]) -> dict[str, Any]:
    response = api.patch(f"/assistant/{assistant_id}", json=body)
    assert response.status_code == 200, response.text
    updated: dict[str, Any] = response.json()
    return updated


def _jsonb_ordered(value: Any) -> bool:
    """Every object in `value` has its keys in jsonb order (shorter first, then bytewise)."""
    if isinstance(value, dict):
        keys = [(len(k.encode()), k.encode()) for k in value]
        return keys == sorted(keys) and all(_jsonb_ordered(v) for v in value.values())
    if isinstance(value, list):
        return all(_jsonb_ordered(v) for v in value)
    return True


# -- the emulator alone: what a create and a PATCH come back with ----------------------------------


def test_created_assistant_shows_the_server_defaults(api: httpx.Client) -> None:
    created = _create(api, BODY)
    assert created["firstMessageInterruptionsEnabled"] is False
    assert created["firstMessageMode"] == "assistant-speaks-first"
    assert created["maxDurationSeconds"] == 600
    assert created["voice"] == {"voiceId": "burt", "provider": "11labs", "cachingEnabled": True}
    assert created["model"]["maxTokens"] == 250
    assert created["model"]["temperature"] == 0.7
    assert created["transcriber"] == {"model": "nova-2", "provider": "deepgram", "mipOptOut": False}
    assert created["server"] == {"url": "https://hooks.example/vapi", "timeoutSeconds": 20}
    assert created["isServerUrlSecretSet"] is False
    assert created["metadata"] == BODY["metadata"]
    for key in ("backgroundSound", "clientMessages", "serverMessages"):  # chosen per call
        assert key not in created
    # GET and list show what is stored: the same assistant, in the same order
    assert list(api.get(f"/assistant/{created['id']}").json().items()) == list(created.items())
    assert list(api.get("/assistant").json()[0].items()) == list(created.items())


def test_answers_use_vapis_key_order_not_the_requests(api: httpx.Client) -> None:
    created = _create(api, BODY)
    keys = list(created)
    assert keys[:6] == ["id", "orgId", "name", "voice", "createdAt", "updatedAt"]
    assert keys[-1] == "isServerUrlSecretSet"
    known = [k for k in keys if k in TOP_LEVEL_ORDER]
    assert known == sorted(known, key=TOP_LEVEL_ORDER.index)
    rest = [k for k in keys[:-1] if k not in TOP_LEVEL_ORDER]
    assert rest == sorted(rest)
    assert all(_jsonb_ordered(created[k]) for k in keys)
    assert list(created["voice"]) == ["voiceId", "provider", "cachingEnabled"]
    assert list(created["metadata"]) == ["zeta", "alpha"]
    assert list(created["metadata"]["alpha"]) == ["a", "bb"]
    assert list(created["model"]["messages"][0]) == ["role", "content"]


def test_values_the_body_gives_win_over_defaults(api: httpx.Client) -> None:
    created = _create(
        api,
        {
            "name": "Mine",
            "firstMessageMode": "assistant-waits-for-user",
            "maxDurationSeconds": 300,
            "firstMessageInterruptionsEnabled": True,
            "voice": {
                "provider": "vapi",
                "voiceId": "Elliot",
                "cachingEnabled": False,
                "speed": 1.2,
            },
            "model": {"provider": "openai", "model": "gpt-4o", "maxTokens": 1000},
            "server": {"url": "https://hooks.example/vapi", "timeoutSeconds": 5},
        },
    )
    assert created["firstMessageMode"] == "assistant-waits-for-user"
    assert created["maxDurationSeconds"] == 300
    assert created["firstMessageInterruptionsEnabled"] is True
    assert created["voice"] == {
        "speed": 1.2,
        "voiceId": "Elliot",
        "provider": "vapi",
        "cachingEnabled": False,
    }
    assert created["model"]["maxTokens"] == 1000
    assert created["server"]["timeoutSeconds"] == 5


def test_a_field_sent_as_null_is_not_filled(api: httpx.Client) -> None:
    created = _create(api, {"name": "Null", "firstMessageMode": None, "maxDurationSeconds": None})
    assert "firstMessageMode" not in created
    assert "maxDurationSeconds" not in created
    assert created["firstMessageInterruptionsEnabled"] is False  # left out: filled


def test_patch_keeps_the_users_value_and_fills_the_new_objects_defaults(
    api: httpx.Client,
) -> None:
    created = _create(api, BODY)
    updated = _patch(
        api,
        created["id"],
        {
            "maxDurationSeconds": 1200,
            "firstMessageMode": "assistant-waits-for-user",
            "voice": {"provider": "vapi", "voiceId": "Elliot"},
        },
    )
    assert updated["maxDurationSeconds"] == 1200
    assert updated["firstMessageMode"] == "assistant-waits-for-user"
    # the voice is replaced whole: the new object gets its own provider's defaults
    assert updated["voice"] == {
        "speed": 1,
        "voiceId": "Elliot",
        "provider": "vapi",
        "cachingEnabled": True,
    }
    assert updated["model"] == created["model"]  # untouched fields stay as they were
    assert list(updated) == list(created)  # same fields, same order
    assert api.get(f"/assistant/{created['id']}").json() == updated


def test_patch_with_null_clears_and_puts_no_default_back(api: httpx.Client) -> None:
    created = _create(api, BODY)
    updated = _patch(api, created["id"], {"maxDurationSeconds": None, "voice": None})
    assert "maxDurationSeconds" not in updated
    assert "voice" not in updated
    assert updated["isServerUrlSecretSet"] is False
    again = _patch(api, created["id"], {"name": "Renamed"})
    assert "maxDurationSeconds" not in again
    assert "voice" not in again


def test_a_normalised_answer_sent_back_is_a_fixed_point(api: httpx.Client) -> None:
    """Every filled default passes Vapi's own validation, and sending it back changes nothing."""
    created = _create(api, BODY)
    body = {k: v for k, v in created.items() if k not in SERVER_FIELDS}
    updated = _patch(api, created["id"], body)
    assert {k: v for k, v in updated.items() if k != "updatedAt"} == {
        k: v for k, v in created.items() if k != "updatedAt"
    }
    echoed = api.patch(f"/assistant/{created['id']}", json={"isServerUrlSecretSet": False})
    assert echoed.status_code == 400  # a computed field, as vapi-api.md says: strip it first
    assert echoed.json()["message"] == ["property isServerUrlSecretSet should not exist"]


def test_without_the_option_nothing_is_added_or_reordered() -> None:
    with (
        running_emulator() as url,
        httpx.Client(base_url=url, headers={"Authorization": "Bearer k"}, timeout=10) as plain,
    ):
        created = _create(plain, BODY)
        assert list(created) == [*BODY, "id", "orgId", "createdAt", "updatedAt"]
        assert {k: created[k] for k in BODY} == BODY
        assert list(created["voice"]) == ["provider", "voiceId"]
        updated = _patch(plain, created["id"], {"voice": {"provider": "vapi", "voiceId": "Elliot"}})
        assert updated["voice"] == {"provider": "vapi", "voiceId": "Elliot"}
        assert "maxDurationSeconds" not in updated
        assert "isServerUrlSecretSet" not in updated


def test_a_sub_field_default_goes_only_where_the_providers_schema_has_it(
    api: httpx.Client,
) -> None:
    """`model.maxTokens` is filled for every model provider but `vapi`, whose schema has no such
    field (Vapi would reject it in a body); `voice.cachingEnabled` for every voice provider."""
    validator = AssistantValidator.load()
    assert providers_declaring(validator, "voice", "cachingEnabled") == union_providers("voice")
    assert [
        p
        for p in union_providers("model")
        if p not in providers_declaring(validator, "model", "maxTokens")
    ] == ["vapi"]
    created = _create(api, {"name": "Vapi model", "model": {"provider": "vapi", "model": "x"}})
    assert "maxTokens" not in created["model"]


@pytest.mark.xdist_group("vapi-sdk")  # with the SDK's other tests: one worker loads it
def test_the_official_sdk_parses_the_normalised_answers(emulator: str) -> None:
    # imported here: the SDK's assistant types take seconds to load, which every pytest-xdist
    # worker would otherwise pay while collecting
    load_sdk_lazily()
    from vapi import (
        CreateAssistantDtoModel_Openai,
        CreateAssistantDtoVoice_11Labs,
        OpenAiMessage,
        Server,
        UpdateAssistantDtoVoice_Vapi,
        Vapi,
    )

    client = Vapi(token="sdk-tenant-key", base_url=emulator)
    created = client.assistants.create(
        name="Front desk",
        first_message="Hello!",
        metadata={"managed-by": "reconciler", "key": "k-1"},
        model=CreateAssistantDtoModel_Openai(
            model="gpt-4o", messages=[OpenAiMessage(role="system", content="Be brief.")]
        ),
        voice=CreateAssistantDtoVoice_11Labs(voice_id="burt"),
        server=Server(url="https://hooks.example/vapi"),
    )
    assert created.first_message_mode == "assistant-speaks-first"
    assert created.first_message_interruptions_enabled is False
    assert created.max_duration_seconds == 600
    assert created.voice is not None and created.voice.provider == "11labs"
    assert created.voice.caching_enabled is True
    assert created.model is not None and created.model.max_tokens == 250
    assert created.server is not None and created.server.timeout_seconds == 20
    assert created.metadata == {"managed-by": "reconciler", "key": "k-1"}

    fetched = client.assistants.get(created.id)
    assert fetched.id == created.id and fetched.max_duration_seconds == 600
    assert [a.id for a in client.assistants.list()] == [created.id]
    updated = client.assistants.update(
        created.id, max_duration_seconds=900, voice=UpdateAssistantDtoVoice_Vapi(voice_id="Elliot")
    )
    assert updated.max_duration_seconds == 900
    assert updated.voice is not None and updated.voice.provider == "vapi"
    assert updated.voice.speed == 1
    assert updated.first_message_mode == "assistant-speaks-first"
    assert client.assistants.delete(created.id).id == created.id


# -- the whole reconciler: real Postgres and a normalising emulator ------------------------------


def _warnings(report: RunReport) -> list[str]:
    return [w for o in report.outcomes if o.plan is not None for w in o.plan.warnings]


def _converged_without_writes(controller: Controller, root: Path, emulator: str) -> None:
    """A second apply writes nothing to Vapi and a plan shows no change: no perpetual diff."""
    before = writes(emulator)
    second = controller.apply(load_tree(root))
    assert second.ok, [o.error for o in second.failed]
    assert not second.has_changes, [o.plan.actions for o in second.outcomes if o.plan]
    assert writes(emulator) == before
    plan = controller.plan(load_tree(root))
    assert plan.ok and not plan.has_changes
    assert _warnings(plan) == []  # nothing held back as "Vapi does not keep this value"
    assert writes(emulator) == before


def test_the_examples_converge_with_no_perpetual_diff(
    controller: Controller, emulator: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "examples"
    shutil.copytree(EXAMPLES, root)
    monkeypatch.setenv("SOPS_AGE_KEY_FILE", str(root / "demo.agekey"))
    monkeypatch.delenv("SOPS_AGE_KEY", raising=False)

    first = controller.apply(load_tree(root))
    assert first.ok, [o.error for o in first.failed]
    assert emulator_stats(emulator)["POST /assistant"] == 5  # 2 + 1 + 2 assistants
    assert writes(emulator) == 5  # only the creates
    _converged_without_writes(controller, root, emulator)


RICH_ASSISTANTS: dict[str, Any] = {
    "inbound": {
        "name": "Rich inbound",
        "firstMessage": "Hello, how can I help?",
        "firstMessageMode": "assistant-waits-for-user",
        "model": {
            "provider": "openai",
            "model": "gpt-4o",
            "temperature": 0.7,
            "maxTokens": 400,
            "messages": [{"role": "system", "content": "You are the receptionist."}],
        },
        "voice": {"provider": "vapi", "voiceId": "Elliot"},
        "transcriber": {"provider": "deepgram", "model": "nova-2", "language": "en"},
        "server": {"url": "https://hooks.example.com/vapi", "timeoutSeconds": 10},
        "maxDurationSeconds": 900,
        "metadata": {"zeta": "last", "alpha": {"nested": True, "a": 0.1}},
        "endCallPhrases": ["goodbye", "bye for now"],
        "backgroundSound": "off",
    },
    "outbound": {
        "name": "Rich outbound",
        "voice": {
            "provider": "11labs",
            "voiceId": "sarah",
            "stability": 0.5,
            "similarityBoost": 0.75,
        },
        "model": {"provider": "openai", "model": "gpt-4o-mini"},
        "server": {"url": "https://hooks.example.com/vapi"},
    },
}


def test_rich_specs_converge_and_stay_converged_after_changes(
    specs: SpecDir, controller: Controller, emulator: str
) -> None:
    doc = org_doc("rich", assistants=RICH_ASSISTANTS)
    key = doc["spec"]["credentials"]["vapi"]["apiKey"]
    specs.write(doc)
    assert controller.apply(load_tree(specs.root)).ok
    assert writes(emulator) == 2
    by_role = {a["metadata"]["role"]: a for a in live(emulator, key)}
    assert by_role["outbound"]["maxDurationSeconds"] == 600  # the emulator did fill defaults
    assert by_role["outbound"]["server"]["timeoutSeconds"] == 20
    _converged_without_writes(controller, specs.root, emulator)

    # a changed field: one PATCH, then quiet again (the PATCH's answer has defaults too)
    doc["spec"]["assistants"]["inbound"]["voice"] = {"provider": "11labs", "voiceId": "burt"}
    specs.write(doc)
    assert controller.apply(load_tree(specs.root)).ok
    assert emulator_stats(emulator)["PATCH /assistant/{id}"] == 1
    _converged_without_writes(controller, specs.root, emulator)

    # fields removed from the spec are cleared once, and Vapi puts no default back
    del doc["spec"]["assistants"]["inbound"]["maxDurationSeconds"]
    del doc["spec"]["assistants"]["inbound"]["transcriber"]
    specs.write(doc)
    assert controller.apply(load_tree(specs.root)).ok
    assert emulator_stats(emulator)["PATCH /assistant/{id}"] == 2
    inbound = next(a for a in live(emulator, key) if a["metadata"]["role"] == "inbound")
    assert "maxDurationSeconds" not in inbound and "transcriber" not in inbound
    _converged_without_writes(controller, specs.root, emulator)


def test_adopting_normalised_assistants_converges_without_writes(
    specs: SpecDir, controller: Controller, emulator: str, state: StateWriter
) -> None:
    """Postgres lost its state: the assistants are adopted as Vapi shows them (defaults and
    all), with no write, and the runs after that stay quiet."""
    specs.write(org_doc("rich", assistants=RICH_ASSISTANTS))
    assert controller.apply(load_tree(specs.root)).ok
    with state.pool.connection() as conn:
        conn.execute("TRUNCATE assistant_org_mapping, assistants")
    adopted = controller.apply(load_tree(specs.root))
    assert adopted.ok and adopted.counts()["adopt"] == 2 and adopted.counts()["update"] == 0
    assert writes(emulator) == 2  # the first run's creates only
    _converged_without_writes(controller, specs.root, emulator)


def test_cli_apply_twice_then_plan_is_a_no_op(cli: Any, specs: SpecDir, emulator: str) -> None:
    specs.write(org_doc("acme", assistants=RICH_ASSISTANTS))
    specs.write(org_doc("globex"))
    first = cli("apply", str(specs.root))
    assert first.code == 0, first.out + first.err
    assert writes(emulator) == 4
    second = cli("apply", str(specs.root))
    assert second.code == 0, second.out + second.err
    assert writes(emulator) == 4
    plan = cli("plan", str(specs.root), "--detailed-exitcode")
    assert plan.code == 0, plan.out + plan.err
    assert plan.last_line == "Plan: 0 to create, 0 to update, 0 to delete.", plan.out
