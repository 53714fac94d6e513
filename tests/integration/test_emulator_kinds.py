"""The Vapi emulator's phone numbers (`/phone-number`, `/v2/phone-number`) and tools (`/tool`),
driven over HTTP with plain httpx. Every answer is also checked against the answer schemas of
Vapi's OpenAPI document (`openapi_kinds.json`). The official SDK drives them in
tests/integration/test_emulator_sdk.py."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from reconciler.vapi.emulator_schema import KindValidator
from tests.helpers import add_key, emulator_client, fault

ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
TWILIO = {
    "provider": "twilio",
    "number": "+15551230001",
    "twilioAccountSid": "AC" + "0" * 32,
    "twilioAuthToken": "twilio-auth-token-secret",
    "name": "Front line",
}
FUNCTION_TOOL = {
    "type": "function",
    "function": {
        "name": "lookup_order",
        "description": "Find an order",
        "parameters": {"type": "object", "properties": {"id": {"type": "string"}}},
    },
    "server": {"url": "https://hooks.example/tools", "timeoutSeconds": 20},
}
SCHEMAS = KindValidator.load()


@pytest.fixture
def base_url(emulator: str) -> str:
    """The session's emulator (tests/conftest.py), reset for each test."""
    return emulator


@pytest.fixture
def api(base_url: str) -> Iterator[httpx.Client]:
    with emulator_client(base_url, "kinds-tenant-a") as client:
        yield client


@pytest.fixture
def other(base_url: str) -> Iterator[httpx.Client]:
    with emulator_client(base_url, "kinds-tenant-b") as client:
        yield client


@pytest.fixture
def admin(base_url: str) -> Iterator[httpx.Client]:
    with emulator_client(base_url, None) as client:
        yield client


def _documented(response: httpx.Response, path: str, method: str) -> Any:
    """The answer's JSON, after checking it against Vapi's answer schema for the route."""
    body = response.json()
    errors = SCHEMAS.answer_errors(body, path, method, str(response.status_code))
    assert errors == [], (path, method, body)
    return body


