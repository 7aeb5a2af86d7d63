"""The client's I/O-free half: options, request bodies, parsing, retry rules, waiting, job shape."""

from __future__ import annotations

import inspect
import json
import sys
from decimal import Decimal

import httpx
import msgspec
import pytest

import foreman
from foreman import errors
from foreman.client import AsyncClient, Client, RedisOptions, TaskSpec, _base, _calls
from foreman.models import Task
from foreman.worker import _results
from foreman.worker.runner import load_handlers

TASK_JSON = {
    "id": "0196b5a0-0000-7000-8000-000000000001",
    "runId": "0196b5a0-0000-7000-8000-000000000002",
    "orgId": "orga",
    "type": "email",
    "status": "queued",
    "inputData": {"to": "a@b.c"},
    "metadata": None,
    "retryCount": 0,
    "maxRetries": 2,
    "priority": 0,
    "attempt": 0,
    "createdAt": 1_000,
    "updatedAt": 1_000,
}


def make_task(**changes) -> Task:
    return msgspec.json.decode(json.dumps({**TASK_JSON, **changes}), type=Task)


def response(status: int, body: object = None, *, text: str | None = None) -> httpx.Response:
    content = text.encode() if text is not None else json.dumps(body).encode()
    return httpx.Response(status, content=content)


def body_of(call: _base.Call) -> dict:
    assert call.body is not None
    return json.loads(call.body)


# ---------------------------------------------------------------- options


def test_options_fall_back_to_the_environment(monkeypatch):
    monkeypatch.setenv("FOREMAN_ENDPOINT", "http://example.test:4000/api/v1/")
    monkeypatch.setenv("FOREMAN_API_KEY", "fmn_prod_acme_k")
    options = _base.client_options(None, None, timeout=5)
    assert options.endpoint == "http://example.test:4000"
    assert options.api_key == "fmn_prod_acme_k"
    headers = _base.http_options(options)["headers"]
    assert headers["authorization"] == "Bearer fmn_prod_acme_k"


def test_arguments_win_over_the_environment(monkeypatch):
    monkeypatch.setenv("FOREMAN_ENDPOINT", "http://env.test")
    monkeypatch.setenv("FOREMAN_API_KEY", "env-key")
    options = _base.client_options("https://arg.test/", "arg-key", timeout=5)
    assert (options.endpoint, options.api_key) == ("https://arg.test", "arg-key")


def test_default_endpoint_and_no_key(monkeypatch):
    monkeypatch.delenv("FOREMAN_ENDPOINT", raising=False)
    monkeypatch.delenv("FOREMAN_API_KEY", raising=False)
    options = _base.client_options(None, None, timeout=5)
    assert options.endpoint == "http://localhost:3000"
    assert "authorization" not in _base.http_options(options)["headers"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"endpoint": "localhost:3000"}, "http"),
        ({"timeout": 0}, "timeout"),
        ({"retries": -1}, "retries"),
        ({"queue_backend": "kafka"}, "queue backend"),
    ],
)
def test_bad_options_are_refused(kwargs, message):
    endpoint = kwargs.pop("endpoint", "http://x.test")
    with pytest.raises(ValueError, match=message):
        _base.client_options(endpoint, None, **{"timeout": 1, **kwargs})


def test_redis_options_from_url():
    redis = RedisOptions.from_url("redis://:s%40cret@cache.test:6380/3")
    assert redis == RedisOptions(host="cache.test", port=6380, db=3, password="s@cret")
    assert RedisOptions.from_url(redis.url()) == redis
    assert RedisOptions.from_url("redis://h") == RedisOptions(host="h")
    with pytest.raises(ValueError, match="scheme"):
        RedisOptions.from_url("http://h")


# ---------------------------------------------------------------- request bodies


def test_task_body_is_camel_case_and_omits_unset_fields():
    spec = TaskSpec(run_id="r1", type="email", input_data=[1, 2], max_retries=0, delay_ms=250)
    call = _calls.create_task(spec, enqueue=True)
    assert (call.method, call.path) == ("POST", "/api/v1/tasks")
    assert body_of(call) == {
        "runId": "r1",
        "type": "email",
        "inputData": [1, 2],
        "maxRetries": 0,
        "delayMs": 250,
        "enqueue": True,
    }
    assert call.idempotent is False


