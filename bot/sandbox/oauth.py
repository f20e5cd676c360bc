"""The sandbox's OAuth endpoints: client-credentials tokens for service accounts, and revoking."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bot.sandbox.protocol import REALM, ResetResponse
from bot.sandbox.state import OAUTH_REVOKE, OAUTH_TOKEN, SandboxState


def _oauth_error(status: int, error: str, description: str) -> JSONResponse:
    headers = {"Cache-Control": "no-store"}
    if status == 401:
        headers["WWW-Authenticate"] = f'Basic realm="{REALM}"'
    return JSONResponse(
        {"error": error, "error_description": description}, status_code=status, headers=headers
    )


async def _oauth_client(request: Request, state: SandboxState) -> dict[str, str] | Response:
    """The form, once the client credentials (HTTP Basic, or form fields) checked out."""
    body = await request.body()
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        return _oauth_error(400, "invalid_request", "The body must be form-encoded.")
    form = dict(parse_qsl(body.decode("latin-1")))
    client_id, client_secret = form.get("client_id"), form.get("client_secret")
    scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "basic":
        try:
            client_id, _, client_secret = base64.b64decode(encoded).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            client_id = client_secret = None
    creds = state.credentials
    if not (
        client_id == creds.client_id
        and client_secret is not None
        and hmac.compare_digest(client_secret, creds.client_secret)
    ):
        return _oauth_error(401, "invalid_client", "Client authentication failed.")
    return form


async def _fault_for_oauth(
    request: Request, state: SandboxState, operation: str
) -> Response | None:
    kinds = ["status", "reset", "close", "garbage", "malformed", "latency"]
    for fault in state._take_faults(operation, None, kinds):
        if fault.kind == "latency":
            await asyncio.sleep(fault.seconds)
        elif fault.kind in ("reset", "close", "garbage"):
            return ResetResponse(fault.kind)
        elif fault.kind == "malformed":
            return Response(fault.body or b'{"access_token": "', media_type="application/json")
        else:
            assert fault.status is not None
            if fault.body is not None:
                return Response(
                    fault.body,
                    status_code=fault.status,
                    media_type=fault.content_type or "text/plain",
                )
            headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after else {}
            return JSONResponse(
                {"error": "temporarily_unavailable", "error_description": "Injected fault."},
                status_code=fault.status,
                headers=headers,
            )
    return None


def _oauth_token_endpoint(state: SandboxState) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        _mark(request, OAUTH_TOKEN)
        form = await _oauth_client(request, state)
        if isinstance(form, Response):
            return form
        faulted = await _fault_for_oauth(request, state, OAUTH_TOKEN)
        if faulted is not None:
            return faulted
        grant = form.get("grant_type")
        if grant is None:
            return _oauth_error(400, "invalid_request", "grant_type is required.")
        if grant != "client_credentials":
            return _oauth_error(400, "unsupported_grant_type", f"Unsupported grant {grant!r}.")
        return JSONResponse(
            {
                "access_token": state._issue_token(),
                "expires_in": int(state.token_ttl_seconds),
                "token_type": "Bearer",
            },
            headers={"Cache-Control": "no-store"},
        )

    return endpoint


def _oauth_revoke_endpoint(state: SandboxState) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        _mark(request, OAUTH_REVOKE)
        form = await _oauth_client(request, state)
        if isinstance(form, Response):
            return form
        faulted = await _fault_for_oauth(request, state, OAUTH_REVOKE)
        if faulted is not None:
            return faulted
        if "token" not in form:
            return _oauth_error(400, "invalid_request", "token is required.")
        # RFC 7009: an unknown token is not an error.
        state._revoke(form["token"])
        return Response(status_code=200)

    return endpoint


def _mark(request: Request, operation: str) -> None:
    record = request.scope.get("sandbox.record")
    if record is not None:
        record["operation"] = operation


def oauth_routes(state: SandboxState) -> list[Route]:
    """The token and revoke endpoints (outside the API pipeline: OAuth answers in its own shape)."""
    return [
        Route("/api/oauth/token", _oauth_token_endpoint(state), methods=["POST"]),
        Route("/api/oauth/revoke", _oauth_revoke_endpoint(state), methods=["POST"]),
    ]