def _create(api: httpx.Client, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = api.post(path, json=body)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = _documented(response, path, "post")
    return created


def _bad_request(response: httpx.Response) -> list[str]:
    assert response.status_code == 400, response.text
    body = response.json()
    assert (body["error"], body["statusCode"]) == ("Bad Request", 400)
    assert isinstance(body["message"], list)
    return [str(m) for m in body["message"]]


def _ids(records: list[dict[str, Any]]) -> list[str]:
    return [r["id"] for r in records]


# -- phone numbers -------------------------------------------------------------------------------


def test_import_a_twilio_number_and_never_see_the_token_again(api: httpx.Client) -> None:
    created = _create(api, "/phone-number", TWILIO)
    assert uuid.UUID(created["id"]).version == 4
    uuid.UUID(created["orgId"])
    assert ISO_MS.match(created["createdAt"])
    assert created["updatedAt"] == created["createdAt"]
    assert created["status"] == "active"
    assert {k: created[k] for k in ("provider", "number", "twilioAccountSid", "name")} == {
        k: TWILIO[k] for k in ("provider", "number", "twilioAccountSid", "name")
    }
    answers = [
        created,
        _documented(api.get(f"/phone-number/{created['id']}"), "/phone-number/{id}", "get"),
        _documented(api.get("/phone-number"), "/phone-number", "get")[0],
        _documented(api.get("/v2/phone-number"), "/v2/phone-number", "get")["results"][0],
        _documented(
            api.patch(f"/phone-number/{created['id']}", json={"name": "Renamed"}),
            "/phone-number/{id}",
            "patch",
        ),
    ]
    for answer in answers:
        assert "twilioAuthToken" not in answer
        assert TWILIO["twilioAuthToken"] not in str(answer)
    deleted = api.delete(f"/phone-number/{created['id']}")
    assert "twilioAuthToken" not in _documented(deleted, "/phone-number/{id}", "delete")


def test_a_second_import_of_the_same_number_gives_a_second_record(
    api: httpx.Client, admin: httpx.Client
) -> None:
    """The worst a real Vapi could do: nothing but our discipline prevents duplicates."""
    first = _create(api, "/phone-number", TWILIO)
    second = _create(api, "/phone-number", TWILIO)
    assert first["id"] != second["id"]
    assert first["number"] == second["number"]
    assert _ids(api.get("/phone-number").json()) == [second["id"], first["id"]]
    found = api.get("/v2/phone-number", params={"search": TWILIO["number"]}).json()
    assert _ids(found["results"]) == [second["id"], first["id"]]
    assert found["metadata"]["totalItems"] == 2
    assert admin.get("/_emulator/stats").json()["phone_numbers_total"] == 2


def test_vapi_numbers_free_or_by_sip_uri(api: httpx.Client) -> None:
    free = _create(api, "/phone-number", {"provider": "vapi", "numberDesiredAreaCode": "415"})
    assert re.fullmatch(r"\+1415\d{7}", free["number"])
    sip = _create(
        api, "/phone-number", {"provider": "vapi", "sipUri": "sip:desk@example.sip.vapi.ai"}
    )
    assert sip["sipUri"] == "sip:desk@example.sip.vapi.ai"
    assert "number" not in sip


def test_patch_a_number_replaces_named_fields_and_null_clears(api: httpx.Client) -> None:
    created = _create(api, "/phone-number", {**TWILIO, "assistantId": "a-1"})
    time.sleep(0.002)
    changes = {
        "assistantId": "a-2",
        "fallbackDestination": {"type": "number", "number": "+15559990000"},
        "server": {"url": "https://hooks.example/numbers"},
    }
    response = api.patch(f"/phone-number/{created['id']}", json=changes)
    assert response.status_code == 200, response.text
    updated = _documented(response, "/phone-number/{id}", "patch")
    assert {k: updated[k] for k in changes} == changes
    assert updated["name"] == TWILIO["name"]
    assert updated["createdAt"] == created["createdAt"]
    assert updated["updatedAt"] > created["updatedAt"]
    cleared = api.patch(f"/phone-number/{created['id']}", json={"assistantId": None}).json()
    assert "assistantId" not in cleared
    assert api.get(f"/phone-number/{created['id']}").json() == cleared


def test_patch_a_number_is_validated_against_its_providers_schema(api: httpx.Client) -> None:
    created = _create(api, "/phone-number", TWILIO)
    path = f"/phone-number/{created['id']}"
    assert _bad_request(api.patch(path, json={"provider": "vapi"})) == [
        "provider must be one of the following values: twilio"
    ]
    assert _bad_request(api.patch(path, json={"sipUri": "sip:x@y"})) == [
        "property sipUri should not exist"  # a vapi field, not a twilio one
    ]
    assert _bad_request(api.patch(path, json={"name": "n" * 41})) == [
        "name must be shorter than or equal to 40 characters"
    ]
    assert api.get(path).json()["name"] == TWILIO["name"]
    assert api.patch(f"/phone-number/{uuid.uuid4()}", json={"name": "x"}).status_code == 404


def test_delete_a_number_returns_it_then_404(api: httpx.Client) -> None:
    created = _create(api, "/phone-number", TWILIO)
    deleted = api.delete(f"/phone-number/{created['id']}")
    assert deleted.status_code == 200
    assert deleted.json() == created
    assert api.get(f"/phone-number/{created['id']}").status_code == 404
    assert api.delete(f"/phone-number/{created['id']}").json()["statusCode"] == 404
    assert api.get("/phone-number").json() == []


def test_v2_pages_with_page_limit_and_metadata(api: httpx.Client) -> None:
    ids = [
        _create(api, "/phone-number", {**TWILIO, "number": f"+1555000{i:04d}", "name": f"n{i}"})[
            "id"
        ]
        for i in range(25)
    ]
    newest_first = ids[::-1]
    seen: list[str] = []
    for page, size, more in ((1, 10, True), (2, 10, True), (3, 5, False)):
        response = api.get("/v2/phone-number", params={"page": page, "limit": 10})
        answer = _documented(response, "/v2/phone-number", "get")
        assert len(answer["results"]) == size
        assert answer["metadata"] == {
            "itemsPerPage": 10,
            "totalItems": 25,
            "currentPage": page,
            "totalPages": 3,
            "hasNextPage": more,
            "sortOrder": "DESC",
        }
        seen += _ids(answer["results"])
    assert seen == newest_first
    assert api.get("/v2/phone-number", params={"page": 4, "limit": 10}).json()["results"] == []
    default = api.get("/v2/phone-number").json()
    assert _ids(default["results"]) == newest_first  # page 1, limit 100
    assert default["metadata"]["currentPage"] == 1
    ascending = api.get("/v2/phone-number", params={"sortOrder": "ASC", "limit": 3}).json()
    assert _ids(ascending["results"]) == ids[:3]
    v1 = api.get("/phone-number", params={"limit": 7}).json()
    assert _ids(v1) == newest_first[:7]  # the v1 list: a bare array, newest first
    older = api.get("/phone-number", params={"createdAtLt": v1[-1]["createdAt"]}).json()
    assert _ids(older) == newest_first[7:]


def test_v2_search_matches_name_number_or_sip_uri_in_any_case(api: httpx.Client) -> None:
    desk = _create(api, "/phone-number", {**TWILIO, "name": "Front Desk", "number": "+15551110000"})
    sales = _create(api, "/phone-number", {**TWILIO, "name": "Sales", "number": "+15552220000"})
    sip = _create(
        api, "/phone-number", {"provider": "vapi", "sipUri": "sip:Support@acme.sip.vapi.ai"}
    )

    def search(term: str, **params: Any) -> dict[str, Any]:
        response = api.get("/v2/phone-number", params={"search": term, **params})
        found: dict[str, Any] = _documented(response, "/v2/phone-number", "get")
        return found

    assert _ids(search("front desk")["results"]) == [desk["id"]]
    assert _ids(search("DESK")["results"]) == [desk["id"]]
    assert _ids(search("2220")["results"]) == [sales["id"]]
    assert _ids(search("support@ACME")["results"]) == [sip["id"]]
    assert _ids(search("+1555")["results"]) == [sales["id"], desk["id"]]
    assert search("nothing like it")["results"] == []
    paged = search("+1555", limit=1, page=2)
    assert _ids(paged["results"]) == [desk["id"]]
    assert paged["metadata"]["totalItems"] == 2
    assert paged["metadata"]["totalPages"] == 2
    assert paged["metadata"]["hasNextPage"] is False


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"page": 0}, "page must not be less than 1"),
        ({"page": "x"}, "page must be a number conforming to the specified constraints"),
        ({"limit": 1001}, "limit must not be greater than 1000"),
        ({"limit": -1}, "limit must not be less than 0"),
        ({"search": "s" * 101}, "search must be shorter than or equal to 100 characters"),
        ({"sortOrder": "up"}, "sortOrder must be one of the following values: ASC, DESC"),
        ({"cursor": "abc"}, "property cursor should not exist"),
        ({"createdAtLt": "yesterday"}, "createdAtLt must be a valid ISO 8601 date string"),
    ],
)
def test_v2_refuses_bad_query_parameters(
    api: httpx.Client, params: dict[str, Any], message: str
) -> None:
    assert _bad_request(api.get("/v2/phone-number", params=params)) == [message]


