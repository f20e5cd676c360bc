"""Run an ASGI app with uvicorn in a background thread on loopback (port 0 = any free port).

Used for the sandbox Atlas and the shell's terminal Slack (and by tests), so the
bot always talks real HTTP, even when everything runs in one process. The socket
is bound before the thread starts, so the URL is known at once and no client can
race the start-up.
"""

from __future__ import annotations

import socket
import threading
from typing import Any, Literal

import uvicorn


class _Uvicorn(uvicorn.Server):
    """A uvicorn server that says when it is listening."""

    def __init__(self, config: uvicorn.Config, ready: threading.Event) -> None:
        super().__init__(config)
        self._ready = ready

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        self._ready.set()


class LocalServer:
    """``with LocalServer(app) as server: server.url``; stops and joins on exit.

    ``http="httptools"`` because the sandbox's bare ``102 Processing`` needs a
    protocol that writes 1xx heads as given. ``keep_alive_seconds`` is how long
    an idle connection stays open.
    """

    def __init__(
        self,
        app: Any,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        lifespan: Literal["auto", "on", "off"] = "off",
        keep_alive_seconds: int = 5,
        name: str = "local-server",
    ) -> None:
        self._app = app
        self.host = host
        self.port = port
        self._lifespan = lifespan
        self._keep_alive = keep_alive_seconds
        self._name = name
        self._server: _Uvicorn | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError(f"{self._name} is not running; call start() first")
        return f"http://{self.host}:{self.port}"

    def start(self) -> LocalServer:
        if self._server is not None:
            raise RuntimeError(f"{self._name} is already running")
        # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets that say so, and
        # without it every small answer waits ~40 ms for the peer's delayed ACK.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError:
            sock.close()
            raise
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self._app,
            http="httptools",
            loop="asyncio",
            lifespan=self._lifespan,
            log_config=None,
            log_level="warning",
            access_log=False,
            server_header=False,
            timeout_keep_alive=self._keep_alive,
            timeout_graceful_shutdown=2,
        )
        ready = threading.Event()
        server = self._server = _Uvicorn(config, ready)

        def run() -> None:
            try:
                server.run(sockets=[sock])
            except BaseException as exc:  # handed to the thread that called start()
                self._error = exc
            finally:
                ready.set()
                sock.close()

        self._thread = threading.Thread(target=run, name=f"{self._name}-{self.port}", daemon=True)
        self._thread.start()
        ready.wait(timeout=30)
        if self._error is not None or not server.started:
            error = self._error
            self.stop()
            raise RuntimeError(f"{self._name} did not start: {error!r}")
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.should_exit = True
        thread.join(timeout=30)
        self._server = self._thread = None

    def wait(self) -> None:
        """Block until the server stops (Ctrl-C interrupts the wait)."""
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
