"""/metrics under `foreman server --workers 2`: every process's figures in one scrape."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import HEADERS_A, KEY_A
from tests.integration.live_server import ServerProcess, server_env

TOKEN = "scrape-token"
REQUESTS = 40


def requests_counted(text: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "foreman_http_requests_total" and sample.labels["route"] == "/api/v1/runs"
    )


async def test_one_scrape_sums_every_process(database_url, tmp_path):
    env = server_env(FOREMAN_DATABASE_URL=database_url, FOREMAN_METRICS_TOKEN=TOKEN)
    server = ServerProcess(tmp_path, env=env, args=["--workers", "2"])
    try:
        await asyncio.to_thread(server.start)
        children = psutil.Process(server.pid).children()
        folders = {Path(child.environ()["PROMETHEUS_MULTIPROC_DIR"]) for child in children}
        assert len(folders) == 1
        folder = folders.pop()
        # A new connection per request: SO_REUSEPORT spreads connections over the processes.
        for _ in range(REQUESTS):
            async with httpx.AsyncClient(base_url=server.url, headers=HEADERS_A) as http:
                created = await http.post("/api/v1/runs", json={"inputData": 1})
                assert created.status_code == 201
        counted = 0.0
        deadline = time.monotonic() + 15
        async with httpx.AsyncClient(base_url=server.url) as http:
            # Each process flushes its figures every second: wait for the last flush.
            while counted < REQUESTS and time.monotonic() < deadline:
                scraped = await http.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
                assert scraped.status_code == 200
                counted = requests_counted(scraped.text)
                await asyncio.sleep(0.2)
        assert counted == REQUESTS
        writers = {path.name.rsplit("_", 1)[-1] for path in folder.glob("counter_*.db")}
        assert len(writers) == 2, writers  # both processes answered some of the requests
        assert await asyncio.to_thread(server.stop) == 0
        assert not folder.exists()  # the server's own folder is removed at its exit
    finally:
        server.kill()


async def test_a_dashboard_session_is_good_in_every_process(database_url, tmp_path):
    # Without FOREMAN_UI_SECRET the server makes one key at start for all its processes.
    server = ServerProcess(
        tmp_path, env=server_env(FOREMAN_DATABASE_URL=database_url), args=["--workers", "2"]
    )
    try:
        await asyncio.to_thread(server.start)
        async with httpx.AsyncClient(base_url=server.url) as http:
            form = await http.get("/ui/login")
            csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
            assert csrf is not None
            login = await http.post("/ui/login", data={"apiKey": KEY_A, "csrf": csrf[1]})
            assert login.status_code == 303
            cookie = login.cookies["foreman_session"]
        answers = []
        for _ in range(20):  # a new connection each: SO_REUSEPORT spreads them over both
            jar = {"foreman_session": cookie}
            async with httpx.AsyncClient(base_url=server.url, cookies=jar) as http:
                answers.append((await http.get("/ui/runs")).status_code)
        assert answers == [200] * 20
    finally:
        server.kill()
