"""The web pages in a real headless Chromium (Debian's chromium + chromedriver, driven by
selenium): type a description and see results; upload a crop on the admin page, follow its job,
and find it by searching; open a result (mouse and keyboard) and walk the person's sightings;
filter by camera and time; group by person; page with More; the empty, no-results and
indexing states, the last on `tbps demo` started from outside the repository."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from bench.first_start_bench import stop_process_group
from tests.conftest import make_image

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
ADMIN_KEY = "browser-test-key-0123456789"
TBPS = [sys.executable, "-m", "service.cli"]

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
    reason="needs Debian's chromium and chromium-driver (bash scripts/ensure_test_deps.sh)")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TBPS_")}
    env.update(TBPS_DATA_DIR=str(data_dir), TBPS_DEVICE="cpu", TBPS_ADMIN_KEYS=ADMIN_KEY,
               TBPS_WORKER_POLL_SECONDS="0.2", **extra)
    return env


def _start(tmp_path: Path, env: dict, args: list[str], *, ready: str = "/readyz",
           cwd: Path | None = None, timeout: float = 120):
    """Start `tbps ARGS` on a free port; returns (base URL, process) once ``ready`` is 200."""
    port = _free_port()
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen(TBPS + args + ["--port", str(port)], env=env, cwd=cwd,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if httpx.get(base + ready, timeout=1).status_code == 200:
                return base, proc
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    _stop(proc)
    raise AssertionError(f"{base}{ready} did not answer: {(tmp_path / 'server.log').read_text()}")


def _stop(proc: subprocess.Popen) -> None:
    """The server and its worker (which finishes the chunk it is encoding first)."""
    stop_process_group(proc, term_wait_s=20)


@pytest.fixture
def server(tmp_path, image_folder):
    """`tbps serve --with-worker` on an ingested and indexed gallery."""
    env = _env(tmp_path / "data")
    for args in (["ingest", str(image_folder), "--camera", "lobby"], ["index"]):
        subprocess.run(TBPS + args, env=env, check=True, capture_output=True, timeout=300)
    base, proc = _start(tmp_path, env, ["serve", "--with-worker"])
    try:
        yield base
    finally:
        _stop(proc)


T0 = datetime(2026, 5, 1, 8, 0, tzinfo=UTC)
N_RICH = 24  # crop i: camera cam-{a,b,c}[i % 3], captured T0 + 10 i min, person p{i // 4}


def _serve_rich(tmp_path, **extra: str):
    """`tbps serve` on 24 indexed crops over 3 cameras, 6 persons and 4 hours (``extra``: more
    TBPS_ settings)."""
    from service.config import Settings
    from service.jobs.ingest import ingest_bytes
    from service.store.db import migrate, session_scope

    env = _env(tmp_path / "data", **extra)
    settings = Settings(data_dir=tmp_path / "data", environment="test")
    settings.ensure_dirs()
    migrate(settings.resolved_database_url)
    with session_scope(settings.resolved_database_url) as session:
        for i in range(N_RICH):
            ingest_bytes(session, settings, name=f"shot{i:02d}.png",
                         data=make_image(500 + i, size=(40, 100)), camera="cam-" + "abc"[i % 3],
                         captured_at=T0 + timedelta(minutes=10 * i), person_id=f"p{i // 4}")
    subprocess.run(TBPS + ["index"], env=env, check=True, capture_output=True, timeout=300)
    base, proc = _start(tmp_path, env, ["serve"], timeout=300)  # a busy CPU loads slowly
    try:
        yield base
    finally:
        _stop(proc)


@pytest.fixture(scope="module")
def rich_server(tmp_path_factory):
    """One rich gallery server for the module's tests that only read it (search, open, filter)."""
    yield from _serve_rich(tmp_path_factory.mktemp("rich"))


@pytest.fixture
def own_rich_server(tmp_path):
    """A rich gallery server of the test's own, for a test that changes it (deletes)."""
    yield from _serve_rich(tmp_path)


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1280,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(tmp_path / "chromium-profile", ignore_errors=True)


def _wait(driver, condition, timeout=60):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(condition)


def _open_filters(driver):
    from selenium.webdriver.common.by import By

    if driver.find_element(By.ID, "filters").get_attribute("open") is None:
        driver.find_element(By.ID, "filters-summary").click()


