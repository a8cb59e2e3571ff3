"""The live dashboard in a real headless browser (Debian's Chromium, driven by Selenium).

``kct dashboard`` watches a projection whose runner (a subprocess) is frozen
with SIGSTOP while events are published; the page, polling its JSON, must
show the lag and the STALL status, and the dead letter the runner wrote
before. A screenshot is saved under the test's tmp dir (and copied to
``docs/dashboard.png`` with ``KCT_UPDATE_DOCS_SCREENSHOT=1``).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka import Producer

from tests.integration.conftest import Endpoints
from tests.order_stats import placed_event
from tests.waiting import eventually
from toolkit.runtime.app import Kct
from toolkit.runtime.stack.provision import CHROMEDRIVER, CHROMIUM

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",  # as root
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1400,900",
)
if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):  # `make test` installs them
    pytest.skip("needs Debian's chromium and chromium-driver", allow_module_level=True)

from selenium import webdriver  # noqa: E402 - only with Chromium installed
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

# What the page shows of one projection, and the dead letters and health.
SHOWN = """
const row = document.querySelector(`tr[data-projection="${arguments[0]}"]`);
const text = (selector) => (row && row.querySelector(selector) || {}).textContent || "";
const letters = [...document.querySelectorAll("#dead-letters tbody tr")];
return {
  lag: text(".lag"), status: text(".status"), row: row ? row.className : "",
  health: document.getElementById("health").textContent,
  letters: letters.map((tr) => tr.cells[1].textContent + " " + tr.cells[2].textContent).join(", "),
};
"""
OK_SHOWN = {"lag": "0", "status": "OK", "row": "", "health": "healthy", "letters": "undecodable 1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def _process(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, *args], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}
    )


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGCONT)
    process.kill()
    process.wait(10)


def test_the_page_shows_a_projection_falling_behind_and_its_dead_letters(
    endpoints: Endpoints,
    create_topic: Callable[..., str],
    kct: Kct,
    group_id: str,
    tmp_path: Path,
    browser: webdriver.Chrome,
) -> None:
    topic = create_topic("dashboard", partitions=1)
    for i in range(3):
        kct.publisher.publish(topic, placed_event(f"o-{i}", "c", 100))
    raw = Producer({"bootstrap.servers": endpoints.kafka_bootstrap})
    raw.produce(topic, b"not an event")  # the runner dead-letters it: undecodable
    raw.flush(10)
    config = tmp_path / "kct.yaml"
    config.write_text(
        f"""version: 1
service: shop
kafka: {{bootstrap_servers: "{endpoints.kafka_bootstrap}"}}
redis: {{url: "{endpoints.redis_url}"}}
monitor:
  window: 3
  interval: 0.5
  projections:
    {group_id}: {{topics: [{topic}]}}
"""
    )
    port = _free_port()
    url = f"http://127.0.0.1:{port}/dashboard"
    worker = _process(
        *("-m", "tests.integration.projection_worker", "--topic", topic, "--group", group_id),
        *("--bootstrap", endpoints.kafka_bootstrap, "--redis", endpoints.redis_url),
    )
    server = _process(
        *("-m", "toolkit.runtime.cli", "dashboard", "--config", str(config)),
        *("--listen", f"127.0.0.1:{port}", "--interval", "0.5"),
    )
    try:
        eventually(lambda: _answers(url), 30.0, every=0.2)
        browser.get(url)
        wait = WebDriverWait(browser, 30, poll_frequency=0.2)

        def shown() -> dict[str, str]:  # read in one script: the page redraws every poll
            found: dict[str, str] = browser.execute_script(SHOWN, group_id)
            return found

        wait.until(lambda _: shown() == OK_SHOWN)  # caught up, the dead letter counted
        worker.send_signal(signal.SIGSTOP)  # frozen: still a member, its offset never moves
        for i in range(3, 10):
            kct.publisher.publish(topic, placed_event(f"o-{i}", "c", 100))
        wait.until(lambda _: shown()["status"] == "STALL" and shown()["lag"] == "7")
        assert shown() == {**OK_SHOWN, "lag": "7", "status": "STALL", "row": "behind",
                           "health": "failing"}  # fmt: skip
        shot = tmp_path / "dashboard.png"
        assert browser.save_screenshot(str(shot))
        print(f"screenshot: {shot}")
        if os.environ.get("KCT_UPDATE_DOCS_SCREENSHOT") == "1":
            shutil.copy(shot, REPO / "docs" / "dashboard.png")
    finally:
        _stop(worker)
        server.terminate()
        server.wait(15)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return int(answer.status) == 200
    except OSError:
        return False
