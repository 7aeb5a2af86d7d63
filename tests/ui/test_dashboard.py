"""The dashboard in headless chromium: log in, every page, every action, live updates, isolation."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import Select, WebDriverWait

from foreman import Client
from foreman.models import Run, Task
from tests.conftest import KEY_A, KEY_B
from tests.queue_helpers import LiveApp

WAIT_S = 15


@pytest.fixture
def api(live: LiveApp, db_url: str) -> Iterator[Client]:
    with Client(live.url, KEY_A) as client:
        yield client


def log_in(browser: WebDriver, live: LiveApp, key: str) -> None:
    browser.delete_all_cookies()
    browser.get(f"{live.url}/ui/login")
    browser.find_element(By.NAME, "apiKey").send_keys(key)
    browser.find_element(By.ID, "login").click()
    WebDriverWait(browser, WAIT_S).until(ec.url_contains("/ui/runs"))


def text(browser: WebDriver, element_id: str) -> str:
    # Read in one script: the live parts are swapped every few seconds, so an element found
    # first and read later may be gone.
    found = browser.execute_script(
        "const e = document.getElementById(arguments[0]); return e ? e.innerText : null;",
        element_id,
    )
    return "" if found is None else str(found).strip()  # none (yet): waits go on


def rows(browser: WebDriver, css: str) -> list[str]:
    return list(
        browser.execute_script(
            "return [...document.querySelectorAll(arguments[0])]"
            ".map(r => r.dataset.id || r.dataset.type || r.innerText);",
            css,
        )
    )


def a_workload(api: Client) -> tuple[Run, dict[str, Task]]:
    """One run with a task in each interesting state, a child task and run data."""
    run = api.create_run({"report": "monthly"}, metadata={"team": "ops"})
    done = api.create_task(run.id, type="resize", input_data={"url": "s3://a.png"})
    api.update_task(done.id, status="completed", output_data={"thumb": "s3://a-thumb.png"})
    failed = api.enqueue_task(
        run.id, type="resize", input_data={"url": "s3://b.png"}, max_retries=0
    )
    (attempt,) = api.claim_tasks(worker_id="worker-3", types=["resize"])
    error = {"type": "ValueError", "message": "image too large"}
    api.fail_task(failed.id, lease_token=attempt.lease_token or "", error_data=error)
    child = api.create_task(run.id, type="notify", input_data=1, parent_task_id=done.id)
    queued = api.enqueue_task(run.id, type="email", input_data={"to": "ops@example.com"})
    held = api.enqueue_task(run.id, type="render", input_data={"page": 1})
    claimed = api.claim_task(held.id, worker_id="worker-7", lease_s=300)
    api.create_run_data(run.id, task_id=done.id, key="progress", value=50, tags=["metrics"])
    api.create_run_data(run.id, task_id=done.id, key="result", value=["a"], tags=["final"])
    tasks = {"done": done, "failed": failed, "child": child, "queued": queued, "held": claimed}
    return run, tasks


def test_log_in_browse_every_page_and_act(browser, live, api, shots: Path):
    run, tasks = a_workload(api)
    other_run = api.create_run({"n": 2})
    log_in(browser, live, KEY_A)

    # Runs: both runs, counters and a progress bar; filter, search by id prefix, sort.
    assert text(browser, "org") == "orga"
    assert set(rows(browser, "tr.run-row")) == {run.id, other_run.id}
    assert "2 run(s)" in text(browser, "run-count")
    browser.save_screenshot(str(shots / "runs.png"))
    browser.find_element(By.ID, "q").send_keys(run.id[:13])
    browser.find_element(By.ID, "apply").click()
    WebDriverWait(browser, WAIT_S).until(lambda b: rows(b, "tr.run-row") == [run.id])
    browser.get(f"{live.url}/ui/runs")
    Select(browser.find_element(By.ID, "order")).select_by_value("asc")
    browser.find_element(By.ID, "apply").click()
    WebDriverWait(browser, WAIT_S).until(lambda b: rows(b, "tr.run-row") == [run.id, other_run.id])
    Select(browser.find_element(By.ID, "status")).select_by_value("completed")
    browser.find_element(By.ID, "apply").click()
    WebDriverWait(browser, WAIT_S).until(lambda b: "0 run(s)" in text(b, "run-count"))

    # A run: counters, tasks by status, run data by key prefix and tag.
    browser.get(f"{live.url}/ui/runs/{run.id}")
    assert (text(browser, "total"), text(browser, "completed"), text(browser, "failed")) == (
        "5",
        "1",
        "1",
    )
    assert len(rows(browser, "tr.task-row")) == 5
    browser.save_screenshot(str(shots / "run.png"))
    Select(browser.find_element(By.ID, "task-status")).select_by_value("failed")
    browser.find_element(By.ID, "apply-tasks").click()
    WebDriverWait(browser, WAIT_S).until(lambda b: rows(b, "tr.task-row") == [tasks["failed"].id])
    browser.find_element(By.ID, "key").send_keys("prog")
    browser.find_element(By.ID, "apply-data").click()
    WebDriverWait(browser, WAIT_S).until(lambda b: "1 row(s)" in text(b, "data-count"))
    assert "progress" in text(browser, "run-data")
    assert "result" not in text(browser, "run-data")
    browser.get(f"{live.url}/ui/runs/{run.id}?tag=final")
    assert "result" in text(browser, "run-data")
    assert "progress" not in text(browser, "run-data")

    # A task: its JSON, parent and children; retry a failed one.
    browser.get(f"{live.url}/ui/tasks/{tasks['done'].id}")
    assert "s3://a-thumb.png" in text(browser, "task-output")
    assert tasks["child"].id in text(browser, "children")
    browser.get(f"{live.url}/ui/tasks/{tasks['failed'].id}")
    assert "image too large" in text(browser, "task-error")
    assert rows(browser, "tr.attempt-row") == ["1"]
    assert "ValueError" in text(browser, "attempts")
    browser.save_screenshot(str(shots / "task.png"))
    browser.find_element(By.ID, "retry").click()
    WebDriverWait(browser, WAIT_S).until(lambda b: "retried" in text(b, "flash"))
    assert text(browser, "task-status") == "queued"
    assert api.get_task(tasks["failed"].id).status == "queued"

    # Cancel a queued task.
    browser.get(f"{live.url}/ui/tasks/{tasks['queued'].id}")
    browser.find_element(By.ID, "cancel").click()
    WebDriverWait(browser, WAIT_S).until(lambda b: "cancelled" in text(b, "flash"))
    assert api.get_task(tasks["queued"].id).status == "cancelled"

    # Queues and workers.
    browser.get(f"{live.url}/ui/queues")
    queue = {
        r.get_attribute("data-type"): r.text
        for r in browser.find_elements(By.CSS_SELECTOR, "tr.queue-row")
    }
    assert set(queue) == {"resize", "render"}  # the retried task is ready; render is running
    assert queue["resize"].split()[1] == "1"
    browser.save_screenshot(str(shots / "queues.png"))
    browser.get(f"{live.url}/ui/workers")
    assert "worker-7" in text(browser, "workers")
    assert "render" in text(browser, "workers")
    browser.save_screenshot(str(shots / "workers.png"))

    # A task's attempts; cancel the run: behind a confirmation, its running task only marked.
    browser.get(f"{live.url}/ui/tasks/{tasks['held'].id}")
    assert rows(browser, "tr.attempt-row") == ["1"]
    assert "worker-7" in text(browser, "attempts")
    browser.get(f"{live.url}/ui/runs/{run.id}")
    assert text(browser, "blocked") == "0"
    assert not browser.find_element(By.ID, "cancel-run-confirm").is_displayed()
    browser.find_element(By.ID, "cancel-run-open").click()
    browser.find_element(By.ID, "cancel-run-confirm").click()
    WebDriverWait(browser, WAIT_S).until(lambda b: "Run cancelled." in text(b, "flash"))
    assert api.get_run(run.id).status == "cancelled"
    assert api.get_task(tasks["held"].id).status == "running"  # until its next heartbeat

    # Log out: the pages ask for a login again.
    browser.find_element(By.ID, "logout").click()
    WebDriverWait(browser, WAIT_S).until(ec.url_contains("/ui/login"))
    browser.get(f"{live.url}/ui/runs")
    assert "/ui/login" in browser.current_url


def test_the_run_page_updates_itself_from_the_event_stream(browser, live, api):
    run = api.create_run({})
    task = api.enqueue_task(run.id, type="t", input_data=1)
    log_in(browser, live, KEY_A)
    browser.get(f"{live.url}/ui/runs/{run.id}")
    assert text(browser, "completed") == "0"
    # The page does not poll: only the run's event stream makes it reload its live part.
    assert "every" not in browser.find_element(By.ID, "live").get_attribute("hx-trigger")
    (claimed,) = api.claim_tasks(worker_id="w1")
    api.complete_task(task.id, lease_token=claimed.lease_token)
    WebDriverWait(browser, WAIT_S).until(lambda b: text(b, "completed") == "1")
    last_event = browser.execute_script("return document.body.dataset.lastEvent")
    assert last_event.endswith(f"-6-{task.id}-1")  # task.completed, attempt 1


def test_a_second_organisation_never_sees_the_first(browser, live, api):
    run, tasks = a_workload(api)
    with Client(live.url, KEY_B) as other:
        own = other.create_run({"mine": True})
    log_in(browser, live, KEY_B)
    assert text(browser, "org") == "orgb"
    assert rows(browser, "tr.run-row") == [own.id]
    browser.find_element(By.ID, "q").send_keys(run.id)
    browser.find_element(By.ID, "apply").click()
    WebDriverWait(browser, WAIT_S).until(lambda b: "0 run(s)" in text(b, "run-count"))
    for path in (f"/ui/runs/{run.id}", f"/ui/tasks/{tasks['failed'].id}"):
        browser.get(f"{live.url}{path}")
        assert "not found" in text(browser, "error")
    browser.get(f"{live.url}/ui/queues")
    assert "render" not in text(browser, "queues")
    browser.get(f"{live.url}/ui/workers")
    assert "worker-7" not in text(browser, "workers")


def test_a_wrong_key_stays_on_the_login_page(browser, live):
    browser.delete_all_cookies()
    browser.get(f"{live.url}/ui/login")
    browser.find_element(By.NAME, "apiKey").send_keys("not-a-key")
    browser.find_element(By.ID, "login").click()
    WebDriverWait(browser, WAIT_S).until(ec.presence_of_element_located((By.ID, "login-error")))
    assert "/ui/login" in browser.current_url
