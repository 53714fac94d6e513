"""The HTTP side of `reconciler serve`: operations endpoints, the read-only status API, the
reconcile trigger, and the webhook endpoint mounted from `reconciler.webhooks`.

- `/healthz`: the process answers. `/readyz`: the database answers and the specs were read
  at least once. `/metrics`: Prometheus text.
- `/api/*` needs `Authorization: Bearer <RECONCILER_ADMIN_TOKEN>` (compared in constant
  time); without a configured token the API is off (404). It never returns a secret value.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from reconciler import metrics
from reconciler.controller.loop import ReconcileLoop
from reconciler.errors import ReconcilerError
from reconciler.server.views import org_view
from reconciler.state.store import StateReader
from reconciler.webhooks.http import WEBHOOK_PATH


@dataclass
class ServerParts:
    state: StateReader
    loop: ReconcileLoop | None
    admin_token: str | None
    webhooks: Any = None  # the ASGI endpoint of POST /webhooks/vapi (closed with the app)


def _json(status: int, body: dict[str, Any] | list[Any]) -> JSONResponse:
    return JSONResponse(body, status_code=status)


def build_app(parts: ServerParts) -> Starlette:
    def authorized(request: Request) -> Response | None:
        if parts.admin_token is None:
            return _json(404, {"error": "the API is off (RECONCILER_ADMIN_TOKEN is not set)"})
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        token = given.encode("utf-8", "replace")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token, parts.admin_token.encode()):
            return _json(401, {"error": "missing or wrong bearer token"})
        return None

    async def healthz(request: Request) -> Response:
        return _json(200, {"status": "ok"})

    async def readyz(request: Request) -> Response:
        problems: list[str] = []
        try:
            await run_in_threadpool(parts.state.health.ping)
        except ReconcilerError as exc:
            problems.append(str(exc))
        if parts.loop is not None and not parts.loop.status.loaded_once:
            problems.append(parts.loop.status.last_error or "specs not read yet")
        if problems:
            return _json(503, {"status": "not ready", "problems": problems})
        return _json(200, {"status": "ready"})

    async def metrics_endpoint(request: Request) -> Response:
        return Response(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)

    def guarded(
        handler: Callable[[Request], Any],
    ) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            refused = authorized(request)
            if refused is not None:
                return refused
            try:
                result: Response = await handler(request)
            except ReconcilerError as exc:
                return _json(503, {"error": str(exc)})
            return result

        return endpoint

    async def orgs(request: Request) -> Response:
        rows = await run_in_threadpool(parts.state.orgs.statuses, None)
        return _json(200, {"orgs": [org_view(r) for r in rows]})

    async def rollouts(request: Request) -> Response:
        rows = await run_in_threadpool(parts.state.rollouts.all)
        return _json(200, {"rollouts": [r.as_view() for r in rows.values()]})

    async def org(request: Request) -> Response:
        slug = request.path_params["slug"]
        rows = await run_in_threadpool(parts.state.orgs.statuses, slug)
        if not rows:
            return _json(404, {"error": "no org with this slug"})
        return _json(200, org_view(rows[0]))

    async def reconcile(request: Request) -> Response:
        if parts.loop is None:
            return _json(409, {"error": "this process runs no reconcile loop"})
        parts.loop.trigger()
        return _json(202, {"status": "reconcile triggered"})

    routes: list[BaseRoute] = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Route("/api/orgs", guarded(orgs), methods=["GET"]),
        Route("/api/orgs/{slug}", guarded(org), methods=["GET"]),
        Route("/api/rollouts", guarded(rollouts), methods=["GET"]),
        Route("/api/reconcile", guarded(reconcile), methods=["POST"]),
    ]
    if parts.webhooks is not None:
        routes.append(Route(WEBHOOK_PATH, parts.webhooks, methods=["POST"]))

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            close = getattr(parts.webhooks, "aclose", None)
            if close is not None:
                await close()  # the forwarding client's connections

    return Starlette(routes=routes, lifespan=lifespan)
