"""Vapi webhooks over HTTP: the resolver as a Starlette app (`webhook_app`, `app_from_url`)
and as pure ASGI middleware for a user's own Starlette or FastAPI app (`VapiWebhookMiddleware`).

A request is answered in this order (docs/webhooks.md has the table):
- 413 for a `content-length` above 1 MiB before reading any of it, and for a body that grows
  past 1 MiB while streaming (chunked), without reading the rest; 408 for a body that has not
  all arrived within `BODY_TIMEOUT_S` (5 s): both close the connection;
- then the resolver's verdict (400, 401, 404, 503; see `resolver`), from the cache without
  leaving the event loop when the id is cached, else from a worker thread (one query);
- 503 with `Retry-After` at once when the org already has `MAX_IN_FLIGHT_PER_ORG` (32)
  forwards in flight, or all orgs together `MAX_IN_FLIGHT` (512): one org's slow target
  never makes another org's webhooks wait;
- a verified webhook is forwarded (the org's own URL, else the app's): the body unchanged with
  its content type, plus `x-reconciler-*` headers naming the org, and never the caller's
  credentials. The downstream's status, body and content type are relayed back to Vapi (so
  answers to `assistant-request` and `tool-calls` reach it); 502 when it cannot be reached,
  answers more than 1 MiB (decompressed, counted as it inflates) or, for an org's own URL,
  resolves to an address the forward policy refuses (`reconciler.netpolicy`); 504 at the
  deadline: the whole request has 6 s from its start (Vapi waits 7.5 s). Redirects are
  relayed, never followed. Without a forward URL: 200 `{"orgId": ..., "slug": ...}`.

Error bodies are `{"error": <a fixed one-line message>}`; nothing answers with a traceback.
Log lines name the outcome and, once it is known, the org slug: never a secret, signature,
body or forward URL (which may hold a token).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.to_thread
import httpx
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from reconciler.bounded import ACCEPT_ENCODING, AnswerTooLarge, UndecodableAnswer, aread_limited
from reconciler.metrics import ORG_WEBHOOKS, WEBHOOK_REQUESTS
from reconciler.netpolicy import ForwardPolicy, ForwardRefused
from reconciler.secrets.crypto import Keys
from reconciler.sharedhttp import EmptyJar
from reconciler.webhooks.guard import guarded_transport
from reconciler.webhooks.resolver import (
    MAX_BODY_BYTES,
    BadSecret,
    BodyTooLarge,
    MalformedWebhook,
    ResolvedWebhook,
    UnknownAssistant,
    VerificationUnavailable,
    WebhookError,
    WebhookResolver,
    asgi_headers,
    parse_webhook,
)
from reconciler.webhooks.resolver import Webhook as ParsedWebhook

log = logging.getLogger(__name__)

WEBHOOK_PATH = "/webhooks/vapi"
FORWARD_TIMEOUT_S = 6.0
"""The whole forward (connect, send, answer): below the 7.5 s Vapi gives `assistant-request`."""
MAX_ANSWER_BYTES = MAX_BODY_BYTES
BODY_TIMEOUT_S = 5.0
"""How long the whole request body may take to arrive: a client that sends part of it and goes
silent is answered 408 and cut, so stalled connections cannot pile up."""
MAX_IN_FLIGHT_PER_ORG = 32
"""Forwards of one org at once; past it that org's webhooks are answered 503 at once."""
MAX_IN_FLIGHT = 512
"""Forwards of all orgs at once; past it every webhook to forward is answered 503 at once."""
RETRY_AFTER_S = 1
KEEPALIVE_CONNECTIONS = 64
""" Idle forward connections kept (all targets together); connections in use are not capped
by the pool (nothing ever waits for one): the in-flight caps bound them."""
BUSY_LOG_EVERY_S = 10.0
PARSE_IN_THREAD_FROM = 64 * 1024
"""A body this large is parsed in a worker thread, not on the event loop."""
STATE_KEY = "vapi_webhook"
"""`scope["state"]` key (`request.state.vapi_webhook`) of the middleware's `ResolvedWebhook`."""
ORG_ID_HEADER = "x-reconciler-org-id"
ORG_SLUG_HEADER = "x-reconciler-org-slug"
ROLE_HEADER = "x-reconciler-assistant-role"
ASSISTANT_ID_HEADER = "x-reconciler-assistant-id"
PHONE_NUMBER_ID_HEADER = "x-reconciler-phone-number-id"
"""Sent instead of the assistant headers when the org was found by `call.phoneNumberId`."""

