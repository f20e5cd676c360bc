"""Runs the sandbox Atlas on a real loopback port, in a background thread (tests) or until Ctrl-C (CLI)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import date
from types import TracebackType

from bot.runtime.localserver import LocalServer
from bot.sandbox.data import SandboxData
from bot.sandbox.server import create_app
from bot.sandbox.state import SandboxState


class SandboxServer:
    """The sandbox served by a ``LocalServer`` on ``host:port`` (port 0: any free port).

    ``keep_alive_seconds`` is how
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
        self._server: LocalServer | None = None

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``, the origin a client uses as its Atlas base URL."""
        if self._server is None:
            raise RuntimeError("the sandbox is not running; call start() first")
        return self._server.url

    def start(self) -> SandboxServer:
        if self._server is not None:
            raise RuntimeError("the sandbox is already running")
        server = LocalServer(
            create_app(self.state),
            host=self.host,
            port=self.port,
            keep_alive_seconds=self._keep_alive,
            name="sandbox-atlas",
        )
        self._server = server.start()
        self.port = server.port
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop()

    def wait(self) -> None:
        """Block until the server stops (Ctrl-C interrupts the wait)."""
        if self._server is not None:
            self._server.wait()

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
        try:
            for line in server.info_lines():
                echo(line)
            if stop is None:
                server.wait()
            else:
                stop.wait()
        except KeyboardInterrupt:
            echo("# stopping the sandbox")
