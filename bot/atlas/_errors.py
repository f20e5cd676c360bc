"""The Atlas client's exception tree: one base, one class per kind of failure.

    AtlasError                      anything the billing client raises
    ├── InvalidInput                 refused before sending: bad ID, date, filter
    ├── AtlasTransportError          no usable answer: connection, time-out, retries spent
    └── AtlasAPIError                Atlas answered with an error status
        ├── BadRequest         400
        ├── Unauthorized       401
        ├── Forbidden          403
        ├── NotFound           404
        ├── Conflict           409
        ├── NotAcceptable      406
        ├── RateLimited        429   (``retry_after`` in seconds when Atlas gave it)
        ├── ServerError        5xx
        └── MalformedResponse  2xx whose body is not what the spec says

"Not ready yet" from Cost Explorer is not an error: it is the ``NotReady`` result.
"""

from __future__ import annotations


class AtlasError(Exception):
    """Base of everything the Atlas billing client raises."""


class InvalidInput(AtlasError, ValueError):
    """Input that fails the spec's patterns; nothing was sent to Atlas."""


class AtlasTransportError(AtlasError):
    """The request got no usable answer (connection failure, time-out, retries exhausted)."""


class AtlasAPIError(AtlasError):
    """Atlas answered with an error: status plus the error body's fields when it had them."""

    def __init__(
        self,
        status: int,
        *,
        error_code: str | None = None,
        reason: str | None = None,
        detail: str | None = None,
        body: str = "",
        retry_after: float | None = None,
    ) -> None:
        self.status = status
        self.error_code = error_code
        self.reason = reason
        self.detail = detail
        self.body = body
        self.retry_after = retry_after
        super().__init__(self.summary())

    def summary(self) -> str:
        """One readable line: ``404 RESOURCE_NOT_FOUND: Cannot find invoice …``."""
        head = f"{self.status} {self.error_code or self.reason or 'error'}"
        return f"{head}: {self.detail}" if self.detail else head


class BadRequest(AtlasAPIError):
    pass


class Unauthorized(AtlasAPIError):
    pass


class Forbidden(AtlasAPIError):
    pass


class NotFound(AtlasAPIError):
    pass


class NotAcceptable(AtlasAPIError):
    pass


class Conflict(AtlasAPIError):
    pass


class RateLimited(AtlasAPIError):
    pass


class ServerError(AtlasAPIError):
    pass


class MalformedResponse(AtlasAPIError):
    pass


_BY_STATUS: dict[int, type[AtlasAPIError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    406: NotAcceptable,
    409: Conflict,
    429: RateLimited,
}


def error_class(status: int) -> type[AtlasAPIError]:
    if status >= 500:
        return ServerError
    return _BY_STATUS.get(status, AtlasAPIError)
