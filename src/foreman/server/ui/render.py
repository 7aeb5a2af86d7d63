"""What every dashboard page shares: templates and their filters, the page headers, the static
files, the session and the organisation's connection."""

from __future__ import annotations

import datetime as dt
import importlib.resources
import json
from typing import Any

import jinja2
import msgspec
from litestar import Request, Response

from foreman import ids
from foreman.server import deps
from foreman.server.ui import session as sessions
from foreman.store import db

NONE = "\N{EN DASH}"  # shown for a time that is not set
# Pages load only the dashboard's own files: no inline script or style (progress bars are SVG).
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_HEADERS = {"content-security-policy": CSP, "cache-control": "no-store"}
STATIC_TYPES = {".js": "text/javascript", ".css": "text/css"}  # Litestar adds the charset


def files(folder: str) -> importlib.resources.abc.Traversable:
    return importlib.resources.files("foreman.server.ui") / folder


def environment() -> jinja2.Environment:
    """The templates, HTML-escaped, with the dashboard's filters."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(files("templates"))),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["when"] = when
    env.filters["age"] = age
    env.filters["pretty"] = pretty
    env.filters["decoded"] = decoded
    return env


def when(ms: int | None) -> str:
    """Epoch ms as a UTC time."""
    if ms is None:
        return NONE
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def age(ms: int | None, now_ms: int | None = None) -> str:
    """How long ago epoch ms was, in the largest whole unit."""
    if ms is None:
        return NONE
    seconds = max(0, ((now_ms or ids.now_ms()) - ms) // 1000)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def decoded(value: Any) -> Any:
    """A stored JSON value as Python (stored JSON arrives as raw text), to look inside it."""
    return msgspec.json.decode(value) if isinstance(value, msgspec.Raw) else value


def pretty(value: Any) -> str:
    """A JSON value, indented (stored JSON arrives as raw text)."""
    if value is None:
        return "null"
    if isinstance(value, msgspec.Raw):
        value = msgspec.json.decode(value)
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)


class Dashboard:
    """What the pages share: templates, static files, the session signer."""

    def __init__(self, signer: sessions.Signer) -> None:
        self.signer = signer
        self.env = environment()
        self.static = {
            item.name: item.read_bytes() for item in files("static").iterdir() if item.is_file()
        }

    def render(self, name: str, status_code: int = 200, **context: Any) -> Response[str]:
        html = self.env.get_template(name).render(**context)
        return Response(html, status_code=status_code, media_type="text/html", headers=_HEADERS)


def dashboard(request: Request[Any, Any, Any]) -> Dashboard:
    return request.app.state.foreman_ui  # type: ignore[no-any-return]


async def session_of(request: Request[Any, Any, Any]) -> sessions.Session:
    return await sessions.current(request, dashboard(request).signer, deps.state(request).auth)


def org_conn(request: Request[Any, Any, Any], org_id: str) -> db.OrgConnection:
    return db.org_connection(deps.state(request).pool, org_id)
