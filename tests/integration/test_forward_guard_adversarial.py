"""The forward guard against an attacker who writes one org's `spec.webhook.forwardUrl` and runs
its DNS: every spelling of an internal address, names that resolve to one, DNS rebinding,
redirects, slow or huge answers, ports and schemes. Over real HTTP against real Postgres.

The lab (`lab` fixture), all on loopback and hermetic:
- `127.0.0.2` plays a public address: `POLICY` allows it (and only it) as the operator would
  allow a network; an HTTP target (`Target`) listens there on port P;
- a canary listens on `127.0.0.1:P` and `[::1]:P`: whatever reaches it is an internal service
  reached (`0.0.0.0` and every 127.0.0.1 spelling land there);
- a fake DNS in place of the resolver the guard uses (`anyio.getaddrinfo`, as in
  test_webhook_limits.py) answers for the attacker's names, passes numeric hosts to the real
  resolver (so `127.1`, `0x7f000001` and the like are read as the system reads them) and
  knows no other name;
- a jail on httpcore's `AnyIOBackend.connect_tcp` (the guard's inner backend, and any other
  async httpx connection's) records every connection asked for and lets only loopback ones
  out: no packet leaves the machine, and a connection to 169.254.169.254 or 10.x is seen
  even though nothing listens there.

A safe answer is the documented one (502 `forward_refused`, `REFUSED_TARGET_MESSAGE`), or for a
URL the HTTP client cannot use at all 502 `forward_failed`; either way nothing is connected to.
"""

from __future__ import annotations

import gzip
import ipaddress
import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import anyio
import httpcore
import httpx
import pytest
from psycopg_pool import ConnectionPool

from reconciler.netpolicy import ForwardPolicy
from reconciler.secrets.crypto import MasterKey
from reconciler.server.serve import _own_addresses
from reconciler.state.store import StateWriter
from reconciler.webhooks import guard
from reconciler.webhooks.http import (
    REFUSED_TARGET_MESSAGE,
    TIMEOUT_MESSAGE,
    TOO_LARGE_ANSWER_MESSAGE,
    UNREACHABLE_MESSAGE,
    webhook_app,
)
from reconciler.webhooks.resolver import WebhookResolver
from tests.helpers import served
from tests.integration.test_resolver import Org, body, seed_org
from tests.integration.test_webhook_http import PATH, counted, outcomes

PUBLIC = "127.0.0.2"
"""Stands in for a public address: the only one `POLICY` lets through on loopback."""
POLICY = ForwardPolicy.from_setting(f"{PUBLIC}/32")
BLACKHOLE = ipaddress.ip_network("192.0.2.0/24")
"""Addresses (TEST-NET-1, allowed by the policy) whose connections the jail never completes."""
REFUSED = (502, {"error": REFUSED_TARGET_MESSAGE}, {"forward_refused": 1})
UNUSABLE = (502, {"error": UNREACHABLE_MESSAGE}, {"forward_failed": 1})

# --- the lab -------------------------------------------------------------------------------------


class FakeDNS:
    """The guard's resolver (`anyio.getaddrinfo`) as the attacker's DNS: each of its names has
    a sequence of answers (the last repeats), each lookup counted; numeric hosts go to the
    real resolver (the system's reading of `127.1`, `0x7f000001`, ...), `localhost` too;
    any other name is unknown (nothing leaves the machine)."""

    def __init__(self, real: Callable[..., Any]) -> None:
        self.real = real
        self.answers: dict[str, list[list[str]]] = {}
        self.asked: list[str] = []
        self.stalled: set[str] = set()
        self.released = threading.Event()

    def set(self, name: str, *answers: list[str]) -> None:
        self.answers[name] = list(answers)

    async def __call__(self, host: Any, port: Any, **kwargs: Any) -> list[Any]:
        key = (host.decode() if isinstance(host, bytes) else host or "").lower()
        if key in self.answers:
            seen = self.asked.count(key)
            self.asked.append(key)
            if key in self.stalled:  # a DNS server that does not answer (for 5 s)
                with anyio.move_on_after(5):
                    while not self.released.is_set():
                        await anyio.sleep(0.02)
            answer = self.answers[key][min(seen, len(self.answers[key]) - 1)]
            return [
                (
                    socket.AF_INET6 if ":" in a else socket.AF_INET,
                    socket.SOCK_STREAM,
                    6,
                    "",
                    (a, port),
                )
                for a in answer
            ]
        numeric = {**kwargs, "flags": kwargs.get("flags", 0) | socket.AI_NUMERICHOST}
        try:
            return list(await self.real(host, port, **numeric))
        except socket.gaierror:
            if key == "localhost":
                return list(await self.real(host, port, **kwargs))
            raise socket.gaierror(socket.EAI_NONAME, "unknown to the fake DNS") from None


