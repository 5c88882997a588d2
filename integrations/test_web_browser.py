"""The dashboard as a person uses it: ``kompensa-workers web`` run as a real process
on the real Redis, driven in a real headless Chromium (Debian's chromium and
chromedriver; ``make test`` installs them when missing)."""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest

from kompensa_workers import RedisStore, deliver

from .processes import WorkerProcess
from .servers import free_port

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
from tests.stores import CI, real_redis_or_skip  # noqa: E402
from tests.web_journal import HOSTILE_KEY, ODD_KEY, fill, waits_long  # noqa: E402

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import (  # noqa: E402
    StaleElementReferenceException,
    TimeoutException,
)
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as shows  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

TOKEN = "s3cret-for-the-browser-test"


def _browser_paths() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (browser and driver):
        message = ("chromium and chromedriver are not installed (make test installs them: "
                   "scripts/browser.py)")
        if CI:
            pytest.fail(f"{message}; CI=true makes a missing browser a failure")
        pytest.skip(message)
    return browser, driver


@pytest.fixture(scope="module")
def journal() -> Iterator[tuple[RedisStore, dict[str, str], str]]:
    client = real_redis_or_skip()
    namespace = f"kw-web-{uuid.uuid4().hex[:10]}"
    store = RedisStore(client, namespace=namespace)
    yield store, fill(store), namespace
    keys = list(client.scan_iter(match=f"{namespace}:*", count=500))
    if keys:
        client.delete(*keys)


@pytest.fixture(scope="module")
def dashboard(journal: tuple[RedisStore, dict[str, str], str]) -> Iterator[str]:
    """``kompensa-workers web`` on a free port, refreshing open pages every second."""
    _, _, namespace = journal
    port = free_port()
    env = {**os.environ, "KOMPENSA_REDIS_URL": "redis://127.0.0.1:6379/0",
           "KOMPENSA_WEB_TOKEN": TOKEN}
    server = WorkerProcess(
        [sys.executable, "-m", "kompensa_workers", "web", "--port", str(port),
         "--namespace", namespace, "--refresh", "1"],
        env, "web", ready="dashboard of", what="kompensa-workers web", stop_wait=10)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    binary, driver_path = _browser_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", "--window-size=1280,1000"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=webdriver.ChromeService(driver_path), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def rows(browser: Any) -> list[str]:
    """The keys listed, read in one go (live refresh may replace the table)."""
    return list(browser.execute_script(
        "return Array.from(document.querySelectorAll('#executions tbody tr[data-key]'),"
        " row => row.dataset.key)"))


def click(browser: Any, by: str, value: str) -> None:
    """Click the element, found again if a live update replaced it meanwhile."""
    for _ in range(5):
        try:
            browser.find_element(by, value).click()
            return
        except StaleElementReferenceException:
            continue
    raise AssertionError(f"{value} kept being replaced")


def wait(browser: Any, seconds: float = 10) -> WebDriverWait:
    return WebDriverWait(browser, seconds, poll_frequency=0.1)


def test_the_list_shows_counts_filters_and_searches(
    dashboard: str, browser: Any, journal: tuple[RedisStore, dict[str, str], str],
) -> None:
    _, keys, _ = journal
    browser.get(dashboard + "/")
    assert set(rows(browser)) >= set(keys.values())
    chip = browser.find_element(By.CSS_SELECTOR, '#counts a[data-status="compensated"] b')
    assert chip.text == "2"

    Select(browser.find_element(By.ID, "status")).select_by_value("compensated")
    click(browser, By.ID, "filter")
    wait(browser).until(lambda b: "status=compensated" in b.current_url)
    assert set(rows(browser)) == {keys["compensated"], HOSTILE_KEY}

    browser.get(dashboard + "/")
    browser.find_element(By.ID, "q").send_keys("VIP")
    click(browser, By.ID, "filter")
    wait(browser).until(lambda b: "q=VIP" in b.current_url)
    assert rows(browser) == [ODD_KEY]
    # The key's link takes it whole to its page: slash, braces, percent, accent.
    click(browser, By.LINK_TEXT, ODD_KEY)
    wait(browser).until(shows.presence_of_element_located((By.ID, "timeline")))
    assert browser.find_element(By.ID, "key").text == ODD_KEY
    assert browser.execute_script("return window.hacked") is None


