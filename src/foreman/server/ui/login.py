"""The dashboard's login, logout and static files (server/ui/session.py signs the sessions)."""

from __future__ import annotations

import time
from typing import Any

from litestar import Request, Response, get, post
from litestar.params import FromPath
from litestar.response import Redirect

from foreman import errors
from foreman.server import deps
from foreman.server.ui import render
from foreman.server.ui import session as sessions


@get("/login")
async def login_form(request: Request[Any, Any, Any]) -> Response[str]:
    """The login form (its key input is named apiKey)."""
    board = render.dashboard(request)
    token = board.signer.login_token(now=time.time())
    return board.render("login.html", csrf=token, error=None)


@post("/login", status_code=303)
async def login(request: Request[Any, Any, Any]) -> Response[Any]:
    """Check the key like an API call; a signed session cookie on success."""
    board = render.dashboard(request)
    form = await request.form()
    now = time.time()
    if not board.signer.login_token_ok(str(form.get("csrf", "")), now=now):
        return board.render(
            "login.html",
            403,
            csrf=board.signer.login_token(now=now),
            error="The form expired: try again.",
        )
    key = str(form.get("apiKey", "")).strip()
    auth = deps.state(request).auth
    try:
        if not key:
            raise errors.UnauthorizedError("Enter an API key")
        caller = await auth.registered_caller(key) if auth.registered else auth.format_caller(key)
    except errors.UnauthorizedError as exc:
        return board.render(
            "login.html", 401, csrf=board.signer.login_token(now=now), error=exc.message
        )
    cookie, _ = board.signer.cookie_for(caller, key=key, now=now)
    response: Response[Any] = Redirect("/ui/runs", status_code=303)
    response.set_cookie(
        sessions.COOKIE,
        cookie,
        path="/ui",
        max_age=int(board.signer.session_s),
        httponly=True,
        samesite="strict",
        secure=sessions.secure_request(request),
    )
    return response


@post("/logout", status_code=303)
async def logout(request: Request[Any, Any, Any]) -> Response[Any]:
    """End the session (the form carries its CSRF token)."""
    session = await render.session_of(request)
    form = await request.form()
    sessions.check_csrf(session, form.get("csrf"))
    response: Response[Any] = Redirect("/ui/login", status_code=303)
    response.delete_cookie(sessions.COOKIE, path="/ui")
    return response


@get("/")
async def home() -> Redirect:
    """The runs page."""
    return Redirect("/ui/runs")


@get("/static/{name:str}")
async def static(request: Request[Any, Any, Any], name: FromPath[str]) -> Response[bytes]:
    """The project's own script and styles (htmx is vendored: no CDN at run time)."""
    body = render.dashboard(request).static.get(name)
    suffix = name[name.rfind(".") :]
    if body is None or suffix not in render.STATIC_TYPES:
        raise errors.NotFoundError(f"No such file: {name}")
    headers = {"cache-control": "public, max-age=3600"}
    return Response(body, media_type=render.STATIC_TYPES[suffix], headers=headers)


# ---------------------------------------------------------------- runs