UNKNOWN_MESSAGE = "this assistant belongs to no known org"
UNREACHABLE_MESSAGE = "the forward target could not be reached"
TIMEOUT_MESSAGE = "the forward target did not answer in time"
TOO_LARGE_ANSWER_MESSAGE = "the forward target answered more than 1 MiB"
REFUSED_TARGET_MESSAGE = "the forward target is not an allowed address"
ORG_BUSY_MESSAGE = "too many webhooks of this org in flight: retry later"
BUSY_MESSAGE = "too many webhooks in flight: retry later"
BODY_TIMEOUT_MESSAGE = "the body did not arrive in time"
_OUTCOMES = {
    name: WEBHOOK_REQUESTS.labels(name)
    for name in (
        "forwarded",
        "accepted",
        "malformed",
        "too_large",
        "bad_secret",
        "bad_signature",
        "unknown_assistant",
        "unavailable",
        "forward_failed",
        "forward_refused",
        "busy",
        "body_timeout",
    )
}


class _ClientGone(Exception):
    """The caller disconnected before its body was in: nobody to answer."""


class _Unread:
    """Mixed into the errors raised before the body was read to its end."""


class _TooLarge(BodyTooLarge, _Unread):
    pass


class _BadLength(MalformedWebhook, _Unread):
    pass


class _BodyTimeout(WebhookError, _Unread):
    """The body did not arrive within `BODY_TIMEOUT_S`."""

    status = 408
    outcome = "body_timeout"


def _count(outcome: str, org_slug: str | None = None) -> None:
    """The outcome, in the metric and (with the org, when known) in this process's per-org
    window that a template rollout asks (`metrics.ORG_WEBHOOKS`)."""
    _OUTCOMES[outcome].inc()
    ORG_WEBHOOKS.record(org_slug, outcome)


async def _send(
    send: Send, status: int, body: bytes, content_type: bytes | None, *, close: bool = False
) -> None:
    """`close`: the request was not read to its end, so the connection is not kept (else the
    server would go on reading, and discarding, whatever the caller still sends)."""
    headers = [] if status in (204, 304) else [(b"content-length", str(len(body)).encode())]
    if content_type is not None:
        headers.append((b"content-type", content_type))
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if status in (204, 304) else body})


async def _send_json(send: Send, status: int, doc: dict[str, str], *, close: bool = False) -> None:
    await _send(send, status, json.dumps(doc).encode(), b"application/json", close=close)


async def _refuse(send: Send, exc: WebhookError) -> None:
    _count(exc.outcome, getattr(exc, "org_slug", None))
    if isinstance(exc, VerificationUnavailable):
        log.warning(
            "webhook refused (503 %s, org %s): %s", exc.outcome, exc.org_slug or "-", exc.reason
        )
    elif isinstance(exc, BadSecret):
        log.warning("webhook refused (401 %s, org %s): %s", exc.outcome, exc.org_slug, exc)
    elif isinstance(exc, _BodyTimeout):
        log.info("webhook refused (408 body_timeout): the body did not arrive in time")
    else:
        log.debug("webhook refused (%d %s): %s", exc.status, exc.outcome, exc)
    message = UNKNOWN_MESSAGE if isinstance(exc, UnknownAssistant) else str(exc)
    await _send_json(send, exc.status, {"error": message}, close=isinstance(exc, _Unread))