def test_an_idempotency_key_makes_a_create_repeatable():
    spec = TaskSpec(run_id="r1", type="t", input_data="x", idempotency_key="k-1")
    call = _calls.create_task(spec, enqueue=False)
    assert body_of(call)["idempotencyKey"] == "k-1"
    assert "enqueue" not in body_of(call)
    assert call.idempotent is True
    batch = _calls.create_tasks([spec, TaskSpec(run_id="r1", type="t", input_data=1)], enqueue=True)
    assert batch.path == "/api/v1/tasks/batch"
    assert [t["enqueue"] for t in body_of(batch)["tasks"]] == [True, True]
    assert batch.idempotent is False  # one task without a key


def test_task_spec_from_mapping():
    assert _base.task_spec({"run_id": "r", "type": "t", "input_data": 1}) == TaskSpec("r", "t", 1)
    with pytest.raises(ValueError, match="Not a task description"):
        _base.task_spec({"run": "r"})


def test_update_sends_only_given_fields_and_keeps_null():
    call = _calls.update_task(
        "t1", {"status": "completed", "metadata": None, "output_data": msgspec.UNSET}
    )
    assert body_of(call) == {"status": "completed", "metadata": None}
    assert call.idempotent is True
    assert _calls.update_task("t1", {"status": "retrying"}).idempotent is False


def test_schedule_bodies_nest_the_task_and_send_only_given_fields():
    call = _calls.create_schedule(
        {"name": "n", "cron": "* * * * *", "interval_ms": None, "type": "t", "input_data": {}}
        | {"run_input_data": None, "max_retries": 0, "priority": None}
    )
    assert (call.method, call.path, call.idempotent) == ("POST", "/api/v1/schedules", False)
    assert body_of(call) == {
        "name": "n",
        "cron": "* * * * *",
        "task": {"type": "t", "inputData": {}, "maxRetries": 0},
    }
    call = _calls.update_schedule("s/1", {"cron": None, "interval_ms": 5000, "priority": 1})
    assert (call.method, call.path, call.idempotent) == ("PATCH", "/api/v1/schedules/s%2F1", True)
    assert body_of(call) == {"cron": None, "intervalMs": 5000, "task": {"priority": 1}}
    assert "task" not in body_of(_calls.update_schedule("s", {"name": "x"}))
    assert _calls.delete_schedule("s").idempotent is False
    assert _calls.list_schedules({"limit": 5, "sort_by": None}).params == {"limit": "5"}


def test_query_parameters():
    call = _calls.query_run_data(
        "r/1", {"keys": ["a", "b"], "include_all": True, "tag_mode": "all", "limit": 5, "key": None}
    )
    assert call.path == "/api/v1/runs/r%2F1/data"  # an id stays one path segment
    assert call.params == {"keys": "a,b", "includeAll": "true", "tagMode": "all", "limit": "5"}


def test_delete_run_data_needs_a_key_or_an_id():
    with pytest.raises(ValueError, match="key or a data_id"):
        _calls.delete_run_data("r", key=None, data_id=None)
    assert _calls.delete_run_data("r", key="k", data_id=None).params == {"key": "k"}


def test_queue_calls_use_milliseconds_and_outlast_the_long_poll():
    call = _calls.claim_tasks(worker_id="w", limit=50, lease_s=2.5, wait_s=5, types=["a"])
    assert body_of(call) == {
        "workerId": "w",
        "limit": 50,
        "leaseMs": 2500,
        "waitMs": 5000,
        "types": ["a"],
    }
    assert call.timeout_s is not None
    assert call.timeout_s > 5
    assert call.idempotent is False  # a repeated claim would lease more tasks
    beat = _calls.heartbeat([_base.Lease("t", "tok")], lease_s=30)
    assert body_of(beat) == {"leases": [{"taskId": "t", "leaseToken": "tok"}], "leaseMs": 30000}
    assert beat.idempotent is True


