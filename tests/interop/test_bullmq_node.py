"""BullMQ wire compatibility with the Node world, both ways (SPEC section 7, issue 3).

A: the Node `bullmq` package enqueues like the Node foreman-client; a Python `foreman worker`
   completes every task. B: the Python SDK and server enqueue; a Node BullMQ Worker processes the
   queue like a Node foreman worker (legacy PATCH path). Real server, real PostgreSQL, a private
   redis-server; the npm packages are pinned in tests/interop/node/package-lock.json.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from bullmq import Queue

from foreman import AsyncClient, RedisOptions, TaskSpec
from foreman.queue.naming import org_queue_name
from tests.conftest import KEY_A, ORG_A
from tests.e2e.conftest import OwnRedis, WorkerProcess
from tests.e2e.helpers import all_tasks, run_finished
from tests.integration.live_server import ServerProcess
from tests.interop.conftest import NodeTools, NodeWorker, json_lines, node_env, run_node

pytestmark = pytest.mark.timeout(300)  # the first test may run `npm ci` (bounded at 180 s)

BACKOFF = {"type": "exponential", "delay": 2000}
JOB_STATES = ("wait", "active", "delayed", "prioritized", "paused", "completed", "failed")


async def job_counts(api: AsyncClient) -> dict[str, int]:
    """How many jobs the server's queue holds, per state."""
    config = await api.get_config()
    queue = Queue(
        config.queues.task_queue,
        {"connection": RedisOptions.from_config(config.redis).connection()},
    )
    try:
        counts: dict[str, int] = await queue.getJobCounts(*JOB_STATES)
        return counts
    finally:
        await queue.close()


async def test_the_queue_name_is_colon_free(api: AsyncClient, bull_server: ServerProcess) -> None:
    config = await api.get_config()
    assert config.queue.backend == "bullmq"
    # The caller's organisation's own queue, derived from TASK_QUEUE_NAME.
    assert config.queues.task_queue == org_queue_name(bull_server.env["TASK_QUEUE_NAME"], ORG_A)
    assert ":" not in config.queues.task_queue  # Node BullMQ would refuse it


async def test_node_client_jobs_are_completed_once_by_a_python_worker(
    api: AsyncClient,
    bull_server: ServerProcess,
    own_redis: OwnRedis,
    node_tools: NodeTools,
    children: list[Any],
) -> None:
    worker = WorkerProcess(bull_server, "--backend", "bullmq", "--concurrency", "10")
    children.append(worker)
    worker.wait_started()
    run = await api.create_run({"from": "node"})
    specs: list[dict[str, Any]] = []
    for i in range(40):
        spec: dict[str, Any] = {"type": "noop", "inputData": {"i": i}, "maxRetries": i % 4}
        if i % 3:
            spec["priority"] = (i % 3) * 5
        specs.append(spec)

    lines = await run_node(
        node_tools,
        "producer.mjs",
        stdin={"runId": run.id, "tasks": specs},
        env=node_env(bull_server, own_redis),
    )

    assert len(lines) == len(specs)
    for line, spec in zip(lines, specs, strict=True):
        # What the Node library put in Redis: name = type, data exactly {taskId}, client options.
        assert line["name"] == "noop"
        assert line["data"] == {"taskId": line["taskId"]}
        expected_opts = {
            "attempts": spec["maxRetries"] + 1,
            "backoff": BACKOFF,
            "removeOnComplete": True,
            "removeOnFail": False,
        }
        if "priority" in spec:
            expected_opts["priority"] = spec["priority"]
        assert line["opts"] == expected_opts
    finished = await run_finished(api, run.id, len(specs), timeout_s=60)
    assert (finished.total_tasks, finished.completed_tasks) == (40, 40)
    assert (finished.failed_tasks, finished.cancelled_tasks) == (0, 0)
    tasks = {task.id: task for task in await all_tasks(api, run.id)}
    assert set(tasks) == {line["taskId"] for line in lines}
    for line, spec in zip(lines, specs, strict=True):
        task = tasks[line["taskId"]]
        assert task.status == "completed", task
        # One claim (attempt 1), no retry: the handler ran exactly once, in the Python worker.
        assert (task.attempt, task.retry_count) == (1, 0), task
        assert task.output_data == {"echo": spec["inputData"], "pid": worker.pid, "attempt": 1}
        assert task.max_retries == spec["maxRetries"]
        assert task.queue_job_id == line["jobId"]  # the Node job id, recorded by the PATCH
    assert worker.stop() == 0, worker.log()
    # Every job acknowledged and removed (removeOnComplete); none failed, none left behind.
    assert await job_counts(api) == dict.fromkeys(JOB_STATES, 0)


