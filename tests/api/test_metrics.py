"""GET /metrics: the Prometheus figures of issue 15, the token, per-organisation labels."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from foreman.server.app import create_app
from foreman.server.metrics import Exporter
from tests.api.helpers import API, create_run, create_task
from tests.conftest import HEADERS_A, HEADERS_B, ORG_A, ORG_B, make_settings
from tests.queue_helpers import running_app
from tests.services import free_port

TOKEN = "scrape-s3cret"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def client(db_url: str) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(make_settings(db_url, metrics_token=TOKEN, sweep_enabled=False))
    async with running_app(app) as http:
        yield http


async def scrape(client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = await client.get("/metrics", headers=BEARER)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def lifecycle(client, headers=HEADERS_A) -> None:
    """Two tasks of type work: one completed, one failed then retried by hand; one of type b."""
    run = await create_run(client, headers=headers)
    tasks = [
        {"runId": run["id"], "type": "work", "inputData": i, "enqueue": True, "maxRetries": 0}
        for i in range(2)
    ] + [{"runId": run["id"], "type": "b", "inputData": 0, "enqueue": True}]
    created = await client.post(f"{API}/tasks/batch", json={"tasks": tasks}, headers=headers)
    assert created.status_code == 201
    claim = {"workerId": "w", "limit": 2, "types": ["work"]}
    held = (await client.post(f"{API}/tasks/claim", json=claim, headers=headers)).json()["data"]
    results = [
        {"taskId": held[0]["id"], "leaseToken": held[0]["leaseToken"], "status": "completed"},
        {"taskId": held[1]["id"], "leaseToken": held[1]["leaseToken"], "status": "failed"},
    ]
    ended = await client.post(f"{API}/tasks/complete", json={"results": results}, headers=headers)
    assert [a["status"] for a in ended.json()["data"]] == ["completed", "failed"]
    retried = await client.post(f"{API}/tasks/{held[1]['id']}/retry", headers=headers)
    assert retried.status_code == 200


async def test_figures_after_a_lifecycle(client):
    await lifecycle(client)
    await client.get(f"{API}/runs/00000000-0000-0000-0000-000000000000", headers=HEADERS_A)
    samples = await scrape(client)
    assert value(samples, "foreman_tasks_created_total", type="work") == 2
    assert value(samples, "foreman_tasks_created_total", type="b") == 1
    finished = "foreman_tasks_finished_total"
    assert value(samples, finished, type="work", status="completed") == 1
    assert value(samples, finished, type="work", status="failed") == 1
    assert value(samples, "foreman_task_retries_total", type="work") == 1  # the retry by hand
    assert value(samples, "foreman_task_pickup_seconds_count", type="work") == 2
    assert value(samples, "foreman_task_duration_seconds_count", type="work") == 2
    # Routes by template, never the raw path (ids would make a series per task).
    get_run = {"method": "GET", "route": "/api/v1/runs/{run_id}", "status": "404"}
    assert value(samples, "foreman_http_requests_total", **get_run) == 1
    assert value(samples, "foreman_http_request_duration_seconds_count", **get_run) == 1
    assert value(samples, "foreman_http_request_duration_seconds_bucket", le="+Inf", **get_run) == 1
    retry = {"method": "POST", "route": "/api/v1/tasks/{task_id}/retry", "status": "200"}
    assert value(samples, "foreman_http_requests_total", **retry) == 1
    # The queue now: the retried work task and the b task are ready; nothing is running.
    assert value(samples, "foreman_queue_ready_tasks", type="work") == 1
    assert value(samples, "foreman_queue_ready_tasks", type="b") == 1
    assert value(samples, "foreman_queue_oldest_ready_age_seconds", type="b") >= 0
    assert value(samples, "foreman_db_pool_connections", state="idle") >= 1
    assert ("foreman_sweeper_runs_total", ()) in samples
    assert ("foreman_leases_expired_total", ()) in samples
    assert not any("org" in dict(labels) for _, labels in samples)


async def test_scrapes_count_on(client):
    first = await scrape(client)
    second = await scrape(client)
    scrape_route = {"method": "GET", "route": "/metrics", "status": "200"}
    assert value(second, "foreman_http_requests_total", **scrape_route) == (
        value(first, "foreman_http_requests_total", **scrape_route) + 1
    )


async def test_unknown_paths_share_one_route_label(client):
    for path in ("/nope/1", "/nope/2", "/api/v1//x"):
        await client.get(path, headers=HEADERS_A)
    samples = await scrape(client)
    unmatched = {"method": "GET", "route": "unmatched", "status": "404"}
    assert value(samples, "foreman_http_requests_total", **unmatched) == 3
    assert not any("/nope" in dict(labels).get("route", "") for _, labels in samples)


async def test_token_is_required(client):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}, HEADERS_A):
        response = await client.get("/metrics", headers=headers)
        assert response.status_code == 401, headers
        assert response.json()["code"] == "unauthorized"


async def test_without_a_token_there_are_no_metrics(db_url):
    async with running_app(create_app(make_settings(db_url, sweep_enabled=False))) as http:
        assert (await http.get("/metrics", headers=BEARER)).status_code == 404


async def test_per_organisation_labels(db_url):
    settings = make_settings(db_url, metrics_token=TOKEN, metrics_per_org=True, sweep_enabled=False)
    async with running_app(create_app(settings)) as http:
        await lifecycle(http, HEADERS_A)
        # B's batch answers ids only: its tasks are counted without Task models built.
        await lifecycle(http, {**HEADERS_B, "Prefer": "return=minimal"})
        samples = await scrape(http)
    for org in (ORG_A, ORG_B):
        assert value(samples, "foreman_tasks_created_total", type="work", org=org) == 2
        assert value(samples, "foreman_queue_ready_tasks", type="b", org=org) == 1
        assert ("foreman_queue_blocked_tasks", (("org", org), ("type", "b"))) in samples
    assert value(samples, "foreman_task_pickup_seconds_count", type="work", org=ORG_A) == 2


async def test_a_scrape_without_the_database_still_answers():
    unreachable = f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere"
    exporter = Exporter(make_settings(unreachable, metrics_token=TOKEN), database_url=unreachable)
    exporter.metrics.request("GET", "/health", 200, 0.0, None)
    text = (await exporter.exposition()).decode()
    assert 'foreman_http_requests_total{method="GET",route="/health",status="200"} 1.0' in text
    assert "foreman_queue_ready_tasks" in text  # the family, with no sample yet
    await exporter.close()


async def test_blocked_tasks_per_type(client):
    run = await create_run(client)
    batch = [
        {"runId": run["id"], "type": "split", "inputData": 0, "enqueue": True, "ref": "s"},
        *(
            {
                "runId": run["id"],
                "type": "join",
                "inputData": i,
                "enqueue": True,
                "dependsOn": ["s"],
            }
            for i in range(3)
        ),
    ]
    created = await client.post(f"{API}/tasks/batch", json={"tasks": batch}, headers=HEADERS_A)
    assert created.status_code == 201, created.text
    samples = await scrape(client)
    assert value(samples, "foreman_queue_blocked_tasks", type="join") == 3
    assert value(samples, "foreman_queue_ready_tasks", type="split") == 1
    assert value(samples, "foreman_queue_blocked_tasks", type="split") == 0
    assert value(samples, "foreman_queue_ready_tasks", type="join") == 0


async def test_cancelled_tasks_count_as_finished(client):
    # POST /tasks/:id/cancel and /runs/:id/cancel end tasks at once: counted like any end. A
    # running task is only marked (it ends, and is counted, when its worker reports).
    one = await create_run(client)
    task = await create_task(client, one["id"], type="solo", enqueue=True)
    assert (await client.post(f"{API}/tasks/{task['id']}/cancel", headers=HEADERS_A)).is_success
    again = await client.post(f"{API}/tasks/{task['id']}/cancel", headers=HEADERS_A)
    assert again.is_success  # a repeat changes nothing, counts nothing
    run = await create_run(client)
    for i in range(3):
        await create_task(client, run["id"], type="many", inputData=i, enqueue=True)
    claim = {"workerId": "w", "limit": 1, "types": ["many"]}
    held = await client.post(f"{API}/tasks/claim", json=claim, headers=HEADERS_A)
    assert len(held.json()["data"]) == 1
    assert (await client.post(f"{API}/runs/{run['id']}/cancel", headers=HEADERS_A)).is_success
    samples = await scrape(client)
    finished = "foreman_tasks_finished_total"
    assert value(samples, finished, type="solo", status="cancelled") == 1
    assert value(samples, finished, type="many", status="cancelled") == 2  # the running one: later