def test_batch_results_embed_encoded_output():
    task = make_task(leaseToken="tok")
    ok = _results.success(task, {"sum": 3})
    failed = _results.failure(task, {"message": "boom"}, retryable=False)
    body = body_of(_calls.complete_tasks([ok, failed]))
    assert body["results"] == [
        {"taskId": task.id, "leaseToken": "tok", "status": "completed", "outputData": {"sum": 3}},
        {
            "taskId": task.id,
            "leaseToken": "tok",
            "status": "failed",
            "errorData": {"message": "boom"},
            "retryable": False,
        },
    ]


# ---------------------------------------------------------------- answers


def test_parse_decodes_into_models():
    task = _base.parse(response(200, TASK_JSON), _calls.get_task("x"))
    assert isinstance(task, Task)
    assert (task.run_id, task.input_data, task.max_retries) == (
        TASK_JSON["runId"],
        {"to": "a@b.c"},
        2,
    )
    tasks = _base.parse(response(200, {"data": [TASK_JSON]}), _calls.create_tasks([], enqueue=True))
    assert [t.id for t in tasks] == [TASK_JSON["id"]]


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, errors.ValidationError),
        (401, errors.UnauthorizedError),
        (403, errors.ForbiddenError),
        (404, errors.NotFoundError),
        (409, errors.ConflictError),
        (413, errors.PayloadTooLargeError),
        (503, errors.UnavailableError),
        (418, errors.ClientError),
        (500, errors.ForemanError),
    ],
)
def test_error_statuses_raise_the_shared_error_classes(status, cls):
    with pytest.raises(cls) as caught:
        _base.parse(
            response(status, {"error": "Task not found: x", "code": "c"}), _calls.get_task("x")
        )
    assert type(caught.value) is cls
    assert caught.value.message == "Task not found: x"


def test_non_json_error_keeps_its_text():
    with pytest.raises(errors.ForemanError, match="HTTP 502: bad gateway"):
        _base.parse(response(502, text="bad gateway"), _calls.get_task("x"))


def test_an_unexpected_answer_is_a_foreman_error():
    with pytest.raises(errors.ForemanError, match="Unexpected answer"):
        _base.parse(response(200, {"id": 1}), _calls.get_task("x"))


def test_missing_route_is_told_apart_from_a_missing_resource():
    route = errors.from_status(404, {"error": "Not found: GET /api/v1/tasks/x/wait"})
    resource = errors.from_status(404, {"error": "Task not found: x"})
    assert _base.is_missing_route(route)
    assert _base.is_missing_route(errors.from_status(405, {"error": "Method not allowed"}))
    assert not _base.is_missing_route(resource)


def test_retry_rules():
    post = _calls.create_run({}, metadata=None)
    get = _calls.get_run("r")
    request = httpx.Request("GET", "http://x")
    refused = httpx.ConnectError("refused", request=request)
    dropped = httpx.RemoteProtocolError("disconnected", request=request)
    # Never sent: any call may go again. Maybe processed: only a repeatable call.
    assert _base.httpx_not_sent(refused)
    assert not _base.httpx_not_sent(dropped)
    assert _base.error_retry_delay(post, not_sent=True, attempt=0, retries=3) is not None
    assert _base.error_retry_delay(post, not_sent=False, attempt=0, retries=3) is None
    assert _base.error_retry_delay(get, not_sent=False, attempt=0, retries=3) is not None
    assert _base.error_retry_delay(get, not_sent=True, attempt=3, retries=3) is None
    unavailable = httpx.Response(503)
    assert _base.response_retry_delay(unavailable, get, attempt=0, retries=3) is not None
    assert _base.response_retry_delay(unavailable, post, attempt=0, retries=3) is None
    assert _base.response_retry_delay(unavailable, get, attempt=3, retries=3) is None
    assert _base.response_retry_delay(httpx.Response(500), get, attempt=0, retries=3) is None
    # A rate-limited call was refused before it ran: even a POST goes again, after Retry-After.
    limited = httpx.Response(429, headers={"retry-after": "1.5"})
    assert _base.response_retry_delay(limited, post, attempt=0, retries=3) == 1.5
    assert _base.retry_after_s(httpx.Response(429, headers={"retry-after": "soon"})) == 0.0
    assert _base.retry_after_s(httpx.Response(429, headers={"retry-after": "999"})) == 30.0
    delays = [_base.retry_delay_s(n) for n in range(10)]
    assert all(0.05 <= d <= 2.0 for d in delays)
    assert delays[-1] >= 1.0


