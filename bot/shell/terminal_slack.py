"""A Slack Web API stand-in for the shell: it answers what the bot calls and prints it.

The shell runs the real Bolt app and handlers; only the other end of their
HTTP calls is this local server, which renders each message as terminal text
instead of delivering it to Slack.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bot.render.terminal import blocks_to_text

SHELL_TEAM = "T0SHELL"
SHELL_USER = "U0SHELL"
SHELL_CHANNEL = "C0SHELL"
BOT_USER = "U0BOT"


class TerminalSlack:
    """State and rendering of the stand-in; ``app`` is its ASGI application."""

    def __init__(self, echo: Callable[[str], None], files_dir: Path) -> None:
        self._echo = echo
        self._files_dir = files_dir
        self._ts = itertools.count(1)
        self._file_ids = itertools.count(1)
        self._uploads: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self.base_url = ""  # set once the server listens
        self.app = Starlette(
            routes=[
                Route("/api/{method}", self._api, methods=["GET", "POST"]),
                Route("/response/{key}", self._response_url, methods=["POST"]),
                Route("/upload/{file_id}", self._upload, methods=["POST", "PUT"]),
            ]
        )

    def response_url(self, key: str) -> str:
        return f"{self.base_url}/response/{key}"

    async def _params(self, request: Request) -> dict[str, Any]:
        body = await request.body()
        params: dict[str, Any] = dict(request.query_params)
        if request.headers.get("content-type", "").startswith("application/json") and body:
            params.update(json.loads(body))
        elif body:
            params.update(parse_qsl(body.decode("utf-8", "replace")))
        for key in ("blocks", "files"):
            if isinstance(params.get(key), str):
                params[key] = json.loads(params[key])
        return params

    def _next_ts(self) -> str:
        return f"1700000000.{next(self._ts):06d}"

    def _show(self, heading: str, params: dict[str, Any]) -> None:
        body = blocks_to_text(params.get("blocks"), params.get("text", ""))
        with self._lock:
            self._echo(f"{heading}\n{body}\n")

    async def _api(self, request: Request) -> JSONResponse:
        method = request.path_params["method"]
        params = await self._params(request)
        channel = params.get("channel") or params.get("channel_id") or SHELL_CHANNEL
        result: dict[str, Any]
        match method:
            case "auth.test":
                result = {
                    "user_id": BOT_USER,
                    "bot_id": "B0BOT",
                    "team_id": SHELL_TEAM,
                    "user": "billing-bot",
                }
            case "chat.postMessage":
                ts = self._next_ts()
                self._show(f"── #{channel} · billing-bot", params)
                result = {
                    "channel": channel,
                    "ts": ts,
                    "message": {"ts": ts, "text": params.get("text")},
                }
            case "chat.update":
                self._show(f"── #{channel} · billing-bot (updated its message)", params)
                result = {"channel": channel, "ts": params.get("ts")}
            case "chat.postEphemeral":
                self._show("── only visible to you", params)
                result = {"message_ts": self._next_ts()}
            case "users.info":
                user = params.get("user", SHELL_USER)
                # The person at the terminal administers their own shell workspace.
                result = {
                    "user": {
                        "id": user,
                        "team_id": SHELL_TEAM,
                        "name": "you",
                        "is_admin": True,
                        "is_owner": True,
                    }
                }
            case "conversations.info":
                result = {"channel": {"id": channel, "name": "shell", "is_archived": False}}
            case "files.getUploadURLExternal":
                file_id = f"F{next(self._file_ids):08d}"
                self._uploads[file_id] = {"filename": params.get("filename", file_id)}
                result = {"file_id": file_id, "upload_url": f"{self.base_url}/upload/{file_id}"}
            case "files.completeUploadExternal":
                files = params.get("files") or []
                lines = []
                for item in files:
                    upload = self._uploads.get(item.get("id"), {})
                    lines.append(
                        f"[file {item.get('title') or upload.get('filename')}: "
                        f"{upload.get('size', 0):,} bytes, saved as {upload.get('path', '?')}]"
                    )
                with self._lock:
                    self._echo(f"── #{channel} · billing-bot uploaded\n" + "\n".join(lines) + "\n")
                result = {"files": [{"id": f.get("id"), "title": f.get("title")} for f in files]}
            case "views.open":
                view = params.get("view")
                view = json.loads(view) if isinstance(view, str) else view or {}
                title = (view.get("title") or {}).get("text", "a form")
                with self._lock:
                    self._echo(
                        f"── (Slack would open the form “{title}” here; the shell cannot show forms)\n"
                    )
                result = {"view": {"id": "V0SHELL"}}
            case "views.update":
                # `connect` opens its form at once and then fills it in or says why not.
                view = params.get("view")
                view = json.loads(view) if isinstance(view, str) else view or {}
                if view.get("callback_id"):
                    shown = "(the form is ready; the shell cannot show forms)"
                else:
                    shown = blocks_to_text(view.get("blocks"), "")
                with self._lock:
                    self._echo(f"── the form says\n{shown}\n")
                result = {"view": {"id": params.get("view_id") or "V0SHELL"}}
            case "conversations.join":
                result = {"channel": {"id": channel, "is_member": True}}
            case _:
                return JSONResponse({"ok": False, "error": "unknown_method"})
        return JSONResponse({"ok": True, **result})

    async def _response_url(self, request: Request) -> JSONResponse:
        params = await self._params(request)
        public = params.get("response_type") == "in_channel"
        self._show(
            f"── #{SHELL_CHANNEL} · billing-bot" if public else "── only visible to you", params
        )
        return JSONResponse({"ok": True})

    async def _upload(self, request: Request) -> JSONResponse:
        file_id = request.path_params["file_id"]
        upload = self._uploads.setdefault(file_id, {"filename": file_id})
        self._files_dir.mkdir(parents=True, exist_ok=True)
        name = Path(str(upload["filename"])).name or file_id
        path = self._files_dir / f"{file_id}-{name}"
        size = 0
        with path.open("wb") as out:
            async for chunk in request.stream():
                out.write(chunk)
                size += len(chunk)
        upload.update(path=str(path), size=size)
        return JSONResponse({"ok": True})
