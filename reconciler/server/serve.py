"""`reconciler serve`: the long-lived process. The reconcile loop runs in a scheduler thread,
credential verification in another (`providers.job`, every RECONCILER_VERIFY_INTERVAL),
uvicorn serves HTTP in a third, and the main thread only waits for signals:

- SIGHUP: reconcile now (and retry spec files that failed before);
- SIGTERM / SIGINT: stop taking work, let the org in hand finish (its lock and connections
  are released as its transaction ends), stop HTTP, exit 0 within `STOP_TIMEOUT_S`. An org
  still running then is abandoned mid-way, which the engine is built to survive
  (create-pending rows, the advisory lock dies with its connection).
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import socket
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import uvicorn

from reconciler import metrics
from reconciler.config import Settings
from reconciler.controller.loop import LoopConfig, ReconcileLoop
from reconciler.engine.runplan import MAX_DELETES, MAX_TEMPLATE_ORGS
from reconciler.errors import ConfigError
from reconciler.heap import settled
from reconciler.netpolicy import ForwardPolicy
from reconciler.providers.job import VerifyJob
from reconciler.providers.verify import Endpoints
from reconciler.server.app import ServerParts, build_app
from reconciler.server.heads import HEAD_TIMEOUT_S, head_timeout_protocol
from reconciler.server.logs import configure_logging
from reconciler.server.runtime import Reading, Writing, runtime
from reconciler.spec.git import GitSource, shown_url
from reconciler.state.schedule import Backoff
from reconciler.webhooks.http import WebhookEndpoint
from reconciler.webhooks.resolver import WebhookResolver

log = logging.getLogger("reconciler.serve")

STOP_TIMEOUT_S = 10.0
START_TIMEOUT_S = 30.0
LIMIT_CONCURRENCY = 4096
"""uvicorn's cap on connections plus requests in progress (its 503 past it): below the usual
file-descriptor limit, above the webhook forwards' total cap."""


@dataclass
class ServeOptions:
    path: Path
    interval_s: float = 60.0
    listen: tuple[str, int] = ("0.0.0.0", 8080)  # noqa: S104 - a service listens on all
    git_url: str | None = None
    git_ref: str = "main"
    prune: bool = False
    max_deletes: int = MAX_DELETES
    log_format: str = "text"
    max_template_orgs: int = MAX_TEMPLATE_ORGS
    accept_rollouts: frozenset[str] = frozenset()


def _vapi_metric(response: httpx.Response) -> None:
    metrics.VAPI_REQUESTS.labels(response.request.method, str(response.status_code)).inc()


def serve(settings: Settings, options: ServeOptions) -> int:

    configure_logging(options.log_format)
    replica = settings.replica_id or f"{socket.gethostname()}-{os.getpid()}"
    git = None
    if options.git_url:
        git = GitSource(options.git_url, options.git_ref, settings.data_dir)
    elif not options.path.exists():
        raise ConfigError(f"{options.path}: no such spec file or folder")
    stop = threading.Event()
    with runtime(
        settings, write=True, extra_connections=4, on_response=_vapi_metric, warn=log.warning
    ) as rt:
        config = LoopConfig(
            options.path,
            interval_s=options.interval_s,
            prune=options.prune,
            max_deletes=options.max_deletes,
            max_template_orgs=options.max_template_orgs,
            accept_rollouts=options.accept_rollouts,
            git=git,
            backoff=Backoff(base_s=options.interval_s, cap_s=settings.backoff_max_s),
        )
        loop = ReconcileLoop(rt.controller, rt.state, config, replica=replica)
        webhooks, resolver = _webhooks(settings, rt, options.listen)
        token = settings.admin_token.get_secret_value() if settings.admin_token else None
        app = build_app(ServerParts(rt.state, loop, token, webhooks))
        server = _start_http(app, options.listen)
        _install_signals(stop, loop)
        for line in startup_lines(settings, options, replica):
            log.info("%s", line)
        gc.collect()  # what set-up left, before the rest is frozen for the process's life
        with settled():  # each run's full collections walk what runs made, not the imports
            loop.start()
            verifier = _start_verification(settings, rt)
            try:
                while not stop.wait(0.5):
                    pass
            finally:
                deadline = time.monotonic() + STOP_TIMEOUT_S - 1.0
                if verifier is not None:
                    verifier.halt()  # no new check starts; those in flight are bounded
                finished = loop.stop(deadline - time.monotonic() - 1.0)
                if verifier is not None:
                    finished = verifier.wait(deadline - time.monotonic() - 1.0) and finished
                if not finished:
                    log.warning("stopping with a run still in progress (it is abandoned)")
                server.should_exit = True
                thread = getattr(server, "_thread", None)
                if isinstance(thread, threading.Thread):
                    thread.join(max(0.1, deadline - time.monotonic()))
                _close(resolver)
                if not finished:
                    # The run's thread still waits on Vapi, sops or git: the interpreter would wait
                    # for it at exit. Abandon it, as a crash would: the engine survives that
                    # (create-pending rows; the advisory lock dies with its connection).
                    log.info("stopped")
                    logging.shutdown()
                    os._exit(0)
    log.info("stopped")
    return 0