def _pick_camera(driver, camera):
    """Type into the camera picker until the camera is offered, choose it: a chip."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    _open_filters(driver)
    field = driver.find_element(By.ID, "camera-search")
    field.send_keys(camera)
    _wait(driver, lambda d: d.find_elements(
        By.CSS_SELECTOR, f'#camera-options li[data-camera="{camera}"]'))
    field.send_keys(Keys.ENTER)
    _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, f'.chip[data-camera="{camera}"]'))


def _search(driver, base, description, camera=None):
    from selenium.webdriver.common.by import By

    driver.get(base + "/")
    if camera:
        _pick_camera(driver, camera)
    box = driver.find_element(By.ID, "description")
    box.clear()
    box.send_keys(description)
    driver.find_element(By.ID, "search-button").click()
    _wait(driver, lambda d: "matching crops" in d.find_element(By.ID, "status").text
          or "error" in d.find_element(By.ID, "status").get_attribute("class"))
    return driver.find_elements(By.CSS_SELECTOR, "#results .hit")


def test_search_upload_and_find_it(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    hits = _search(browser, server, "a person in a red shirt")
    assert len(hits) == 6 and "lobby" in hits[0].text
    hits[0].click()
    _wait(browser, lambda d: d.find_element(By.ID, "detail").is_displayed())
    parts = browser.find_elements(By.CSS_SELECTOR, "#detail-parts tbody tr")
    assert parts and parts[0].get_attribute("data-part") in ("global", "stripe_1", "local")
    browser.find_element(By.ID, "detail-close").click()

    crop = tmp_path / "visitor.png"
    crop.write_bytes(make_image(4242, size=(40, 100)))
    browser.get(server + "/admin")
    key = browser.find_element(By.ID, "api-key")
    key.send_keys(ADMIN_KEY, Keys.TAB)
    crops = _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#stats [data-stat=crops]"))
    assert crops[0].text.split("\n")[:2] == ["crops", "6"]  # a labelled grid, not a JSON dump
    assert "{" not in browser.find_element(By.ID, "stats").text
    browser.find_element(By.ID, "files").send_keys(str(crop))
    browser.find_element(By.ID, "camera").send_keys("dock-7")
    browser.execute_script("document.getElementById('captured_at').value = "
                           "'2026-06-01T10:00:00'")
    browser.find_element(By.ID, "person_id").send_keys("visitor-1")
    browser.find_element(By.ID, "upload-button").click()
    added = _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#upload-results li"))
    assert "added" in added[0].text, added[0].text
    crop_id = int(added[0].text.split("(crop ")[1].rstrip(")"))
    _wait(browser, lambda d: d.find_element(By.ID, "job-status").get_attribute("data-status")
          in ("succeeded", "failed"))
    assert browser.find_element(By.ID, "job-status").get_attribute("data-status") == "succeeded"

    hits = _search(browser, server, "a person in a red shirt", camera="dock-7")
    assert [int(h.get_attribute("data-crop-id")) for h in hits] == [crop_id]
    assert "dock-7" in hits[0].text


SET_LOCAL_TIME = """
const d = new Date(arguments[1]), pad = (n) => String(n).padStart(2, "0");
document.getElementById(arguments[0]).value =
  `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:` +
  `${pad(d.getMinutes())}`;"""


def _submit(driver, description=None, top_k=None):
    """Fill in the form (what is given), press Search, wait for the answer."""
    from selenium.webdriver.common.by import By

    if description is not None:
        box = driver.find_element(By.ID, "description")
        box.clear()
        box.send_keys(description)
    if top_k is not None:
        _open_filters(driver)
        field = driver.find_element(By.ID, "top_k")
        field.clear()
        field.send_keys(str(top_k))
    driver.find_element(By.ID, "search-button").click()
    _wait(driver, lambda d: "Searching" not in d.find_element(By.ID, "status").text and (
        "matching crops" in d.find_element(By.ID, "status").text
        or "error" in d.find_element(By.ID, "status").get_attribute("class")))
    return driver.find_elements(By.CSS_SELECTOR, "#results .hit")


def _ids(cards):
    return [int(c.get_attribute("data-crop-id")) for c in cards]


def _state(driver):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, "gallery-state").get_attribute("data-state")


def test_results_explain_the_score_page_with_more_and_open_by_keyboard(rich_server, browser):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.get(rich_server + "/")
    _wait(browser, lambda d: _state(d) == "ready")
    assert not browser.find_element(By.ID, "more").is_displayed()  # no search yet: no More
    assert not browser.find_element(By.ID, "gallery-state").is_displayed()
    cards = _submit(browser, "a person in a red shirt", top_k=5)
    assert len(cards) == 5 and browser.find_element(By.ID, "more").is_displayed()
    for card in cards:  # a body figure of the model's 4 stripes, and the score out of 2
        assert len(card.find_elements(By.CSS_SELECTOR, "svg.body-figure rect[data-part]")) == 4
        assert "/ 2" in card.text and "unknown" not in card.text and "person p" in card.text
    seen = _ids(cards)

    def more_cards(d):
        return len(d.find_elements(By.CSS_SELECTOR, "#results .hit")) > len(seen)

    while browser.find_element(By.ID, "more").is_displayed():
        browser.find_element(By.ID, "more").click()
        _wait(browser, more_cards)
        seen = _ids(browser.find_elements(By.CSS_SELECTOR, "#results .hit"))
    assert sorted(seen) == list(range(1, N_RICH + 1))  # every crop once, then no More

    cards = browser.find_elements(By.CSS_SELECTOR, "#results .hit")
    browser.execute_script("arguments[0].focus()", cards[0])
    ActionChains(browser).send_keys(Keys.ARROW_RIGHT, Keys.ENTER).perform()
    _wait(browser, lambda d: d.find_element(By.ID, "detail").is_displayed())
    title = browser.find_element(By.ID, "detail-title")
    assert title.text == f"Result 2 of {N_RICH} · crop {seen[1]}"
    i = seen[1] - 1
    meta = browser.find_element(By.ID, "detail-meta").text
    assert f"cam-{'abc'[i % 3]}" in meta and f"shot{i:02d}.png" in meta and "2026" in meta
    rows = browser.find_elements(By.CSS_SELECTOR, "#detail-parts tbody tr")
    assert [r.get_attribute("data-part") for r in rows] == ["global", "stripe_1", "stripe_2",
                                                             "stripe_3", "stripe_4"]
    labels = [r.find_element(By.TAG_NAME, "td") for r in rows]  # body regions; stripe: tooltip
    assert [td.text for td in labels] == ["whole body (global)", "head and shoulders",
                                          "upper body", "lower body", "legs and feet"]
    assert labels[2].get_attribute("title").startswith("stripe_2: stripe 2 of 4")
    # the crop's sightings (GET /crops/{id}/sightings) as a timeline, one row per camera: the
    # person's 4 crops (by person id) are on it, the open one marked current
    items = "#sightings-timeline [data-crop-id]"
    _wait(browser, lambda d: d.find_element(By.ID, "detail-sightings").is_displayed()
          and d.find_elements(By.CSS_SELECTOR, f'{items}.current[data-crop-id="{seen[1]}"]'))
    person = i // 4
    titles = {int(s.get_attribute("data-crop-id")): s.get_attribute("title")
              for s in browser.find_elements(By.CSS_SELECTOR, items)}
    for j in range(4 * person, 4 * person + 4):  # crop id j + 1 is shot j
        assert titles[j + 1].startswith(f"shot{j:02d}.png · cam-{'abc'[j % 3]}")
        assert titles[j + 1].endswith(("found by person_id", "found by both", "found by self"))
    assert browser.find_element(By.ID, "sightings-title").text.startswith("Sightings: ")
    ActionChains(browser).send_keys(Keys.ARROW_RIGHT).perform()
    _wait(browser, lambda d: d.find_element(By.ID, "detail-title").text.startswith("Result 3 of"))
    # the timeline is fetched anew for result 3 (hidden meanwhile): wait for that one, not
    # result 2's, which the new one replaces (a click on the old one hits a removed element)
    third = f'{items}.current[data-crop-id="{seen[2]}"]'
    _wait(browser, lambda d: d.find_element(By.ID, "detail-sightings").is_displayed()
          and d.find_elements(By.CSS_SELECTOR, third))
    other = next(s for s in browser.find_elements(By.CSS_SELECTOR, items)
                 if int(s.get_attribute("data-crop-id")) != seen[2])
    crop = int(other.get_attribute("data-crop-id"))
    other.click()  # a sighting: the detail view shows that crop
    _wait(browser, lambda d: f"crop {crop}" in d.find_element(By.ID, "detail-title").text.lower())
    ActionChains(browser).send_keys(Keys.ESCAPE).perform()
    _wait(browser, lambda d: not d.find_element(By.ID, "detail").is_displayed())

    # a late answer for a result the operator has left never replaces the one on screen: the
    # sightings of result 1 come 1.5 s late, and the operator moves on at once to the first
    # result of another person
    slow = f"p{(seen[0] - 1) // 4}"
    later = next(j for j in range(1, len(seen)) if f"p{(seen[j] - 1) // 4}" != slow)
    browser.execute_script(HOLD_BACK_SIGHTINGS, seen[0])
    browser.execute_script("arguments[0].focus()", cards[0])
    ActionChains(browser).send_keys(Keys.ENTER, *[Keys.ARROW_RIGHT] * later).perform()
    _wait(browser, lambda d: d.find_element(By.ID, "detail-title").text.startswith(
        f"Result {later + 1} of"))
    _wait(browser, lambda d: d.execute_script("return window.heldBackServed") >= 1)
    browser.execute_async_script("setTimeout(arguments[arguments.length - 1], 300)")
    assert browser.find_elements(By.CSS_SELECTOR, f'{items}.current[data-crop-id="{seen[later]}"]')
    assert not browser.find_elements(By.CSS_SELECTOR, f'{items}.current[data-crop-id="{seen[0]}"]')


HOLD_BACK_SIGHTINGS = """
const crop = arguments[0], realFetch = window.fetch;
window.heldBackServed = 0;
window.fetch = (url, options) => String(url).endsWith(`/crops/${crop}/sightings`)
  ? new Promise((done) => setTimeout(done, 1500)).then(() => realFetch(url, options))
      .then((resp) => { window.heldBackServed += 1; return resp; })
  : realFetch(url, options);
