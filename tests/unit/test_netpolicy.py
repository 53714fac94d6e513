"""The forward address policy (`reconciler.netpolicy`) and its offline half in `validate`:
an org's `spec.webhook.forwardUrl` may not name loopback, link-local (cloud metadata) or other
internal addresses, nor localhost, unless the operator allows the network."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

import pytest
import yaml

from reconciler.config import load_settings
from reconciler.errors import ConfigError
from reconciler.netpolicy import ALLOW_SETTING, ForwardPolicy, ForwardRefused, why_refused
from reconciler.spec.loader import validate_tree

REFUSED = [
    "127.0.0.1",
    "127.8.9.10",
    "::1",
    "169.254.169.254",  # AWS, GCP, Azure metadata
    "169.254.0.1",
    "fe80::1",
    "0.0.0.0",  # noqa: S104 - an address to refuse, not one to bind
    "0.1.2.3",
    "::",
    "224.0.0.1",
    "ff02::1",
    "240.0.0.1",
    "100.100.100.200",  # Alibaba's metadata
    "fd00:ec2::254",  # AWS's, over IPv6
    "::ffff:127.0.0.1",  # IPv4-mapped
    "::ffff:169.254.169.254",
    "::127.0.0.1",  # IPv4-compatible
]
ALLOWED = ["10.0.0.5", "172.16.3.4", "192.168.1.1", "8.8.8.8", "2001:4860::8888", "fd12::1"]


@pytest.mark.parametrize("address", REFUSED)
def test_internal_addresses_are_refused(address: str) -> None:
    assert why_refused(ipaddress.ip_address(address)) is not None
    with pytest.raises(ForwardRefused):
        ForwardPolicy().check(ipaddress.ip_address(address), 443)


@pytest.mark.parametrize("address", ALLOWED)
def test_ordinary_and_private_addresses_are_allowed(address: str) -> None:
    ForwardPolicy().check(ipaddress.ip_address(address), 443)


def test_an_allowed_network_lets_its_addresses_through_but_never_the_service_itself() -> None:
    policy = ForwardPolicy.from_setting("127.0.0.0/8, ::1", ["127.0.0.1", "::1"], 8080)
    policy.check(ipaddress.ip_address("127.0.0.1"), 9000)
    policy.check(ipaddress.ip_address("::ffff:127.0.0.1"), 9000)
    policy.check(ipaddress.ip_address("::1"), 9000)
    with pytest.raises(ForwardRefused, match="own listen address"):
        policy.check(ipaddress.ip_address("127.0.0.1"), 8080)
    with pytest.raises(ForwardRefused, match="own listen address"):
        policy.check(ipaddress.ip_address("::ffff:127.0.0.1"), 8080)
    with pytest.raises(ForwardRefused):
        policy.check(ipaddress.ip_address("169.254.169.254"), 80)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000/hook",
        "http://[::1]/hook",
        "http://[::ffff:169.254.169.254]/latest",
        "http://169.254.169.254/latest/meta-data",
        "http://localhost:9000/hook",
        "http://LOCALHOST./hook",
        "http://api.localhost/hook",
        "http://0x7f000001/hook",  # what a resolver reads as 127.0.0.1
        "http://2130706433/hook",
        "http://127.1/hook",
    ],
)
def test_literal_internal_urls_are_refused_offline(url: str) -> None:
    with pytest.raises(ForwardRefused):
        ForwardPolicy().check_literal(url)


@pytest.mark.parametrize(
    "url", ["https://hooks.example.com/vapi", "http://10.1.2.3:8080/x", "https://[2001:db8::1]/"]
)
def test_names_and_ordinary_addresses_pass_offline(url: str) -> None:
    ForwardPolicy().check_literal(url)


def write_spec(tmp_path: Path, forward_url: str) -> Path:
    doc = {
        "apiVersion": "reconciler/v1",
        "kind": "Organization",
        "metadata": {"id": "7b0c7a4e-1b2c-4d3e-8f90-0a1b2c3d4e5f", "slug": "acme", "name": "A"},
        "spec": {"webhook": {"forwardUrl": forward_url}},
    }
    (tmp_path / "acme.yaml").write_text(yaml.safe_dump(doc))
    return tmp_path


def test_validate_refuses_a_metadata_forward_url_in_one_line_naming_file_and_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ALLOW_SETTING, raising=False)
    result = validate_tree(write_spec(tmp_path, "http://169.254.169.254/latest?token=t-9c1"))
    lines = [str(p) for p in result.problems]
    assert len(lines) == 1
    assert re.match(
        rf"{re.escape(str(tmp_path / 'acme.yaml'))}:\d+:\d+: spec.webhook.forwardUrl: ", lines[0]
    )
    assert "link-local" in lines[0] and ALLOW_SETTING in lines[0]
    assert "t-9c1" not in lines[0] and "\n" not in lines[0]


def test_validate_accepts_a_sidecar_when_the_operator_allows_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ALLOW_SETTING, "127.0.0.0/8")
    assert validate_tree(write_spec(tmp_path, "http://127.0.0.1:9000/hook")).problems == []
    assert validate_tree(write_spec(tmp_path, "http://localhost:9000/hook")).problems == []
    assert validate_tree(write_spec(tmp_path, "http://169.254.169.254/")).problems != []


def test_the_setting_is_checked_and_named_never_echoed() -> None:
    with pytest.raises(ConfigError, match=ALLOW_SETTING) as caught:
        load_settings(RECONCILER_FORWARD_ALLOW_NETWORKS="127.0.0.0/8,not-a-net-5d1")
    assert "not-a-net-5d1" not in str(caught.value)
    assert load_settings(RECONCILER_FORWARD_ALLOW_NETWORKS="10.0.0.0/8").forward_allow_networks