def startup_lines(settings: Settings, options: ServeOptions, replica: str) -> list[str]:
    """What this process is about to do, for its first log lines: where it listens, where the
    specs come from and how often they are reconciled, whether the status API is on (and why
    not), where webhooks are forwarded and which endpoints credential checks call. Never a
    secret: a git URL's userinfo is masked, the forward URL is shown as scheme and host only,
    and endpoints without their query. (How many spec files and orgs: logged by the loop on
    its first read, and whenever that changes.)"""
    host, port = options.listen
    shown_host = f"[{host}]" if ":" in host else host
    if options.git_url:
        source = (
            f"git {shown_url(options.git_url)} at {options.git_ref}, "
            f"path {options.path} in it (checkouts in {settings.data_dir})"
        )
    else:
        source = f"folder {options.path.absolute()}"
    deletes = (
        f"--prune: removed assistants deleted and orphaned orgs retired, at most "
        f"{options.max_deletes} deletes a run"
        if options.prune
        else "no --prune: nothing deleted, orphans only reported"
    )
    if settings.admin_token is not None:
        api = "status API: on at /api/*, authorized by RECONCILER_ADMIN_TOKEN"
    else:
        api = "status API: off (RECONCILER_ADMIN_TOKEN is not set)"
    if settings.forward_url:
        forward = (
            "webhooks: POST /webhooks/vapi, checked against the org's secret, forwarded to "
            f"{origin(settings.forward_url)}"
            " (RECONCILER_FORWARD_URL; an org's spec.webhook.forwardUrl wins)"
        )
    else:
        forward = (
            "webhooks: POST /webhooks/vapi, checked against the org's secret, forwarded only for "
            "orgs with spec.webhook.forwardUrl (RECONCILER_FORWARD_URL is not set; others are "
            "answered 200)"
        )
    endpoints = Endpoints.from_settings(settings)
    calls = ", ".join(
        f"{name} {without_query(getattr(endpoints, name))}"
        for name in ("vapi", "twilio", "resend", "elevenlabs", "google_oauth", "google_calendar")
    )
    stubs = " (local stubs: RECONCILER_PROVIDER_STUBS)" if settings.provider_stubs else ""
    if settings.verify_interval_s > 0:
        checks = (
            f"credential checks every {_duration(settings.verify_interval_s)}{stubs} call: {calls}"
        )
    else:
        checks = (
            f"credential checks: off (RECONCILER_VERIFY_INTERVAL=0); reconciling calls vapi "
            f"and `reconciler verify` calls{stubs}: {calls}"
        )
    return [
        f"serving on {shown_host}:{port} as replica {replica}",
        f"specs: {source}; reconciling every {_duration(options.interval_s)}; {deletes}",
        api,
        forward,
        checks,
    ]


def _duration(seconds: float) -> str:
    """`6h`, `90m`, `30s`: as the settings and flags are written."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def origin(url: str) -> str:
    """`scheme://host[:port]` of a URL: its path, query and userinfo may hold tokens."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        return "<unparseable URL>"
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}" + (f":{port}" if port else "")


