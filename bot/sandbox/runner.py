"""Runs the sandbox Atlas on a real loopback port, in a background thread (tests) or until Ctrl-C (CLI)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from datetime import date
from types import TracebackType

import uvicorn

from bot.sandbox.data import SandboxData
from bot.sandbox.server import SandboxState, create_app


class _Uvicorn(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, ready: threading.Event) -> None:
        super().__init__(config)
        self._ready = ready

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        self._ready.set()


class SandboxServer:
    """The sandbox served by uvicorn (httptools) on ``host:port`` (port 0: any free port).

    The socket is bound before the thread starts, so ``base_url`` is known at
    once and no connection can race the start-up. ``keep_alive_seconds`` is how
    long an idle connection stays open, and so how long a ``silence``-mode 102
    stays silent before the server hangs up.
    """

    def __init__(
        self,
        *,
        seed: int = 1,
        today: date | None = None,
        extra_orgs: int = 0,
        data: SandboxData | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        keep_alive_seconds: int = 60,
    ) -> None:
        self.data = data or SandboxData(seed=seed, today=today, extra_orgs=extra_orgs)
        self.state = SandboxState(self.data)
        self.host = host
        self.port = port
        self._keep_alive = keep_alive_seconds
        self._server: _Uvicorn | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``, the origin a client uses as its Atlas base URL."""
        if self._server is None:
            raise RuntimeError("the sandbox is not running; call start() first")
        return f"http://{self.host}:{self.port}"

    def start(self) -> SandboxServer:
        if self._server is not None:
            raise RuntimeError("the sandbox is already running")
        # proto must be IPPROTO_TCP: asyncio only sets TCP_NODELAY on accepted sockets whose
        # proto says TCP, and without it every response waits ~40 ms on delayed ACKs.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError:
            sock.close()
            raise
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            create_app(self.state),
            http="httptools",
            loop="asyncio",
            lifespan="off",
            log_config=None,
            log_level="warning",
            access_log=False,
            server_header=False,
            timeout_keep_alive=self._keep_alive,
            timeout_graceful_shutdown=2,
        )
        ready = threading.Event()
        self._server = _Uvicorn(config, ready)

        def run() -> None:
            try:
                assert self._server is not None
                self._server.run(sockets=[sock])
            except BaseException as exc:  # reported to the thread that called start()
                self._error = exc
            finally:
                ready.set()
                sock.close()

        self._thread = threading.Thread(target=run, name=f"sandbox-atlas-{self.port}", daemon=True)
        self._thread.start()
        ready.wait(timeout=30)
        if self._error is not None or not self._server.started:
            self.stop()
            raise RuntimeError(f"the sandbox did not start: {self._error!r}")
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

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def info_lines(self) -> list[str]:
        """What ``billing-bot sandbox`` prints: the URL, ``export`` lines, orgs."""
        creds = self.data.credentials
        lines = [
            f"# Sandbox Atlas Admin API on {self.base_url} (seed {self.data.seed})",
            f"export MONGODB_ATLAS_BASE_URL={self.base_url}",
            f"export MONGODB_ATLAS_CLIENT_ID={creds.client_id}",
            f"export MONGODB_ATLAS_CLIENT_SECRET={creds.client_secret}",
            "# or an API key pair (HTTP Digest):",
            f"#   export MONGODB_ATLAS_PUBLIC_API_KEY={creds.public_key}",
            f"#   export MONGODB_ATLAS_PRIVATE_API_KEY={creds.private_key}",
            "# a key without the Billing Viewer role (403 on every org): "
            f"{creds.no_role_public_key} / {creds.no_role_private_key}",
            "# organizations:",
        ]
        for org_id in self.data.org_ids[:20]:
            lines.append(f"#   {org_id}  {self.data.org_name(org_id)}")
        if len(self.data.org_ids) > 20:
            lines.append(f"#   … and {len(self.data.org_ids) - 20} more")
        lines.append(f"# state and faults: {self.base_url}/_sandbox/info (Ctrl-C stops)")
        return lines


def serve_forever(
    port: int,
    seed: int,
    echo: Callable[[str], None],
    *,
    stop: threading.Event | None = None,
) -> None:
    """Serve the sandbox on 127.0.0.1:``port``, print how to use it, block until Ctrl-C.

    ``stop`` ends it too (for tests and embedding).
    """
    with SandboxServer(seed=seed, port=port) as server:
        for line in server.info_lines():
            echo(line)
        try:
            if stop is None:
                server.wait()
            else:
                stop.wait()
        except KeyboardInterrupt:
            echo("# stopping the sandbox")