def test_v1_phone_number_list_has_no_v2_parameters(api: httpx.Client) -> None:
    assert _bad_request(api.get("/phone-number", params={"page": 1})) == [
        "property page should not exist"
    ]
    assert _bad_request(api.get("/tool", params={"search": "x"})) == [
        "property search should not exist"
    ]


# -- tools ---------------------------------------------------------------------------------------


def test_tools_create_list_get_update_delete(api: httpx.Client) -> None:
    function = _create(api, "/tool", FUNCTION_TOOL)
    assert {k: function[k] for k in FUNCTION_TOOL} == FUNCTION_TOOL
    assert ISO_MS.match(function["createdAt"])
    end_call = _create(api, "/tool", {"type": "endCall"})
    transfer = _create(
        api,
        "/tool",
        {
            "type": "transferCall",
            "destinations": [{"type": "number", "number": "+15551112222"}],
        },
    )
    calendar = _create(api, "/tool", {"type": "google.calendar.event.create"})
    ids = [function["id"], end_call["id"], transfer["id"], calendar["id"]]

    listed = _documented(api.get("/tool"), "/tool", "get")
    assert _ids(listed) == ids[::-1]
    assert _ids(api.get("/tool", params={"limit": 2}).json()) == ids[::-1][:2]
    older = api.get("/tool", params={"createdAtLt": transfer["createdAt"]}).json()
    assert _ids(older) == [end_call["id"], function["id"]]
    fetched = _documented(api.get(f"/tool/{function['id']}"), "/tool/{id}", "get")
    assert fetched == function

    time.sleep(0.002)
    new_function = {"name": "lookup_order_v2"}
    response = api.patch(f"/tool/{function['id']}", json={"function": new_function})
    assert response.status_code == 200, response.text
    updated = _documented(response, "/tool/{id}", "patch")
    assert updated["function"] == new_function  # replaced as a whole
    assert updated["type"] == "function"
    assert updated["server"] == FUNCTION_TOOL["server"]
    assert updated["updatedAt"] > function["updatedAt"]
    assert _bad_request(api.patch(f"/tool/{function['id']}", json={"type": "endCall"})) == [
        "type must be one of the following values: function"
    ]

    deleted = api.delete(f"/tool/{end_call['id']}")
    assert _documented(deleted, "/tool/{id}", "delete") == end_call
    assert api.get(f"/tool/{end_call['id']}").status_code == 404
    assert api.get(f"/tool/{end_call['id']}").json()["message"] == (
        f"Couldn't find tool {end_call['id']}."
    )
    assert len(api.get("/tool").json()) == 3