async def test_python_enqueued_jobs_are_completed_by_a_node_worker(
    api: AsyncClient,
    bull_server: ServerProcess,
    own_redis: OwnRedis,
    node_tools: NodeTools,
    children: list[Any],
) -> None:
    server_side, client_side = 30, 10
    node = NodeWorker(
        node_tools,
        bull_server.cwd,
        env=node_env(bull_server, own_redis, INTEROP_EXPECT=str(server_side + client_side)),
    )
    children.append(node)
    node.wait_ready()
    run = await api.create_run({"to": "node"})

    def spec(i: int) -> TaskSpec:
        return TaskSpec(
            run.id,
            "resize",  # no Python handler: only the Node worker can have completed it
            {"i": i},
            max_retries=i % 3,
            priority=(i % 4) * 3 or None,
            delay_ms=2000 if i % 10 == 0 else None,
        )

    # The server publishes these jobs (jobId <taskId>:1) ...
    published = await api.enqueue_tasks([spec(i) for i in range(server_side)])
    # ... and the SDK publishes these itself, the way the Node foreman-client does.
    async with AsyncClient(bull_server.url, KEY_A, queue_backend="bullmq") as sdk:
        published += await sdk.enqueue_tasks(
            [spec(i) for i in range(server_side, server_side + client_side)]
        )

    finished = await run_finished(api, run.id, len(published), timeout_s=60)
    assert await node.finished(timeout_s=20) == 0, node.log()
    assert (finished.total_tasks, finished.completed_tasks) == (40, 40)
    assert (finished.failed_tasks, finished.cancelled_tasks) == (0, 0)
    lines = {line["taskId"]: line for line in json_lines(node.output())}
    processed = Counter(line["taskId"] for line in json_lines(node.output()))
    assert set(processed) == {task.id for task in published}
    assert set(processed.values()) == {1}  # one job per task, processed once
    tasks = {task.id: task for task in await all_tasks(api, run.id)}
    for i, enqueued in enumerate(published):
        line, task = lines[enqueued.id], tasks[enqueued.id]
        # What the Node library read from Redis: the SPEC section 7 job, field for field.
        assert line["name"] == "resize"
        assert line["data"] == {"taskId": task.id}
        assert line["jobId"] == f"{task.id}:1"
        opts = line["opts"]
        delay = opts.pop("delay", None)
        expected = {
            "attempts": task.max_retries + 1,
            "backoff": BACKOFF,
            "removeOnComplete": True,
            "removeOnFail": False,
        }
        if task.priority:
            expected["priority"] = task.priority
        assert opts == expected
        if i % 10 == 0:
            assert 0 < (delay or 0) <= 2000
        else:
            assert not delay  # absent, or 0 as the Python bullmq package writes it
        # What the Node worker wrote back through the REST API.
        assert task.status == "completed", task
        assert task.output_data == {
            "by": "node",
            "pid": node.process.pid,
            "echo": {"i": i},
            "jobId": line["jobId"],
        }
        assert None not in (task.started_at, task.completed_at)  # PATCHed running, then completed
        assert task.retry_count == 0
    assert await job_counts(api) == dict.fromkeys(JOB_STATES, 0)


async def test_node_bullmq_works_with_the_organisation_s_own_redis_user(
    acl_bull_server: ServerProcess, db_url: str, node_tools: NodeTools, children: list[Any]
) -> None:
    # FOREMAN_REDIS_ACL=per-org: the Node producer and worker connect as the user /api/v1/config
    # hands to organisation A, not as the admin; the ACL rules must allow everything Node BullMQ
    # runs (INFO, CLIENT SETNAME, its scripts, the marker wait).
    async with AsyncClient(acl_bull_server.url, KEY_A) as api_acl:
        config = await api_acl.get_config()
        assert config.redis.username
        assert config.redis.password != acl_bull_server.env["REDIS_PASSWORD"]
        run = await api_acl.create_run({"acl": True})
        specs = [{"type": "resize", "inputData": {"i": i}, "maxRetries": 0} for i in range(5)]
        node = NodeWorker(
            node_tools,
            acl_bull_server.cwd,
            env=node_env(acl_bull_server, None, INTEROP_EXPECT=str(len(specs) + 5)),
        )
        children.append(node)
        node.wait_ready()
        lines = await run_node(
            node_tools,
            "producer.mjs",
            stdin={"runId": run.id, "tasks": specs},
            env=node_env(acl_bull_server, None),
        )
        assert len(lines) == len(specs)
        await api_acl.enqueue_tasks([TaskSpec(run.id, "resize", {"i": i}) for i in range(5)])
        finished = await run_finished(api_acl, run.id, 10, timeout_s=60)
        assert await node.finished(timeout_s=20) == 0, node.log()
        assert finished.completed_tasks == 10
