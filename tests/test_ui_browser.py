"""The picker page in a real headless Chromium (Debian's chromium and chromium-driver, through Selenium)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from admin.api_keys import add_key
from tests.jobs_stack import start_worker
from tests.servers import REPO, find_tool, free_port, missing, start_gunicorn, stop

pytestmark = pytest.mark.live

ARTIFACTS = REPO / "test-artifacts" / "ui"
WAIT_SECONDS = 30


def browser(width: int = 1280, height: int = 1000, phone: bool = False):
    """Headless Chromium driven by the packaged chromedriver (no driver download: Selenium Manager stays off)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = find_tool("chromium"), find_tool("chromedriver")
    if not (chromium and driver):
        missing("chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 f"--window-size={width},{height}"):
        options.add_argument(flag)
    if phone:
        # A window cannot be this narrow; the browser's own device emulation can.
        options.add_experimental_option("mobileEmulation", {"deviceMetrics": {"width": width, "height": height,
                                                                              "pixelRatio": 2}})
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)


def shot(driver, name: str) -> Path:
    """A screenshot of the whole page under test-artifacts/ui/."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    height = driver.execute_script("return document.body.scrollHeight")
    if driver.execute_script("return window.innerWidth") > 600:  # (an emulated phone keeps its own size)
        driver.set_window_size(driver.get_window_size()["width"], max(800, min(height + 40, 4000)))
    driver.execute_script("window.scrollTo(0, 0)")
    driver.save_screenshot(str(path))
    return path


def wait(driver, condition):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_SECONDS).until(condition)


def loaded_images(driver, container: str) -> int:
    """How many images in the container have loaded (decoded, non-zero size)."""
    return driver.execute_script(
        "return [...document.querySelectorAll(arguments[0] + ' img')].filter(i => i.complete && i.naturalWidth > 0)"
        ".length", container)


def start_offline(tmp_path: Path, **env: str) -> tuple[str, list]:
    """The service offline under gunicorn with one job worker (as ./scripts/serve runs it); (base URL, processes)."""
    env = {"AIG_DATA_DIR": str(tmp_path / "images"), "AIG_JOB_DB": str(tmp_path / "jobs.sqlite3"), **env}
    port = free_port()
    web = start_gunicorn({**env, "AIG_WORKERS": "1"}, port, tmp_path / "gunicorn.log")
    worker_env = {k: v for k, v in os.environ.items() if not k.startswith("AIG_")} | env
    return f"http://127.0.0.1:{port}", [web, start_worker(worker_env, tmp_path / "worker.log")]


@pytest.fixture
def service(tmp_path):
    """The service offline with a job worker, keys off; yields its base URL."""
    base, processes = start_offline(tmp_path)
    yield base
    for process in processes:
        stop(process)


def generate(driver, prompt: str, count: int = 4) -> None:
    from selenium.webdriver.common.by import By

    wait(driver, lambda d: d.find_element(By.ID, "model").get_attribute("value"))
    prompt_box = driver.find_element(By.ID, "prompt")
    prompt_box.clear()
    prompt_box.send_keys(prompt)
    count_box = driver.find_element(By.ID, "count")
    count_box.clear()
    count_box.send_keys(str(count))
    driver.find_element(By.ID, "size").send_keys("512x512")
    driver.find_element(By.ID, "generate").click()


def test_generate_pick_vary_and_see_an_error_in_a_real_browser(service):
    from selenium.webdriver.common.by import By

    driver = browser()
    try:
        driver.get(f"{service}/ui/")
        assert driver.find_element(By.ID, "offline-notice").is_displayed()
        generate(driver, "a red porsche on a mountain road")
        wait(driver, lambda d: loaded_images(d, "#results") == 4)
        figures = driver.find_elements(By.CSS_SELECTOR, "#results figure")
        assert len(figures) == 4 and "seed" in figures[0].text and "not screened" in figures[0].text
        assert driver.switch_to.active_element.get_attribute("id") == "results-heading"  # focus after the action
        alt = figures[0].find_element(By.TAG_NAME, "img").get_attribute("alt")
        assert alt.startswith("a red porsche on a mountain road")
        shot(driver, "1-four-images")

        figures[1].find_element(By.CSS_SELECTOR, "button.pick").click()
        wait(driver, lambda d: d.find_element(By.ID, "picked").is_displayed())
        assert driver.find_element(By.ID, "open").get_attribute("href").startswith(service + "/images/")
        driver.find_element(By.ID, "more").click()
        wait(driver, lambda d: loaded_images(d, "#derived") == 2)
        assert "variation" in driver.find_element(By.CSS_SELECTOR, "#derived img").get_attribute("alt") \
            or "porsche" in driver.find_element(By.CSS_SELECTOR, "#derived img").get_attribute("alt")
        shot(driver, "2-more-like-this")

        driver.find_element(By.ID, "remove-background").click()
        wait(driver, lambda d: loaded_images(d, "#derived") == 3)  # one cut-out: it takes no seed
        # The history lists the folder's requests newest first: the two edits, then the generation.
        wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#history li")) == 3)
        entries = [li.text for li in driver.find_elements(By.CSS_SELECTOR, "#history li")]
        assert "remove_background" in entries[0] and "text_to_image" in entries[2]

        driver.find_element(By.ID, "folder").clear()
        driver.find_element(By.ID, "folder").send_keys("../escape")
        driver.find_element(By.ID, "generate").click()
        error = wait(driver, lambda d: d.find_element(By.ID, "error") if d.find_element(By.ID, "error")
                     .is_displayed() else None)
        assert error.text.startswith("Folder:") and "'.' or '..'" in error.text
        assert driver.switch_to.active_element.get_attribute("id") == "error"
        shot(driver, "3-an-error-in-plain-words")
    finally:
        driver.quit()


def test_the_page_asks_for_a_key_once_when_keys_are_on(tmp_path):
    from selenium.webdriver.common.by import By

    keys_file = tmp_path / "keys.json"
    key = add_key(str(keys_file), "browser")
    base, processes = start_offline(tmp_path, AIG_API_KEYS_FILE=str(keys_file))
    driver = browser()
    try:
        driver.get(f"{base}/ui/")
        wait(driver, lambda d: d.find_element(By.ID, "key-form").is_displayed())
        shot(driver, "4-asks-for-a-key")
        driver.find_element(By.ID, "api-key").send_keys(key)
        driver.find_element(By.CSS_SELECTOR, "#key-form button").click()
        generate(driver, "a lighthouse at dawn", count=2)
        # The images load through signed URLs: an <img src> sends no key header.
        wait(driver, lambda d: loaded_images(d, "#results") == 2)
        assert driver.execute_script("return sessionStorage.getItem('aig-api-key')") == key
        shot(driver, "5-with-a-key")
    finally:
        driver.quit()
        for process in processes:
            stop(process)


def test_the_page_fits_a_phone_and_keeps_a_strict_policy(service):
    import requests
    from selenium.webdriver.common.by import By

    page = requests.get(f"{service}/ui/", timeout=10)
    policy = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "'unsafe-inline'" not in policy and "<script>" not in page.text
    driver = browser(390, 844, phone=True)
    try:
        driver.get(f"{service}/ui/")
        generate(driver, "a small boat", count=2)
        wait(driver, lambda d: loaded_images(d, "#results") == 2)
        assert driver.execute_script("return window.innerWidth") == 390
        assert driver.execute_script("return document.documentElement.scrollWidth") <= 390  # no sideways scroll
        labels = {label.get_attribute("for") for label in driver.find_elements(By.TAG_NAME, "label")}
        fields = {f.get_attribute("id") for f in driver.find_elements(By.CSS_SELECTOR, "input, select, textarea")}
        assert fields <= labels  # every field has its label
        shot(driver, "6-phone-width")
    finally:
        driver.quit()


def test_images_appear_one_by_one_as_the_job_stores_them(tmp_path):
    from selenium.webdriver.common.by import By

    # One model call at a time, a second each: the job stores its three images a second apart.
    base, processes = start_offline(tmp_path, AIG_MODEL_CONCURRENCY="1", AIG_PLACEHOLDER_LATENCY_SECONDS="1")
    driver = browser()
    try:
        driver.get(f"{base}/ui/")
        generate(driver, "three kites", count=3)
        wait(driver, lambda d: loaded_images(d, "#results") >= 1)
        shown_early = loaded_images(driver, "#results")
        assert shown_early < 3 and driver.find_element(By.ID, "generate").get_attribute("disabled") is not None
        assert "Generating" in driver.find_element(By.ID, "status").text
        shot(driver, "7-images-as-they-land")
        wait(driver, lambda d: loaded_images(d, "#results") == 3)
        wait(driver, lambda d: "3 image(s) stored" in d.find_element(By.ID, "status").text)
    finally:
        driver.quit()
        for process in processes:
            stop(process)