# -- schema refusals: 400 naming the field -------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "expected"),
    [
        (
            "/phone-number",
            {**TWILIO, "name": "n" * 41},
            ["name must be shorter than or equal to 40 characters"],
        ),
        (
            "/phone-number",
            {**TWILIO, "metadata": {"k": "v"}},
            ["property metadata should not exist"],
        ),
        (
            "/phone-number",
            {"provider": "twilio", "number": "+15551230001"},
            ["twilioAccountSid should not be null or undefined"],
        ),
        (
            "/phone-number",
            {"provider": "nope"},
            [
                "provider must be one of the following values: byo-phone-number, telnyx, twilio, vapi, vonage"
            ],
        ),
        (
            "/phone-number",
            {"number": "+15551230001"},
            [
                "provider must be one of the following values: byo-phone-number, telnyx, twilio, vapi, vonage"
            ],
        ),
        ("/phone-number", {**TWILIO, "smsEnabled": "yes"}, ["smsEnabled must be a boolean value"]),
        (
            "/phone-number",
            {**TWILIO, "fallbackDestination": {"type": "number", "number": "+1555", "bogus": 1}},
            ["fallbackDestination.property bogus should not exist"],
        ),
        (
            "/phone-number",
            {"provider": "vapi", "numberDesiredAreaCode": "4155"},
            ["numberDesiredAreaCode must be shorter than or equal to 3 characters"],
        ),
        ("/phone-number", {**TWILIO, "server": {"url": 1}}, ["server.url must be a string"]),
        (
            "/tool",
            {"type": "function", "function": {}},
            ["function.name should not be null or undefined"],
        ),
        (
            "/tool",
            {"type": "function", "function": {"name": "no spaces allowed"}},
            ["function.name must match /^[a-zA-Z0-9_-]{1,64}$/ regular expression"],
        ),
        (
            "/tool",
            {"type": "endCall", "function": {"name": "x"}},
            ["property function should not exist"],
        ),
        ("/tool", {"type": "handoff"}, None),  # left out of the vendored schemas
        ("/tool", {}, None),
    ],
)
def test_bodies_are_refused_naming_the_field(
    api: httpx.Client,
    admin: httpx.Client,
    path: str,
    body: dict[str, Any],
    expected: list[str] | None,
) -> None:
    messages = _bad_request(api.post(path, json=body))
    if expected is None:
        assert messages[0].startswith("type must be one of the following values: ")
        assert "handoff" not in messages[0]
    else:
        assert messages == expected
    stats = admin.get("/_emulator/stats").json()
    assert stats["phone_numbers_total"] == stats["tools_total"] == 0


def test_a_body_must_be_a_json_object(api: httpx.Client) -> None:
    for path in ("/phone-number", "/tool"):
        assert _bad_request(api.post(path, json=[TWILIO])) == ["request body must be a JSON object"]
        raw = api.post(path, content=b"{nope", headers={"content-type": "application/json"})
        assert raw.status_code == 400


# -- accounts ------------------------------------------------------------------------------------


def test_accounts_are_isolated_for_every_kind(
    base_url: str, api: httpx.Client, other: httpx.Client
) -> None:
    number = _create(api, "/phone-number", TWILIO)
    tool = _create(api, "/tool", FUNCTION_TOOL)
    theirs = _create(other, "/phone-number", TWILIO)  # the same number in another account
    assert theirs["orgId"] != number["orgId"]
    assert tool["orgId"] == number["orgId"]
    for path in (f"/phone-number/{number['id']}", f"/tool/{tool['id']}"):
        assert other.get(path).status_code == 404
        assert other.patch(path, json={"name": "stolen"}).status_code == 404
        assert other.delete(path).status_code == 404
        assert api.get(path).status_code == 200
    assert _ids(other.get("/phone-number").json()) == [theirs["id"]]
    assert _ids(other.get("/v2/phone-number").json()["results"]) == [theirs["id"]]
    assert other.get("/tool").json() == []
    assert _ids(api.get("/v2/phone-number").json()["results"]) == [number["id"]]

    add_key(base_url, "kinds-tenant-a", "kinds-tenant-a-second")
    with emulator_client(base_url, "kinds-tenant-a-second") as second:
        assert second.get(f"/phone-number/{number['id']}").json() == number
        assert _ids(second.get("/tool").json()) == [tool["id"]]


