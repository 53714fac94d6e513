"""Where an org's webhooks may be forwarded: the address policy of `spec.webhook.forwardUrl`.

The URL is written in a spec file (so possibly in a pull request), and the reconciler sits
inside the operator's network: it must not become a way to reach loopback services, the cloud
metadata endpoint (169.254.169.254, link-local) or the reconciler itself. Refused:

- loopback (127.0.0.0/8, ::1), link-local (169.254.0.0/16, fe80::/10), unspecified and
  "this network" (0.0.0.0/8, ::), multicast, reserved (240.0.0.0/4) and the other cloud
  metadata addresses (fd00:ec2::254, 100.100.100.200); the IPv4-mapped (::ffff:a.b.c.d) and
  IPv4-compatible forms of those too;
- the service's own listen address (address and port): a forward loop, never allowed;
- the name `localhost` (and `*.localhost`), wherever it resolves.

An address inside one of the operator's allowed networks (`RECONCILER_FORWARD_ALLOW_NETWORKS`,
e.g. `127.0.0.0/8` for a sidecar) is accepted all the same (except the service's own address).
Private networks (10/8, 172.16/12, 192.168/16, fc00::/7) are where internal services live:
allowed. The operator's own `RECONCILER_FORWARD_URL` is trusted as set and never checked.

`validate` (offline) refuses literal addresses and `localhost`; at send time the webhook
forwarder resolves the host itself, checks every address and connects to a checked one (see
`webhooks.guard`), so a DNS name cannot smuggle one in. Pure: no I/O, no reconciler imports.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

ALLOW_SETTING = "RECONCILER_FORWARD_ALLOW_NETWORKS"
_EXTRA_REFUSED: tuple[Network, ...] = (
    ipaddress.ip_network("0.0.0.0/8"),
    ipaddress.ip_network("100.100.100.200/32"),  # Alibaba Cloud's metadata
    ipaddress.ip_network("fd00:ec2::254/128"),  # AWS's metadata over IPv6
)


_LEGACY_IPV4 = re.compile(r"[0-9a-fx.]+")


class ForwardRefused(Exception):
    """A forward URL or address that the policy refuses; the message says why, never the URL
    (it may hold a token)."""


def parse_networks(text: str | None) -> tuple[Network, ...]:
    """`RECONCILER_FORWARD_ALLOW_NETWORKS`: comma-separated networks or addresses
    (`127.0.0.0/8,::1`); ValueError naming the bad item."""
    found: list[Network] = []
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        try:
            found.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"not a network or address: {item[:60]!r}") from None
    return tuple(found)


def allowed_from_environment() -> tuple[Network, ...]:
    """The allowed networks as `validate` sees them (its own environment); a bad value allows
    nothing (`serve` refuses to start on it, with the setting named)."""
    try:
        return parse_networks(os.environ.get(ALLOW_SETTING))
    except ValueError:
        return ()


def _plain(address: IPAddress) -> IPAddress:
    """The IPv4 address inside an IPv4-mapped or -compatible IPv6 one; else itself."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if int(address) >> 32 == 0 and int(address) > 1:  # ::a.b.c.d (deprecated form)
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address


def why_refused(address: IPAddress) -> str | None:
    """Why the policy refuses this address whatever the allowed networks; None if it does not."""
    plain = _plain(address)
    for candidate in {address, plain}:
        if candidate.is_loopback:
            return "a loopback address"
        if candidate.is_link_local:
            return "a link-local address (cloud metadata)"
        if candidate.is_unspecified:
            return "an unspecified address"
        if candidate.is_multicast:
            return "a multicast address"
        if any(candidate in net for net in _EXTRA_REFUSED if net.version == candidate.version):
            return "a reserved or metadata address"
        if candidate.is_reserved and not (
            isinstance(candidate, ipaddress.IPv6Address) and candidate.ipv4_mapped is not None
        ):
            return "a reserved address"
    return None


@dataclass(frozen=True)
class ForwardPolicy:
    """The policy applied to org forward URLs. `own_addresses` and `own_port`: where the
    service listens (every local address when it listens on 0.0.0.0 or ::), refused always;
    `allowed`: the operator's exceptions. `everywhere`: it listens on every address, so a
    connection to any address of this machine on its port reaches it, including those its
    name does not resolve to (another interface's, a container bridge's), which only the
    connection tells (`guard.GuardedBackend`)."""

    allowed: tuple[Network, ...] = ()
    own_addresses: frozenset[IPAddress] = field(default_factory=frozenset)
    own_port: int | None = None
    everywhere: bool = False

    @classmethod
    def from_setting(
        cls,
        allowed: str | None,
        own_addresses: Iterable[str] = (),
        own_port: int | None = None,
        *,
        everywhere: bool = False,
    ) -> ForwardPolicy:
        """ValueError for a bad `allowed`; own addresses that do not parse are skipped."""
        own: set[IPAddress] = set()
        for host in own_addresses:
            try:
                own.add(_plain(ipaddress.ip_address(host.split("%")[0])))
            except ValueError:
                continue
        return cls(parse_networks(allowed), frozenset(own), own_port, everywhere)

    def _own(self, address: IPAddress) -> bool:
        """Whether a connection to `address` (on the service's port) reaches this service.
        A zone id (`::1%1`) names the same address. Any loopback address does when the
        service listens on one (on Linux every 127/8 address reaches a server on 0.0.0.0, and
        one on 127.0.0.1 is refused the rest of 127/8 all the same: nothing else answers
        there on that port that a tenant should reach), and so does the unspecified one."""
        if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
            address = ipaddress.IPv6Address(str(address).split("%")[0])
        plain = _plain(address)
        own = self.own_addresses
        if plain in own or address in own or plain.is_unspecified:
            return True
        return plain.is_loopback and any(a.is_loopback for a in own)

    def is_allowed(self, address: IPAddress) -> bool:
        plain = _plain(address)
        return any(
            candidate in net
            for candidate in {address, plain}
            for net in self.allowed
            if net.version == candidate.version
        )

    def check(self, address: IPAddress, port: int) -> None:
        """`ForwardRefused` when a forward may not connect to `address:port`."""
        if port == self.own_port and self._own(address):
            raise ForwardRefused("the service's own listen address")
        if self.is_allowed(address):
            return
        why = why_refused(address)
        if why is not None:
            raise ForwardRefused(why)

    def check_literal(self, url: str) -> None:
        """The offline check (`validate`): a URL whose host is a literal address or
        `localhost` that the policy refuses. A DNS name passes (it is checked at send time)."""
        host = host_of(url)
        if host is None:
            return
        if host == "localhost" or host.endswith(".localhost"):
            if self.is_allowed(ipaddress.ip_address("127.0.0.1")):
                return
            raise ForwardRefused("a loopback name")
        try:
            address: IPAddress = ipaddress.ip_address(host)
        except ValueError:
            if not _LEGACY_IPV4.fullmatch(host):
                return
            try:  # 0x7f000001, 2130706433, 127.1: what the resolver turns into an address
                address = ipaddress.IPv4Address(socket.inet_aton(host))
            except OSError:
                return
        self.check(address, port_of(url))


def host_of(url: str) -> str | None:
    """The host of a URL, lower-case, without IPv6 brackets or a trailing dot."""
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return None
    return host.rstrip(".") if host else None


def port_of(url: str) -> int:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    return port if port is not None else (443 if parts.scheme == "https" else 80)