async def read_body(
    scope: Scope, receive: Receive, *, timeout_s: float | None = BODY_TIMEOUT_S
) -> bytes:
    """The request body, refused (`BodyTooLarge`) as soon as its declared or streamed size
    passes `MAX_BODY_BYTES`, without reading the rest; 408 (`_BodyTimeout`) when all of it has
    not arrived within `timeout_s` (None: no bound)."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            if not value.isdigit() or len(value) > 18:
                raise _BadLength("content-length is not a number")
            if int(value) > MAX_BODY_BYTES:
                raise _TooLarge(f"body is larger than {MAX_BODY_BYTES} bytes")
    chunks: list[bytes] = []
    size = 0
    with anyio.move_on_after(timeout_s if timeout_s is not None else float("inf")) as scope_:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise _TooLarge(f"body is larger than {MAX_BODY_BYTES} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)
    assert scope_.cancelled_caught
    raise _BodyTimeout(BODY_TIMEOUT_MESSAGE)


async def verify_request(
    resolver: WebhookResolver,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    *,
    deadline: float | None = None,
) -> ResolvedWebhook:
    """The resolver's verdict on an ASGI request: a cached id is checked on the event loop
    (no I/O), only a miss (one query) or a large body (parsing) goes to a worker thread.
    `deadline` (`anyio.current_time()` clock): past it, waiting for a worker thread (anyio's
    limiter, 40 at once) or for its query is given up (503); the thread finishes on its own."""
    auth = asgi_headers(headers)
    with anyio.move_on_after(
        float("inf") if deadline is None else deadline - anyio.current_time()
    ) as scope:
        if len(body) >= PARSE_IN_THREAD_FROM:
            webhook: ParsedWebhook = await anyio.to_thread.run_sync(
                parse_webhook, auth, body, abandon_on_cancel=True
            )
        else:
            webhook = parse_webhook(auth, body)
        resolved = resolver.verify_cached(webhook)
        if resolved is None:
            resolved = await anyio.to_thread.run_sync(
                resolver.verify, webhook, abandon_on_cancel=True
            )
        return resolved
    assert scope.cancelled_caught
    raise VerificationUnavailable("verification did not finish before the deadline")


async def _verified(
    resolver: WebhookResolver,
    scope: Scope,
    receive: Receive,
    send: Send,
    *,
    body_timeout_s: float | None = BODY_TIMEOUT_S,
    deadline: float | None = None,
) -> tuple[ResolvedWebhook, bytes] | None:
    """The resolved org and the body; None once an error has been answered."""
    try:
        if deadline is not None and body_timeout_s is not None:
            body_timeout_s = min(body_timeout_s, deadline - anyio.current_time())
        body = await read_body(scope, receive, timeout_s=body_timeout_s)
        return await verify_request(resolver, scope["headers"], body, deadline=deadline), body
    except _ClientGone:
        return None
    except WebhookError as exc:
        await _refuse(send, exc)
    except Exception as exc:  # a bug: a fixed answer and one log line, never a traceback
        await _refuse(send, VerificationUnavailable(f"unexpected {type(exc).__name__}"))
    return None


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


class WebhookEndpoint:
    """The ASGI endpoint of `webhook_app`: verify, then forward or acknowledge.

    The whole request (body, verification, forward) has `timeout_s` from its start. Forwards
    are bounded per org (`max_in_flight_per_org`) and in all (`max_in_flight`): past either,
    503 with `Retry-After` at once; nothing ever waits for another org's forwards (the
    connection pools have no bound of their own to wait on). An org's own forward URL goes
    through `forward_policy` (resolved and checked at each new connection, see `guard`); the
    global one (`forward_url`, the operator's) is trusted. Two `httpx.AsyncClient`s (pools,
    created at first use) serve every forward."""

    def __init__(
        self,
        resolver: WebhookResolver,
        forward_url: str | None = None,
        *,
        timeout_s: float = FORWARD_TIMEOUT_S,
        body_timeout_s: float = BODY_TIMEOUT_S,
        max_in_flight_per_org: int = MAX_IN_FLIGHT_PER_ORG,
        max_in_flight: int = MAX_IN_FLIGHT,
        forward_policy: ForwardPolicy | None = None,
    ) -> None:
        self.resolver = resolver
        self.forward_url = forward_url
        self.timeout_s = timeout_s
        self.body_timeout_s = body_timeout_s
        self.max_in_flight_per_org = max_in_flight_per_org
        self.max_in_flight = max_in_flight
        self.forward_policy = forward_policy if forward_policy is not None else ForwardPolicy()
        self._client: httpx.AsyncClient | None = None  # the operator's URL
        self._guarded: httpx.AsyncClient | None = None  # the orgs' own URLs
        self._in_flight: dict[str, int] = {}  # org id -> forwards in progress
        self._total = 0
        self._busy_logged: dict[str, float] = {}  # org id -> when its last 503 was logged

    def _http(self, guarded: bool) -> httpx.AsyncClient:
        if guarded:
            if self._guarded is None:
                self._guarded = httpx.AsyncClient(
                    transport=guarded_transport(
                        self.forward_policy, max_keepalive_connections=KEEPALIVE_CONNECTIONS
                    ),
                    cookies=EmptyJar(),  # one org's target must not set a cookie for another's
                    trust_env=False,  # a proxy would resolve the host past the check
                    timeout=httpx.Timeout(self.timeout_s),
                    follow_redirects=False,
                    headers={"accept-encoding": ACCEPT_ENCODING},
                )
            return self._guarded
        if self._client is None:
            self._client = httpx.AsyncClient(
                cookies=EmptyJar(),  # every org's webhooks go there: no cookie rides between
                timeout=httpx.Timeout(self.timeout_s),
                follow_redirects=False,  # the URL is ours, where it leads is not
                limits=httpx.Limits(
                    max_connections=None, max_keepalive_connections=KEEPALIVE_CONNECTIONS
                ),
                headers={"accept-encoding": ACCEPT_ENCODING},
            )
        return self._client

    async def aclose(self) -> None:
        for client in (self._client, self._guarded):
            if client is not None:
                await client.aclose()
        self._client = self._guarded = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        deadline = anyio.current_time() + self.timeout_s
        verified = await _verified(
            self.resolver,
            scope,
            receive,
            send,
            body_timeout_s=self.body_timeout_s,
            deadline=deadline,
        )
        if verified is None:
            return
        resolved, body = verified
        target = resolved.forward_url or self.forward_url
        if target is None:
            _count("accepted", resolved.slug)
            await _send_json(send, 200, {"orgId": resolved.org_id, "slug": resolved.slug})
            return
        if not await self._admit(resolved, send):
            return
        try:
            await self._forward(
                target,
                resolved,
                body,
                _header(scope, b"content-type"),
                send,
                deadline=deadline,
                guarded=resolved.forward_url is not None,
            )
        finally:
            self._release(resolved.org_id)

    async def _admit(self, resolved: ResolvedWebhook, send: Send) -> bool:
        """Takes a forward slot of the org; else answers 503 at once and returns False."""
        org = resolved.org_id
        count = self._in_flight.get(org, 0)
        if count >= self.max_in_flight_per_org:
            message, why = ORG_BUSY_MESSAGE, f"{count} forwards of this org in flight"
        elif self._total >= self.max_in_flight:
            message, why = BUSY_MESSAGE, f"{self._total} forwards in flight (all orgs)"
        else:
            self._in_flight[org] = count + 1
            self._total += 1
            return True
        _count("busy")
        now = time.monotonic()
        if now - self._busy_logged.get(org, -BUSY_LOG_EVERY_S) >= BUSY_LOG_EVERY_S:
            self._busy_logged[org] = now  # one line per org per 10 s, not one per webhook
            log.warning("webhook of org %s refused (503 busy): %s", resolved.slug, why)
        body = json.dumps({"error": message}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 503,
                "headers": [
                    (b"content-length", str(len(body)).encode()),
                    (b"content-type", b"application/json"),
                    (b"retry-after", str(RETRY_AFTER_S).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
        return False

    def _release(self, org: str) -> None:
        self._total -= 1
        left = self._in_flight[org] - 1
        if left:
            self._in_flight[org] = left
        else:
            del self._in_flight[org]

    async def _forward(
        self,
        target: str,
        resolved: ResolvedWebhook,
        body: bytes,
        content_type: bytes | None,
        send: Send,
        *,
        deadline: float,
        guarded: bool,
    ) -> None:
        headers = {ORG_ID_HEADER: resolved.org_id, ORG_SLUG_HEADER: resolved.slug}
        if resolved.assistant_id:  # absent when resolved by the Vapi account (no assistant)
            headers[ROLE_HEADER] = resolved.role
            headers[ASSISTANT_ID_HEADER] = resolved.assistant_id
        elif resolved.phone_number_id:  # an `assistant-request` routed by its number
            headers[PHONE_NUMBER_ID_HEADER] = resolved.phone_number_id
        if content_type is not None:
            headers["content-type"] = content_type.decode("latin-1")
        try:
            with anyio.fail_after(max(0.0, deadline - anyio.current_time())):
                status, answer, answer_type = await self._post(target, headers, body, guarded)
        except (TimeoutError, httpx.TimeoutException):
            await self._forward_failed(send, resolved, 504, TIMEOUT_MESSAGE, "timed out")
        except AnswerTooLarge:
            await self._forward_failed(send, resolved, 502, TOO_LARGE_ANSWER_MESSAGE, "too large")
        except ForwardRefused as exc:  # the reason names the kind of address, never the URL
            _count("forward_refused", resolved.slug)
            log.warning(
                "webhook of org %s not forwarded (502): its forward URL is refused (%s)",
                resolved.slug,
                exc,
            )
            await _send_json(send, 502, {"error": REFUSED_TARGET_MESSAGE})
        except UndecodableAnswer:
            await self._forward_failed(send, resolved, 502, UNREACHABLE_MESSAGE, "undecodable")
        except Exception as exc:  # connection refused, reset, bad URL, ...: never a traceback
            await self._forward_failed(send, resolved, 502, UNREACHABLE_MESSAGE, type(exc).__name__)
        else:
            _count("forwarded", resolved.slug)
            log.debug("webhook of org %s forwarded: answered %d", resolved.slug, status)
            await _send(send, status, answer, answer_type)

    async def _post(
        self, target: str, headers: dict[str, str], body: bytes, guarded: bool
    ) -> tuple[int, bytes, bytes | None]:
        client = self._http(guarded)
        response = await client.send(
            client.build_request("POST", target, content=body, headers=headers), stream=True
        )
        try:
            answer = await aread_limited(response, MAX_ANSWER_BYTES)
        finally:
            await response.aclose()
        answer_type = response.headers.get("content-type")
        return (
            response.status_code,
            answer,
            answer_type.encode("latin-1") if answer_type is not None else None,
        )

    @staticmethod
    async def _forward_failed(
        send: Send, resolved: ResolvedWebhook, status: int, message: str, why: str
    ) -> None:
        _count("forward_failed", resolved.slug)
        log.warning("webhook of org %s not forwarded (%d): %s", resolved.slug, status, why)
        await _send_json(send, status, {"error": message})


def webhook_app(
    resolver: WebhookResolver,
    forward_url: str | None = None,
    *,
    timeout_s: float = FORWARD_TIMEOUT_S,
    path: str = WEBHOOK_PATH,
    close_resolver: bool = False,
    body_timeout_s: float = BODY_TIMEOUT_S,
    max_in_flight_per_org: int = MAX_IN_FLIGHT_PER_ORG,
    max_in_flight: int = MAX_IN_FLIGHT,
    forward_policy: ForwardPolicy | None = None,
) -> Starlette:
    """A Starlette app answering `POST {path}`. `forward_url` is the global target (an org's
    own `spec.webhook.forwardUrl` comes first); without either, verified webhooks get 200 and
    the org. Its lifespan closes the forwarding clients (and the resolver, if
    `close_resolver`). The other options are `WebhookEndpoint`'s."""
    endpoint = WebhookEndpoint(
        resolver,
        forward_url,
        timeout_s=timeout_s,
        body_timeout_s=body_timeout_s,
        max_in_flight_per_org=max_in_flight_per_org,
        max_in_flight=max_in_flight,
        forward_policy=forward_policy,
    )

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await endpoint.aclose()
            if close_resolver:
                await anyio.to_thread.run_sync(resolver.close)

    return Starlette(routes=[Route(path, endpoint, methods=["POST"])], lifespan=lifespan)