# ---------------------------------------------------------------- waiting


def test_wait_plan_long_polls_then_falls_back_to_polling():
    plan = _calls.WaitPlan("t", timeout=10, now=0.0)
    first = plan.call(0.0)
    assert first.path == "/api/v1/tasks/t/wait"
    assert first.params == {"timeoutMs": "10000"}
    with pytest.raises(errors.NotFoundError):
        plan.on_error(errors.NotFoundError("Task not found: t"))
    plan.on_error(errors.NotFoundError("Not found: GET /api/v1/tasks/t/wait"))
    assert plan.call(1.0).path == "/api/v1/tasks/t"
    pauses = [plan.pause_s(1.0) for _ in range(7)]
    assert pauses == sorted(pauses)
    assert pauses[-1] == 1.0


def test_wait_plan_finishes_on_terminal_and_times_out():
    plan = _calls.WaitPlan("t", timeout=5, now=0.0)
    assert plan.finished(make_task(status="completed"), 1.0)
    assert not plan.finished(make_task(status="running"), 1.0)
    with pytest.raises(TimeoutError, match="still running"):
        plan.finished(make_task(status="running"), 5.0)


# ---------------------------------------------------------------- BullMQ jobs


def test_bullmq_job_matches_the_node_client_and_the_server():
    task = make_task(priority=5, runAfter=6_000, maxRetries=2)
    job = _base.bullmq_job(task, now_ms=1_000)
    assert job["name"] == "email"
    assert job["data"] == {"taskId": task.id}  # exactly the id (SPEC section 7)
    assert job["opts"] == {
        "jobId": f"{task.id}:1",
        "attempts": 3,
        "backoff": {"type": "exponential", "delay": 2000},
        "removeOnComplete": True,
        "removeOnFail": False,
        "priority": 5,
        "delay": 5_000,
    }
    plain = _base.bullmq_job(make_task(), now_ms=1_000)["opts"]
    assert "priority" not in plain
    assert "delay" not in plain


# ---------------------------------------------------------------- worker results


def test_exceptions_become_error_data():
    try:
        raise KeyError("missing")
    except KeyError as exc:
        data = _results.error_data(exc)
    assert data["type"] == "KeyError"
    assert data["message"] == "'missing'"
    assert "test_exceptions_become_error_data" in data["stack"]


def test_output_that_is_not_json_fails_the_attempt_for_good():
    result = _results.success(make_task(leaseToken="tok"), {"x": object()})
    assert result.status == "failed"
    assert result.retryable is False
    assert result.error_data["type"] == "OutputNotSerializable"


def test_unknown_type_is_a_clear_failure():
    result = _results.unknown_type(make_task(leaseToken="tok", type="nope"), ["b", "a"])
    assert result.retryable is False
    assert result.error_data == {
        "message": "No handler for task type 'nope' (this worker handles: a, b)",
        "type": "UnknownTaskType",
    }


# ---------------------------------------------------------------- public surface


def test_all_is_sorted_and_importable():
    assert foreman.__all__ == sorted(foreman.__all__)
    for name in foreman.__all__:
        assert getattr(foreman, name) is not None
    assert foreman.NotFoundError is errors.NotFoundError


