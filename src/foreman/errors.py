"""The one exception hierarchy of Foreman, shared by the server, the client and the worker.

Each class carries the HTTP status it maps to and a stable ``code``; the server turns an
exception into a JSON body (SPEC section 2) and the client rebuilds the same class from it.
"""

from __future__ import annotations

from typing import Any, ClassVar


class ForemanError(Exception):
    """Unexpected Foreman error."""

    status_code: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"

    def __init__(self, message: str | None = None, **details: Any) -> None:
        self.message = message or (self.__doc__ or "").strip()
        self.details = details
        super().__init__(self.message)

    def to_body(self) -> dict[str, Any]:
        # SPEC section 2: "error" is the message; a stable code and details ride beside it.
        return {"error": self.message, "code": self.code, **self.details}


class ClientError(ForemanError):
    """The request was not valid."""

    status_code = 400
    code = "bad_request"


class ValidationError(ClientError):
    """Validation failed."""

    status_code = 400
    code = "validation_error"


class InputValidationError(ValidationError):
    """A task's inputData does not fit its handler's input model."""

    code = "input_validation_error"


class UnauthorizedError(ClientError):
    """Missing API key."""

    status_code = 401
    code = "unauthorized"


class ForbiddenError(ClientError):
    """Forbidden."""

    status_code = 403
    code = "forbidden"


class NotFoundError(ClientError):
    """Not found."""

    status_code = 404
    code = "not_found"


class MethodNotAllowedError(ClientError):
    """Method not allowed."""

    status_code = 405
    code = "method_not_allowed"


class ConflictError(ClientError):
    """The resource's current state forbids this change."""

    status_code = 409
    code = "conflict"


class PayloadTooLargeError(ClientError):
    """Request body too large."""

    status_code = 413
    code = "payload_too_large"


class RequestTimeoutError(ClientError):
    """The request body did not arrive in time."""

    status_code = 408
    code = "request_timeout"


class UnsupportedMediaTypeError(ClientError):
    """The request body is not JSON."""

    status_code = 415
    code = "unsupported_media_type"


class RateLimitedError(ClientError):
    """Too many requests."""

    status_code = 429
    code = "rate_limited"


class UnavailableError(ForemanError):
    """Database unavailable."""

    status_code = 503
    code = "unavailable"


class StatementTimeoutError(UnavailableError):
    """The database did not finish this request in time; it was cancelled, most likely before it took effect."""

    # 504, not 503: the database is up; this request's statement outlived the server's timeout
    # (FOREMAN_DB_COMMAND_TIMEOUT_S). The outcome is not certain (the statement may have
    # committed as it was cancelled): read before repeating a request that is not idempotent.
    # Repeating helps when the database was busy, not when the request itself is too costly.
    # A subclass of UnavailableError: like an outage, the request was most likely not carried
    # out, and callers that retry a 503 after a pause (the worker reporting results) retry this
    # too (docs/security.md). The server keeps the connection: PostgreSQL cancelled the statement.
    status_code = 504
    code = "statement_timeout"


class TransportError(ForemanError):
    """The Foreman server could not be reached."""

    status_code = 0
    code = "transport_error"


_BY_STATUS: dict[int, type[ForemanError]] = {
    400: ValidationError,
    401: UnauthorizedError,
    403: ForbiddenError,
    404: NotFoundError,
    405: MethodNotAllowedError,
    409: ConflictError,
    408: RequestTimeoutError,
    413: PayloadTooLargeError,
    415: UnsupportedMediaTypeError,
    429: RateLimitedError,
    503: UnavailableError,
    504: StatementTimeoutError,
}


def from_status(status_code: int, body: Any) -> ForemanError:
    """Rebuild the exception a server response stands for (used by the client)."""
    cls = _BY_STATUS.get(status_code, ClientError if 400 <= status_code < 500 else ForemanError)
    message = None
    details: dict[str, Any] = {}
    if isinstance(body, dict):
        message = body.get("error") if isinstance(body.get("error"), str) else None
        details = {k: v for k, v in body.items() if k not in ("error", "code")}
    return cls(message or f"HTTP {status_code}", **details)
