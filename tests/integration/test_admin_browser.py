"""The live admin page in a real headless Chromium (issue #21), against a real HA pair.

Scenario (one test, one pair, SQLite, short SRM timers): the admin logs in with the
token; alice logs in on n1 and n1's session counters show her; the admin presses
Failover n1, confirms, and sees n1 Idle and n2 Running in Backup Mode, the users
served move to n2 and the HA event log grows; a cancelled fallback does nothing; the
admin stops a critical service on the backup (confirmed) and watches the Critical
Service Delay count down until the pair is in Running in Failed Mode; starts the
service and confirms a recovery: Normal / Normal again. Last, n1 (which serves the
page) is killed: the page says so, `ha web` links to n2, and n2's page shows n1 down
without its stale state.

Rules of this module:
- Debian's `chromium` and `chromium-driver` (scripts/test-services.sh installs them),
  driven by Selenium with the driver's path given (Selenium never downloads anything).
  Missing: skipped locally, a failure with CI=true.
- Waiting is `WebDriverWait` on what the page shows (explicit waits, no sleeps); the
  page redraws every second, so each wait looks its elements up afresh.
- `PRESENCE_HA_ADMIN_SCREENSHOT=PATH` saves a screenshot of the page during the
  failover, at the countdown (how docs/admin-page-failover.png was made).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from presence_ha.server.net.admin_rpc import admin_token
from tests.conftest import IN_CI
from tests.integration.cluster import RawClient, cluster_secret
from tests.integration.test_admin_pair import HaPair, start_pair

pytestmark = pytest.mark.timeout(120)

WAIT_S = 20.0
SCREENSHOT_ENV = "PRESENCE_HA_ADMIN_SCREENSHOT"
PARAMS = {"critical_service_delay_s": 6}  # long enough to watch it count down, short for CI
RIBM, RIFM = "Running in Backup Mode", "Running in Failed Mode"


def _require(what: str) -> None:
    if IN_CI:
        pytest.fail(f"CI=true and {what} (scripts/test-services.sh installs chromium and chromium-driver)")
    pytest.skip(what)


@pytest.fixture
def browser() -> Iterator[object]:
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _require("selenium is not installed (pip install -e '.[test]')")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not chromium or not driver_path:
        _require("Debian's chromium and chromium-driver are not installed")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,1400", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def pair(sqlite_url: str, tmp_path: Path) -> Iterator[HaPair]:
    started = start_pair(sqlite_url, tmp_path, PARAMS)
    try:
        yield started
    finally:
        started.close()


class ClientThread:
    """Raw XMPP clients on an event loop of their own (the test itself is blocking)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.clients: list[RawClient] = []

    def login(self, pair: HaPair, node: str, username: str) -> None:
        async def go() -> None:
            client = await RawClient.connect(pair.nodes[node])
            self.clients.append(client)
            await client.login(username, f"{username}-pw")

        asyncio.run_coroutine_threadsafe(go(), self.loop).result(WAIT_S)

    def close(self) -> None:
        for client in self.clients:
            self.loop.call_soon_threadsafe(client.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


class Page:
    """What the admin sees and does, by the page's ids and data attributes."""

    def __init__(self, driver, base: str) -> None:
        from selenium.common.exceptions import (
            ElementClickInterceptedException,
            NoSuchElementException,
            StaleElementReferenceException,
        )
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver, self.base, self.by = driver, base, By
        self.wait = WebDriverWait(driver, WAIT_S, poll_frequency=0.1,
                                  ignored_exceptions=(NoSuchElementException, StaleElementReferenceException,
                                                      ElementClickInterceptedException))

    def css(self, selector: str):
        return self.driver.find_element(self.by.CSS_SELECTOR, selector)

    def text(self, selector: str) -> str:
        return self.css(selector).text

    def until(self, check: Callable[[], bool], what: str) -> None:
        self.wait.until(lambda _d: check(), f"the page never showed {what}")

    def shows(self, selector: str, expected: str) -> None:
        self.until(lambda: self.text(selector) == expected, f"{expected!r} in {selector}")

    def states(self, expected: dict[str, tuple[str, str]]) -> None:
        def shown() -> bool:
            return all((self.text(f"#node-{n} .state"), self.text(f"#node-{n} .reason")) == want
                       for n, want in expected.items())

        self.until(shown, f"the states {expected}")

    def counter(self, node: str, name: str) -> str:
        return self.text(f"#node-{node} .counter[data-name='{name}']")

    def press(self, selector: str) -> None:
        """Click the button (looked up again if the page redrew it meanwhile)."""

        def clicked() -> bool:
            self.css(selector).click()
            return True

        self.until(clicked, f"the button {selector}")

    def confirm(self, expected_words: str, *, ok: bool = True) -> None:
        """The confirmation dialog is open and names what will happen; press OK or Cancel."""
        self.until(lambda: self.css("#confirm").is_displayed(), "the confirmation dialog")
        assert expected_words in self.text("#confirm-text")
        self.css("#confirm-ok" if ok else "#confirm-cancel").click()
        self.until(lambda: not self.css("#confirm").is_displayed(), "the dialog closed")

    def events_text(self) -> str:
        return self.text("#events tbody")


def test_live_page_login_counters_failover_countdown_and_recovery(pair: HaPair, browser) -> None:
    token = admin_token(cluster_secret(pair.db_url))
    base = f"http://127.0.0.1:{pair.ports['n1'][2]}/"
    page = Page(browser, base)
    clients = ClientThread()
    try:
        # The admin logs in with the token (the login form); the token is in no URL or page.
        browser.get(base)
        page.css("#token").send_keys(token)
        page.css("#login").click()
        page.states({"n1": ("Normal", "Normal"), "n2": ("Normal", "Normal")})
        assert token not in browser.page_source and "token" not in browser.current_url
        assert page.counter("n1", "users-served") == "1" and page.counter("n1", "JsmSessionsClient") == "0"

        # alice logs in on n1, then bob on n2: the SPEC §8 counters change without a reload
        # (n2's come to n1's page from n2's admin RPC).
        clients.login(pair, "n1", "alice")
        page.until(lambda: page.counter("n1", "JsmSessionsClient") == "1", "alice's session on n1")
        assert page.counter("n2", "JsmSessionsClient") == "0"
        clients.login(pair, "n2", "bob")
        page.until(lambda: page.counter("n2", "JsmSessionsClient") == "1", "bob's session on n2")

        # Failover n1, confirmed: the states change, n2 serves both users, the log shows it.
        page.press("button[data-op='failover'][data-node='n1']")
        page.confirm("Fail over n1? Its critical services stop and the 1 user it serves move to n2")
        page.states({"n1": ("Idle", "On Admin Request"), "n2": (RIBM, "On Admin Request")})
        page.until(lambda: page.counter("n2", "users-served") == "2", "both users served by n2")
        page.until(lambda: "Failing Over" in page.events_text(), "the failover in the HA event log")

        # A cancelled fallback does nothing.
        page.press("button[data-op='fallback'][data-node='n1']")
        page.confirm("Fall back to n1?", ok=False)

        # A critical service stopped on the backup: the Critical Service Delay counts down.
        page.press("button[data-op='service.stop'][data-node='n2'][data-service='presence-engine']")
        page.confirm("Stop Presence Engine on n2? A critical service down for 6 s")
        page.shows("#note", "presence-engine stopped on n2")
        assert "admin page: fallback" not in pair.nodes["n1"].log()  # the cancelled one was never sent
        page.until(lambda: int(page.text("#node-n2 .countdown .secs")) <= 6, "the countdown on n2")
        if os.environ.get(SCREENSHOT_ENV):
            browser.save_screenshot(os.environ[SCREENSHOT_ENV])
        page.states({"n1": (RIFM, "Critical Services Down"), "n2": (RIFM, "Critical Services Down")})

        # Start the service again, then a confirmed recovery: Normal / Normal.
        page.press("button[data-op='service.start'][data-node='n2'][data-service='presence-engine']")
        page.until(lambda: page.text("#node-n2 [data-service='presence-engine'] .service-state") == "running",
                   "presence-engine running on n2")
        page.press("button[data-op='recover'][data-group='g1']")
        page.confirm("Recover group g1? The SRM of n1 and n2 restarts")
        page.states({"n1": ("Normal", "Normal"), "n2": ("Normal", "Normal")})
        pair.wait_normal()

        # n1, which serves the page, dies: the page says so; `ha web` now links to n2, whose
        # page (the session cookie holds for every port of the host) shows n1 down,
        # never with its stale state.
        pair.kill("n1")
        page.until(lambda: "does not answer" in page.text("#banner"), "the banner about n1")
        link = pair.admin("ha", "web").strip()
        assert link.startswith(f"http://127.0.0.1:{pair.ports['n2'][2]}/?token=")
        browser.get(f"http://127.0.0.1:{pair.ports['n2'][2]}/")
        page.until(lambda: page.css("#node-n1").get_attribute("data-state") == "down", "n1 down on n2's page")
        assert "Normal" not in page.text("#node-n1") and "DOWN" in page.text("#node-n1")
    finally:
        clients.close()
