"""The client every tenant shares keeps no cookie, and the Vapi client's remembered URLs are the
ones httpx would build (`reconciler.sharedhttp`, `VapiReader._url`)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.providers.verify import http_client as provider_client
from reconciler.sharedhttp import SharedClient
from reconciler.vapi.client import VapiReader, http_client

BASE = "https://api.vapi.test"


def _cookie_setter(seen: list[httpx.Request]) -> httpx.MockTransport:
    """Every answer sets a cookie (a session, as a load balancer or a login would)."""

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        key = request.headers.get("authorization", "")
        return httpx.Response(
            200,
            json=[],
            headers=[
                ("Set-Cookie", f"session={key[-6:]}; Path=/"),
                ("Set-Cookie", f"lb=node-1; Domain={request.url.host}; Path=/; Secure"),
            ],
        )

    return httpx.MockTransport(answer)


def test_a_cookie_of_one_tenant_never_rides_on_another_tenants_request() -> None:
    seen: list[httpx.Request] = []
    with http_client(BASE, transport=_cookie_setter(seen)) as http:
        VapiReader(http, "sk-tenant-a-000001").list_assistants()
        VapiReader(http, "sk-tenant-b-000002").list_assistants()
        VapiReader(http, "sk-tenant-a-000001").list_objects("/tool")
        assert [str(r.url) for r in seen] == [
            f"{BASE}/assistant?limit=1000",
            f"{BASE}/assistant?limit=1000",
            f"{BASE}/tool?limit=1000",
        ]
        assert [r.headers.get("cookie") for r in seen] == [None, None, None]


def test_a_cookie_set_on_the_shared_client_is_not_kept() -> None:
    seen: list[httpx.Request] = []
    with http_client(BASE, transport=_cookie_setter(seen)) as http:
        http.cookies.set("session", "tenant-a")
        http.cookies["lb"] = "node-1"
        http.cookies.update({"other": "x"})
        VapiReader(http, "sk-tenant-b-000002").list_assistants()
        assert seen[0].headers.get("cookie") is None
        assert not http.cookies


def test_the_provider_client_keeps_no_cookie_either() -> None:
    seen: list[httpx.Request] = []
    with provider_client(transport=_cookie_setter(seen)) as http:
        for _ in range(2):
            http.get(f"{BASE}/v1/voices").raise_for_status()
        assert [r.headers.get("cookie") for r in seen] == [None, None]


def test_a_shared_client_takes_no_cookies() -> None:
    with pytest.raises(TypeError):
        SharedClient(cookies={"session": "x"})
    with SharedClient() as http, pytest.raises(TypeError):
        http.cookies = {"session": "x"}


paths = st.sampled_from(["/assistant", "/tool", "/phone-number", "/v2/phone-number"]) | st.builds(
    lambda kind, ident: f"/{kind}/{ident}",
    st.sampled_from(["assistant", "tool", "phone-number"]),
    st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=12),
)
params = st.none() | st.dictionaries(
    st.sampled_from(["limit", "createdAtGe", "createdAtLe", "search", "page"]),
    st.integers(0, 10**6) | st.text(max_size=20) | st.booleans() | st.sampled_from([1, 1.0, 0]),
    max_size=3,
)


@settings(max_examples=200, deadline=None)
@given(
    base=st.sampled_from([BASE, f"{BASE}/", f"{BASE}/v1", "http://127.0.0.1:8123/prefix/"]),
    path=paths,
    query=params,
)
def test_a_remembered_url_is_the_one_httpx_builds(
    base: str, path: str, query: dict[str, Any] | None
) -> None:
    with http_client(base) as http:
        reader = VapiReader(http, "sk-x")
        try:
            built = http.build_request("GET", path, params=query).url
        except httpx.InvalidURL:  # refused as before, and not remembered
            with pytest.raises(httpx.InvalidURL):
                reader._url(path, query)
            return
        assert reader._url(path, query) == built
        assert reader._url(path, query) == built  # remembered: the same again


def test_remembered_urls_are_per_base_url() -> None:
    with http_client(BASE) as a, http_client("http://127.0.0.1:9/other/") as b:
        first = VapiReader(a, "k")._url("/assistant", {"limit": 1000})
        second = VapiReader(b, "k")._url("/assistant", {"limit": 1000})
    assert str(first) == f"{BASE}/assistant?limit=1000"
    assert str(second) == "http://127.0.0.1:9/other/assistant?limit=1000"


def test_a_client_with_a_query_of_its_own_sends_both() -> None:
    seen: list[httpx.Request] = []
    with httpx.Client(
        base_url=BASE, params={"tenant": "t1"}, transport=_cookie_setter(seen)
    ) as http:
        VapiReader(http, "sk-x").list_objects("/tool")
    assert str(seen[0].url) == f"{BASE}/tool?tenant=t1&limit=1000"


def test_one_true_and_one_point_zero_are_three_queries() -> None:
    with http_client(BASE) as http:
        reader = VapiReader(http, "sk-x")
        urls = [str(reader._url("/tool", {"page": v})) for v in (1, True, 1.0)]
    assert urls == [f"{BASE}/tool?page=1", f"{BASE}/tool?page=true", f"{BASE}/tool?page=1.0"]


def test_a_list_value_is_sent_as_httpx_sends_it_not_remembered() -> None:
    seen: list[httpx.Request] = []
    with http_client(BASE, transport=_cookie_setter(seen)) as http:
        reader = VapiReader(http, "sk-x")
        assert reader._url("/tool", {"id": ["a", "b"]}) is None
        reader._request("GET", "/tool", params={"id": ["a", "b"]})
    assert str(seen[0].url) == f"{BASE}/tool?id=a&id=b"