"""


def _active(driver):
    return driver.execute_script(
        "const a = document.activeElement; return a.id || a.dataset.cropId || a.tagName")


def test_results_are_one_tab_or_arrow_from_the_box_and_the_page_fits_narrow(rich_server,
                                                                            browser):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.get(rich_server + "/")
    box = browser.find_element(By.ID, "description")
    box.send_keys("a person in a red shirt", Keys.ENTER)
    cards = _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#results .hit"))
    ids = _ids(cards)
    assert _active(browser) == "description"
    ActionChains(browser).send_keys(Keys.TAB).perform()  # one Tab: the first result
    assert _active(browser) == str(ids[0])
    ActionChains(browser).send_keys(Keys.ARROW_RIGHT, Keys.ARROW_RIGHT).perform()
    assert _active(browser) == str(ids[2])
    ActionChains(browser).key_down(Keys.SHIFT).send_keys(Keys.TAB).key_up(Keys.SHIFT).perform()
    assert _active(browser) == "description"  # the results are one tab stop
    ActionChains(browser).send_keys(Keys.ARROW_DOWN).perform()  # back where the user was
    assert _active(browser) == str(ids[2])
    ActionChains(browser).send_keys(Keys.ENTER).perform()
    _wait(browser, lambda d: d.find_element(By.ID, "detail").is_displayed())
    ActionChains(browser).send_keys(Keys.ESCAPE).perform()

    def header_rows(d):  # distinct tops of the header's items: 1 when it does not wrap
        return d.execute_script(
            "return new Set([...document.querySelectorAll('header > *, #search-form > *')]"
            ".filter((e) => e.offsetParent).map((e) => Math.round(e.getBoundingClientRect()"
            ".top + e.getBoundingClientRect().height / 2))).size")

    assert header_rows(browser) == 1  # 1280 px: one row
    browser.set_window_size(800, 900)
    _wait(browser, lambda d: d.execute_script("return window.innerWidth") <= 800)
    assert header_rows(browser) == 1
    assert browser.execute_script(
        "return document.documentElement.scrollWidth <= document.documentElement.clientWidth")
    admin = browser.find_element(By.LINK_TEXT, "Admin")
    right = browser.execute_script("return arguments[0].getBoundingClientRect().right", admin)
    assert admin.is_displayed() and right <= browser.execute_script("return window.innerWidth")


def test_camera_picker_searches_and_shows_chips(rich_server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.get(rich_server + "/")
    _pick_camera(browser, "cam-c")
    field = browser.find_element(By.ID, "camera-search")
    field.send_keys("cam")  # chosen cameras are not offered again
    _wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#camera-options li")) == 2)
    field.send_keys(Keys.ARROW_DOWN, Keys.ENTER)
    chips = [c.get_attribute("data-camera") for c in
             browser.find_elements(By.CSS_SELECTOR, "#camera-chips .chip")]
    assert chips[0] == "cam-c" and len(chips) == 2
    assert browser.find_element(By.ID, "filters-summary").text == "Filters (2)"
    browser.find_element(By.CSS_SELECTOR, '.chip[data-camera="cam-c"] button').click()
    assert [c.get_attribute("data-camera") for c in browser.find_elements(
        By.CSS_SELECTOR, "#camera-chips .chip")] == chips[1:]
    cards = _submit(browser, "a person in a red shirt", top_k=24)
    assert cards and all(chips[1] in c.text for c in cards)


def test_admin_crops_browser_filters_views_and_deletes(own_rich_server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.get(own_rich_server + "/admin")
    browser.find_element(By.ID, "api-key").send_keys(ADMIN_KEY, Keys.TAB)
    _wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#crops-grid .crop-tile"))
          == N_RICH)
    browser.find_element(By.ID, "crops-camera").send_keys("cam-a")
    browser.find_element(By.ID, "crops-show").click()
    _wait(browser, lambda d: "of 8 crops" in d.find_element(By.ID, "crops-count").text)
    tiles = browser.find_elements(By.CSS_SELECTOR, "#crops-grid .crop-tile")
    assert len(tiles) == 8 and all("cam-a" in t.text for t in tiles)
    crop_id = int(tiles[0].get_attribute("data-crop-id"))
    tiles[0].find_element(By.CSS_SELECTOR, "button.view").click()
    _wait(browser, lambda d: d.find_element(By.ID, "crop-view").is_displayed())
    assert browser.find_element(By.ID, "crop-view-title").text == f"Crop {crop_id}"
    assert browser.execute_script("return document.getElementById('crop-view-img').naturalWidth"
                                  ) == 40
    browser.find_element(By.ID, "crop-view-close").click()
    delete = tiles[0].find_element(By.CSS_SELECTOR, "button.delete")
    delete.click()  # asks first
    assert delete.text == "Really delete?" and len(
        browser.find_elements(By.CSS_SELECTOR, "#crops-grid .crop-tile")) == 8
    delete.click()
    _wait(browser, lambda d: "of 7 crops" in d.find_element(By.ID, "crops-count").text)
    assert not browser.find_elements(By.CSS_SELECTOR, f'.crop-tile[data-crop-id="{crop_id}"]')
    assert httpx.get(f"{own_rich_server}/crops/{crop_id}/image").status_code == 404
    page = httpx.get(f"{own_rich_server}/admin/crops", headers={"X-API-Key": ADMIN_KEY}).json()
    assert page["total"] == N_RICH - 1
    browser.set_window_size(800, 900)  # the stats tiles and the crops fit: no sideways scroll
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#stats [data-stat]"))
    assert browser.execute_script(
        "return document.documentElement.scrollWidth <= document.documentElement.clientWidth"
        " && [...document.querySelectorAll('#stats > div')].every((t) => t.scrollWidth <= "
        "t.clientWidth)")


def test_filter_by_camera_and_time_group_by_person_and_no_results(rich_server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    browser.get(rich_server + "/")
    _pick_camera(browser, "cam-b")
    browser.execute_script(SET_LOCAL_TIME, "time_from", (T0 + timedelta(minutes=60)).isoformat())
    browser.execute_script(SET_LOCAL_TIME, "time_to", (T0 + timedelta(minutes=180)).isoformat())
    cards = _submit(browser, "a person in a red shirt", top_k=24)
    expected = [i + 1 for i in range(N_RICH) if i % 3 == 1 and 6 <= i <= 18]
    assert sorted(_ids(cards)) == expected and all("cam-b" in c.text for c in cards)
    assert f"of {len(expected)} matching crops" in browser.find_element(By.ID, "status").text

    browser.execute_script(SET_LOCAL_TIME, "time_from", (T0 + timedelta(days=2)).isoformat())
    browser.execute_script(SET_LOCAL_TIME, "time_to", (T0 + timedelta(days=3)).isoformat())
    assert _submit(browser) == []
    empty = browser.find_element(By.ID, "empty-results")
    assert empty.is_displayed() and "No indexed crop passes the filters" in empty.text
    assert not browser.find_element(By.ID, "more").is_displayed()

    browser.find_element(By.ID, "clear-filters").click()
    Select(browser.find_element(By.ID, "group_by")).select_by_value("person")
    cards = _submit(browser)
    assert len(cards) == N_RICH // 4 and all("person" in c.get_attribute("class") for c in cards)
    for card in cards:
        assert "4 matching crops" in card.text and "–" in card.text  # a time span
        assert "unknown" not in card.text and card.text.count("person p") == 1
    assert not browser.find_element(By.ID, "empty-results").is_displayed()


def test_empty_gallery_says_so(tmp_path, browser):
    from selenium.webdriver.common.by import By

    env = _env(tmp_path / "data")
    subprocess.run(TBPS + ["migrate"], env=env, check=True, capture_output=True, timeout=120)
    base, proc = _start(tmp_path, env, ["serve"], ready="/healthz")
    try:
        browser.get(base + "/")
        _wait(browser, lambda d: _state(d) == "empty")
        assert "The gallery is empty" in browser.find_element(By.ID, "gallery-state").text
        assert _submit(browser, "anyone") == []
        status = browser.find_element(By.ID, "status")
        assert "error" in status.get_attribute("class") and "no index" in status.text
        assert httpx.get(base + "/favicon.ico").status_code == 200
    finally:
        _stop(proc)


def test_demo_from_another_folder_serves_at_once_and_answers_while_indexing(tmp_path, browser):
    """`tbps demo` (what `make run` does) on a 400-crop gallery, started outside the
    repository: the page answers within 60 s, says indexing n of N, and returns results
    (from the crops indexed so far) before indexing ends; then every crop is searchable."""
    from selenium.webdriver.common.by import By

    gallery = tmp_path / "demo-gallery"
    for i in range(400):
        folder = gallery / ("left" if i % 2 else "right")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:03d}.png").write_bytes(make_image(1000 + i, size=(40, 100)))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    started = time.monotonic()
    env = _env(tmp_path / "data", TBPS_DEMO_GALLERY=str(gallery))
    base, proc = _start(tmp_path, env, ["demo"], ready="/", cwd=elsewhere, timeout=60)
    try:
        assert time.monotonic() - started < 60
        browser.get(base + "/")
        _wait(browser, lambda d: _state(d) == "indexing", timeout=60)
        assert "Indexing" in browser.find_element(By.ID, "gallery-state").text  # queued first
        _wait(browser, lambda d: "of 400 crops" in d.find_element(By.ID, "gallery-state").text,
              timeout=60)
        assert "searches cover the" in browser.find_element(By.ID, "gallery-state").text.lower()

        def results_while_indexing(d):
            cards = _submit(d, "a person in a red shirt", top_k=10)
            status = d.find_element(By.ID, "status").text
            return cards and "indexed so far" in status and _state(d) == "indexing"

        _wait(browser, results_while_indexing, timeout=120)
        status = browser.find_element(By.ID, "status").text
        matching = int(status.split(" of ")[1].split()[0].replace(",", ""))
        assert 0 < matching < 400, status
        ready = httpx.get(base + "/readyz").json()
        assert ready["status"] == "ready" and ready["indexing"]["total"] == 400

        _wait(browser, lambda d: _state(d) == "ready", timeout=300)
        _submit(browser, "a person in a red shirt", top_k=10)
        assert "of 400 matching crops" in browser.find_element(By.ID, "status").text
        _open_filters(browser)
        browser.find_element(By.ID, "camera-search").click()  # focus offers every camera
        _wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#camera-options li")) == 2)
        assert {o.get_attribute("data-camera") for o in browser.find_elements(
            By.CSS_SELECTOR, "#camera-options li")} == {"left", "right"}
    finally:
        _stop(proc)