class Target(ThreadingHTTPServer):
    """The attacker's allowed target on `127.0.0.2:P`; the path says how it answers."""

    daemon_threads = True
    block_on_close = False

    def __init__(self) -> None:
        super().__init__((PUBLIC, 0), _TargetHandler)
        self.hits: list[str] = []
        self.released = threading.Event()


class _TargetHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Target

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self, status: int, data: bytes, **headers: str) -> None:
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        path, _, query = self.path.partition("?")
        args = {k: v[0] for k, v in parse_qs(query).items()}
        self.server.hits.append(path)
        try:
            self._route(path, args)
        except OSError:  # the forwarder gave up and closed: expected for the hostile paths
            self.close_connection = True

    def _route(self, path: str, args: dict[str, str]) -> None:
        if path == "/ok":
            self._answer(200, b'{"ok": true}')
        elif path == "/close":
            self._answer(200, b'{"ok": true}', connection="close")
            self.close_connection = True
        elif path == "/redirect":
            self._answer(int(args["code"]), b"{}", location=args["to"])
        elif path == "/hang":
            self.server.released.wait(5)
            self._answer(200, b"{}")
        elif path == "/trickle":  # a byte every 0.1 s: no read ever waits long
            self.send_response(200)
            self.send_header("content-length", "100")
            self.end_headers()
            for _ in range(100):
                if self.server.released.wait(0.1):
                    return
                self.wfile.write(b" ")
                self.wfile.flush()
        elif path == "/huge":
            self._answer(200, b"x" * (2 * 1024 * 1024))
        elif path == "/endless":  # chunked, without end (64 MiB at most)
            self.send_response(200)
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            chunk = b"x" * 65536
            for _ in range(1024):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        elif path == "/headers":  # a head that never ends (4 MiB of headers at most)
            self.wfile.write(b"HTTP/1.1 200 OK\r\n")
            for i in range(40_000):
                self.wfile.write(b"x-filler-%d: %s\r\n" % (i, b"y" * 90))
        elif path == "/bomb":
            data = gzip.compress(b"\0" * (32 * 1024 * 1024), 9)
            self._answer(200, data, content_encoding="gzip")
        else:
            self._answer(404, b"{}")


class Canary:
    """Listens on 127.0.0.1:port and [::1]:port; records whoever connects."""

    def __init__(self, port: int) -> None:
        self.sockets = []
        for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.bind((host, port))
            except OSError:
                sock.close()
                for other in self.sockets:
                    other.close()
                raise
            sock.listen(64)
            sock.setblocking(False)
            self.sockets.append(sock)
        self.hits: list[Any] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with selectors.DefaultSelector() as sel:
            for sock in self.sockets:
                sel.register(sock, selectors.EVENT_READ)
            while not self._stop.is_set():
                for key, _ in sel.select(0.02):
                    try:
                        conn, peer = key.fileobj.accept()  # type: ignore[union-attr]
                    except OSError:
                        continue
                    self.hits.append(peer)
                    conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for sock in self.sockets:
            sock.close()


@dataclass
class Sent:
    status: int
    json: Any
    gained: dict[str, float]
    took: float


def _post(http: httpx.Client, org: Org) -> Sent:
    before = outcomes()
    started = time.monotonic()
    resp = http.post(PATH, content=body(org.inbound), headers={"x-vapi-secret": org.secret})
    took = time.monotonic() - started
    try:
        doc = resp.json()
    except ValueError:
        doc = resp.content
    return Sent(resp.status_code, doc, counted(before), took)


@dataclass
class Lab:
    port: int
    """The target's port on 127.0.0.2, and the canary's on 127.0.0.1 and ::1."""
    target: Target
    canary: Canary
    dns: FakeDNS
    master_key: MasterKey
    shared: httpx.Client
    """A client of a webhook server (`POLICY`, 1 s deadline) kept for the whole module: for
    the cases that must connect to nothing, so that no pooled connection matters."""
    connects: list[tuple[str, int]] = field(default_factory=list)
    """What was asked of httpcore's network backend (host, port): by the guard, an address."""
    state: StateWriter | None = None

    def reset(self, state: StateWriter) -> None:
        self.state = state
        self.connects.clear()
        self.canary.hits.clear()
        self.target.hits.clear()
        self.target.released.clear()
        self.dns.answers.clear()
        self.dns.asked.clear()
        self.dns.stalled.clear()
        self.dns.released.clear()

    def url(self, template: str) -> str:
        return template.replace("{port}", str(self.port))

    def forward(self, url: str) -> Sent:
        """One verified webhook of an org whose forward URL is `url`, through the shared
        server."""
        assert self.state is not None
        org = seed_org(self.state, self.master_key, "acme", forward_url=self.url(url))
        return _post(self.shared, org)

    def assert_nothing_reached(self) -> None:
        assert self.canary.hits == []
        assert self.connects == []
        assert self.target.hits == []


