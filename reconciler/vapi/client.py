"""Our httpx client for Vapi's /assistant API: paging, timeouts, retries that never duplicate.

`VapiReader` can only read; `VapiWriter` adds the writes. `plan` is given readers only.

What a failed call raises (every one a `VapiError`; nothing else escapes a call):

    VapiError                    the call failed; for GET/PATCH/DELETE after bounded retries
    ├── VapiRejected             a definite refusal (400 401 403 404 405 413 415 422): the
    │   │                        request had no effect; for a POST, nothing was created
    │   ├── VapiAuthError        401/403: the org's API key is wrong or revoked
    │   └── VapiNotFound         404: unknown id, or an id of another account
    └── VapiAmbiguousWrite       a POST whose outcome is unknown: look for the tag before any
        └── VapiRateLimited      second POST; a POST answered 429 (never slept on, never retried)

Every message is one line of at most 300 characters; whatever part of it comes from Vapi's
answer is masked (`reconciler.redact`: secret-looking JSON keys, this client's API key, bearer
tokens, ...), escaped and cut short.
"""

from __future__ import annotations

import email.utils
import functools
import json
import random
import re
import time
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx

from reconciler.bounded import ACCEPT_ENCODING, UndecodableAnswer, read_at_most
from reconciler.errors import ReconcilerError
from reconciler.redact import mask_tree, printable, redact_text, redact_tree, safe_message
from reconciler.sharedhttp import SharedClient
from reconciler.tls import ssl_context
from reconciler.vapi.transport import GetTransport

PAGE_LIMIT = 1000  # Vapi's maximum; fewer round trips than the default 100
USER_AGENT = "vapi-reconciler/0.1"
MAX_BODY_BYTES = 64 * 1024 * 1024  # a successful answer larger than this is refused
ERROR_BODY_BYTES = 64 * 1024  # of an error answer only this much is read (for its reason)
MAX_DEPTH = 64  # an answer nested deeper is refused (our specs are bounded the same way)
MESSAGE_LIMIT = 300  # every VapiError message fits in this many characters, on one line
REASON_LIMIT = 200  # the part of a message that quotes Vapi's answer
# A POST answered with one of these was refused before anything was created. Every other
# non-2xx answer to a POST (408, 409, 425, 429, 5xx, 3xx, ...) leaves its outcome unknown.
DEFINITE_REFUSALS = frozenset({400, 401, 403, 404, 405, 413, 415, 422})
_URLS: dict[tuple[str, str, tuple[tuple[str, type, Any], ...]], httpx.URL] = {}  # `VapiReader._url`
_URLS_KEPT = 1024
_ESCAPED_QUOTES = re.compile(r'\\+"')
_NEXT_RUN = "not retried in this run: the next run looks for it before creating again"


