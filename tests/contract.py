"""Checks HTTP requests and responses against the Atlas billing OpenAPI spec (tests/data)."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote

import httpx
from jsonschema import Draft7Validator, FormatChecker  # type: ignore[import-untyped]  # no stubs: types-jsonschema is not a dev dependency
from jsonschema.exceptions import ValidationError  # type: ignore[import-untyped]  # no stubs: types-jsonschema is not a dev dependency
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

SPEC_PATH = Path(__file__).parent / "data" / "atlas-billing-openapi.json"
_SPEC_URI = "urn:atlas-billing-openapi"
# Flags Atlas accepts on every operation though the spec lists them on none.
_GLOBAL_FLAGS = ("envelope", "pretty")
# Statuses the Atlas front end answers on any operation before it reaches one (malformed
# path parameter, unsupported Accept or Content-Type, overload); the spec subset omits them.
FRAMEWORK_STATUSES = frozenset({400, 406, 415, 503})


class ContractError(AssertionError):
    """A request or response that the spec does not allow."""


@dataclass(frozen=True)
class _Operation:
    operation_id: str
    method: str
    template: str
    spec: dict[str, Any]
    regex: re.Pattern[str]
    literals: int


@cache
def spec() -> dict[str, Any]:
    return json.loads(SPEC_PATH.read_text())


@cache
def _registry() -> Registry:
    resource = Resource.from_contents(spec(), default_specification=DRAFT7)
    return Registry().with_resource(_SPEC_URI, resource)


def _format_checker() -> FormatChecker:
    # Lenient OpenAPI formats: dates and date-times must parse; int32/int64/float/double
    # are ranges and precisions the JSON types already cover.
    checker = FormatChecker(formats=())

    @checker.checks("date", raises=ValueError)
    def _date(value: object) -> bool:
        return not isinstance(value, str) or bool(date.fromisoformat(value))

    @checker.checks("date-time", raises=ValueError)
    def _date_time(value: object) -> bool:
        if not isinstance(value, str):
            return True
        return bool(datetime.fromisoformat(value.replace("Z", "+00:00")))

    return checker


def _resolve(node: dict[str, Any]) -> dict[str, Any]:
    """Follow a local ``$ref`` (parameters and responses use them)."""
    while "$ref" in node:
        ref = node["$ref"]
        if not ref.startswith("#/"):
            raise ValueError(f"unsupported $ref {ref!r}")
        target: Any = spec()
        for part in ref[2:].split("/"):
            target = target[part]
        node = target
    return node


def _absolute_refs(node: Any) -> Any:
    """Point local ``#/…`` refs at the registered spec, whatever schema is the root."""
    if isinstance(node, dict):
        return {
            k: _SPEC_URI + v if k == "$ref" and v.startswith("#/") else _absolute_refs(v)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_absolute_refs(v) for v in node]
    return node


def _validate(instance: Any, schema: dict[str, Any], what: str) -> None:
    schema = _absolute_refs(schema)
    validator = Draft7Validator(schema, registry=_registry(), format_checker=_format_checker())
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path))
    if errors:
        error: ValidationError = errors[0]
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        raise ContractError(f"{what}: {error.message} at {where}")


@cache
def _operations() -> tuple[_Operation, ...]:
    found = []
    for template, item in spec()["paths"].items():
        parts = template.strip("/").split("/")
        pattern = "/".join("([^/]+)" if p.startswith("{") else re.escape(p) for p in parts)
        literals = sum(not p.startswith("{") for p in parts)
        for method, operation in item.items():
            found.append(
                _Operation(
                    operation_id=operation["operationId"],
                    method=method.upper(),
                    template=template,
                    spec=operation,
                    regex=re.compile("/" + pattern),
                    literals=literals,
                )
            )
    # Prefer the template with more literal segments: /invoices/pending over /invoices/{id}.
    return tuple(sorted(found, key=lambda o: -o.literals))


def _split(url: str | httpx.URL) -> tuple[str, str]:
    parsed = httpx.URL(str(url))
    raw = parsed.raw_path.decode("ascii")
    path, _, query = raw.partition("?")
    return path, query


def _find(method: str, url: str | httpx.URL) -> tuple[_Operation, dict[str, str], str]:
    path, query = _split(url)
    methods_here = []
    for operation in _operations():
        match = operation.regex.fullmatch(path)
        if match is None:
            continue
        if operation.method != method.upper():
            methods_here.append(operation.method)
            continue
        names = re.findall(r"{(\w+)}", operation.template)
        values = {n: unquote(v) for n, v in zip(names, match.groups(), strict=True)}
        return operation, values, query
    if methods_here:
        raise ContractError(f"{method} {path}: the spec allows only {', '.join(methods_here)}")
    raise ContractError(f"{method} {path}: no operation of the spec has this path")


