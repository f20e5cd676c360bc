"""The sandbox Atlas Admin API (billing subset): the Starlette app, control routes and request log.

The Atlas endpoints are in ``billing`` and ``oauth``, the conventions they share in ``protocol``,
what the sandbox remembers in ``state``.
"""

from __future__ import annotations

from dataclasses import asdict, fields
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from bot.sandbox.billing import billing_routes
from bot.sandbox.oauth import oauth_routes
from bot.sandbox.state import Fault, LoggedRequest, SandboxState

# --- sandbox control (no auth, not logged) -------------------------------------------


def _control_routes(state: SandboxState) -> list[Route]:
    async def requests(request: Request) -> Response:
        return JSONResponse([r.to_json() for r in list(state.requests)])

    async def faults(request: Request) -> Response:
        if request.method == "DELETE":
            state.clear_faults()
            return Response(status_code=204)
        if request.method == "GET":
            return JSONResponse([f.to_json() for f in list(state.faults)])
        try:
            payload = await request.json()
            known = {f.name for f in fields(Fault)} - {"hits"}
            if not isinstance(payload, dict) or set(payload) - known:
                raise ValueError(f"a fault is a JSON object with fields among {sorted(known)}")
            fault = state.add_fault(Fault(**payload))
        except (ValueError, TypeError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse(fault.to_json(), status_code=201)

    async def switches(request: Request) -> Response:
        if request.method == "POST":
            try:
                payload = await request.json()
                if not isinstance(payload, dict):
                    raise ValueError("switches are a JSON object")
                state.set_switches(**payload)
            except (ValueError, TypeError) as exc:
                return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse(state.switches())

    async def reset(request: Request) -> Response:
        state.reset()
        return Response(status_code=204)

    async def info(request: Request) -> Response:
        return JSONResponse(sandbox_info(state, str(request.base_url).rstrip("/")))

    return [
        Route("/_sandbox/requests", requests, methods=["GET"]),
        Route("/_sandbox/faults", faults, methods=["GET", "POST", "DELETE"]),
        Route("/_sandbox/switches", switches, methods=["GET", "POST"]),
        Route("/_sandbox/reset", reset, methods=["POST"]),
        Route("/_sandbox/info", info, methods=["GET"]),
    ]


def sandbox_info(state: SandboxState, base_url: str) -> dict[str, Any]:
    data = state.data
    orgs = []
    for org in data.orgs():
        orgs.append(
            {
                "id": org.id,
                "name": org.name,
                "projects": [{"id": p.id, "name": p.name} for p in org.projects[:10]],
                "pendingInvoiceId": org.pending.id,
                "closedInvoiceIds": [i.id for i in org.closed],
            }
        )
    return {
        "baseUrl": base_url,
        "seed": data.seed,
        "today": data.today.isoformat(),
        "hugeOrgId": data.huge_org_id,
        "orgs": orgs,
        "credentials": asdict(data.credentials),
    }


# --- the app -------------------------------------------------------------------------


class _RequestLog:
    """Outermost ASGI layer: reads the body once, logs each request when its answer starts."""

    def __init__(self, app: ASGIApp, state: SandboxState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Any:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        scope["sandbox.receive"] = receive
        if scope["path"].startswith("/_sandbox/"):
            await self.app(scope, replay, send)
            return
        record: dict[str, Any] = {"operation": None, "org_id": None}
        committed = False

        def commit(status: int | None) -> None:
            nonlocal committed
            if committed:
                return
            committed = True
            self.state._log(_log_entry(scope, body, status, record))

        scope["sandbox.record"] = record
        scope["sandbox.commit"] = commit

        async def logged_send(message: Any) -> None:
            # Log before the answer leaves, so a client that got it always finds it logged.
            if message["type"] == "http.response.start":
                commit(message["status"])
            await send(message)

        try:
            await self.app(scope, replay, logged_send)
        finally:
            commit(None)


def _log_entry(
    scope: Scope, body: bytes, status: int | None, record: dict[str, Any]
) -> LoggedRequest:
    query: dict[str, str] = {}
    for key, value in parse_qsl(
        scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True
    ):
        query[key] = f"{query[key]},{value}" if key in query else value
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope["headers"]:
        name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return LoggedRequest(
        method=scope["method"],
        path=scope["path"],
        query=query,
        headers=headers,
        body=body,
        status=status,
        operation=record["operation"],
        org_id=record["org_id"],
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    status = exc.status_code
    code = {404: "RESOURCE_NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}.get(status, "UNEXPECTED_ERROR")
    detail = {
        404: f"Cannot find resource {request.url.path}.",
        405: f"Method {request.method} is not allowed on {request.url.path}.",
    }.get(status, exc.detail)
    body = {
        "error": status,
        "errorCode": code,
        "reason": HTTPStatus(status).phrase,
        "detail": detail,
        "parameters": [],
    }
    return JSONResponse(body, status_code=status, headers=exc.headers)


def create_app(state: SandboxState) -> ASGIApp:
    """The sandbox as an ASGI app (uvicorn with ``http="httptools"`` is what it is tested on)."""
    routes = [*billing_routes(state), *oauth_routes(state), *_control_routes(state)]
    app = Starlette(routes=routes, exception_handlers={HTTPException: _http_error})
    return _RequestLog(app, state)
