"""The web pages in a real headless Chromium (Debian's chromium + chromedriver, driven by
selenium): type a description and see results; upload a crop on the admin page, follow its job,
and find it by searching."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time

import httpx
import pytest

from tests.conftest import make_image

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
ADMIN_KEY = "browser-test-key-0123456789"
TBPS = [sys.executable, "-m", "service.cli"]

pytestmark = pytest.mark.skipif(
    not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
    reason="needs Debian's chromium and chromium-driver (bash scripts/ensure_test_deps.sh)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path, image_folder):
    """`tbps serve --with-worker` on an ingested and indexed gallery."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TBPS_")}
    env.update(TBPS_DATA_DIR=str(tmp_path / "data"), TBPS_DEVICE="cpu",
               TBPS_ADMIN_KEYS=ADMIN_KEY, TBPS_WORKER_POLL_SECONDS="0.2")
    for args in (["ingest", str(image_folder), "--camera", "lobby"], ["index"]):
        subprocess.run(TBPS + args, env=env, check=True, capture_output=True, timeout=300)
    port = _free_port()
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen(TBPS + ["serve", "--port", str(port), "--with-worker"], env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.3)
    try:
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


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


def _search(driver, base, description, camera=None):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    driver.get(base + "/")
    if camera:
        _wait(driver, lambda d: camera in [o.text for o in
                                           d.find_elements(By.CSS_SELECTOR, "#cameras option")])
        Select(driver.find_element(By.ID, "cameras")).select_by_value(camera)
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
    assert parts and parts[0].text.split()[0] in ("global", "stripe_1", "local")
    browser.find_element(By.ID, "detail-close").click()

    crop = tmp_path / "visitor.png"
    crop.write_bytes(make_image(4242, size=(40, 100)))
    browser.get(server + "/admin")
    key = browser.find_element(By.ID, "api-key")
    key.send_keys(ADMIN_KEY, Keys.TAB)
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
