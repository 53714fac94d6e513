"""Vapi webhooks over HTTP: the resolver as a Starlette app (`webhook_app`, `app_from_url`)
and as pure ASGI middleware for a user's own Starlette or FastAPI app (`VapiWebhookMiddleware`).

A request is answered in this order (docs/webhooks.md has the table):
- 413 for a `content-length` above 1 MiB before reading any of it, and for a body that grows
  past 1 MiB while streaming (chunked), without reading the rest;
- then the resolver's verdict (400, 401, 404, 503; see `resolver`), from the cache without
  leaving the event loop when the id is cached, else from a worker thread (one query);
- a verified webhook is forwarded (the org's own URL, else the app's): the body unchanged with
  its content type, plus `x-reconciler-*` headers naming the org, and never the caller's
  credentials. The downstream's status, body and content type are relayed back to Vapi (so
  answers to `assistant-request` and `tool-calls` reach it); 502 when it cannot be reached or
  answers more than 1 MiB, 504 past the timeout (6 s: Vapi waits 7.5 s). Redirects are
  relayed, never followed. Without a forward URL: 200 `{"orgId": ..., "slug": ...}`.

Error bodies are `{"error": <a fixed one-line message>}`; nothing answers with a traceback.
Log lines name the outcome and, once it is known, the org slug: never a secret, signature,
body or forward URL (which may hold a token).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.to_thread
import httpx
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from reconciler.metrics import WEBHOOK_REQUESTS
from reconciler.secrets.crypto import Keys
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

log = logging.getLogger(__name__)

WEBHOOK_PATH = "/webhooks/vapi"
FORWARD_TIMEOUT_S = 6.0
"""The whole forward (connect, send, answer): below the 7.5 s Vapi gives `assistant-request`."""
MAX_ANSWER_BYTES = MAX_BODY_BYTES
PARSE_IN_THREAD_FROM = 64 * 1024
"""A body this large is parsed in a worker thread, not on the event loop."""
STATE_KEY = "vapi_webhook"
"""`scope["state"]` key (`request.state.vapi_webhook`) of the middleware's `ResolvedWebhook`."""
ORG_ID_HEADER = "x-reconciler-org-id"
ORG_SLUG_HEADER = "x-reconciler-org-slug"
ROLE_HEADER = "x-reconciler-assistant-role"
ASSISTANT_ID_HEADER = "x-reconciler-assistant-id"

UNKNOWN_MESSAGE = "this assistant belongs to no known org"
UNREACHABLE_MESSAGE = "the forward target could not be reached"
TIMEOUT_MESSAGE = "the forward target did not answer in time"
TOO_LARGE_ANSWER_MESSAGE = "the forward target answered more than 1 MiB"
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
    )
}


class _ClientGone(Exception):
    """The caller disconnected before its body was in: nobody to answer."""


class _AnswerTooLarge(Exception):
    pass


class _Unread:
    """Mixed into the errors raised before the body was read to its end."""


class _TooLarge(BodyTooLarge, _Unread):
    pass


class _BadLength(MalformedWebhook, _Unread):
    pass


def _count(outcome: str) -> None:
    _OUTCOMES[outcome].inc()


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
    _count(exc.outcome)
    if isinstance(exc, VerificationUnavailable):
        log.warning(
            "webhook refused (503 %s, org %s): %s", exc.outcome, exc.org_slug or "-", exc.reason
        )
    elif isinstance(exc, BadSecret):
        log.warning("webhook refused (401 %s, org %s): %s", exc.outcome, exc.org_slug, exc)
    else:
        log.debug("webhook refused (%d %s): %s", exc.status, exc.outcome, exc)
    message = UNKNOWN_MESSAGE if isinstance(exc, UnknownAssistant) else str(exc)
    await _send_json(send, exc.status, {"error": message}, close=isinstance(exc, _Unread))


