"""The console end to end in headless Chromium (Debian's ``chromium`` and ``chromium-driver``, driven by
Selenium; no browser is downloaded) against real PostgreSQL and Redis, the API served over HTTP and a
running ``sluice worker``: sign in, create and trigger a job, watch the run complete, replay a dead letter,
and see an action refused for a read-only key.

With ``SLUICE_CONSOLE_SCREENSHOTS=<dir>`` the test also saves a screenshot of each main page there (how the
images in docs/images/ are made).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import IN_CI, make_key, pg_url, redis_url
from tests.integration.process_support import served

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SLUICE = str(Path(sys.executable).parent / "sluice")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1280,900")
WAIT_SECS = 45  # generous: a loaded CI machine starts the worker slowly; a passing run waits far less
SHOTS = os.environ.get("SLUICE_CONSOLE_SCREENSHOTS")


class Endpoint:
    """A local job endpoint: ``/ok`` answers 200 with a JSON result; ``/flaky`` answers 500 until fixed."""

    def __init__(self) -> None:
        self.failing = True
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                fail = self.path == "/flaky" and endpoint.failing
                body = b'{"error": "down"}' if fail else b'{"greeting": "hello"}'
                self.send_response(500 if fail else 200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def browser() -> Iterator[Any]:
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        message = "Debian's chromium and chromium-driver packages are needed for the console's browser tests"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture()
def console_url(app) -> Iterator[str]:
    with served(app) as url:
        yield url


@pytest.fixture()
def worker(settings) -> Iterator[subprocess.Popen[bytes]]:
    env = {**os.environ, "DATABASE_URL": pg_url(), "REDIS_URL": redis_url(), "SLUICE_ALLOW_PRIVATE_ENDPOINTS": "true",
           "SLUICE_LOG_JSON": "false", "SLUICE_LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen([SLUICE, "worker", "--processes", "1", "--threads", "2", "--queues", "sluice.runs"],
                            env=env, start_new_session=True)
    yield proc
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


@pytest.fixture()
def endpoint() -> Iterator[Endpoint]:
    server = Endpoint()
    yield server
    server.close()


def wait_for(driver: Any, css: str, text: str | None = None, timeout: float = WAIT_SECS) -> Any:
    """The first element matching ``css`` (holding ``text``), waiting for the page to show it."""
    from selenium.webdriver.common.by import By

    deadline = time.monotonic() + timeout
    while True:
        for element in driver.find_elements(By.CSS_SELECTOR, css):
            try:
                if text is None or text in element.text:
                    return element
            except Exception:  # replaced by a refresh while read: look again
                pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{css!r} with {text!r} not shown on {driver.current_url}:\n"
                                 f"{driver.find_element(By.TAG_NAME, 'main').text[:2000]}")
        time.sleep(0.1)


def fill(driver: Any, field_id: str, value: str) -> None:
    from selenium.webdriver.common.by import By

    element = driver.find_element(By.ID, field_id)
    element.clear()
    element.send_keys(value)


def shot(driver: Any, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(SHOTS) / f"console-{name}.png"))


def sign_in(driver: Any, base: str, key: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(f"{base}/ui/jobs")
    assert "/ui/sign-in" in driver.current_url  # not signed in yet: sent to the sign-in page
    fill(driver, "api_key", key)
    driver.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    wait_for(driver, "h1", "Jobs")


def test_console_end_to_end(browser, console_url, worker, endpoint, client, session_factory):
    from selenium.webdriver.common.by import By

    key = make_key(session_factory)
    sign_in(browser, console_url, key)

    # Create a job with a payload schema from the console.
    browser.find_element(By.LINK_TEXT, "New job").click()
    fill(browser, "name", "Say hello")
    fill(browser, "slug", "hello")
    fill(browser, "endpoint_url", f"{endpoint.base}/ok")
    fill(browser, "payload_schema", json.dumps({"type": "object", "required": ["n"],
                                                 "properties": {"n": {"type": "integer"}}}))
    browser.find_element(By.CSS_SELECTOR, "form.card button[type=submit]").click()
    wait_for(browser, "h1", "Say hello")

    # Trigger it: a payload the schema refuses, then one it accepts; watch the run complete.
    browser.find_element(By.LINK_TEXT, "Trigger").click()
    fill(browser, "payload", '{"n": "one"}')
    browser.find_element(By.CSS_SELECTOR, "button[value=trigger]").click()
    wait_for(browser, ".alert", "payload does not satisfy the job's payload_schema")
    fill(browser, "payload", '{"n": 1}')
    shot(browser, "trigger")
    browser.find_element(By.CSS_SELECTOR, "button[value=trigger]").click()
    wait_for(browser, "h1", "Run")
    wait_for(browser, "[data-run-status]", "completed")  # the page refreshes itself until the run ends
    assert "hello" in browser.find_element(By.TAG_NAME, "main").text  # the endpoint's result
    wait_for(browser, ".waterfall", "time to first byte")
    shot(browser, "run")

    # A dead letter: a run of a failing job, replayed from the console once its endpoint works again.
    auth = {"Authorization": f"Bearer {key}"}
    assert client.post("/v1/jobs", headers=auth, json={"name": "Flaky", "slug": "flaky", "max_attempts": 1,
                                                      "endpoint_url": f"{endpoint.base}/flaky"}).status_code == 201
    dead = client.post("/v1/jobs/flaky/trigger", headers=auth, json={"payload": {"n": 2}}).get_json()["id"]
    browser.get(f"{console_url}/ui/runs/{dead}")
    wait_for(browser, "[data-run-status]", "failed")
    endpoint.failing = False
    browser.get(f"{console_url}/ui/dead-letters")
    browser.find_element(By.CSS_SELECTOR, f"input[name=run_ids][value='{dead}']").click()
    shot(browser, "dead-letters")
    wait_for(browser, "button", "Replay selected").click()
    wait_for(browser, "h1", "Replay: 1 of 1 done")
    replay = browser.find_elements(By.CSS_SELECTOR, "td a code")[1]
    replay.click()
    wait_for(browser, "[data-run-status]", "completed")

    browser.get(f"{console_url}/ui/jobs")
    wait_for(browser, "td", "Say hello")
    shot(browser, "jobs")
    browser.get(f"{console_url}/ui/jobs/hello")
    wait_for(browser, "h2", "Health")
    shot(browser, "job")
    browser.get(f"{console_url}/ui/runs")
    wait_for(browser, "td", "completed")
    shot(browser, "runs")
    browser.get(f"{console_url}/ui/fleet")
    wait_for(browser, "h2", "Live workers: 1")  # the running worker, from its heartbeats
    shot(browser, "fleet")
    browser.set_window_size(390, 844)
    browser.get(f"{console_url}/ui/runs/{dead}")
    wait_for(browser, "[data-run-status]", "failed")
    shot(browser, "phone-run")
    browser.set_window_size(1280, 900)

    # A read-only key sees no actions it may not take, and a refused one when it tries.
    wait_for(browser, "button", "Sign out").click()
    sign_in(browser, console_url, make_key(session_factory, scopes="jobs:read,runs:read"))
    assert not browser.find_elements(By.LINK_TEXT, "New job")
    browser.get(f"{console_url}/ui/runs/{dead}")
    replay_button = wait_for(browser, "button", "Replay")
    assert not replay_button.is_enabled() and "runs:write" in replay_button.get_attribute("title")
    browser.get(f"{console_url}/ui/jobs/hello/trigger")
    wait_for(browser, "h1", "Refused")
    wait_for(browser, ".alert", "missing scope jobs:trigger")