def app_from_url(
    database_url: str,
    master_key: Keys | str,
    *,
    forward_url: str | None = None,
    timeout_s: float = FORWARD_TIMEOUT_S,
    listen: bool = True,
    ttl_s: float = 60.0,
    negative_ttl_s: float = 5.0,
    flush_every_s: float = 5.0,
    body_timeout_s: float = BODY_TIMEOUT_S,
    max_in_flight_per_org: int = MAX_IN_FLIGHT_PER_ORG,
    max_in_flight: int = MAX_IN_FLIGHT,
    forward_policy: ForwardPolicy | None = None,
) -> Starlette:
    """`webhook_app` over `WebhookResolver.from_url` (pool, listener, `last_used_at`
    flusher), all closed on shutdown: a whole webhook server from settings."""
    resolver = WebhookResolver.from_url(
        database_url,
        master_key,
        listen=listen,
        ttl_s=ttl_s,
        negative_ttl_s=negative_ttl_s,
        flush_every_s=flush_every_s,
    )
    return webhook_app(
        resolver,
        forward_url,
        timeout_s=timeout_s,
        close_resolver=True,
        body_timeout_s=body_timeout_s,
        max_in_flight_per_org=max_in_flight_per_org,
        max_in_flight=max_in_flight,
        forward_policy=forward_policy,
    )


class VapiWebhookMiddleware:
    """Pure ASGI middleware: `POST {path}` is verified here (errors answered here, as by
    `webhook_app`); a verified request goes on to the wrapped app with its body replayed
    unchanged and the `ResolvedWebhook` in `scope["state"]["vapi_webhook"]`
    (`request.state.vapi_webhook`). Every other request passes through untouched.

    Starlette: `Middleware(VapiWebhookMiddleware, resolver=resolver)`; FastAPI:
    `app.add_middleware(VapiWebhookMiddleware, resolver=resolver)`."""

    def __init__(self, app: ASGIApp, resolver: WebhookResolver, path: str = WEBHOOK_PATH) -> None:
        self.app = app
        self.resolver = resolver
        self.path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        verified = await _verified(self.resolver, scope, receive, send)
        if verified is None:
            return
        resolved, body = verified
        _count("accepted", resolved.slug)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # then the disconnect, when it comes

        state = {**(scope.get("state") or {}), STATE_KEY: resolved}
        await self.app({**scope, "state": state}, replay, send)