def test_sync_and_async_clients_are_twins():
    def public(cls):
        return {
            name: inspect.signature(member)
            for name, member in vars(cls).items()
            if callable(member) and not name.startswith("_") and name not in ("close", "aclose")
        }

    sync_methods, async_methods = public(Client), public(AsyncClient)
    assert set(sync_methods) == set(async_methods)
    for name, signature in sync_methods.items():
        method = getattr(AsyncClient, name)
        if inspect.isasyncgenfunction(method):  # watch_run: `async for` where the twin has `for`
            assert signature.parameters == async_methods[name].parameters, name
            assert str(signature.return_annotation).replace("Iterator", "AsyncIterator") == str(
                async_methods[name].return_annotation
            ), name
            continue
        assert inspect.iscoroutinefunction(method), name
        assert str(signature) == str(async_methods[name]), name
    expected = {
        "create_run", "get_run", "update_run", "list_runs", "create_task", "get_task",
        "update_task", "list_tasks", "enqueue_task", "enqueue_tasks", "wait_for_task",
        "create_run_data", "query_run_data", "update_run_data_tags", "delete_run_data",
        "get_config", "claim_tasks", "claim_task", "claim_task_ids", "heartbeat", "complete_task",
        "fail_task", "release_task", "complete_tasks", "watch_run",
    }  # fmt: skip
    assert expected <= set(sync_methods)


def test_load_handlers(tmp_path, monkeypatch):
    (tmp_path / "my_handlers.py").write_text(
        "def add(ctx):\n    return 1\nHANDLERS = {'add': add}\nNOT_A_DICT = 3\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    handlers = load_handlers("my_handlers:HANDLERS")
    assert list(handlers) == ["add"]
    with pytest.raises(ValueError, match="module:attribute"):
        load_handlers("my_handlers")
    with pytest.raises(ValueError, match="no attribute"):
        load_handlers("my_handlers:MISSING")
    with pytest.raises(ValueError, match="must be a dict"):
        load_handlers("my_handlers:NOT_A_DICT")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0.1", 0.1),
        ("-2.5", -2.5),
        ("1.50", 1.5),
        ("-0.0", -0.0),
        ("0.0000001", 1e-7),
        ("123456789.123456", 123456789.123456),
        ("0.30000000000000004", 0.30000000000000004),  # a double's own 17 digits: a float
        ("1e300", 1e300),
        ("12345678901234567890.123", Decimal("12345678901234567890.123")),
        ("0.1000000000000000055511151231257827", Decimal("0.1000000000000000055511151231257827")),
        ("1e400", Decimal("1e400")),
        ("1E-400", Decimal("1e-400")),
    ],
)
def test_json_numbers_are_floats_only_when_a_float_holds_them(text, expected):
    number = _base.json_number(text)
    assert type(number) is type(expected)
    assert number == expected
    assert Decimal(str(number)) == Decimal(text)


def test_decimals_are_sent_as_json_numbers():
    assert _base.encode_json({"d": Decimal("12345678901234567890.123")}) == (
        b'{"d":12345678901234567890.123}'
    )


def test_sse_reader_gives_events_skips_comments_and_sees_the_end():
    reader = _base.SseReader()
    lines = [
        "retry: 2000",
        "",
        ": keep-alive",
        "",
        "id: 5-3-0193a1b2-0000-7000-8000-00000000000a-1",
        'data: {"id":"5-3-0193a1b2-0000-7000-8000-00000000000a-1","type":"task.started",',
        'data: "runId":"r","status":"running","at":5,"attempt":1}',
        "",
        "event: end",
        'data: {"runId":"r"}',
        "",
    ]
    out = [found for line in lines if (found := reader.feed(line + "\n")) is not None]
    assert len(out) == 2
    event, end = out
    assert (event.type, event.status, event.at, event.attempt, event.task_id) == (
        "task.started",
        "running",
        5,
        1,
        None,
    )
    assert end == _base.SseReader.END
    assert reader.feed("data: {}\n") is None
    with pytest.raises(errors.ForemanError, match="Unexpected run event"):
        reader.feed("\n")


def test_a_subclass_of_a_client_keeps_its_own_methods():
    # The twins' methods are installed on each subclass: never over one the subclass defines.
    class Mine(Client):
        def get_task(self, task_id: str) -> Task:  # type: ignore[override]
            raise LookupError(task_id)

    class MineAsync(AsyncClient):
        async def get_run(self, run_id: str) -> str:  # type: ignore[override]
            return f"mine {run_id}"

    with pytest.raises(LookupError):
        Mine("http://127.0.0.1:1", "fmn_k_org_x").get_task("t")
    assert MineAsync.get_run is vars(MineAsync)["get_run"]
    assert inspect.signature(Mine.create_run) == inspect.signature(Client.create_run)  # the rest
