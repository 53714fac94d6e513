"""`reconciler.tls`: one TLS context per process, per trust the environment names."""

from __future__ import annotations

import ssl

import certifi
import pytest

from reconciler import tls
from reconciler.providers.verify import http_client as providers_client
from reconciler.vapi.client import http_client as vapi_client


def test_every_client_shares_the_one_context(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    ctx = tls.ssl_context()
    assert ctx is tls.ssl_context()
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert ctx.cert_store_stats()["x509_ca"] > 0  # certifi's bundle
    with vapi_client("http://127.0.0.1:9") as a, providers_client() as b:
        ours = a._transport  # GETs on our own connections, the rest through httpx's
        assert ours._tls is ctx  # type: ignore[attr-defined]
        for transport in (ours.other, b._transport):  # type: ignore[attr-defined]
            assert transport._pool._ssl_context is ctx


def test_a_trust_named_by_the_environment_gets_its_own_context(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    default = tls.ssl_context()
    monkeypatch.setenv("SSL_CERT_FILE", certifi.where())
    named = tls.ssl_context()
    assert named is not default and named is tls.ssl_context()
