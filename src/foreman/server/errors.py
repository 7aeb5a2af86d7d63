"""The one place where exceptions become JSON error answers (SPEC section 2)."""

from __future__ import annotations

import logging
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException

from foreman import errors

logger = logging.getLogger(__name__)


def _detail_message(extra: Any) -> list[dict[str, Any]]:
    details: list[dict[str, Any]] = []
    if isinstance(extra, list):
        for item in extra:
            if isinstance(item, dict):
                message = str(item.get("message", "invalid value"))
                key = str(item.get("key") or "")
                # A __post_init__ check names its field in backticks; the decoder only says "data".
                if key == "data" and message.startswith("`"):
                    key = message.split("`")[1]
                loc = [str(item.get("source") or "body")]
                if key:
                    loc.append(key)
                details.append({"loc": loc, "msg": message})
    return details


def foreman_error(_: Request[Any, Any, Any], exc: errors.ForemanError) -> Response[Any]:
    headers = (
        {"Retry-After": str(exc.details["retryAfter"])} if "retryAfter" in exc.details else None
    )
    return Response(exc.to_body(), status_code=exc.status_code, headers=headers)


def validation_error(_: Request[Any, Any, Any], exc: ValidationException) -> Response[Any]:
    details = _detail_message(exc.extra)
    if details:
        named = "; ".join(f"{d['loc'][-1]}: {d['msg']}" for d in details)
        body = {
            "error": f"Validation failed: {named}",
            "code": "validation_error",
            "details": details,
        }
    else:
        # msgspec's own text for malformed JSON ("Input data was truncated", ...)
        body = {"error": f"Malformed request body: {exc.detail}", "code": "bad_request"}
    return Response(body, status_code=400)


_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}


def http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    if exc.status_code == 404:
        message = f"Not found: {request.method} {request.url.path}"
    elif exc.status_code == 413:
        message = f"Request body too large (limit {request.app.state.foreman.settings.max_body_bytes} bytes)"
    else:
        message = str(exc.detail)
    code = _CODES.get(exc.status_code, "http_error")
    return Response(
        {"error": message, "code": code}, status_code=exc.status_code, headers=exc.headers
    )


def unexpected_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    logger.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return Response({"error": "Internal server error", "code": "internal_error"}, status_code=500)


EXCEPTION_HANDLERS: dict[Any, Any] = {
    errors.ForemanError: foreman_error,
    ValidationException: validation_error,
    HTTPException: http_error,
    Exception: unexpected_error,
}
