"""An empty id never leaves the SDK, and the real server (uvicorn, which decodes %2F before
routing) refuses a collapsed path instead of answering another endpoint."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from foreman import AsyncClient, Client, errors
from tests.conftest import HEADERS_A, KEY_A
from tests.queue_helpers import LiveApp
from tests.services import free_port

API = "/api/v1"
BAD_IDS = ["", ".", ".."]
# Every client method with an id in its path, and arguments it would otherwise accept.
ID_CALLS: list[tuple[str, dict[str, Any]]] = [
    ("get_run", {}),
    ("update_run", {"status": "running"}),
    ("get_task", {}),
    ("update_task", {"status": "running"}),
    ("wait_for_task", {"timeout": 1}),
    ("claim_task", {"worker_id": "w"}),
    ("complete_task", {"lease_token": "00000000-0000-4000-8000-000000000000"}),
    ("fail_task", {"lease_token": "00000000-0000-4000-8000-000000000000", "error_data": None}),
    ("release_task", {"lease_token": "00000000-0000-4000-8000-000000000000"}),
    ("query_run_data", {}),
    ("delete_run_data", {"key": "k"}),
    (
        "create_run_data",
        {"task_id": "00000000-0000-4000-8000-000000000000", "key": "k", "value": 1},
    ),
]


@pytest.fixture(scope="module")
def live(database_url: str) -> Iterator[LiveApp]:
    with LiveApp(database_url) as app:
        yield app


@pytest.fixture
def ready(live: LiveApp, db_url: str) -> Iterator[tuple[Client, str]]:
    """A sync client and the id of a ready (queued) task that allows no retry."""
    with Client(live.url, KEY_A, timeout=10) as client:
        run = client.create_run({})
        task = client.enqueue_task(run.id, type="work", input_data={}, max_retries=0)
        assert task.status == "queued"
        yield client, task.id


def _untouched(client: Client, task_id: str) -> None:
    task = client.get_task(task_id)
    assert (task.status, task.attempt, task.worker_id) == ("queued", 0, None)


@pytest.mark.parametrize("bad", BAD_IDS)
def test_sync_claim_task_refuses_an_empty_id_before_sending(ready, bad):
    client, task_id = ready
    with pytest.raises(errors.ValidationError, match="task_id"):
        client.claim_task(bad, worker_id="w")
    _untouched(client, task_id)


@pytest.mark.parametrize("bad", BAD_IDS)
async def test_async_claim_task_refuses_an_empty_id_before_sending(live, ready, bad):
    client, task_id = ready
    async with AsyncClient(live.url, KEY_A, timeout=10) as aclient:
        with pytest.raises(errors.ValidationError, match="task_id"):
            await aclient.claim_task(bad, worker_id="w")
    _untouched(client, task_id)


@pytest.mark.parametrize(("method", "kwargs"), ID_CALLS)
async def test_every_id_method_refuses_an_empty_id_before_sending(method, kwargs):
    # Nothing listens there and retries are off: a request sent would be a TransportError.
    nowhere = f"http://127.0.0.1:{free_port()}"
    with Client(nowhere, KEY_A, timeout=2, retries=0) as client:
        for bad in BAD_IDS:
            with pytest.raises(errors.ValidationError, match="_id must be an id"):
                getattr(client, method)(bad, **kwargs)
    async with AsyncClient(nowhere, KEY_A, timeout=2, retries=0) as aclient:
        for bad in BAD_IDS:
            with pytest.raises(errors.ValidationError, match="_id must be an id"):
                await getattr(aclient, method)(bad, **kwargs)


def test_a_sent_request_to_nowhere_is_a_transport_error():
    # What the test above would have seen, had the id gone out.
    nowhere = f"http://127.0.0.1:{free_port()}"
    with (
        Client(nowhere, KEY_A, timeout=2, retries=0) as client,
        pytest.raises(errors.TransportError),
    ):
        client.get_task("00000000-0000-4000-8000-000000000000")


def test_update_run_data_tags_refuses_either_empty_id(live):
    with Client(live.url, KEY_A, timeout=5) as client:
        with pytest.raises(errors.ValidationError, match="run_id"):
            client.update_run_data_tags("", "00000000-0000-4000-8000-000000000000", add=["a"])
        with pytest.raises(errors.ValidationError, match="data_id"):
            client.update_run_data_tags("00000000-0000-4000-8000-000000000000", "", add=["a"])


@pytest.mark.parametrize("segment", ["", "%2F", "%2f", "%2E", "a%2Fb"])
def test_the_real_server_refuses_a_collapsed_claim_path(ready, live, segment):
    client, task_id = ready
    with httpx.Client(base_url=live.url, headers=HEADERS_A) as http:
        response = http.post(f"{API}/tasks/{segment}/claim", json={"workerId": "w"})
    assert response.status_code == 404, response.text
    assert response.json()["code"] == "not_found"
    _untouched(client, task_id)


def test_the_real_server_refuses_a_collapsed_path_with_a_query(live):
    with httpx.Client(base_url=live.url, headers=HEADERS_A) as http:
        response = http.get(f"{API}/runs/%2F?limit=1")
        assert response.status_code == 404, response.text
        assert "malformed path" in response.json()["error"].lower()
        assert http.get(f"{API}/runs?limit=1").status_code == 200