def test_a_wrong_key_gets_401_on_every_kind(base_url: str) -> None:
    with emulator_client(base_url, "invalid-key") as wrong:
        for method, path in [
            ("GET", "/phone-number"),
            ("GET", "/v2/phone-number"),
            ("POST", "/phone-number"),
            ("GET", "/tool"),
            ("POST", "/tool"),
            ("DELETE", f"/tool/{uuid.uuid4()}"),
        ]:
            assert wrong.request(method, path, json={}).status_code == 401


# -- faults --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "body"), [("/phone-number", TWILIO), ("/tool", FUNCTION_TOOL)])
def test_commit_then_5xx_on_create(
    base_url: str, api: httpx.Client, admin: httpx.Client, path: str, body: dict[str, Any]
) -> None:
    fault(base_url, method="POST", path=path, mode="error_after_commit", status=502)
    response = api.post(path, json=body)
    assert response.status_code == 502
    assert "id" not in response.json()
    assert len(api.get(path).json()) == 1  # the record exists all the same
    retried = _create(api, path, body)  # a blind retry makes a second one
    assert len(api.get(path).json()) == 2
    assert retried["id"] in _ids(api.get(path).json())
    stats = admin.get("/_emulator/stats").json()
    assert stats["requests"][f"POST {path}"] == 2


@pytest.mark.parametrize(("path", "body"), [("/phone-number", TWILIO), ("/tool", FUNCTION_TOOL)])
def test_faults_on_the_items_of_each_kind(
    base_url: str, api: httpx.Client, path: str, body: dict[str, Any]
) -> None:
    a, b = _create(api, path, body), _create(api, path, body)
    fault(base_url, method="DELETE", path=f"{path}/{a['id']}", mode="error_after_commit")
    assert api.delete(f"{path}/{b['id']}").status_code == 200
    assert api.delete(f"{path}/{a['id']}").status_code == 500
    assert api.get(f"{path}/{a['id']}").status_code == 404  # deleted all the same
    c = _create(api, path, body)
    fault(base_url, method="PATCH", path=f"{path}/{{id}}", mode="error", status=503)
    patch = {"name": "changed"} if path == "/phone-number" else {"async": True}
    assert api.patch(f"{path}/{c['id']}", json=patch).status_code == 503
    assert api.get(f"{path}/{c['id']}").json() == c  # no work done
    fault(base_url, method="GET", path=path, mode="error", status=429)
    assert api.get(path).status_code == 429
    assert api.get(path).status_code == 200


def test_faults_on_the_v2_list_and_their_routes_checked(
    base_url: str, api: httpx.Client, admin: httpx.Client
) -> None:
    fault(base_url, method="GET", path="/v2/phone-number", mode="error", status=500)
    assert api.get("/phone-number").status_code == 200  # another route
    assert api.get("/v2/phone-number").status_code == 500
    for spec in (
        {"method": "GET", "path": "/tool/a/b", "mode": "error"},
        {"method": "POST", "path": "/tool/{id}", "mode": "error"},
        {"method": "POST", "path": "/v2/phone-number", "mode": "error"},
        {"method": "GET", "path": "/v2/phone-number/x", "mode": "error"},
    ):
        assert admin.post("/_emulator/faults", json=spec).status_code == 400, spec
    fault(base_url, method="GET", path="/phone-number/{id}", mode="error", status=500)
    assert api.get("/v2/phone-number").status_code == 200  # not an item of /phone-number


def test_late_commit_on_a_tool(base_url: str, api: httpx.Client) -> None:
    fault(base_url, method="POST", path="/tool", mode="late_commit", delay_ms=50, status=504)
    assert api.post("/tool", json=FUNCTION_TOOL).status_code == 504
    assert len(api.get("/tool").json()) == 1


def test_reset_forgets_every_kind(api: httpx.Client, admin: httpx.Client) -> None:
    number = _create(api, "/phone-number", TWILIO)
    _create(api, "/tool", {"type": "endCall"})
    assert admin.post("/_emulator/reset").status_code == 200
    assert api.get("/phone-number").json() == []
    assert api.get("/tool").json() == []
    assert api.get(f"/phone-number/{number['id']}").status_code == 404
