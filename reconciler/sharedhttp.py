"""The httpx client every tenant's calls share: it keeps no cookie.

One client (one connection pool) serves every org, so a cookie one tenant's answer sets must
never ride on another tenant's request. A jar whose policy refuses every domain already keeps
none, but httpx still wraps each answer and its request in urllib's types to offer them to it:
about a tenth of the CPU of a no-op list call (`bench/bench_noop.py`). `SharedClient` offers
nothing: its cookies never take an answer's, and their jar refuses them as well, should httpx
ever reach it another way.
"""

from __future__ import annotations

import http.cookiejar
from typing import Any

import httpx


def refusing_jar() -> http.cookiejar.CookieJar:
    """A jar that accepts no cookie from any domain."""
    return http.cookiejar.CookieJar(policy=http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))


class NoCookies(httpx.Cookies):
    """Cookies that never take one from an answer (and sit on a refusing jar)."""

    def __init__(self) -> None:
        super().__init__(refusing_jar())

    def extract_cookies(self, response: httpx.Response) -> None:
        return None


class SharedClient(httpx.Client):
    """An `httpx.Client` whose cookies are always `NoCookies`: none given, none kept."""

    def __init__(self, **kwargs: Any) -> None:
        if "cookies" in kwargs:
            raise TypeError("a SharedClient keeps no cookies")
        self._none_kept = NoCookies()
        super().__init__(**kwargs)

    @property
    def cookies(self) -> httpx.Cookies:
        return self._none_kept

    @cookies.setter
    def cookies(self, cookies: Any) -> None:
        raise TypeError("a SharedClient keeps no cookies")