class VapiError(ReconcilerError):
    """A Vapi call failed; the message names the call and the reason, never the key.

    `status` is the HTTP status of Vapi's error answer, or None when there was none (timeout,
    lost connection, a 2xx answer we could not read). The facts a caller acts on are typed,
    never read from the message: `nothing_created` (a create that was definitely refused) and
    `says_next_run` (the message already tells that the next run looks before creating). A
    create refused with `nothing_created` says so in its message too."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        nothing_created: bool = False,
        says_next_run: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.nothing_created = nothing_created
        self.says_next_run = says_next_run


class VapiRejected(VapiError):
    """Vapi definitely refused the request (400, 401, 403, 404, 405, 413, 415 or 422): it had
    no effect, so a refused create created nothing and needs no look for its tag.

    `status` is always set; `reason` is Vapi's reason (the NestJS `message`, joined if a list),
    masked and cut short, as it appears in the message."""

    status: int

    def __init__(
        self, message: str, *, status: int, reason: str = "", nothing_created: bool = False
    ) -> None:
        super().__init__(message, status=status, nothing_created=nothing_created)
        self.reason = reason


class VapiAuthError(VapiRejected):
    """401/403: the org's API key is wrong or revoked (a definite refusal, like any
    VapiRejected: a POST refused so created nothing)."""


class VapiNotFound(VapiRejected):
    """404: unknown id, or an id of another account."""


class VapiAmbiguousWrite(VapiError):
    """A create may or may not have happened: a timeout or a lost connection once the request
    may have been sent, a 5xx, a 429 or another 4xx that is not a definite refusal, a 3xx, or a
    2xx whose body we cannot read. It is never retried here: the caller lists the account and
    looks for its ownership tag before any second POST."""


class VapiRateLimited(VapiAmbiguousWrite):
    """A POST answered 429. Raised at once, with no sleep (the caller holds the org's lock) and
    no retry: a limiter placed after the handler may have let the create through, so it stays
    ambiguous. `retry_after_s` is Vapi's Retry-After in seconds, if it sent a readable one."""

    def __init__(self, message: str, *, retry_after_s: float | None) -> None:
        super().__init__(message, status=429, says_next_run=True)
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of GET, PATCH and DELETE on 429, 5xx, timeouts and lost connections (and of a
    POST whose connection was refused, so never sent): at most `attempts` tries, with jittered
    exponential backoff or Vapi's Retry-After. A Retry-After above `max_retry_after_s` is not
    waited for (the call fails at once), and one call never sleeps more than
    `max_total_wait_s` in all."""

    attempts: int = 4
    base_s: float = 0.5
    cap_s: float = 10.0
    max_retry_after_s: float = 10.0
    max_total_wait_s: float = 20.0
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)

    def backoff(self, attempt: int) -> float:
        exp = min(self.cap_s, self.base_s * (2**attempt))
        return random.uniform(exp / 2, exp)  # noqa: S311 - jitter, not crypto


def _parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date), or None."""
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError, OverflowError, IndexError):
        return None


def _seconds(value: float) -> str:
    if value >= 1e9:
        return f"{value:.3g}"
    return f"{value:.0f}" if value >= 10 else f"{value:.2g}"


def _compose(head: str, reason: str = "", tail: str = "") -> str:
    """`head: reason tail` on one line within MESSAGE_LIMIT; only the reason is shortened."""
    if not reason:
        return printable(head + tail, MESSAGE_LIMIT)
    room = MESSAGE_LIMIT - len(head) - len(tail) - 2
    if len(reason) > room:
        reason = reason[: max(0, room - 3)] + "..."
    return printable(f"{head}: {reason}{tail}", MESSAGE_LIMIT)


@dataclass(frozen=True)
class _Answer:
    status: int
    headers: httpx.Headers
    body: bytes
    cut: bool  # the body was longer than what was read
    note: str = ""  # why the body could not be read, if it could not


def _read_at_most(resp: httpx.Response, limit: int) -> tuple[bytes, bool]:
    """At most `limit` bytes of the decoded body (decompressed in bounded pieces, counted as
    they are produced), and whether there was more."""
    try:
        return read_at_most(resp, limit)
    except UndecodableAnswer as exc:  # as httpx's own decoding errors: an unreadable body
        raise httpx.DecodingError(str(exc)) from None


def _declared_length(resp: httpx.Response) -> int | None:
    try:
        return int(resp.headers.get("Content-Length", ""))
    except ValueError:
        return None