def _parameters(operation: _Operation) -> dict[tuple[str, str], dict[str, Any]]:
    params = {}
    for raw in operation.spec.get("parameters", []):
        param = _resolve(raw)
        params[(param["in"], param["name"])] = param
    return params


def _coerce(value: str, schema: dict[str, Any], name: str) -> Any:
    kind = schema.get("type")
    if kind == "integer":
        if not re.fullmatch(r"-?\d+", value):
            raise ContractError(f"query parameter {name}={value!r} is not an integer")
        return int(value)
    if kind == "boolean":
        if value not in ("true", "false"):
            raise ContractError(f"query parameter {name}={value!r} is not true or false")
        return value == "true"
    return value


def _media(value: str | None) -> str:
    return (value or "").split(";")[0].strip().lower()


def _headers(headers: Mapping[str, str] | httpx.Headers) -> httpx.Headers:
    return headers if isinstance(headers, httpx.Headers) else httpx.Headers(dict(headers))


def validate_request(
    method: str,
    url: str | httpx.URL,
    headers: Mapping[str, str] | httpx.Headers,
    body: bytes | None,
) -> str:
    """Check one request against the spec; returns its operationId."""
    operation, path_values, query = _find(method, url)
    label = f"{operation.operation_id} request"
    params = _parameters(operation)
    for name, value in path_values.items():
        _validate(value, params[("path", name)].get("schema", {}), f"{label}: path {name}")
    grouped: dict[str, list[str]] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        grouped.setdefault(name, []).append(value)
    for name, values in grouped.items():
        if name in _GLOBAL_FLAGS:
            schema: dict[str, Any] = {"type": "boolean"}
        elif ("query", name) in params:
            schema = params[("query", name)].get("schema", {})
        else:
            raise ContractError(f"{label}: unknown query parameter {name!r}")
        if schema.get("type") == "array":
            items = schema.get("items", {})
            instance: Any = [_coerce(v, items, name) for v in values]
        elif len(values) > 1:
            raise ContractError(f"{label}: query parameter {name!r} given {len(values)} times")
        else:
            instance = _coerce(values[0], schema, name)
        _validate(instance, schema, f"{label}: query {name}")
    head = _headers(headers)
    offered = {
        media
        for status, response in operation.spec["responses"].items()
        if status in ("200", "202")
        for media in _resolve(response).get("content", {})
    }
    accept = head.get("accept")
    if not accept:
        raise ContractError(f"{label}: no Accept header; expected one of {sorted(offered)}")
    for part in accept.split(","):
        if _media(part) not in offered:
            raise ContractError(f"{label}: Accept {_media(part)!r} is not one of {sorted(offered)}")
    request_body = operation.spec.get("requestBody")
    if request_body is None:
        if body:
            raise ContractError(f"{label}: {method} takes no body, got {len(body)} bytes")
        return operation.operation_id
    content = request_body["content"]
    content_type = _media(head.get("content-type"))
    if content_type not in content:
        raise ContractError(
            f"{label}: Content-Type {content_type or '(none)'!r} is not one of {sorted(content)}"
        )
    if not body:
        if request_body.get("required"):
            raise ContractError(f"{label}: the body is required")
        return operation.operation_id
    try:
        payload = json.loads(body)
    except ValueError as exc:
        raise ContractError(f"{label}: the body is not JSON: {exc}") from None
    _validate(payload, content[content_type].get("schema", {}), f"{label}: body")
    return operation.operation_id


def _unwrap_envelope(status: int, body: Any) -> tuple[int, Any]:
    if status != 200:
        raise ContractError(f"an envelope answer must be HTTP 200, got {status}")
    if not isinstance(body, dict) or not isinstance(body.get("status"), int):
        raise ContractError("an envelope answer must carry an integer status in its body")
    inner = body["status"]
    if "results" in body:
        return inner, {k: v for k, v in body.items() if k != "status"}
    if set(body) != {"status", "content"}:
        raise ContractError(f"an envelope answer has status and content only, got {sorted(body)}")
    return inner, body["content"]


