"""A forward to this very service through an address its name does not resolve to (another
interface's, a container bridge's), when it listens on every address: the connection tells
it, and it is refused as the forward loop it is."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator

import anyio
import pytest

from reconciler.netpolicy import ForwardPolicy, ForwardRefused
from reconciler.webhooks.guard import GuardedBackend


def _this_machines_address() -> str | None:
    """A non-loopback address of this machine (the source of its route out), if it has one."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.1", 9))  # no packet is sent: only the route is chosen
        address = str(probe.getsockname()[0])
    except OSError:
        return None
    finally:
        probe.close()
    return None if ipaddress.ip_address(address).is_loopback else address


@pytest.fixture
def address() -> str:
    found = _this_machines_address()
    if found is None:
        pytest.skip("this machine has no non-loopback address")
    return found


@pytest.fixture
def listening() -> Iterator[int]:
    """A server socket on every address (as `serve --listen 0.0.0.0:PORT`); its port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("0.0.0.0", 0))  # noqa: S104 - the configuration under test
    sock.listen(8)
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


def connect(policy: ForwardPolicy, host: str, port: int) -> None:
    async def main() -> None:
        stream = await GuardedBackend(policy).connect_tcp(host, port, timeout=2.0)
        await stream.aclose()

    anyio.run(main)


def test_a_forward_to_any_address_of_this_machine_on_the_services_port_is_refused(
    address: str, listening: int
) -> None:
    # its name resolves to loopback only; the operator allows the address's network
    policy = ForwardPolicy.from_setting(
        f"{address}/32", ["127.0.0.1", "::1"], listening, everywhere=True
    )
    policy.check(ipaddress.ip_address(address), listening)  # the address alone passes
    with pytest.raises(ForwardRefused, match="own listen address"):
        connect(policy, address, listening)


def test_the_same_address_on_another_port_or_a_service_on_one_address_is_reached(
    address: str, listening: int
) -> None:
    other = ForwardPolicy.from_setting(f"{address}/32", [], listening + 1, everywhere=True)
    connect(other, address, listening)  # another port: another service, reached
    one_address = ForwardPolicy.from_setting(f"{address}/32", ["10.9.8.7"], listening)
    connect(one_address, address, listening)  # not listening everywhere: its own is 10.9.8.7