async def read_body(scope: Scope, receive: Receive) -> bytes:
    """The request body, refused (`BodyTooLarge`) as soon as its declared or streamed size
    passes `MAX_BODY_BYTES`, without reading the rest."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            if not value.isdigit() or len(value) > 18:
                raise _BadLength("content-length is not a number")
            if int(value) > MAX_BODY_BYTES:
                raise _TooLarge(f"body is larger than {MAX_BODY_BYTES} bytes")
    chunks: list[bytes] = []
    size = 0
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


async def verify_request(
    resolver: WebhookResolver, headers: list[tuple[bytes, bytes]], body: bytes
) -> ResolvedWebhook:
    """The resolver's verdict on an ASGI request: a cached id is checked on the event loop
    (no I/O), only a miss (one query) or a large body (parsing) goes to a worker thread."""
    auth = asgi_headers(headers)
    if len(body) >= PARSE_IN_THREAD_FROM:
        webhook = await anyio.to_thread.run_sync(parse_webhook, auth, body)
    else:
        webhook = parse_webhook(auth, body)
    resolved = resolver.verify_cached(webhook)
    if resolved is None:
        resolved = await anyio.to_thread.run_sync(resolver.verify, webhook)
    return resolved


async def _verified(
    resolver: WebhookResolver, scope: Scope, receive: Receive, send: Send
) -> tuple[ResolvedWebhook, bytes] | None:
    """The resolved org and the body; None once an error has been answered."""
    try:
        body = await read_body(scope, receive)
        return await verify_request(resolver, scope["headers"], body), body
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
    """The ASGI endpoint of `webhook_app`: verify, then forward or acknowledge. One
    `httpx.AsyncClient` (a connection pool, created at first use) serves every forward."""

    def __init__(
        self,
        resolver: WebhookResolver,
        forward_url: str | None = None,
        *,
        timeout_s: float = FORWARD_TIMEOUT_S,
    ) -> None:
        self.resolver = resolver
        self.forward_url = forward_url
        self.timeout_s = timeout_s
        self._client: httpx.AsyncClient | None = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.timeout_s),
                follow_redirects=False,  # the URL is ours, where it leads is not
                limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
            )
        return self._client

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        verified = await _verified(self.resolver, scope, receive, send)
        if verified is None:
            return
        resolved, body = verified
        target = resolved.forward_url or self.forward_url
        if target is None:
            _count("accepted")
            await _send_json(send, 200, {"orgId": resolved.org_id, "slug": resolved.slug})
            return
        await self._forward(target, resolved, body, _header(scope, b"content-type"), send)

    async def _forward(
        self,
        target: str,
        resolved: ResolvedWebhook,
        body: bytes,
        content_type: bytes | None,
        send: Send,
    ) -> None:
        headers = {ORG_ID_HEADER: resolved.org_id, ORG_SLUG_HEADER: resolved.slug}
        if resolved.assistant_id:  # absent when resolved by the Vapi account (no assistant)
            headers[ROLE_HEADER] = resolved.role
            headers[ASSISTANT_ID_HEADER] = resolved.assistant_id
        if content_type is not None:
            headers["content-type"] = content_type.decode("latin-1")
        try:
            with anyio.fail_after(self.timeout_s):
                status, answer, answer_type = await self._post(target, headers, body)
        except (TimeoutError, httpx.TimeoutException):
            await self._forward_failed(send, resolved, 504, TIMEOUT_MESSAGE, "timed out")
        except _AnswerTooLarge:
            await self._forward_failed(send, resolved, 502, TOO_LARGE_ANSWER_MESSAGE, "too large")
        except Exception as exc:  # connection refused, reset, bad URL, ...: never a traceback
            await self._forward_failed(send, resolved, 502, UNREACHABLE_MESSAGE, type(exc).__name__)
        else:
            _count("forwarded")
            log.debug("webhook of org %s forwarded: answered %d", resolved.slug, status)
            await _send(send, status, answer, answer_type)

    async def _post(
        self, target: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, bytes, bytes | None]:
        client = self._http()
        response = await client.send(
            client.build_request("POST", target, content=body, headers=headers), stream=True
        )
        try:
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > MAX_ANSWER_BYTES:
                    raise _AnswerTooLarge
                chunks.append(chunk)
        finally:
            await response.aclose()
        answer_type = response.headers.get("content-type")
        return (
            response.status_code,
            b"".join(chunks),
            answer_type.encode("latin-1") if answer_type is not None else None,
        )

    @staticmethod
    async def _forward_failed(
        send: Send, resolved: ResolvedWebhook, status: int, message: str, why: str
    ) -> None:
        _count("forward_failed")
        log.warning("webhook of org %s not forwarded (%d): %s", resolved.slug, status, why)
        await _send_json(send, status, {"error": message})


def webhook_app(
    resolver: WebhookResolver,
    forward_url: str | None = None,
    *,
    timeout_s: float = FORWARD_TIMEOUT_S,
    path: str = WEBHOOK_PATH,
    close_resolver: bool = False,
) -> Starlette:
    """A Starlette app answering `POST {path}`. `forward_url` is the global target (an org's
    own `spec.webhook.forwardUrl` comes first); without either, verified webhooks get 200 and
    the org. Its lifespan closes the forwarding client (and the resolver, if
    `close_resolver`)."""
    endpoint = WebhookEndpoint(resolver, forward_url, timeout_s=timeout_s)

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
    return webhook_app(resolver, forward_url, timeout_s=timeout_s, close_resolver=True)


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
        _count("accepted")
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # then the disconnect, when it comes

        state = {**(scope.get("state") or {}), STATE_KEY: resolved}
        await self.app({**scope, "state": state}, replay, send)
