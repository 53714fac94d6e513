"""A TCP proxy in front of Postgres that a test can cut and restore: what a client sees when the
database is killed (every connection drops), restarted (new connections work again) or stopped
(new connections are refused), without touching the real server other tests share."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import psycopg


class CuttableProxy:
    """A TCP proxy on 127.0.0.1 to one Postgres, cut and restored by the test."""

    def __init__(self, target_host: str, target_port: int) -> None:
        # a host that is a directory means a unix socket there, as libpq reads it
        self.unix = target_host.startswith("/")
        self.target = (target_host, target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self._open = threading.Event()
        self._open.set()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self._open.is_set():
                client.close()  # stopped: refused at once
                continue
            try:
                upstream = self._connect()
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _connect(self) -> socket.socket:
        if not self.unix:
            return socket.create_connection(self.target, timeout=5)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(f"{self.target[0]}/.s.PGSQL.{self.target[1]}")
        return sock

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def cut(self, *, stay_down: bool = False) -> None:
        """Drop every connection (a killed server); with `stay_down`, refuse new ones too."""
        if stay_down:
            self._open.clear()
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for s in sockets:
            with suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def restore(self) -> None:
        """Accept new connections again (a restarted server)."""
        self._open.set()

    def close(self) -> None:
        self._closed = True
        self.cut(stay_down=True)
        self.listener.close()

    def url(self, database_url: str) -> str:
        """`database_url` with its host and port replaced by the proxy's."""
        info = psycopg.conninfo.conninfo_to_dict(database_url)
        info.update(host="127.0.0.1", port=str(self.port))
        info.pop("hostaddr", None)
        return psycopg.conninfo.make_conninfo(**info)


@contextmanager
def cuttable(database_url: str) -> Iterator[CuttableProxy]:
    """A TCP proxy to the Postgres of `database_url` (over TCP or a unix socket)."""
    info = psycopg.conninfo.conninfo_to_dict(database_url)
    host = str(info.get("host") or "127.0.0.1")
    proxy = CuttableProxy(host, int(info.get("port") or 5432))
    try:
        yield proxy
    finally:
        proxy.close()