def _target_and_canary() -> tuple[Target, Canary]:
    for _ in range(50):
        target = Target()
        try:
            return target, Canary(target.server_address[1])
        except OSError:  # the port is taken on 127.0.0.1 or ::1: another one
            target.server_close()
    raise AssertionError("no port free on 127.0.0.1, ::1 and 127.0.0.2 at once")


@pytest.fixture(scope="module")
def _lab(session_pool: ConnectionPool, master_key: MasterKey) -> Iterator[Lab]:
    target, canary = _target_and_canary()
    threading.Thread(target=target.serve_forever, args=(0.05,), daemon=True).start()
    dns = FakeDNS(anyio.getaddrinfo)
    real_connect = httpcore.AnyIOBackend.connect_tcp
    connects: list[tuple[str, int]] = []

    async def jailed(
        self: httpcore.AnyIOBackend, host: str, port: int, *args: Any, **kwargs: Any
    ) -> httpcore.AsyncNetworkStream:
        connects.append((host, port))
        try:
            ip = ipaddress.ip_address(host.split("%")[0])
        except ValueError:  # the guard hands over an address, never a name
            raise httpcore.ConnectError("jailed: a name") from None
        if ip in BLACKHOLE:
            await anyio.sleep(30)  # a SYN nobody answers
        plain = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped else ip
        if not plain.is_loopback:
            raise httpcore.ConnectError("jailed: nothing leaves this machine")
        return await real_connect(self, host, port, *args, **kwargs)

    app = webhook_app(
        WebhookResolver(StateWriter(session_pool), master_key), forward_policy=POLICY, timeout_s=1.0
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(guard.anyio, "getaddrinfo", dns)
        patch.setattr(httpcore.AnyIOBackend, "connect_tcp", jailed)
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
            patch.delenv(name, raising=False)
        try:
            with (
                served(app) as server,
                httpx.Client(base_url=server, timeout=10, trust_env=False) as shared,
            ):
                yield Lab(
                    target.server_address[1], target, canary, dns, master_key, shared, connects
                )
        finally:
            dns.released.set()
            target.released.set()
            target.shutdown()
            target.server_close()
            canary.close()


@pytest.fixture
def lab(_lab: Lab, state: StateWriter) -> Iterator[Lab]:
    _lab.reset(state)
    try:
        yield _lab
    finally:
        _lab.dns.released.set()
        _lab.target.released.set()


@contextmanager
def gateway(
    lab: Lab,
    forward_url: str,
    *,
    policy: ForwardPolicy = POLICY,
    timeout_s: float = 1.0,
    slug: str = "acme",
) -> Iterator[Callable[[], Sent]]:
    """A webhook server of its own (fresh connection pools) with one org whose forward URL
    is `forward_url`; yields a function that posts one verified webhook of that org."""
    assert lab.state is not None
    app = webhook_app(
        WebhookResolver(lab.state, lab.master_key), forward_policy=policy, timeout_s=timeout_s
    )
    with served(app) as server, httpx.Client(base_url=server, timeout=10, trust_env=False) as http:
        org = seed_org(lab.state, lab.master_key, slug, forward_url=lab.url(forward_url))
        yield lambda: _post(http, org)


@contextmanager
def serving(
    lab: Lab, sock: socket.socket, policy: ForwardPolicy
) -> Iterator[Callable[[str], Sent]]:
    """A webhook server on the caller's listening socket (any address, closed after);
    yields a function that posts one verified webhook of a new org whose forward URL is
    the one given."""
    assert lab.state is not None
    state = lab.state
    app = webhook_app(WebhookResolver(state, lab.master_key), forward_policy=policy, timeout_s=1.0)
    orgs = 0
    with (
        served(app, sock) as base,
        httpx.Client(base_url=base, timeout=10, trust_env=False) as http,
    ):

        def send(url: str) -> Sent:
            nonlocal orgs
            orgs += 1
            org = seed_org(state, lab.master_key, f"org{orgs}", forward_url=url)
            return _post(http, org)

        yield send


def verdict(sent: Sent) -> tuple[int, Any, dict[str, float]]:
    return sent.status, sent.json, sent.gained


# --- every spelling of an internal address -------------------------------------------------------

LITERAL_REFUSED = {
    # loopback (the canary listens on 127.0.0.1:P and [::1]:P)
    "dotted": "http://127.0.0.1:{port}/hook",
    "short-2": "http://127.1:{port}/hook",
    "short-3": "http://127.0.1:{port}/hook",
    "decimal": "http://2130706433:{port}/hook",
    "hex": "http://0x7f000001:{port}/hook",
    "hex-upper": "http://0X7F000001:{port}/hook",
    "hex-parts": "http://0x7f.0x0.0x0.0x1:{port}/hook",
    "hex-short": "http://0x7f.1:{port}/hook",
    "octal-short": "http://0177.1:{port}/hook",
    "octal-part": "http://0177.0.0.1.:{port}/hook",  # trailing dot too: a fake DNS answer
    "octal-whole": "http://017700000001:{port}/hook",
    "other-127": "http://127.8.9.10:{port}/hook",
    "fullwidth-dots": "http://127\u30020\u30020\u30021:{port}/hook",
    "trailing-dot": "http://127.0.0.1.:{port}/hook",
    "userinfo": "http://good.example@127.0.0.1:{port}/hook",
    "userinfo-pass": "http://user:s3cret-pw@127.0.0.1:{port}/hook",
    "https": "https://127.0.0.1:{port}/hook",
    "upper-scheme": "HTTP://127.0.0.1:{port}/hook",
    "localhost": "http://localhost:{port}/hook",
    "localhost-upper": "http://LOCALHOST:{port}/hook",
    "localhost-dot": "http://localhost.:{port}/hook",
    "sub-localhost": "http://api.localhost:{port}/hook",
    "v6-loopback": "http://[::1]:{port}/hook",
    "v6-long": "http://[0:0:0:0:0:0:0:1]:{port}/hook",
    "v6-zeros": "http://[0000::0001]:{port}/hook",
    "v6-zone": "http://[::1%251]:{port}/hook",
    "v6-zone-raw": "http://[::1%1]:{port}/hook",
    "v4-mapped": "http://[::ffff:127.0.0.1]:{port}/hook",
    "v4-mapped-hex": "http://[::ffff:7f00:1]:{port}/hook",
    "v4-mapped-long": "http://[0:0:0:0:0:ffff:7f00:1]:{port}/hook",
    "v4-compatible": "http://[::127.0.0.1]:{port}/hook",
    "v4-translated": "http://[::ffff:0:7f00:1]:{port}/hook",
    "nat64": "http://[64:ff9b::7f00:1]:{port}/hook",
    # unspecified: a connection to 0.0.0.0 lands on the canary
    "zero": "http://0.0.0.0:{port}/hook",
    "zero-short": "http://0:{port}/hook",
    "zero-hex": "http://0x0:{port}/hook",
    "this-network": "http://0.1.2.3:{port}/hook",
    "v6-unspecified": "http://[::]:{port}/hook",
    "v6-unspecified-mapped": "http://[::ffff:0.0.0.0]:{port}/hook",
    # link-local: the cloud metadata endpoint
    "metadata": "http://169.254.169.254/latest/meta-data/",
    "metadata-port": "http://169.254.169.254:{port}/latest",
    "metadata-decimal": "http://2852039166/latest",
    "metadata-hex": "http://0xa9fea9fe/latest",
    "metadata-hex-parts": "http://0xa9.0xfe.0xa9.0xfe/latest",
    "metadata-octal": "http://0251.0376.0251.0376./latest",
    "metadata-short": "http://169.254.43518/latest",
    "metadata-dot": "http://169.254.169.254./latest",
    "metadata-mapped": "http://[::ffff:169.254.169.254]/latest",
    "metadata-mapped-hex": "http://[::ffff:a9fe:a9fe]/latest",
    "metadata-compatible": "http://[::169.254.169.254]/latest",
    "metadata-userinfo": "http://169.254.169.254:80@169.254.169.254/latest",
    "link-local-v6": "http://[fe80::1]/",
    "link-local-v6-zone": "http://[fe80::a9fe:a9fe%25eth0]/",
    "aws-v6-metadata": "http://[fd00:ec2::254]/latest",
    "aws-v6-metadata-long": "http://[FD00:0EC2:0:0:0:0:0:0254]/latest",
    # carrier-grade NAT: Alibaba Cloud's metadata (100.100.100.200)
    "cgnat-metadata": "http://100.100.100.200/latest",
    "cgnat-metadata-decimal": "http://1684301000/latest",
    "cgnat-metadata-hex": "http://0x646464c8/latest",
    "cgnat-metadata-mapped": "http://[::ffff:100.100.100.200]/latest",
    "cgnat-metadata-mapped-hex": "http://[::ffff:6464:64c8]/latest",
    # multicast, broadcast, reserved
    "multicast": "http://224.0.0.1:{port}/",
    "multicast-ssdp": "http://239.255.255.250:{port}/",
    "multicast-hex": "http://0xe0000001:{port}/",
    "multicast-v6": "http://[ff02::1]:{port}/",
    "multicast-mapped": "http://[::ffff:224.0.0.1]:{port}/",
    "broadcast": "http://255.255.255.255:{port}/",
    "reserved": "http://240.0.0.1:{port}/",
    # not http(s), but httpcore speaks it (an upgrade): checked all the same
    "ws": "ws://127.0.0.1:{port}/",
    "wss": "wss://127.0.0.1:{port}/",
}

LITERAL_UNUSABLE = {
    # the HTTP client refuses these spellings itself (before any connection): still safe
    "octal-dotted": "http://0177.0.0.1:{port}/hook",
    "leading-zeros": "http://127.000.000.001:{port}/hook",
    "circled-digits": "http://\u2460\u2461\u2466.0.0.1:{port}/hook",
    "metadata-octal-dotted": "http://0251.0376.0251.0376/latest",
    "metadata-octal-mixed": "http://0251.254.169.254/latest",
    # not http(s): never sent anywhere
    "ftp": "ftp://127.0.0.1:{port}/",
    "gopher": "gopher://127.0.0.1:{port}/_SET%20k%20v",
    "dict": "dict://127.0.0.1:{port}/info",
    "file": "file:///etc/passwd",
    "unix": "http+unix://%2Fvar%2Frun%2Fdocker.sock/containers/json",
    "no-scheme": "//127.0.0.1:{port}/hook",
    "bare-host": "127.0.0.1:{port}/hook",
    "no-slashes": "http:127.0.0.1:{port}/hook",
    "javascript": "javascript:alert(1)",
}


@pytest.mark.parametrize("url", LITERAL_REFUSED.values(), ids=LITERAL_REFUSED.keys())
def test_every_spelling_of_an_internal_address_is_refused_and_never_connected_to(
    lab: Lab, caplog: pytest.LogCaptureFixture, url: str
) -> None:
    # what a permissive resolver (or the attacker's DNS) makes of the trailing-dot spellings
    lab.dns.set("127.0.0.1.", ["127.0.0.1"])
    lab.dns.set("localhost.", ["127.0.0.1"])
    lab.dns.set("0177.0.0.1.", ["127.0.0.1"])
    lab.dns.set("169.254.169.254.", ["169.254.169.254"])
    lab.dns.set("0251.0376.0251.0376.", ["169.254.169.254"])
    lab.dns.set("api.localhost", [PUBLIC])  # `*.localhost` is refused wherever it resolves
    caplog.set_level(logging.DEBUG, logger="reconciler.webhooks")
    sent = lab.forward(url)
    assert verdict(sent) == REFUSED
    lab.assert_nothing_reached()
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "s3cret-pw" not in logged and "/hook" not in logged and "/latest" not in logged


@pytest.mark.parametrize("url", LITERAL_UNUSABLE.values(), ids=LITERAL_UNUSABLE.keys())
def test_urls_the_client_cannot_use_fail_without_connecting(lab: Lab, url: str) -> None:
    assert verdict(lab.forward(url)) == UNUSABLE
    lab.assert_nothing_reached()


@pytest.mark.parametrize("port", [22, 80, 443, 5432, 6379, 65535])
@pytest.mark.parametrize("host", ["127.0.0.1", "169.254.169.254", "[::1]", "0.0.0.0"])  # noqa: S104
def test_refused_addresses_are_refused_on_every_port(lab: Lab, host: str, port: int) -> None:
    assert verdict(lab.forward(f"http://{host}:{port}/")) == REFUSED
    lab.assert_nothing_reached()


def test_an_impossible_port_on_an_allowed_address_fails_and_reaches_nothing(lab: Lab) -> None:
    assert verdict(lab.forward(f"http://{PUBLIC}:65536/hook")) == UNUSABLE
    assert lab.canary.hits == [] and lab.target.hits == []


# --- names the attacker's DNS points inside ------------------------------------------------------

DNS_REFUSED = {
    "loopback": ["127.0.0.1"],
    "loopback-other": ["127.53.0.1"],
    "v6-loopback": ["::1"],
    "mapped-loopback": ["::ffff:127.0.0.1"],
    "compatible-loopback": ["::127.0.0.1"],
    "unspecified": ["0.0.0.0"],  # noqa: S104
    "v6-unspecified": ["::"],
    "metadata": ["169.254.169.254"],
    "metadata-mapped": ["::ffff:169.254.169.254"],
    "metadata-v6-scoped": ["fe80::a9fe:a9fe%eth0"],
    "aws-v6-metadata": ["fd00:ec2::254"],
    "alibaba-metadata": ["100.100.100.200"],
    "multicast": ["224.0.0.251"],
    "nat64-metadata": ["64:ff9b::a9fe:a9fe"],
    # one bad address among good ones refuses the name: the connection could pick either
    "public-then-loopback": [PUBLIC, "127.0.0.1"],
    "loopback-then-public": ["127.0.0.1", PUBLIC],
    "public-then-v6-loopback": [PUBLIC, "::1"],
    "public-then-metadata": [PUBLIC, "169.254.169.254"],
}


@pytest.mark.parametrize("answer", DNS_REFUSED.values(), ids=DNS_REFUSED.keys())
def test_a_name_resolving_to_an_internal_address_is_refused(lab: Lab, answer: list[str]) -> None:
    lab.dns.set("hooks.attacker.example", answer)
    assert verdict(lab.forward("http://hooks.attacker.example:{port}/ok")) == REFUSED
    lab.assert_nothing_reached()
    assert lab.dns.asked == ["hooks.attacker.example"]


@pytest.mark.parametrize(
    ("name", "internal"),
    [
        ("metadata.google.internal", "169.254.169.254"),
        ("instance-data", "169.254.169.254"),
        ("127.0.0.1.nip.io", "127.0.0.1"),
        ("localtest.me", "127.0.0.1"),
        ("HOOKS.ATTACKER.EXAMPLE", "::ffff:169.254.169.254"),
    ],
)
def test_well_known_names_for_internal_addresses_are_refused(
    lab: Lab, name: str, internal: str
) -> None:
    lab.dns.set(name.lower(), [internal])
    assert verdict(lab.forward(f"http://{name}:{{port}}/ok")) == REFUSED
    lab.assert_nothing_reached()


@pytest.mark.parametrize(
    "answer",
    [["10.1.2.3"], ["172.16.9.9"], ["192.168.7.7"], ["fd12:3456::7"], ["::ffff:10.1.2.3"]],
    ids=["10/8", "172.16/12", "192.168/16", "ula", "mapped-private"],
)
def test_a_name_resolving_to_a_private_address_connects_only_to_the_address_checked(
    lab: Lab, answer: list[str]
) -> None:
    """Private networks are allowed (docs/webhooks.md: where internal services live): the
    connection goes to exactly the address resolved and checked (the jail stops it there,
    so 502 `forward_failed`), never anywhere else."""
    lab.dns.set("internal.attacker.example", answer)
    assert verdict(lab.forward("http://internal.attacker.example:{port}/ok")) == UNUSABLE
    assert lab.connects == [(str(ipaddress.ip_address(answer[0])), lab.port)]
    assert lab.canary.hits == [] and lab.target.hits == []


@pytest.mark.parametrize("address", ["100.64.0.1", "100.127.255.254", "100.100.100.100"])
def test_carrier_grade_nat_connects_only_to_the_address_checked(lab: Lab, address: str) -> None:
    """100.64.0.0/10 is neither listed as refused nor as private in the docs; only Alibaba's
    metadata address in it is refused. Whatever the policy, nothing but the address checked
    may be connected to."""
    lab.dns.set("cgnat.attacker.example", [address])
    sent = lab.forward("http://cgnat.attacker.example:{port}/ok")
    assert verdict(sent) in (REFUSED, UNUSABLE)
    assert lab.connects in ([], [(address, lab.port)])
    assert lab.canary.hits == [] and lab.target.hits == []


# --- DNS rebinding -------------------------------------------------------------------------------


def test_rebinding_the_connection_goes_to_the_address_that_was_checked(lab: Lab) -> None:
    """The first answer is public, every later one loopback: the name is resolved once, and
    the connection goes to that public address, not to a second lookup's."""
    lab.dns.set("rebind.attacker.example", [PUBLIC], ["127.0.0.1"])
    with gateway(lab, "http://rebind.attacker.example:{port}/ok") as send:
        sent = send()
    assert verdict(sent) == (200, {"ok": True}, {"forwarded": 1})
    assert lab.dns.asked == ["rebind.attacker.example"]
    assert lab.connects == [(PUBLIC, lab.port)]
    assert lab.target.hits == ["/ok"]
    assert lab.canary.hits == []


def test_rebinding_between_connections_is_checked_again(lab: Lab) -> None:
    """The target closes each connection, so the next webhook needs a new one: resolved
    again, now to loopback, and refused."""
    lab.dns.set("rebind.attacker.example", [PUBLIC], ["127.0.0.1"])
    with gateway(lab, "http://rebind.attacker.example:{port}/close") as send:
        first, second, third = send(), send(), send()
    assert verdict(first) == (200, {"ok": True}, {"forwarded": 1})
    assert verdict(second) == REFUSED
    assert verdict(third) == REFUSED
    assert lab.dns.asked == ["rebind.attacker.example"] * 3
    assert lab.connects == [(PUBLIC, lab.port)]
    assert lab.canary.hits == []


def test_rebinding_under_a_kept_alive_connection_changes_nothing(lab: Lab) -> None:
    """A kept-alive connection stays with the address checked when it was opened."""
    lab.dns.set("rebind.attacker.example", [PUBLIC], ["127.0.0.1"])
    with gateway(lab, "http://rebind.attacker.example:{port}/ok") as send:
        sent = [send() for _ in range(3)]
    assert [s.status for s in sent] == [200, 200, 200]
    assert lab.target.hits == ["/ok"] * 3
    assert lab.connects == [(PUBLIC, lab.port)]
    assert lab.canary.hits == []


def test_a_stalled_dns_answer_is_bounded_by_the_deadline(lab: Lab) -> None:
    lab.dns.set("slow.attacker.example", [PUBLIC])
    lab.dns.stalled.add("slow.attacker.example")
    with gateway(lab, "http://slow.attacker.example:{port}/ok", timeout_s=0.5) as send:
        sent = send()
    assert verdict(sent) == (504, {"error": TIMEOUT_MESSAGE}, {"forward_failed": 1})
    assert sent.took < 3.0  # 0.5 s deadline, slack for a loaded machine; the DNS stalls 5 s
    assert lab.target.hits == [] and lab.canary.hits == []


def test_many_addresses_that_never_accept_are_bounded_by_the_deadline(lab: Lab) -> None:
    """A name with 50 addresses, none of which ever accepts: the guard tries them in turn,
    the whole forward still ends at the deadline."""
    lab.dns.set("tarpit.attacker.example", [f"192.0.2.{i}" for i in range(1, 51)])
    with gateway(lab, "http://tarpit.attacker.example:{port}/ok", timeout_s=0.5) as send:
        sent = send()
    assert verdict(sent) == (504, {"error": TIMEOUT_MESSAGE}, {"forward_failed": 1})
    assert sent.took < 3.0
    assert lab.canary.hits == [] and lab.target.hits == []


# --- what an allowed target answers --------------------------------------------------------------

REDIRECTS = [
    (301, "http://127.0.0.1:{port}/"),
    (302, "http://169.254.169.254/latest/meta-data/"),
    (303, "http://localhost:{port}/"),
    (307, "http://[::1]:{port}/"),
    (308, "http://0.0.0.0:{port}/"),
    (302, "gopher://127.0.0.1:{port}/_x"),
]


@pytest.mark.parametrize(("code", "location"), REDIRECTS)
def test_a_redirect_to_an_internal_address_is_relayed_never_followed(
    lab: Lab, code: int, location: str
) -> None:
    to = lab.url(location)
    url = str(httpx.URL(f"http://{PUBLIC}:{lab.port}/redirect", params={"code": code, "to": to}))
    sent = lab.forward(url)
    assert verdict(sent) == (code, {}, {"forwarded": 1})
    assert lab.target.hits == ["/redirect"]
    assert set(lab.connects) <= {(PUBLIC, lab.port)}  # none, when a kept-alive one was used
    assert lab.canary.hits == []


@pytest.mark.parametrize(
    ("path", "answer"),
    [
        ("/hang", (504, {"error": TIMEOUT_MESSAGE}, {"forward_failed": 1})),
        ("/trickle", (504, {"error": TIMEOUT_MESSAGE}, {"forward_failed": 1})),
        ("/huge", (502, {"error": TOO_LARGE_ANSWER_MESSAGE}, {"forward_failed": 1})),
        ("/endless", (502, {"error": TOO_LARGE_ANSWER_MESSAGE}, {"forward_failed": 1})),
        ("/bomb", (502, {"error": TOO_LARGE_ANSWER_MESSAGE}, {"forward_failed": 1})),
        ("/headers", UNUSABLE),
    ],
)
def test_an_allowed_target_that_answers_slowly_or_hugely_is_bounded(
    lab: Lab, path: str, answer: Any
) -> None:
    """Through the shared server (1 s deadline): every answer is bounded in time and size."""
    sent = lab.forward(f"http://{PUBLIC}:{{port}}{path}")
    lab.target.released.set()
    assert verdict(sent) == answer
    assert sent.took < 4.0  # the 1 s deadline, with slack for a loaded machine
    assert lab.target.hits == [path]
    assert lab.canary.hits == []


def test_environment_proxies_are_not_used_for_org_urls(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A proxy would resolve the name itself, past the check: the canary plays the proxy."""
    proxy = f"http://127.0.0.1:{lab.port}"
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "all_proxy"):
        monkeypatch.setenv(name, proxy)
    lab.dns.set("hooks.attacker.example", [PUBLIC])
    lab.dns.set("metadata.attacker.example", ["169.254.169.254"])
    with gateway(lab, "http://hooks.attacker.example:{port}/ok", slug="good") as send:
        good = send()
    with gateway(lab, "http://metadata.attacker.example:{port}/ok", slug="bad") as send:
        bad = send()
    assert verdict(good) == (200, {"ok": True}, {"forwarded": 1})
    assert verdict(bad) == REFUSED
    assert lab.connects == [(PUBLIC, lab.port)]
    assert lab.canary.hits == []


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{port}@hooks.attacker.example:{port}/ok",
        "http://hooks.attacker.example:{port}#@127.0.0.1:{port}/ok",
        "http://hooks.attacker.example:{port}\\@127.0.0.1:{port}/ok",
        "http://hooks.attacker.example\\@127.0.0.1:{port}/ok",
        "http://hooks.attacker.example:{port}/ok?@127.0.0.1:{port}/",
        "http://hooks.attacker.example%00@127.0.0.1:{port}/ok",
        "http://hooks.attacker.example:{port}%2f@127.0.0.1:{port}/ok",
    ],
    ids=["userinfo-internal", "fragment", "backslash-port", "backslash", "query", "nul", "slash"],
)
def test_the_host_checked_is_the_host_connected_to_whatever_the_url_tricks(
    lab: Lab, url: str
) -> None:
    """Parser confusion (which part is the host?) cannot matter: whatever the client takes for
    the host is what is resolved and checked. Either the internal host was taken (refused)
    or the attacker's name (the public target reached, and nothing else)."""
    lab.dns.set("hooks.attacker.example", [PUBLIC])
    sent = lab.forward(url)
    if sent.gained == {"forward_refused": 1}:
        assert verdict(sent) == REFUSED
        assert lab.connects == [] and lab.target.hits == []
    else:
        assert sent.gained in ({"forwarded": 1}, {"forward_failed": 1}), sent
        assert set(lab.connects) <= {(PUBLIC, lab.port)}
    assert lab.canary.hits == []


# --- the service's own address: a forward loop ---------------------------------------------------

OWN_SPELLINGS = {
    "dotted": "http://127.0.0.1:{self}/webhooks/vapi",
    "short": "http://127.1:{self}/webhooks/vapi",
    "decimal": "http://2130706433:{self}/webhooks/vapi",
    "hex": "http://0x7f000001:{self}/webhooks/vapi",
    "mapped": "http://[::ffff:127.0.0.1]:{self}/webhooks/vapi",
    "mapped-hex": "http://[::ffff:7f00:1]:{self}/webhooks/vapi",
    "compatible": "http://[::127.0.0.1]:{self}/webhooks/vapi",
    "localhost": "http://localhost:{self}/webhooks/vapi",
    "zero": "http://0.0.0.0:{self}/webhooks/vapi",
    "trailing-dot": "http://127.0.0.1.:{self}/webhooks/vapi",
}


def test_the_services_own_address_is_refused_in_every_spelling(lab: Lab) -> None:
    """Loopback allowed (a sidecar), the server on 127.0.0.1: its own port stays refused,
    however it is written (one server, one org per spelling)."""
    lab.dns.set("127.0.0.1.", ["127.0.0.1"])
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    port = str(sock.getsockname()[1])
    policy = ForwardPolicy.from_setting("127.0.0.0/8", ["127.0.0.1"], int(port))
    with serving(lab, sock, policy) as send:
        seen = {
            name: verdict(send(url.replace("{self}", port))) for name, url in OWN_SPELLINGS.items()
        }
    assert seen == dict.fromkeys(OWN_SPELLINGS, REFUSED)
    assert lab.connects == [] and lab.canary.hits == []


def test_a_server_listening_on_every_address_refuses_any_loopback_spelling_of_itself(
    lab: Lab,
) -> None:
    """`serve` on 0.0.0.0 with loopback allowed (a sidecar): its own addresses are those of
    `_own_addresses("0.0.0.0")`; 127.0.0.2 (any of 127/8) reaches it all the same on Linux.
    docs/webhooks.md: the service's own address and port, "every local address when it
    listens on 0.0.0.0", are refused even inside an allowed network."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("0.0.0.0", 0))  # noqa: S104 - the configuration under test
    sock.listen(64)
    port = sock.getsockname()[1]
    own = _own_addresses("0.0.0.0")  # noqa: S104 - compared, not bound
    policy = ForwardPolicy.from_setting("127.0.0.0/8", own, port)
    with serving(lab, sock, policy) as send:
        sent = send(f"http://127.0.0.2:{port}/webhooks/vapi")
    assert verdict(sent) == REFUSED


def test_a_zone_id_does_not_disguise_the_services_own_address(lab: Lab) -> None:
    """`serve` on ::1 with ::1 allowed (a sidecar): http://[::1%1]:<own port>/ is the server
    itself (a zone is ignored for loopback), and must be refused as its own address."""
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("::1", 0))
    sock.listen(64)
    port = sock.getsockname()[1]
    policy = ForwardPolicy.from_setting("::1", ["::1"], port)
    with serving(lab, sock, policy) as send:
        sent = send(f"http://[::1%1]:{port}/webhooks/vapi")
    assert verdict(sent) == REFUSED