def validate_response(
    method: str,
    url: str | httpx.URL,
    status: int,
    headers: Mapping[str, str] | httpx.Headers,
    body: bytes,
) -> None:
    """Check one response against the spec (status, media type, body schema, headers)."""
    operation, _, query = _find(method, url)
    label = f"{operation.operation_id} response {status}"
    head = _headers(headers)
    content_type = _media(head.get("content-type"))
    flags = dict(parse_qsl(query))
    # A 401 comes from the authentication layer, before the envelope applies: a Digest
    # client could not authenticate otherwise.
    if flags.get("envelope") == "true" and "json" in content_type and status != 401:
        status, payload = _unwrap_envelope(status, _json(body, label))
        label = f"{operation.operation_id} response {status} (enveloped)"
        if status == 102:
            if payload not in ({}, None):
                raise ContractError(f"{label}: a 102 carries no content, got {payload!r}")
            _check_status(operation, status, label)
            return
        _check_body(operation, status, content_type, payload, head, label)
        return
    if status == 102:
        _check_status(operation, status, label)
        if body:
            raise ContractError(f"{label}: a 102 has no body, got {len(body)} bytes")
        return
    if "json" in content_type:
        payload = _json(body, label)  # Any, as the envelope branch above first bound it
    elif "csv" in content_type:
        payload = _csv(body, label)
    else:
        raise ContractError(f"{label}: unexpected Content-Type {content_type or '(none)'!r}")
    _check_body(operation, status, content_type, payload, head, label)


def _json(body: bytes, label: str) -> Any:
    try:
        return json.loads(body)
    except ValueError as exc:
        raise ContractError(f"{label}: the body is not valid JSON: {exc}") from None


def _csv(body: bytes, label: str) -> str:
    try:
        text = body.decode("utf-8")
        for _ in csv.reader(io.StringIO(text), strict=True):
            pass
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ContractError(f"{label}: the body is not valid UTF-8 CSV: {exc}") from None
    return text


def _check_status(operation: _Operation, status: int, label: str) -> dict[str, Any]:
    responses = operation.spec["responses"]
    if str(status) in responses:
        return _resolve(responses[str(status)])
    if status in FRAMEWORK_STATUSES:
        return _resolve(spec()["components"]["responses"]["badRequest"])
    raise ContractError(
        f"{label}: status {status} is not among the operation's {sorted(responses)} "
        f"or the front end's {sorted(FRAMEWORK_STATUSES)}"
    )


def _check_body(
    operation: _Operation,
    status: int,
    content_type: str,
    payload: Any,
    headers: httpx.Headers,
    label: str,
) -> None:
    response = _check_status(operation, status, label)
    content = response.get("content", {})
    if status >= 400:
        # Atlas sends errors as application/json whatever the operation's media type.
        if content_type != "application/json":
            raise ContractError(f"{label}: an error must be application/json, got {content_type!r}")
        schema = {"$ref": "#/components/schemas/ApiError"}
        _validate(payload, schema, f"{label}: body")
        if payload.get("error") != status:
            raise ContractError(f"{label}: body says error {payload.get('error')!r}")
    else:
        if content_type not in content:
            raise ContractError(
                f"{label}: Content-Type {content_type!r} is not one of {sorted(content)}"
            )
        _validate(payload, content[content_type].get("schema", {}), f"{label}: body")
    for name, header in response.get("headers", {}).items():
        value = headers.get(name)
        if value is None:
            continue
        if _resolve(header).get("schema", {}).get("type") == "integer" and not re.fullmatch(
            r"\d+", value
        ):
            raise ContractError(f"{label}: header {name}: {value!r} is not an integer")


def contract_hooks(*, requests: bool = True, responses: bool = True) -> dict[str, list[Any]]:
    """``httpx.AsyncClient(event_hooks=...)`` that check every Atlas API call against the spec.

    Requests outside ``/api/atlas/v2`` (OAuth, sandbox control) are not checked.
    Response bodies are read in full, so leave ``responses`` off for streamed downloads.
    """

    def in_spec(url: httpx.URL) -> bool:
        return url.path.startswith("/api/atlas/v2/")

    async def on_request(request: httpx.Request) -> None:
        if in_spec(request.url):
            validate_request(request.method, request.url, request.headers, request.content)

    async def on_response(response: httpx.Response) -> None:
        request = response.request
        if in_spec(request.url):
            body = await response.aread()
            validate_response(
                request.method, request.url, response.status_code, response.headers, body
            )

    return {
        "request": [on_request] if requests else [],
        "response": [on_response] if responses else [],
    }
