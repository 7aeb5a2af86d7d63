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


async def claim(client, task_type: str, worker: str) -> dict:
    body = {"workerId": worker, "limit": 1, "types": [task_type]}
    response = await client.post(f"{API}/tasks/claim", json=body, headers=HEADERS_A)
    [held] = response.json()["data"]
    return held


async def end(client, held: dict, status: str, **body) -> None:
    result = {"taskId": held["id"], "leaseToken": held["leaseToken"], "status": status, **body}
    response = await client.post(
        f"{API}/tasks/complete", json={"results": [result]}, headers=HEADERS_A
    )
    assert response.json()["data"][0]["ok"] is True, response.text


async def test_a_task_page_shows_every_attempt_and_its_parents(client):
    run = await create_run(client)
    flaky = await create_task(client, run["id"], type="flaky", enqueue=True, maxRetries=1)
    other = await create_task(client, run["id"], type="other", enqueue=True)
    join = await create_task(
        client, run["id"], type="join", enqueue=True, dependsOn=[flaky["id"], other["id"]]
    )
    assert join["status"] == "blocked"
    first = await claim(client, "flaky", "worker-1")
    error = {"type": "TimeoutError", "message": "took <too> long"}
    await end(client, first, "failed", errorData=error)
    body = {"workerId": "worker-2"}  # claimed by id: no wait for the backoff
    claimed = await client.post(f"{API}/tasks/{flaky['id']}/claim", json=body, headers=HEADERS_A)
    second = claimed.json()
    await end(client, second, "completed", outputData=1)
    await login(client)
    page = (await client.get(f"/ui/tasks/{flaky['id']}")).text
    attempts = re.findall(r'<tr class="attempt-row" data-id="(\d+)">', page)
    assert attempts == ["1", "2"]
    for fragment in ("worker-1", "worker-2", "2 attempt(s)"):
        assert fragment in page, fragment
    error_cells = '<td class="error-type">TimeoutError</td><td>took &lt;too&gt; long</td>'
    assert error_cells in page
    assert 'id="parents"' not in page  # no dependsOn: no parents section
    joined = (await client.get(f"/ui/tasks/{join['id']}")).text
    assert "2 parent(s), 1 not ended yet" in joined
    assert re.findall(r'<tr class="parent-row" data-id="([^"]+)">', joined) == sorted(
        [flaky["id"], other["id"]]
    )
    assert "status-blocked" in joined
    assert "No attempt yet" in joined
    run_page = (await client.get(f"/ui/runs/{run['id']}")).text
    assert re.search(r'<dd id="blocked">1</dd>', run_page)
    assert '<option value="blocked"' in run_page
    queues = (await client.get("/ui/queues")).text
    row = re.search(r'data-type="join">.*?</tr>', queues, re.S)
    assert row
    assert '<td class="num blocked">1</td>' in row.group(0)
    client.cookies.clear()


async def test_cancel_actions_use_the_cancel_endpoints(client):
    run = await create_run(client)
    queued = await create_task(client, run["id"], type="q", enqueue=True)
    child = await create_task(client, run["id"], type="c", enqueue=True, dependsOn=[queued["id"]])
    running = await create_task(client, run["id"], type="r", enqueue=True)
    held = await claim(client, "r", "worker-9")
    await login(client)
    page = await client.get(f"/ui/tasks/{running['id']}")
    csrf = csrf_of(page.text)
    marked = await client.post(f"/ui/tasks/{running['id']}/cancel", data={"csrf": csrf})
    assert marked.status_code == 303
    assert marked.headers["location"].endswith("?done=cancel-requested")
    shown = (await client.get(marked.headers["location"])).text
    assert "cancel requested" in shown
    assert 'id="cancel-requested"' in shown
    assert 'id="cancel"' not in shown  # asked already
    fetched = await client.get(f"{API}/tasks/{running['id']}", headers=HEADERS_A)
    assert fetched.json()["status"] == "running"  # until its worker's next heartbeat
    beat = {"leases": [{"taskId": held["id"], "leaseToken": held["leaseToken"]}]}
    answer = await client.post(f"{API}/tasks/heartbeat", json=beat, headers=HEADERS_A)
    assert answer.json()["data"][0]["cancelled"] is True
    cancelled = await client.post(f"/ui/tasks/{queued['id']}/cancel", data={"csrf": csrf})
    assert cancelled.headers["location"].endswith("?done=cancelled")
    for task, status in ((queued, "cancelled"), (child, "cancelled")):
        fetched = await client.get(f"{API}/tasks/{task['id']}", headers=HEADERS_A)
        assert fetched.json()["status"] == status
    done = await create_task(client, run["id"])
    await client.patch(f"{API}/tasks/{done['id']}", json={"status": "completed"}, headers=HEADERS_A)
    refused = await client.post(f"/ui/tasks/{done['id']}/cancel", data={"csrf": csrf})
    assert refused.status_code == 409
    client.cookies.clear()