def _secret_leaves(body: Any) -> tuple[str, ...]:
    """The string values under secret-looking keys of a request body."""
    found: list[str] = []

    def keep(leaf: Any) -> Any:
        if isinstance(leaf, str):
            found.append(leaf)
        return leaf

    mask_tree(body, keep)
    return tuple(found)


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether JSON `value` nests more than `limit` levels (iteratively: no recursion). Only
    containers are walked (a JSON parser makes dicts and lists): every list call's answer
    goes through here."""
    if type(value) is not dict and type(value) is not list:
        return False
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if depth >= limit:
            return True
        for child in node.values() if type(node) is dict else node:
            if type(child) is dict or type(child) is list:
                stack.append((child, depth + 1))
    return False


@functools.lru_cache(maxsize=1024)
def _what(method: str, path: str) -> str:
    """`GET /assistant`, as an error names the call: made once per call and path, not for
    every answer (most need none)."""
    return printable(f"{method} {path}", 80)


class _DirectGet:
    """A GET handed straight to the client's own transport, as `client.stream("GET", url,
    headers=own)` sends it (the same request: the client's headers, then the call's; its
    timeouts; its response hooks called), without the client's work for each request
    (merging the URL, headers, cookies and query, the auth and redirect flows): a quarter of
    the CPU of a list call, which every org makes for each kind on every run. Made only for
    a client with none of that work to do (`of`); the tests compare the two requests byte for
    byte."""

    __slots__ = ("by_host", "headers", "hooks", "timeout", "transport")

    def __init__(self, http: httpx.Client, transport: GetTransport, own: dict[str, str]) -> None:
        self.transport = transport
        self.headers = [*http.headers.raw, *((k.encode(), v.encode()) for k, v in own.items())]
        self.timeout = http.timeout.as_dict()
        self.hooks = tuple(http.event_hooks["response"])
        self.by_host: dict[bytes, httpx.Headers] = {}  # the request's headers, by `Host`

    @classmethod
    def of(cls, http: httpx.Client, own: dict[str, str]) -> _DirectGet | None:
        """None unless `http` names its one transport as ours (`SharedClient.direct`) and has
        no auth (nor a user in its base URL), request hooks, query of its own, redirects to
        follow, `Host` or header of the call's names already: then the client's own way (a
        closed client's too: it refuses to send)."""
        transport = getattr(http, "direct", None)
        if (
            not isinstance(transport, GetTransport)
            or http.auth is not None
            or http.base_url.userinfo  # httpx makes basic auth of it
            or http.event_hooks["request"]
            or http.params
            or http.follow_redirects
            or any(name in http.headers for name in (*own, "host"))
        ):
            return None
        return cls(http, transport, own)

    def _request(self, url: httpx.URL) -> httpx.Request:
        # extensions of its own, as the client gives each request (a transport may add to them)
        extensions = {"timeout": dict(self.timeout)}
        if not url.host:
            return httpx.Request("GET", url, headers=self.headers, extensions=extensions)
        # as httpx makes it for a GET without a body (`Host` first, an empty body read), with
        # the headers made once for the host rather than twice for each request
        netloc = url.netloc
        headers = self.by_host.get(netloc)
        if headers is None:
            headers = httpx.Headers([(b"Host", netloc), *self.headers])
            if len(self.by_host) < 4:
                self.by_host[netloc] = headers
        request = httpx.Request(
            "GET", url, headers=headers, stream=httpx.ByteStream(b""), extensions=extensions
        )
        request.read()
        return request

    def send(self, url: httpx.URL) -> httpx.Response:
        request = self._request(url)
        response = self.transport.handle_request(request)
        response.request = request
        try:
            for hook in self.hooks:
                hook(response)
        except BaseException:
            response.close()
            raise
        return response


class VapiReader:
    """Read access to one Vapi account (one org's API key)."""

    def __init__(
        self,
        http: httpx.Client,
        api_key: str,
        *,
        retry: RetryPolicy | None = None,
        max_body_bytes: int = MAX_BODY_BYTES,
        secrets: Iterable[str] | Callable[[], Iterable[str]] = (),
    ) -> None:
        """`secrets`: the org's other secret values (its webhook secret, ...), masked like the
        key wherever an answer we quote holds one; or what gives them, asked the first time an
        answer is quoted (a converged org's reader quotes none, and finding them walks every
        body of the org)."""
        self._http = http
        self._headers = {"Authorization": f"Bearer {api_key}"}
        self._api_key = api_key
        self._secrets = secrets
        self._known_values: tuple[str, ...] | None = None
        self._sent: tuple[str, ...] = ()  # secret leaves of the body in flight
        self._retry = retry or RetryPolicy()
        self._max_body = max_body_bytes
        self._unsendable = (
            None
            if api_key.isascii() and api_key.isprintable()
            else ("the API key has characters an HTTP header cannot carry (printable ASCII only)")
        )
        self._direct = _DirectGet.of(http, self._headers) if self._unsendable is None else None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._http.base_url})"

    @property
    def _known(self) -> tuple[str, ...]:
        """The key and the org's other secrets: what an answer we quote is masked of."""
        known = self._known_values
        if known is None:
            more = self._secrets() if callable(self._secrets) else self._secrets
            known = self._known_values = (self._api_key, *more)
        return known

    # -- one exchange --------------------------------------------------------------------------

    def _url(self, path: str, params: dict[str, Any] | None) -> httpx.URL | None:
        """The absolute URL httpx makes of `path` and `params` on this client, remembered:
        every org's list calls ask the same few, and httpx parses the base, the path and the
        query again for each request (a quarter of the CPU of a no-op list call). None: the
        client has a query of its own, which httpx puts in place of a URL's, or a value that
        cannot be a key: then httpx builds it from `path` and `params`, as ever."""
        if self._http.params:  # the client's own query is merged into each request: not here
            return None
        query = tuple((k, type(v), v) for k, v in params.items()) if params else ()
        key = (str(self._http.base_url), path, query)  # typed: 1, 1.0 and True are 3 queries
        try:
            url = _URLS.get(key)
        except TypeError:  # a value that is not hashable (a list): built by httpx each time
            return None
        if url is None:
            url = self._http.build_request("GET", path, params=params).url
            if len(_URLS) >= _URLS_KEPT:  # many ids or pages: start again
                _URLS.clear()
            _URLS[key] = url
        return url

    def _exchange(
        self, method: str, path: str, json_body: Any, params: dict[str, Any] | None
    ) -> _Answer:
        url = self._url(path, params)
        direct = self._direct
        if method == "GET" and url is not None and direct is not None and not self._http.is_closed:
            resp = direct.send(url)
            try:
                return self._answer(resp)
            finally:
                resp.close()
        target, query = (path, params) if url is None else (url, None)
        with self._http.stream(
            method, target, json=json_body, params=query, headers=self._headers
        ) as resp:
            return self._answer(resp)

    def _answer(self, resp: httpx.Response) -> _Answer:
        if resp.is_success:
            declared = _declared_length(resp)
            if declared is not None and declared > self._max_body:
                return _Answer(resp.status_code, resp.headers, b"", cut=True)
            body, cut = _read_at_most(resp, self._max_body)
            return _Answer(resp.status_code, resp.headers, body, cut)
        # An error's status is known once its head arrived: its body only gives the reason.
        try:
            body, cut = _read_at_most(resp, ERROR_BODY_BYTES)
        except httpx.HTTPError as exc:
            return _Answer(resp.status_code, resp.headers, b"", False, type(exc).__name__)
        return _Answer(resp.status_code, resp.headers, body, cut)

    def _reason(self, answer: _Answer) -> str:
        """Vapi's reason for an error answer: the NestJS `message` (joined if a list), else the
        whole body; masked (JSON by key first, then the text), escaped and cut short."""
        if answer.note:
            text = f"(body unreadable: {answer.note})"
        elif answer.cut:
            text = f"(a body over {ERROR_BODY_BYTES // 1024} KiB, not shown)"
        else:
            text = answer.body.decode("utf-8", errors="replace").strip()
            try:
                text = self._json_reason(json.loads(text))
            except RecursionError:
                text = "(a JSON body nested too deeply to show)"
            except ValueError:
                pass  # not JSON: the text itself, masked below
        if not text.strip():
            text = httpx.codes.get_reason_phrase(answer.status) or f"HTTP {answer.status}"
        # JSON quoted inside a string (an echoed request body) hides its `\"key\": \"value\"`
        # pairs from the masking: shown with plain quotes, they are found and masked.
        text = _ESCAPED_QUOTES.sub('"', text)
        return safe_message(text, known=self._known + self._sent, limit=REASON_LIMIT)

    def _json_reason(self, body: Any) -> str:
        """The reason in a JSON error body, every part masked before it is joined or dumped:
        once dumped, a string leaf's quotes are escaped and its `"key": "value"` pairs would
        no longer be seen as such."""
        body = self._mask_text(redact_tree(body))
        msg = body.get("message") if isinstance(body, dict) else None
        if isinstance(msg, list) and msg:
            return "; ".join(
                m if isinstance(m, str) else json.dumps(m, ensure_ascii=False) for m in msg
            )
        if isinstance(msg, str) and msg.strip():
            return msg
        if msg not in (None, "", []):
            return json.dumps(msg, ensure_ascii=False)
        return json.dumps(body, ensure_ascii=False)

    def _mask_text(self, value: Any) -> Any:
        """`value` with free-text masking applied to every string in it, keys included."""
        if isinstance(value, str):
            return redact_text(value, known=self._known + self._sent)
        if isinstance(value, dict):
            return {self._mask_text(str(k)): self._mask_text(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._mask_text(v) for v in value]
        return value

    def _error_for(self, what: str, answer: _Answer, post: bool) -> VapiError:
        """The error for a non-2xx answer that is not retried."""
        code = answer.status
        if post and code == 429:
            hint = _parse_retry_after(answer.headers.get("Retry-After"))
            asked = "" if hint is None else f", Retry-After {_seconds(hint)} s"
            head = f"{what}: Vapi answered 429 (rate limited{asked}), outcome unknown"
            return VapiRateLimited(_compose(f"{head}; {_NEXT_RUN}"), retry_after_s=hint)
        reason = self._reason(answer)
        if code in DEFINITE_REFUSALS:
            created = ", nothing was created" if post else ""
            cls: type[VapiRejected]
            if code in (401, 403):
                head, cls = f"{what}: Vapi rejected the API key ({code}){created}", VapiAuthError
            elif code == 404:
                head, cls = f"{what}: not found (404){created}", VapiNotFound
            else:
                head, cls = f"{what}: Vapi refused it ({code}){created}", VapiRejected
            return cls(_compose(head, reason), status=code, reason=reason, nothing_created=post)
        if post:
            # A 5xx, a 3xx or a 4xx such as 408/409/425 does not say whether the create
            # happened; a duplicate costs more than a list call, so the caller looks first.
            return VapiAmbiguousWrite(
                _compose(f"{what}: Vapi answered {code}, outcome unknown", reason), status=code
            )
        return VapiError(_compose(f"{what}: Vapi answered {code}", reason), status=code)

    def _odd(self, what: str, post: bool, status: int, what_was_odd: str) -> VapiError:
        """A 2xx answer we cannot use. For a POST the create probably happened: ambiguous."""
        head = f"{what}: Vapi answered {status} with {what_was_odd}"
        if post:
            return VapiAmbiguousWrite(
                _compose(head, tail=f", outcome unknown; {_NEXT_RUN}"), says_next_run=True
            )
        return VapiError(_compose(head))

    # -- the retry loop --------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: dict[str, Any] | None = None,
    ) -> tuple[int, bytes]:
        """The status and body of a 2xx answer, after bounded retries of idempotent calls.

        A POST is retried only when its connection was refused (never sent); every other
        failure of a POST raises at once, ambiguous unless Vapi's answer was a definite refusal.
        """
        post = method == "POST"
        what = _what(method, path)
        if self._unsendable is not None:  # refused here: nothing was sent
            created = ", nothing was created" if post else ""
            raise VapiRejected(
                f"{what}: {self._unsendable}{created}", status=400, nothing_created=post
            )
        self._sent = _secret_leaves(json_body)  # an echo of them in an error is masked too
        policy = self._retry
        waited = 0.0
        for attempt in range(policy.attempts):
            hint: float | None = None
            try:
                answer = self._exchange(method, path, json_body, params)
            except httpx.TimeoutException as exc:
                sent = not isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout)
                if sent and post:
                    raise VapiAmbiguousWrite(f"{what}: timed out, outcome unknown") from None
                head, reason, status = f"{what}: timed out", "", None
            except httpx.TransportError as exc:
                # A connect error never reached Vapi; other transport errors may have.
                name = type(exc).__name__
                if not isinstance(exc, httpx.ConnectError) and post:
                    raise VapiAmbiguousWrite(
                        f"{what}: connection lost ({name}), outcome unknown"
                    ) from None
                head, reason, status = f"{what}: {name}", "", None
            except httpx.HTTPError as exc:  # e.g. a body that fails to decompress
                name = type(exc).__name__
                if post:
                    raise VapiAmbiguousWrite(
                        f"{what}: unreadable answer ({name}), outcome unknown"
                    ) from None
                raise VapiError(f"{what}: unreadable answer ({name})") from None
            else:
                code = answer.status
                if 200 <= code < 300:
                    if answer.cut and method != "DELETE":  # a DELETE's status says it all
                        limit = f"{self._max_body // (1024 * 1024)} MiB"
                        raise self._odd(what, post, code, f"a body over {limit}") from None
                    return code, answer.body
                if post or not (code == 429 or code >= 500):
                    raise self._error_for(what, answer, post)
                hint = _parse_retry_after(answer.headers.get("Retry-After"))
                if hint is not None and hint > policy.max_retry_after_s:
                    asked = "rate limited: Vapi" if code == 429 else f"Vapi answered {code} and"
                    raise VapiError(
                        _compose(
                            f"{what}: {asked} asks to retry after {_seconds(hint)} s; "
                            "giving up for this run"
                        ),
                        status=code,
                    )
                head, reason, status = f"{what}: Vapi answered {code}", self._reason(answer), code
            if attempt == policy.attempts - 1:
                tail = f"; gave up after {policy.attempts} attempts" if attempt else ""
                raise VapiError(_compose(head, reason, tail), status=status)
            wait = hint if hint is not None else policy.backoff(attempt)
            if waited + wait > policy.max_total_wait_s:
                tail = f"; giving up for this run after waiting {_seconds(waited)} s"
                raise VapiError(_compose(head, reason, tail), status=status)
            policy.sleep(wait)
            waited += wait
        raise AssertionError("unreachable")  # pragma: no cover

    def _json(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        """The status and JSON of a 2xx answer; an answer that is not JSON is a VapiError."""
        post = method == "POST"
        what = _what(method, path)
        code, body = self._request(method, path, **kwargs)
        try:
            text = body.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise self._odd(what, post, code, "a body that is not valid UTF-8") from None
        try:
            parsed = json.loads(text)
        except RecursionError:
            raise self._odd(what, post, code, "JSON nested too deeply to read") from None
        except ValueError:
            raise self._odd(what, post, code, "a body that is not JSON") from None
        if _deeper_than(parsed, MAX_DEPTH):
            raise self._odd(what, post, code, f"JSON nested deeper than {MAX_DEPTH} levels")
        return code, parsed

    def _assistant(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        return self._object(method, path, "assistant", **kwargs)

    def _object(self, method: str, path: str, label: str, **kwargs: Any) -> dict[str, Any]:
        """An answer that must be one object: a JSON object with a string `id`."""
        code, result = self._json(method, path, **kwargs)
        if not isinstance(result, dict) or not isinstance(result.get("id"), str):
            what = _what(method, path)
            raise self._odd(what, method == "POST", code, f"no {label} (an object with an id)")
        return result

    # -- the API -------------------------------------------------------------------------------

    def list_assistants(self, *, limit: int = PAGE_LIMIT) -> list[dict[str, Any]]:
        return self.list_objects("/assistant", limit=limit)

    def list_objects(self, path: str, *, limit: int = PAGE_LIMIT) -> list[dict[str, Any]]:
        """Every object of the collection `path` (`/assistant`, `/tool`, `/phone-number`: each
        a bare JSON array with `limit` and `createdAt` filters), whatever order Vapi lists
        them in.

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
            _, page = self._json("GET", path, params=params)
            if not isinstance(page, list) or not all(
                isinstance(a, dict)
                and isinstance(a.get("id"), str)
                and isinstance(a.get("createdAt"), str)
                for a in page
            ):
                raise VapiError(
                    f"GET {printable(path, 40)}: unexpected response shape "
                    "(not a list of objects with a string id and createdAt)"
                )
            fresh = [a for a in page if a["id"] not in seen]
            for item in fresh:
                seen[item["id"]] = item
            if len(page) < limit:
                continue
            if not fresh:
                raise VapiError(
                    f"GET {printable(path, 40)}: at least {limit} objects share a createdAt"
                )
            oldest = min(a["createdAt"] for a in page)
            newest = max(a["createdAt"] for a in page)
            if oldest != low:
                ranges.append((low, oldest))
            if newest != high:
                ranges.append((newest, high))
        return list(seen.values())

    def get_assistant(self, assistant_id: str) -> dict[str, Any]:
        return self._assistant("GET", f"/assistant/{assistant_id}")


class VapiWriter(VapiReader):
    """Read and write access to one Vapi account."""

    def create_assistant(self, body: dict[str, Any]) -> dict[str, Any]:
        """Never retried here once sent (only a refused connection is).

        A definite refusal raises VapiRejected (nothing was created). A 429 raises
        VapiRateLimited at once, without sleeping. Any other failure (5xx, other 4xx, a timeout,
        a lost connection, a 2xx without a readable assistant) raises VapiAmbiguousWrite, and
        the caller looks for its tag."""
        return self._assistant("POST", "/assistant", json_body=body)

    def update_assistant(self, assistant_id: str, body: dict[str, Any]) -> dict[str, Any]:
        _, result = self._json("PATCH", f"/assistant/{assistant_id}", json_body=body)
        if not isinstance(result, dict):
            what = printable(f"PATCH /assistant/{assistant_id}", 80)
            raise VapiError(f"{what}: unexpected response shape (not an object)")
        return result

    def create_object(self, path: str, label: str, body: dict[str, Any]) -> dict[str, Any]:
        """As `create_assistant`, for any collection: never retried once sent."""
        return self._object("POST", path, label, json_body=body)

    def update_object(self, path: str, object_id: str, body: dict[str, Any]) -> dict[str, Any]:
        _, result = self._json("PATCH", f"{path}/{object_id}", json_body=body)
        if not isinstance(result, dict):
            what = printable(f"PATCH {path}/{object_id}", 80)
            raise VapiError(f"{what}: unexpected response shape (not an object)")
        return result

    def delete_object(self, path: str, object_id: str) -> None:
        """Already gone is done (our retried DELETE may have succeeded)."""
        try:
            self._request("DELETE", f"{path}/{object_id}")
        except VapiNotFound:
            return

    def delete_assistant(self, assistant_id: str) -> None:
        # The deleted assistant comes back, but only the status matters: a 2xx did delete.
        # Already gone (e.g. our retried DELETE had succeeded): the goal holds.
        try:
            self._request("DELETE", f"/assistant/{assistant_id}")
        except VapiNotFound:
            return
        except VapiError as exc:
            if exc.status == 409 and "pinned" in str(exc).lower():
                raise VapiError(
                    f"assistant {assistant_id} is pinned in Vapi (409 assistant_pinned): not "
                    "deleted; unpin it in the Vapi dashboard, then apply again",
                    status=409,
                ) from None
            raise


def http_client(
    base_url: str,
    *,
    timeout_s: float = 30.0,
    max_connections: int = 64,
    on_response: Callable[[httpx.Response], None] | None = None,
    transport: httpx.BaseTransport | None = None,
) -> httpx.Client:
    """One pooled client shared by all orgs; each request carries its org's key.
    `on_response` sees every answer (for metrics: method and status only); `transport`
    replaces the network (tests), which is else `GetTransport` (GETs on our own HTTP/1.1
    connections: a no-op run's list calls at about half the CPU), unless the environment
    names a proxy: httpx honours one (and `NO_PROXY`) only on a client of its own transport."""
    tls = ssl_context()  # one per process (`reconciler.tls`)
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=32)
    if transport is None and not _proxied():
        transport = GetTransport(verify=tls, limits=limits)
    return SharedClient(  # no cookies: one tenant's must never ride on another's requests
        direct=transport if isinstance(transport, GetTransport) else None,
        event_hooks={"response": [on_response]} if on_response else None,
        base_url=base_url,
        verify=tls,
        transport=transport,
        timeout=httpx.Timeout(timeout_s, connect=min(10.0, timeout_s)),
        limits=limits,
        headers={"User-Agent": USER_AGENT, "Accept-Encoding": ACCEPT_ENCODING},
    )


def _proxied() -> bool:
    """Whether the environment names a proxy for http or https (`HTTP_PROXY`, `HTTPS_PROXY`,
    `ALL_PROXY`, in either case), as httpx reads it."""
    return any(key in ("http", "https", "all") for key in urllib.request.getproxies())