def test_the_timeline_is_drawn_to_scale_in_the_page(
    dashboard: str, browser: Any, journal: tuple[RedisStore, dict[str, str], str],
) -> None:
    store, keys, _ = journal
    browser.get(f"{dashboard}/executions/{quote(keys['succeeded'], safe='')}")
    svg = browser.find_element(By.ID, "timeline")
    waits = svg.find_elements(By.CSS_SELECTOR, 'rect[data-kind="wait"]')
    widths = [w.rect["width"] for w in waits]
    assert len(widths) == 2
    assert widths[1] / widths[0] == pytest.approx(2.0, rel=0.05)  # 0.6 s and 0.3 s
    kinds = [r.get_attribute("data-kind") for r in svg.find_elements(By.CSS_SELECTOR, "rect.bar")]
    assert kinds.count("retried") == 2 and kinds.count("ok") == 3
    grants = svg.find_elements(By.CSS_SELECTOR, "line.mark.grant")
    assert len(grants) == len(store.get(keys["succeeded"]).grants) == 3
    labels = [t.text for t in svg.find_elements(By.CSS_SELECTOR, "text.mark-label")]
    assert labels[:1] == ["token 1"]
    tooltip = waits[0].find_element(By.TAG_NAME, "title").get_attribute("textContent")
    assert tooltip.startswith("charge: waited in the broker 300ms before attempt 2")

    browser.get(f"{dashboard}/executions/{quote(keys['compensation_failed'], safe='')}")
    undo = browser.find_elements(By.CSS_SELECTOR, '#timeline rect[data-kind="undo-failed"]')
    assert len(undo) == 1
    click(browser, By.CSS_SELECTOR, "#outcome details summary")
    assert "Traceback (most recent call last)" in browser.find_element(
        By.CSS_SELECTOR, "#outcome pre.traceback").text

    browser.get(f"{dashboard}/executions/{quote(HOSTILE_KEY, safe='')}")
    assert browser.find_element(By.ID, "key").text == HOSTILE_KEY
    assert browser.execute_script("return window.hacked") is None


def test_an_action_is_refused_without_the_token_and_applied_with_it(
    dashboard: str, browser: Any, journal: tuple[RedisStore, dict[str, str], str],
) -> None:
    store, keys, _ = journal
    page = f"{dashboard}/executions/{quote(keys['waiting'], safe='')}"
    browser.delete_all_cookies()
    browser.get(page)
    click(browser, By.ID, "action-cancel")
    message = wait(browser).until(shows.presence_of_element_located((By.ID, "message")))
    assert "log in with the dashboard's token" in message.text
    assert store.get(keys["waiting"]).cancel_requested is False

    browser.get(page)
    click(browser, By.ID, "login")
    token = wait(browser).until(shows.presence_of_element_located((By.ID, "token")))
    token.send_keys("not the token")
    click(browser, By.ID, "sign-in")
    error = wait(browser).until(shows.presence_of_element_located((By.ID, "login-error")))
    assert "not this dashboard's token" in error.text
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    click(browser, By.ID, "sign-in")
    wait(browser).until(lambda b: b.current_url == page)

    click(browser, By.ID, "action-cancel")
    notice = wait(browser).until(shows.presence_of_element_located((By.ID, "notice")))
    assert notice.text.startswith("Cancel requested")
    assert browser.find_element(By.ID, "cancel-requested").is_displayed()
    assert store.get(keys["waiting"]).cancel_requested is True

    # Purging asks first; once accepted the record is gone.
    browser.get(f"{dashboard}/executions/{keys['compensated']}")
    click(browser, By.ID, "action-purge")
    alert = wait(browser).until(shows.alert_is_present())
    assert keys["compensated"] in alert.text
    alert.accept()
    notice = wait(browser).until(shows.presence_of_element_located((By.ID, "notice")))
    assert notice.text == f"Purged {keys['compensated']}."
    assert store.get(keys["compensated"]) is None
    click(browser, By.ID, "logout")
    wait(browser).until(shows.presence_of_element_located((By.ID, "login")))


def test_an_open_page_shows_new_executions_without_a_reload(
    dashboard: str, browser: Any, journal: tuple[RedisStore, dict[str, str], str],
) -> None:
    store, _, _ = journal
    browser.get(dashboard + "/")
    before = browser.find_element(By.CSS_SELECTOR, '#counts a[data-status="waiting"] b').text
    browser.execute_script("window.sameDocument = true")
    key = f"late-{uuid.uuid4().hex[:6]}"
    deliver(waits_long, key=key, store=store)
    try:
        wait(browser, 15).until(lambda b: key in rows(b))
    except TimeoutException:
        pytest.fail(f"{key} did not appear within 15 s; rows: {rows(browser)}")
    assert browser.execute_script("return window.sameDocument") is True  # not reloaded
    after = browser.execute_script(
        "return document.querySelector('#counts a[data-status=\"waiting\"] b').textContent")
    assert int(after) == int(before) + 1


def test_the_served_dashboard_answers_only_to_loopback_host_names(dashboard: str) -> None:
    import http.client

    host, port = dashboard.removeprefix("http://").split(":")
    for name, status in ((f"127.0.0.1:{port}", 200), (f"localhost:{port}", 200),
                         (f"rebound.example:{port}", 400)):
        connection = http.client.HTTPConnection(host, int(port), timeout=10)
        connection.request("GET", "/api/executions", headers={"Host": name})
        assert connection.getresponse().status == status, name
        connection.close()