async def test_cancel_run_needs_the_csrf_token_and_its_organisation(client):
    run = await create_run(client)
    waiting = await create_task(client, run["id"], type="w", enqueue=True)
    await login(client, KEY_B)
    other_page = await client.get("/ui/runs")
    forbidden = await client.post(
        f"/ui/runs/{run['id']}/cancel", data={"csrf": csrf_of(other_page.text)}
    )
    assert forbidden.status_code == 404
    client.cookies.clear()
    await login(client)
    page = await client.get(f"/ui/runs/{run['id']}")
    assert 'id="cancel-run-confirm"' in page.text
    refused = await client.post(f"/ui/runs/{run['id']}/cancel", data={"csrf": "wrong"})
    assert refused.status_code == 403
    done = await client.post(f"/ui/runs/{run['id']}/cancel", data={"csrf": csrf_of(page.text)})
    assert done.status_code == 303
    assert done.headers["location"] == f"/ui/runs/{run['id']}?done=cancelled"
    shown = (await client.get(done.headers["location"])).text
    assert "Run cancelled." in shown
    assert 'id="cancel-run-confirm"' not in shown  # ended
    fetched = await client.get(f"{API}/tasks/{waiting['id']}", headers=HEADERS_A)
    assert fetched.json()["status"] == "cancelled"
    finished = await create_run(client)
    await client.patch(
        f"{API}/runs/{finished['id']}", json={"status": "completed"}, headers=HEADERS_A
    )
    again = await client.post(
        f"/ui/runs/{finished['id']}/cancel", data={"csrf": csrf_of(page.text)}
    )
    assert again.status_code == 409
    client.cookies.clear()


async def test_many_parents_come_a_page_at_a_time(client):
    run = await create_run(client)
    batch = [
        {"runId": run["id"], "type": "part", "inputData": i, "enqueue": True, "ref": f"p{i}"}
        for i in range(30)
    ]
    batch.append(
        {
            "runId": run["id"],
            "type": "join",
            "inputData": 0,
            "enqueue": True,
            "dependsOn": [f"p{i}" for i in range(30)],
        }
    )
    created = await client.post(f"{API}/tasks/batch", json={"tasks": batch}, headers=HEADERS_A)
    assert created.status_code == 201, created.text
    parts, join = created.json()["data"][:30], created.json()["data"][30]
    await login(client)
    first = (await client.get(f"/ui/tasks/{join['id']}")).text
    assert "30 parent(s), 30 not ended yet" in first
    listed = re.findall(r'<tr class="parent-row" data-id="([^"]+)">', first)
    assert listed == sorted(p["id"] for p in parts)[:25]
    assert 'href="?apage=0&amp;ppage=1"' in first
    second = (await client.get(f"/ui/tasks/{join['id']}?ppage=1")).text
    listed += re.findall(r'<tr class="parent-row" data-id="([^"]+)">', second)
    assert listed == sorted(p["id"] for p in parts)
    client.cookies.clear()
