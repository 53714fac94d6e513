"""The httpx clients every tenant's calls share keep no cookie.

One client (one connection pool) serves every org, so a cookie one tenant's answer sets must
never ride on another tenant's request. A jar whose policy refuses every domain already keeps
none, but httpx still wraps each answer and its request in urllib's types to offer them to it:
about a tenth of the CPU of a list call, measured alone. `SharedClient` (the Vapi and the
provider clients) offers nothing: its cookies never take an answer's, and their jar
(`EmptyJar`) stores none, whoever sets one. The webhook forwarder's async clients hold an
`EmptyJar` too (two orgs may forward to one host; every org's webhooks go to the operator's).
"""

from __future__ import annotations

import http.cookiejar
from typing import Any

import httpx


class EmptyJar(http.cookiejar.CookieJar):
    """A jar that stores no cookie, whoever offers one: an answer's `Set-Cookie` (also
    refused by its policy) or code that sets one on the client."""

    def __init__(self) -> None:
        super().__init__(policy=http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))

    def set_cookie(self, cookie: http.cookiejar.Cookie) -> None:
        return None

    def set_cookie_if_ok(self, cookie: http.cookiejar.Cookie, request: Any) -> None:
        return None

    def extract_cookies(self, response: Any, request: Any) -> None:
        return None


class NoCookies(httpx.Cookies):
    """Cookies that never hold one: on an `EmptyJar`, and never offering it an answer."""

    def __init__(self) -> None:
        super().__init__(EmptyJar())

    def extract_cookies(self, response: httpx.Response) -> None:
        return None


class SharedClient(httpx.Client):
    """An `httpx.Client` whose cookies are always `NoCookies`: none given, none kept.
    `direct`: the transport it sends every request on (it has no other), named so that a
    caller may hand it a request as the client would (`vapi.client`); None: not named."""

    def __init__(self, *, direct: httpx.BaseTransport | None = None, **kwargs: Any) -> None:
        if "cookies" in kwargs:
            raise TypeError("a SharedClient keeps no cookies")
        if direct is not None and (
            kwargs.get("transport") is not direct or kwargs.get("mounts") or kwargs.get("proxy")
        ):
            raise ValueError("direct must be the client's one transport")
        self._none_kept = NoCookies()
        self.direct = direct
        super().__init__(**kwargs)  # given a transport, httpx mounts no proxy of the environment

    @property
    def cookies(self) -> httpx.Cookies:
        return self._none_kept

    @cookies.setter
    def cookies(self, cookies: Any) -> None:
        raise TypeError("a SharedClient keeps no cookies")
