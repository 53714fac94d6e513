"""Our httpx client for Vapi's /assistant API: paging, timeouts, retries that never duplicate.

`VapiReader` can only read; `VapiWriter` adds the writes. `plan` is given readers only.
"""

from __future__ import annotations

import contextlib
import email.utils
import http.cookiejar
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from reconciler.errors import ReconcilerError

PAGE_LIMIT = 1000  # Vapi's maximum; fewer round trips than the default 100
USER_AGENT = "vapi-reconciler/0.1"


class VapiError(ReconcilerError):
    """A Vapi call failed; the message names the call and the reason, never the key."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class VapiAuthError(VapiError):
    """401/403: the org's API key is wrong or revoked."""


class VapiNotFound(VapiError):
    """404: unknown id, or an id of another account."""


class VapiAmbiguousWrite(VapiError):
    """A create may or may not have happened (5xx or lost response): look before retrying."""


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 4
    base_s: float = 0.5
    cap_s: float = 10.0
    max_retry_after_s: float = 60.0
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)

    def backoff(self, attempt: int, retry_after: str | None) -> float:
        hinted = _parse_retry_after(retry_after)
        if hinted is not None:
            return min(hinted, self.max_retry_after_s)
        exp = min(self.cap_s, self.base_s * (2**attempt))
        return random.uniform(exp / 2, exp)  # noqa: S311 - jitter, not crypto


def _parse_retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _message(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.reason_phrase or f"HTTP {resp.status_code}"
    msg = body.get("message") if isinstance(body, dict) else None
    if isinstance(msg, list):
        msg = "; ".join(str(m) for m in msg)
    return str(msg or resp.reason_phrase or f"HTTP {resp.status_code}")[:300]


class VapiReader:
    """Read access to one Vapi account (one org's API key)."""

    def __init__(
        self, http: httpx.Client, api_key: str, *, retry: RetryPolicy | None = None
    ) -> None:
        self._http = http
        self._headers = {"Authorization": f"Bearer {api_key}"}
        self._retry = retry or RetryPolicy()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._http.base_url})"

    def _request(
        self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None
    ) -> Any:
        idempotent = method != "POST"
        what = f"{method} {path}"
        for attempt in range(self._retry.attempts):
            last = attempt == self._retry.attempts - 1
            try:
                resp = self._http.request(
                    method, path, json=json, params=params, headers=self._headers
                )
            except httpx.TimeoutException as exc:
                sent = not isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout)
                if sent and not idempotent:
                    raise VapiAmbiguousWrite(f"{what}: timed out, outcome unknown") from None
                if last:
                    raise VapiError(f"{what}: timed out") from None
            except httpx.TransportError as exc:
                # A connect error never reached Vapi; other transport errors may have.
                if not isinstance(exc, httpx.ConnectError) and not idempotent:
                    raise VapiAmbiguousWrite(f"{what}: connection lost, outcome unknown") from None
                if last:
                    raise VapiError(f"{what}: {type(exc).__name__}") from None
            else:
                code = resp.status_code
                if code < 400:
                    try:
                        return resp.json()
                    except ValueError:
                        raise VapiError(f"{what}: {code} with a body that is not JSON") from None
                if code in (401, 403):
                    raise VapiAuthError(f"{what}: Vapi rejected the API key ({code})", status=code)
                if code == 404:
                    raise VapiNotFound(f"{what}: not found", status=404)
                if not idempotent and (code >= 500 or code == 429):
                    # A 429 should mean "not processed", but a proxy or a rate limiter placed
                    # after the handler can break that promise; a duplicate costs more than a
                    # list call, so the caller looks for its tag before any second POST.
                    if code == 429:
                        self._retry.sleep(
                            self._retry.backoff(attempt, resp.headers.get("Retry-After"))
                        )
                    raise VapiAmbiguousWrite(
                        f"{what}: Vapi answered {code}, outcome unknown", status=code
                    )
                retryable = code == 429 or code >= 500
                if not retryable or last:
                    raise VapiError(f"{what}: {code} {_message(resp)}", status=code)
                self._retry.sleep(self._retry.backoff(attempt, resp.headers.get("Retry-After")))
                continue
            self._retry.sleep(self._retry.backoff(attempt, None))
        raise AssertionError("unreachable")  # pragma: no cover

    def list_assistants(self, *, limit: int = PAGE_LIMIT) -> list[dict[str, Any]]:
        """Every assistant in the account, whatever order Vapi lists them in.

        A page shorter than `limit` covers its whole createdAt range. A full page covers only
        part of it; what it left out lies at either end, so both ends are asked again
        (`createdAtGe` / `createdAtLe`, inclusive). De-duplication by id absorbs the overlaps.
        """
        seen: dict[str, dict[str, Any]] = {}
        ranges: list[tuple[str | None, str | None]] = [(None, None)]
        while ranges:
            low, high = ranges.pop()
            params: dict[str, Any] = {"limit": limit}
            if low is not None:
                params["createdAtGe"] = low
            if high is not None:
                params["createdAtLe"] = high
            page = self._request("GET", "/assistant", params=params)
            if not isinstance(page, list) or not all(
                isinstance(a, dict) and isinstance(a.get("id"), str) and "createdAt" in a
                for a in page
            ):
                raise VapiError("GET /assistant: unexpected response shape")
            fresh = [a for a in page if a["id"] not in seen]
            for item in fresh:
                seen[item["id"]] = item
            if len(page) < limit:
                continue
            if not fresh:
                raise VapiError(f"GET /assistant: at least {limit} assistants share a createdAt")
            oldest = min(a["createdAt"] for a in page)
            newest = max(a["createdAt"] for a in page)
            if oldest != low:
                ranges.append((low, oldest))
            if newest != high:
                ranges.append((newest, high))
        return list(seen.values())

    def get_assistant(self, assistant_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._request("GET", f"/assistant/{assistant_id}")
        return result


class VapiWriter(VapiReader):
    """Read and write access to one Vapi account."""

    def create_assistant(self, body: dict[str, Any]) -> dict[str, Any]:
        """Never retried here once sent (only a refused connection is): on 5xx, 429, a timeout
        or a lost connection it raises VapiAmbiguousWrite and the caller looks for its tag."""
        result: dict[str, Any] = self._request("POST", "/assistant", json=body)
        return result

    def update_assistant(self, assistant_id: str, body: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self._request("PATCH", f"/assistant/{assistant_id}", json=body)
        return result

    def delete_assistant(self, assistant_id: str) -> None:
        # already gone (e.g. our retried DELETE had succeeded): the goal holds
        with contextlib.suppress(VapiNotFound):
            self._request("DELETE", f"/assistant/{assistant_id}")


def http_client(
    base_url: str, *, timeout_s: float = 30.0, max_connections: int = 64
) -> httpx.Client:
    """One pooled client shared by all orgs; each request carries its org's key."""
    return httpx.Client(
        base_url=base_url,
        # no cookie jar: a cookie set for one tenant must never ride on another's requests
        cookies=http.cookiejar.CookieJar(
            policy=http.cookiejar.DefaultCookiePolicy(allowed_domains=[])
        ),
        timeout=httpx.Timeout(timeout_s, connect=min(10.0, timeout_s)),
        limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=32),
        headers={"User-Agent": USER_AGENT},
    )
