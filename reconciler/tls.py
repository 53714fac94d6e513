"""One TLS context per process for every httpx client of the reconciler.

httpx builds a context for each client it makes, loading certifi's bundle (0.05-0.17 s of
CPU); a CLI command, a test or a benchmark that makes several clients paid it each time. The
context is the one httpx builds by default (`httpx.create_ssl_context`: `SSL_CERT_FILE` or
`SSL_CERT_DIR` when set, else certifi's bundle), built once per value of those variables. Our
clients speak HTTP/1.1 only: the ALPN protocols httpcore sets on it per connection are the same
for all of them, so sharing it between clients and threads changes nothing they do.
"""

from __future__ import annotations

import functools
import os
import ssl

import httpx


def ssl_context() -> ssl.SSLContext:
    """The process's context for the trust the environment names now."""
    return _context(os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))


@functools.lru_cache(maxsize=4)
def _context(cert_file: str | None, cert_dir: str | None) -> ssl.SSLContext:
    return httpx.create_ssl_context()  # reads the same two variables
