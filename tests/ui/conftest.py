"""A real browser for the dashboard: the OS's headless chromium through its chromium-driver
(scripts/browser.sh installs both with apt-get; nothing is downloaded here)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from tests.queue_helpers import LiveApp


def _browser() -> tuple[str, str] | None:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (binary, driver) if binary and driver else None


@pytest.fixture(scope="module")
def live(database_url: str) -> Iterator[LiveApp]:
    with LiveApp(database_url) as served:
        yield served


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    found = _browser()
    if found is None:
        pytest.skip("no chromium and chromedriver: run scripts/browser.sh (apt-get)")
    binary, driver = found
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1000",
        "--force-device-scale-factor=1",
    ):
        options.add_argument(argument)
    chrome = webdriver.Chrome(service=Service(executable_path=driver), options=options)
    chrome.implicitly_wait(0)
    try:
        yield chrome
    finally:
        chrome.quit()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    """Where the tests save their screenshots: FOREMAN_SCREENSHOTS (docs/screenshots for the
    README), else the test's temporary folder."""
    folder = os.environ.get("FOREMAN_SCREENSHOTS")
    path = Path(folder) if folder else tmp_path
    path.mkdir(parents=True, exist_ok=True)
    return path