def without_query(url: str) -> str:
    """The URL's origin and path: a query may carry a token (an egress proxy's)."""
    try:
        path = urllib.parse.urlsplit(url).path
    except ValueError:
        return "<unparseable URL>"
    return origin(url) + path


def _start_verification(settings: Settings, rt: Reading) -> VerifyJob | None:
    """Every stored credential checked against its provider about once per
    RECONCILER_VERIFY_INTERVAL, shared by the replicas (0: off)."""
    if settings.verify_interval_s <= 0:
        return None
    job = VerifyJob(
        rt.pool,
        rt.key,
        Endpoints.from_settings(settings),
        interval_s=settings.verify_interval_s,
        concurrency=rt.controller.concurrency,
    )
    job.start()
    return job


def _webhooks(
    settings: Settings, rt: Writing, listen: tuple[str, int]
) -> tuple[WebhookEndpoint, WebhookResolver]:
    """The webhook endpoint over this process's pool and key; its cache follows NOTIFY from
    every replica (unless RECONCILER_WEBHOOK_LISTEN=false), `last_used_at` is batched. Org
    forward URLs may not reach this server's own listen address, nor what `netpolicy`
    refuses outside RECONCILER_FORWARD_ALLOW_NETWORKS."""
    resolver = WebhookResolver(rt.state, rt.key)
    resolver.start_background(
        rt.database_url, rt.state.assistants.touch_mappings, listen=settings.webhook_listen
    )
    policy = ForwardPolicy.from_setting(
        settings.forward_allow_networks,
        _own_addresses(listen[0]),
        listen[1],
        everywhere=listen[0] in _EVERY_ADDRESS,
    )
    endpoint = WebhookEndpoint(
        resolver,
        settings.forward_url,
        timeout_s=settings.forward_timeout_s,
        body_timeout_s=settings.webhook_body_timeout_s,
        max_in_flight_per_org=settings.forward_max_in_flight,
        max_in_flight=settings.forward_max_in_flight_total,
        forward_policy=policy,
    )
    return endpoint, resolver


_EVERY_ADDRESS = ("0.0.0.0", "::", "")  # noqa: S104 - compared, not bound


def _own_addresses(host: str) -> list[str]:
    """The addresses this server answers on: `host`, or every address of this machine when it
    listens on all (0.0.0.0, ::), as far as its name resolves, plus loopback."""
    if host not in _EVERY_ADDRESS:
        return [host]
    found = ["127.0.0.1", "::1"]
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None, type=socket.SOCK_STREAM)
    except OSError:
        return found
    return found + [str(info[4][0]) for info in infos]


def _close(resolver: WebhookResolver) -> None:
    try:
        resolver.close()  # the listener, and the last `last_used_at` flush
    except Exception as exc:  # shutting down: say it, never raise
        log.warning("closing the webhook resolver: %s", type(exc).__name__)


def _start_http(app: Any, listen: tuple[str, int]) -> uvicorn.Server:
    """uvicorn in a thread (so it installs no signal handlers of its own); an address that
    cannot be bound is a one-line ConfigError."""
    host, port = listen
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=3,
        # a request head must be complete within 10 s of the connection (uvicorn has no such
        # bound of its own); idle keep-alive connections are closed after 5 s; a request head
        # is at most 16 KiB; past LIMIT_CONCURRENCY connections and requests at once, new
        # requests get 503 at once
        http=head_timeout_protocol(HEAD_TIMEOUT_S),
        timeout_keep_alive=5,
        h11_max_incomplete_event_size=16 * 1024,
        limit_concurrency=LIMIT_CONCURRENCY,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="http", daemon=True)
    server._thread = thread  # type: ignore[attr-defined]
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise ConfigError(f"cannot listen on {host}:{port} (in use, or not an address here)")
        time.sleep(0.02)
    return server


def _install_signals(stop: threading.Event, loop: ReconcileLoop) -> None:
    def on_stop(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            return
        log.info("%s: finishing the org in hand, then exiting", signal.Signals(signum).name)
        stop.set()
        loop.controller.stopping.set()

    def on_hup(signum: int, frame: FrameType | None) -> None:
        log.info("SIGHUP: reconciling now")
        loop.trigger()

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, on_hup)
    sys.stdout.flush()
