"""`foreman runs ls|show|cancel` and `foreman tasks ls|show|retry|cancel|attempts` against a
live server."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

from foreman import Client
from foreman.cli import app
from foreman.ops_cli import parse_since
from tests.conftest import KEY_A, KEY_B
from tests.queue_helpers import LiveApp


@pytest.fixture(scope="module")
def live(database_url: str) -> Iterator[LiveApp]:
    with LiveApp(database_url) as served:
        yield served


@pytest.fixture
def client(live: LiveApp, db_url: str) -> Iterator[Client]:
    with Client(live.url, KEY_A) as api:
        yield api


def foreman(live: LiveApp, *args: str, key: str = KEY_A, answer: str | None = None):
    env = {"FOREMAN_ENDPOINT": live.url, "FOREMAN_API_KEY": key}
    return CliRunner().invoke(app, list(args), env=env, input=answer)


def failed_tasks(client: Client, count: int, *, task_type: str = "resize"):
    run = client.create_run({"n": count})
    tasks = [client.create_task(run.id, type=task_type, input_data=i) for i in range(count)]
    for task in tasks:
        client.update_task(task.id, status="failed", error_data={"message": "boom"})
    return run, tasks


def test_tasks_ls_filters_and_json(live, client):
    run, tasks = failed_tasks(client, 3)
    other = client.create_task(run.id, type="other", input_data=0)
    result = foreman(live, "tasks", "ls", "--run", run.id, "--status", "failed", "--json")
    assert result.exit_code == 0, result.output
    listed = json.loads(result.output)
    assert {t["id"] for t in listed} == {t.id for t in tasks}
    assert listed[0]["errorData"] == {"message": "boom"}
    by_type = json.loads(foreman(live, "tasks", "ls", "--type", "other", "--json").output)
    assert [t["id"] for t in by_type] == [other.id]
    table = foreman(live, "tasks", "ls", "--run", run.id)
    assert table.exit_code == 0
    assert other.id in table.output
    assert "failed" in table.output
    assert len(json.loads(foreman(live, "tasks", "ls", "--json", "--limit", "2").output)) == 2


def test_since_stops_at_older_rows(live, client):
    failed_tasks(client, 2)
    recent = json.loads(foreman(live, "tasks", "ls", "--since", "1h", "--json").output)
    assert len(recent) == 2
    future = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()
    assert json.loads(foreman(live, "tasks", "ls", "--since", future, "--json").output) == []
    bad = foreman(live, "tasks", "ls", "--since", "yesterday")
    assert bad.exit_code == 2
    assert "--since" in bad.output


def test_parse_since():
    now = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    assert parse_since("90s", now=now) == int(now.timestamp() * 1000) - 90_000
    assert parse_since("2d", now=now) == int(now.timestamp() * 1000) - 2 * 86_400_000
    assert parse_since("2026-01-01", now=now) == int(
        dt.datetime(2026, 1, 1, tzinfo=dt.UTC).timestamp() * 1000
    )
    assert parse_since(None, now=now) is None


def test_runs_ls_and_show(live, client):
    run, _ = failed_tasks(client, 2)
    client.create_task(run.id, type="resize", input_data=9)
    listed = json.loads(foreman(live, "runs", "ls", "--json").output)
    assert [(r["id"], r["totalTasks"], r["failedTasks"]) for r in listed] == [(run.id, 3, 2)]
    shown = foreman(live, "runs", "show", run.id)
    assert shown.exit_code == 0
    assert "67%" in shown.output  # 2 of 3 tasks finished
    assert json.loads(foreman(live, "runs", "show", run.id, "--json").output)["id"] == run.id
    missing = foreman(live, "runs", "show", "00000000-0000-0000-0000-000000000000")
    assert missing.exit_code == 1
    assert "Run not found" in missing.output


def test_retry_by_id_and_by_filter_with_confirmation(live, client):
    run, tasks = failed_tasks(client, 4)
    one = foreman(live, "tasks", "retry", tasks[0].id, "--json")
    assert one.exit_code == 0, one.output
    assert json.loads(one.stdout) == {"retried": [tasks[0].id], "refused": []}
    declined = foreman(live, "tasks", "retry", "--run", run.id, answer="n\n")
    assert declined.exit_code == 1
    assert "Retry 3 failed task(s)?" in declined.output
    assert client.get_run(run.id).failed_tasks == 3
    accepted = foreman(live, "tasks", "retry", "--run", run.id, "--type", "resize", answer="y\n")
    assert accepted.exit_code == 0, accepted.output
    assert "retried 3 task(s), 0 refused" in accepted.output
    assert {client.get_task(t.id).status for t in tasks} == {"queued"}
    assert client.get_run(run.id).failed_tasks == 0
    again = foreman(live, "tasks", "retry", tasks[1].id)
    assert again.exit_code == 1
    assert "0 refused" not in again.output
    nothing = foreman(live, "tasks", "retry", "--run", run.id, "--yes")
    assert "no failed task matches" in nothing.output


def test_another_organisation_sees_nothing(live, client):
    _, tasks = failed_tasks(client, 2)
    assert json.loads(foreman(live, "tasks", "ls", "--json", key=KEY_B).output) == []
    assert json.loads(foreman(live, "runs", "ls", "--json", key=KEY_B).output) == []
    shown = foreman(live, "tasks", "show", tasks[0].id, key=KEY_B)
    assert shown.exit_code == 1
    refused = foreman(live, "tasks", "retry", tasks[0].id, "--json", key=KEY_B)
    assert json.loads(refused.stdout)["refused"][0]["id"] == tasks[0].id
    assert client.get_task(tasks[0].id).status == "failed"


def test_no_endpoint_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(
        app, ["tasks", "ls"], env={"FOREMAN_ENDPOINT": "", "FOREMAN_API_KEY": ""}
    )
    assert result.exit_code == 1
    assert "error" in result.output.lower()


def test_runs_cancel_with_confirmation(live, client):
    run = client.create_run({"n": 3})
    done = client.create_task(run.id, type="cut", input_data=0)
    client.update_task(done.id, status="completed")
    waiting = client.enqueue_task(run.id, type="cut", input_data=1)
    blocked = client.enqueue_task(run.id, type="join", input_data=2, depends_on=[waiting.id])
    held = client.enqueue_task(run.id, type="hold", input_data=3)
    [claimed] = client.claim_tasks(worker_id="w", types=["hold"])
    assert (blocked.status, claimed.id) == ("blocked", held.id)
    declined = foreman(live, "runs", "cancel", run.id, answer="n\n")
    assert declined.exit_code == 1
    assert f"Cancel run {run.id} (pending) and its 3 unfinished task(s)?" in declined.output
    assert client.get_run(run.id).status == "pending"
    accepted = foreman(live, "runs", "cancel", run.id, answer="y\n")
    assert accepted.exit_code == 0, accepted.output
    assert "2 task(s) cancelled, 1 running task(s) stop at" in accepted.output
    assert client.get_task(blocked.id).status == "cancelled"
    assert client.get_task(held.id).status == "running"  # until its worker's next heartbeat
    again = json.loads(foreman(live, "runs", "cancel", run.id, "--yes", "--json").stdout)
    assert (again["id"], again["status"], again["cancelledTasks"]) == (run.id, "cancelled", 2)
    ended = client.create_run({"n": 0})
    client.update_run(ended.id, status="completed")
    refused = foreman(live, "runs", "cancel", ended.id, "--yes")
    assert refused.exit_code == 1
    assert "already ended: completed" in refused.output
    missing = foreman(live, "runs", "cancel", str(uuid.uuid4()), "--yes")
    assert (missing.exit_code, "Run not found" in missing.output) == (1, True)
    other = foreman(live, "runs", "cancel", ended.id, "--yes", key=KEY_B)
    assert (other.exit_code, "Run not found" in other.output) == (1, True)


def test_tasks_cancel_reports_each_outcome(live, client):
    run = client.create_run({"n": 4})
    queued = client.enqueue_task(run.id, type="cut", input_data=0)
    child = client.enqueue_task(run.id, type="join", input_data=1, depends_on=[queued.id])
    held = client.enqueue_task(run.id, type="hold", input_data=2)
    client.claim_tasks(worker_id="w", types=["hold"])
    done = client.create_task(run.id, type="cut", input_data=3)
    client.update_task(done.id, status="completed")
    missing = str(uuid.uuid4())
    declined = foreman(live, "tasks", "cancel", queued.id, answer="n\n")
    assert declined.exit_code == 1
    assert "Cancel 1 task(s)?" in declined.output
    assert client.get_task(queued.id).status == "queued"
    ids = [queued.id, held.id, done.id, missing]
    result = foreman(live, "tasks", "cancel", *ids, "--yes", "--json")
    assert result.exit_code == 1  # one already ended, one not found
    report = json.loads(result.stdout)
    assert report["cancelled"] == [queued.id]
    assert report["cancelRequested"] == [held.id]
    assert [e["id"] for e in report["alreadyEnded"]] == [done.id]
    assert report["notFound"] == [missing]
    assert client.get_task(child.id).status == "cancelled"  # its parent was cancelled
    table = foreman(live, "tasks", "cancel", queued.id, done.id, answer="y\n")
    assert "cancelled 1 task(s), 0 running (stop at the next heartbeat), 1 already ended" in (
        table.output
    )
    assert f"already ended: Task {done.id} is completed" in table.output


def test_tasks_attempts_table_and_json(live, client):
    run = client.create_run({"n": 1})
    task = client.enqueue_task(run.id, type="flaky", input_data=0, max_retries=1)
    [first] = client.claim_tasks(worker_id="worker-1", types=["flaky"])
    client.fail_task(
        task.id,
        lease_token=first.lease_token or "",
        error_data={"type": "TimeoutError", "message": "took too long"},
    )
    second = client.claim_task(task.id, worker_id="worker-2")  # by id: no backoff wait
    client.complete_task(task.id, lease_token=second.lease_token or "", output_data=1)
    listed = json.loads(foreman(live, "tasks", "attempts", task.id, "--json").stdout)
    assert [(a["attempt"], a["workerId"], a["outcome"]) for a in listed] == [
        (1, "worker-1", "failed"),
        (2, "worker-2", "completed"),
    ]
    assert listed[0]["errorData"]["type"] == "TimeoutError"
    table = foreman(live, "tasks", "attempts", task.id)
    assert table.exit_code == 0, table.output
    assert "worker-1" in table.output
    assert "TimeoutError: took too long" in table.output
    assert "completed" in table.output
    fresh = client.create_task(run.id, type="flaky", input_data=1)
    assert "never claimed" in foreman(live, "tasks", "attempts", fresh.id).output
    missing = foreman(live, "tasks", "attempts", task.id, key=KEY_B)
    assert (missing.exit_code, "Task not found" in missing.output) == (1, True)
