"""An httpx transport that notices an interim ``1xx`` head, for Cost Explorer's ``102``.

Atlas answers a Cost Explorer poll that is still processing with ``102`` as the final
status (ATLAS-NOTES.md, "Cost Explorer"). httpcore treats every 1xx but 101 as an interim
answer, drops it and keeps reading, so what reaches httpx is the server closing the
connection (``RemoteProtocolError: Server disconnected without sending a response``) or
silence (``ReadTimeout``). Both look exactly like a server that closed or stayed silent
*without* answering 102, which is a real transport fault, not "not ready".

So the connection's bytes are watched: while a ``Watch`` is active (a context variable,
set by the poll around its request; httpcore does the I/O in the caller's task), the
network stream records whether the answer to the last request written began with
``HTTP/1.x 1xx``, and once it did, every further read of that answer waits at most
``after_1xx_timeout`` seconds (so "102 then silence" ends quickly while a slow but real
answer still has the whole read time-out).
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import httpcore
import httpx

_INTERIM = re.compile(rb"HTTP/1\.[01] (1\d\d)[ \r]")
_HEAD_BYTES = 13  # b"HTTP/1.1 102 " is enough to tell


class Watch:
    """What the connection saw for one request: I/O at all, and an interim 1xx head."""

    def __init__(self, after_1xx_timeout: float) -> None:
        self.after_1xx_timeout = after_1xx_timeout
        self.observed = False
        self.interim: int | None = None
        self._head = b""

    def sent(self) -> None:
        self.observed = True
        self.interim = None
        self._head = b""

    def received(self, data: bytes) -> None:
        self.observed = True
        if self.interim is not None or len(self._head) >= _HEAD_BYTES:
            return
        self._head += data[: _HEAD_BYTES - len(self._head)]
        match = _INTERIM.match(self._head)
        if match:
            self.interim = int(match[1])

    def read_timeout(self, timeout: float | None) -> float | None:
        if self.interim is None:
            return timeout
        return self.after_1xx_timeout if timeout is None else min(timeout, self.after_1xx_timeout)


_watch: ContextVar[Watch | None] = ContextVar("atlas_interim_watch", default=None)


@contextmanager
def watching(watch: Watch) -> Iterator[Watch]:
    """Watch the requests this task sends inside the block."""
    token = _watch.set(watch)
    try:
        yield watch
    finally:
        _watch.reset(token)


class _Stream(httpcore.AsyncNetworkStream):
    def __init__(self, inner: httpcore.AsyncNetworkStream) -> None:
        self._inner = inner

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        watch = _watch.get()
        if watch is not None:
            timeout = watch.read_timeout(timeout)
        data = await self._inner.read(max_bytes, timeout)
        if watch is not None:
            watch.received(data)
        return data

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        watch = _watch.get()
        if watch is not None:
            watch.sent()
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        return _Stream(await self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _Backend(httpcore.AsyncNetworkBackend):
    def __init__(self, inner: httpcore.AsyncNetworkBackend) -> None:
        self._inner = inner

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        stream = await self._inner.connect_tcp(
            host, port, timeout=timeout, local_address=local_address, socket_options=socket_options
        )
        return _Stream(stream)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        stream = await self._inner.connect_unix_socket(
            path, timeout=timeout, socket_options=socket_options
        )
        return _Stream(stream)

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class AtlasTransport(httpx.AsyncHTTPTransport):
    """``httpx.AsyncHTTPTransport`` (same arguments) whose connections report 1xx heads.

    ``AtlasClient`` builds its own client on it; pass ``transport=AtlasTransport()`` to an
    ``httpx.AsyncClient`` given as ``http_client`` to keep telling a 102 from a fault.
    """

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        pool = self._pool
        if isinstance(pool, httpcore.AsyncConnectionPool):
            # httpcore reads the backend when it opens a connection (AsyncConnectionPool
            # takes ``network_backend=``, which httpx does not pass on).
            pool._network_backend = _Backend(pool._network_backend)
            self.watches_interim = True
        else:  # through a proxy: not watched, the client falls back (see AtlasClient)
            self.watches_interim = False


def watches_interim(http: httpx.AsyncClient) -> bool:
    """Whether ``http`` sends through an ``AtlasTransport`` that watches for 1xx heads."""
    transport = getattr(http, "_transport", None)
    return isinstance(transport, AtlasTransport) and transport.watches_interim
