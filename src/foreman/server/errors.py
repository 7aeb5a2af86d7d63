"""The one place where exceptions become JSON error answers (SPEC section 2).

error_body encodes every error body the server sends, those of the body limit (server/middleware.py)
and of the protocol (server/protocol.py) included.
"""

from __future__ import annotations

import enum
import logging
import re
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.enums import MediaType
from litestar.exceptions import HTTPException, ValidationException

from foreman import errors

logger = logging.getLogger(__name__)

# msgspec ends a validation message with the JSON path of the bad value: "... - at `$.tags[1]`".
_AT_PATH = re.compile(r"^(?P<msg>.*) - at `\$(?P<path>[^`]*)`$", re.DOTALL)
_PATH_PART = re.compile(r"\.([^.\[]+)|\[(\d+)\]|\[\"((?:[^\"\\]|\\.)*)\"\]")
_NAMED_FIELD = re.compile(r"`([^`]+)`")
_MAX_MSG_CHARS = 200


def json_path(path: str) -> list[str | int]:
    """The parts of a msgspec JSON path (``.tags[1]`` -> ``["tags", 1]``)."""
    parts: list[str | int] = []
    for name, index, quoted in _PATH_PART.findall(path):
        parts.append(int(index) if index else name or quoted)
    return parts


def body_error_detail(message: str) -> dict[str, Any]:
    """``{"loc", "msg"}`` for a msgspec validation message about a request body."""
    match = _AT_PATH.match(message)
    msg, loc = (match["msg"], json_path(match["path"])) if match else (message, [])
    if len(msg) > _MAX_MSG_CHARS:  # msgspec echoes a bad enum value whole, megabytes of it
        msg = f"{msg[:_MAX_MSG_CHARS]}..."
    # A missing field, or a __post_init__ check, names the field in backticks but not in the path.
    named = _NAMED_FIELD.search(msg)
    if named and msg.startswith(("Object missing required field", "`")):
        loc.append(named[1])
    return {"loc": ["body", *loc], "msg": msg}


def body_validation_error(message: str) -> errors.ValidationError:
    """A 400 that names the bad field of a request body."""
    detail = body_error_detail(message)
    where = ".".join(str(part) for part in detail["loc"][1:]) or "body"
    return errors.ValidationError(f"Validation failed: {where}: {detail['msg']}", details=[detail])


def _wire_name(request: Request[Any, Any, Any], key: str) -> str:
    """The name a client used for a parameter (``includeAll``, not ``include_all``)."""
    field = request.route_handler.parsed_fn_signature.parameters.get(key)
    kwarg = getattr(field, "kwarg_definition", None)
    for attribute in ("name", "query", "header"):
        alias = getattr(kwarg, attribute, None)
        if isinstance(alias, str) and alias:
            return alias
    return key


def _details(request: Request[Any, Any, Any], extra: Any) -> list[dict[str, Any]]:
    details: list[dict[str, Any]] = []
    for item in extra if isinstance(extra, list) else []:
        if not isinstance(item, dict):
            continue
        message = str(item.get("message", "invalid value"))
        source = item.get("source") or "body"
        source = source.value if isinstance(source, enum.Enum) else str(source)
        key = str(item.get("key") or "")
        if source == "body":
            key = "" if key == "data" else key  # Litestar's name for the whole body
            details.append(body_error_detail(f"{message} - at `$.{key}`" if key else message))
        else:
            details.append({"loc": [source, _wire_name(request, key)], "msg": message})
    return details


def error_body(exc: errors.ForemanError) -> bytes:
    """The JSON body of an error answer (SPEC section 2); every error answer is encoded here."""
    return msgspec.json.encode(exc.to_body())


def error_response(exc: errors.ForemanError, *, headers: Any = None) -> Response[bytes]:
    """exc as a Litestar answer of its status."""
    return Response(
        error_body(exc), status_code=exc.status_code, headers=headers, media_type=MediaType.JSON
    )


def foreman_error(_: Request[Any, Any, Any], exc: errors.ForemanError) -> Response[bytes]:
    headers = (
        {"Retry-After": str(exc.details["retryAfter"])} if "retryAfter" in exc.details else None
    )
    return error_response(exc, headers=headers)


def validation_error(request: Request[Any, Any, Any], exc: ValidationException) -> Response[bytes]:
    details = _details(request, exc.extra)
    if not details:
        return error_response(errors.ClientError(f"Malformed request: {exc.detail}"))
    named = "; ".join(
        f"{'.'.join(str(p) for p in d['loc'][1:]) or d['loc'][0]}: {d['msg']}" for d in details
    )
    return error_response(errors.ValidationError(f"Validation failed: {named}", details=details))


class HeadersTooLargeError(errors.ClientError):
    """Request headers too large."""

    status_code = 431


class HeadersTimeoutError(errors.ClientError):
    """Request headers not received in time."""

    status_code = 408


class _HttpError(errors.ForemanError):
    """An HTTP error of Litestar's with no class of its own here."""

    code = "http_error"


_HTTP_ERRORS: dict[int, type[errors.ForemanError]] = {
    400: errors.ClientError,
    404: errors.NotFoundError,
    405: errors.MethodNotAllowedError,
    413: errors.PayloadTooLargeError,
}


def http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    if exc.status_code == 404:
        message = f"Not found: {request.method} {request.url.path}"
    elif exc.status_code == 405:
        message = f"Method not allowed: {request.method} {request.url.path}"
    elif exc.status_code == 413:
        message = f"Request body too large (limit {request.app.state.foreman.settings.max_body_bytes} bytes)"
    else:
        message = str(exc.detail)
    error = _HTTP_ERRORS.get(exc.status_code, _HttpError)(message)
    return Response(
        error_body(error),
        status_code=exc.status_code,
        headers=exc.headers,
        media_type=MediaType.JSON,
    )


def unexpected_error(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    logger.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(errors.ForemanError("Internal server error"))


EXCEPTION_HANDLERS: dict[Any, Any] = {
    errors.ForemanError: foreman_error,
    ValidationException: validation_error,
    HTTPException: http_error,
    Exception: unexpected_error,
}
