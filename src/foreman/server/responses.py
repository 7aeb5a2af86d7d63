"""JsonResponse: the app's response class, with a short path for the common answer.

Nearly every answer is a msgspec struct sent as JSON with no cookies, extra headers or
background task. Litestar's general path builds a header mapping, a cookie list and an
ASGIResponse for each one; this path encodes the body and sends two prepared messages. Any
answer that needs more takes Litestar's own path unchanged.

It overrides Litestar 2's ``Response.__init__`` and ``to_asgi_response`` (whose signature changes
in Litestar 3): litestar is pinned below 3, and tests/unit/test_adapters.py checks both.
"""

from __future__ import annotations

from typing import Any

from litestar import Request, Response
from litestar.background_tasks import BackgroundTask, BackgroundTasks
from litestar.enums import MediaType
from litestar.response.base import ASGIResponse
from litestar.serialization import encode_json, get_serializer
from litestar.types import Receive, Scope, Send, TypeEncodersMap

_JSON = MediaType.JSON.value
_CONTENT_TYPE = (b"content-type", b"application/json")


class JsonBody:
    """An ASGI answer: a status and a JSON body, nothing else (headers are added on the way)."""

    __slots__ = ("body", "status")

    def __init__(self, status: int, body: bytes) -> None:
        self.status = status
        self.body = body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [_CONTENT_TYPE, (b"content-length", str(len(self.body)).encode())]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": self.body, "more_body": False})


class JsonResponse(Response[Any]):
    """Litestar's Response, with the short path above for a plain JSON answer."""

    __slots__ = ()

    def __init__(
        self,
        content: Any,
        *,
        background: BackgroundTask | BackgroundTasks | None = None,
        cookies: Any = None,
        encoding: str = "utf-8",
        headers: Any = None,
        media_type: MediaType | str | None = None,
        status_code: int | None = None,
        type_encoders: TypeEncodersMap | None = None,
    ) -> None:
        if cookies or headers or self.type_encoders:
            super().__init__(
                content,
                background=background,
                cookies=cookies,
                encoding=encoding,
                headers=headers,
                media_type=media_type,
                status_code=status_code,
                type_encoders=type_encoders,
            )
            return
        # Litestar's __init__ without its per-answer copies: the handler's encoder mapping is
        # shared (nothing writes to it), no cookies or headers to convert.
        self.content = content
        self.background = background
        self.cookies = []
        self.encoding = encoding
        self.headers = {}
        self.media_type = media_type
        self.status_code = status_code
        self.response_type_encoders = (
            type_encoders if isinstance(type_encoders, dict) else dict(type_encoders or {})
        )

    def to_asgi_response(  # type: ignore[override]
        self,
        app: Any,
        request: Request[Any, Any, Any],
        *,
        background: BackgroundTask | BackgroundTasks | None = None,
        cookies: Any = None,
        encoded_headers: Any = None,
        headers: dict[str, str] | None = None,
        is_head_response: bool = False,
        media_type: MediaType | str | None = None,
        status_code: int | None = None,
        type_encoders: TypeEncodersMap | None = None,
    ) -> ASGIResponse | JsonBody:
        status = self.status_code or status_code or 200
        plain = (
            app is None
            and not (background or self.background)
            and not (cookies or self.cookies)
            and not (headers or self.headers or encoded_headers)
            and not is_head_response
            and (self.media_type or media_type or _JSON) == _JSON
            and 200 <= status < 300
            and status != 204
        )
        if plain:
            # The app's type encoders (the Pydantic plugin's) only run for values msgspec cannot
            # encode itself, as in Litestar's own path.
            encoders = {**type_encoders, **self.response_type_encoders} if type_encoders else None
            serializer = get_serializer(encoders or self.response_type_encoders)
            return JsonBody(status, encode_json(self.content, serializer))
        return super().to_asgi_response(
            app,
            request,
            background=background,
            cookies=cookies,
            encoded_headers=encoded_headers,
            headers=headers,
            is_head_response=is_head_response,
            media_type=media_type,
            status_code=status_code,
            type_encoders=type_encoders,
        )
