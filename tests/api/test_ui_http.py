"""The dashboard's HTTP contract: login, session cookie, CSRF, pages, isolation, switched off."""

from __future__ import annotations

import re

from foreman.server.app import create_app
from tests.api.helpers import API, create_run, create_task
from tests.conftest import HEADERS_A, HEADERS_B, KEY_A, KEY_B, make_settings
from tests.queue_helpers import running_app


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, html
    return match.group(1)


async def login(client, key: str = KEY_A):
    form = await client.get("/ui/login")
    assert form.status_code == 200
    assert 'name="apiKey"' in form.text
    return await client.post("/ui/login", data={"apiKey": key, "csrf": csrf_of(form.text)})


async def test_login_sets_a_strict_httponly_session_cookie(client):
    response = await login(client)
    assert response.status_code == 303
    assert response.headers["location"] == "/ui/runs"
    cookie = response.headers["set-cookie"]
    assert cookie.startswith("foreman_session=")
    for attribute in ("HttpOnly", "SameSite=Strict", "Path=/ui"):
        assert attribute.lower() in cookie.lower(), cookie
    assert "secure" not in cookie.lower()  # plain HTTP here
    assert KEY_A not in cookie  # the key itself is never in the cookie
    page = await client.get("/ui/runs")
    assert page.status_code == 200
    assert "default-src 'none'" in page.headers["content-security-policy"]
    client.cookies.clear()


async def test_secure_behind_https_proxy(client):
    form = await client.get("/ui/login")
    response = await client.post(
        "/ui/login",
        data={"apiKey": KEY_A, "csrf": csrf_of(form.text)},
        headers={"x-forwarded-proto": "https"},
    )
    assert "secure" in response.headers["set-cookie"].lower()
    client.cookies.clear()


async def test_bad_key_and_missing_csrf_are_refused(client):
    form = await client.get("/ui/login")
    bad = await client.post("/ui/login", data={"apiKey": "nope", "csrf": csrf_of(form.text)})
    assert bad.status_code == 401
    assert "set-cookie" not in bad.headers
    forged = await client.post("/ui/login", data={"apiKey": KEY_A, "csrf": "forged"})
    assert forged.status_code == 403
    assert "set-cookie" not in forged.headers


async def test_pages_need_a_session(client):
    client.cookies.clear()
    for path in ("/ui/runs", "/ui/queues", "/ui/workers", f"/ui/runs/{'0' * 32}"):
        response = await client.get(path)
        assert response.status_code == 303, path
        assert response.headers["location"] == "/ui/login"
    client.cookies.set("foreman_session", "tampered.value", path="/ui")
    assert (await client.get("/ui/runs")).status_code == 303
    client.cookies.clear()


async def test_actions_need_the_csrf_token(client):
    run = await create_run(client)
    task = await create_task(client, run["id"])
    await client.patch(f"{API}/tasks/{task['id']}", json={"status": "failed"}, headers=HEADERS_A)
    await login(client)
    page = await client.get(f"/ui/tasks/{task['id']}")
    assert page.status_code == 200
    refused = await client.post(f"/ui/tasks/{task['id']}/retry", data={"csrf": "wrong"})
    assert refused.status_code == 403
    done = await client.post(f"/ui/tasks/{task['id']}/retry", data={"csrf": csrf_of(page.text)})
    assert done.status_code == 303
    fetched = await client.get(f"{API}/tasks/{task['id']}", headers=HEADERS_A)
    assert fetched.json()["status"] == "queued"
    again = await client.post(f"/ui/tasks/{task['id']}/retry", data={"csrf": csrf_of(page.text)})
    assert again.status_code == 409
    logout = await client.post("/ui/logout", data={"csrf": csrf_of(page.text)})
    assert logout.status_code == 303
    client.cookies.clear()


async def test_a_second_organisation_sees_none_of_the_first(client):
    run = await create_run(client)
    task = await create_task(client, run["id"], type="secret-type")
    other = await create_run(client, headers=HEADERS_B)
    await login(client, KEY_B)
    runs = (await client.get("/ui/runs")).text
    assert other["id"] in runs
    assert run["id"] not in runs
    assert (await client.get(f"/ui/runs/{run['id']}")).status_code == 404
    assert (await client.get(f"/ui/tasks/{task['id']}")).status_code == 404
    assert "secret-type" not in (await client.get("/ui/queues")).text
    client.cookies.clear()


async def test_switched_off(db_url):
    async with running_app(create_app(make_settings(db_url, ui_enabled=False))) as http:
        assert (await http.get("/ui/login")).status_code == 404


async def test_static_files_have_one_charset(client):
    for name, media_type in (("htmx.min.js", "text/javascript"), ("style.css", "text/css")):
        response = await client.get(f"/ui/static/{name}")
        assert response.status_code == 200
        assert response.headers["content-type"] == f"{media_type}; charset=utf-8"
    assert (await client.get("/ui/static/nothing.js")).status_code == 404
