"""The connection side of `reconciler.netpolicy`: an httpcore network backend that resolves a
forward target's host itself, checks every address it resolves to, and connects to a checked
address, never to the name (so a DNS answer that changes between the check and the connection,
DNS rebinding, cannot swap in another one). TLS still verifies, and SNI still names, the host
of the URL: httpcore passes it to `start_tls`, not the address connected to.

`guarded_transport(policy, ...)` is an `httpx.AsyncHTTPTransport` using it. A refusal raises
`ForwardRefused` (not an httpx error), so the forwarder tells it from an unreachable target.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from typing import Any

import anyio
import httpcore
import httpx

from reconciler.netpolicy import ForwardPolicy, ForwardRefused, IPAddress


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """Delegates to httpcore's default backend once the host's addresses pass the policy."""

    def __init__(self, policy: ForwardPolicy, inner: httpcore.AsyncNetworkBackend | None = None):
        self.policy = policy
        self._inner = inner or httpcore.AnyIOBackend()

    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        """Every address of `host`, all checked: one refused address refuses the host (a name
        that also resolves to a metadata address is not one to trust)."""
        local = host == "localhost" or host.endswith(".localhost")
        if local and not self.policy.is_allowed(ipaddress.ip_address("127.0.0.1")):
            raise ForwardRefused("a loopback name")
        try:
            found: Iterable[IPAddress] = [ipaddress.ip_address(host.strip("[]"))]
        except ValueError:
            infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            found = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
        addresses = list(dict.fromkeys(found))
        if not addresses:
            raise OSError("the host resolves to no address")
        for address in addresses:
            self.policy.check(address, port)
        return addresses

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await self.resolve(host, port)
        error: Exception | None = None
        for address in addresses:  # the first that answers, as a connect to the name would
            try:
                stream = await self._inner.connect_tcp(
                    str(address),
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
                continue
            if port == self.policy.own_port and self.policy.everywhere and _to_self(stream):
                await stream.aclose()
                raise ForwardRefused("the service's own listen address")
            return stream
        assert error is not None
        raise error

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise ForwardRefused("a unix socket")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def _to_self(stream: httpcore.AsyncNetworkStream) -> bool:
    """Whether the connection is to this machine: one to any of its own addresses is made
    from that same address (the kernel's local route), one to another machine never is."""
    sock = stream.get_extra_info("socket")
    if sock is None:
        return False
    try:
        local, peer = sock.getsockname()[0], sock.getpeername()[0]
        return bool(
            ipaddress.ip_address(str(local).split("%")[0])
            == ipaddress.ip_address(str(peer).split("%")[0])
        )
    except (OSError, ValueError):
        return False


def guarded_transport(
    policy: ForwardPolicy, *, max_keepalive_connections: int, keepalive_expiry: float = 5.0
) -> httpx.AsyncHTTPTransport:
    """An httpx transport whose connections go through `GuardedBackend`, with no bound on
    connections (the forwarder bounds forwards itself, answering 503 rather than waiting).
    httpx takes no network backend: its connection pool is replaced by one built with it (and
    httpx's own TLS context). Use it with `trust_env=False`: a proxy from the environment
    would resolve the host itself, past the check."""
    transport = httpx.AsyncHTTPTransport()
    ssl_context = getattr(transport._pool, "_ssl_context", None)
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=ssl_context,
        max_connections=None,
        max_keepalive_connections=max_keepalive_connections,
        keepalive_expiry=keepalive_expiry,
        network_backend=GuardedBackend(policy),
    )
    return transport
