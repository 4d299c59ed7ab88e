"""The web console end to end: Debian's Chromium (headless, driven by Selenium and chromedriver)
against a real hub with a published server and audited tool calls.

Each page is checked in the DOM (the servers, versions, tools with schemas, connections,
the audit rows, the chain verdict) and by a screenshot that must not be blank.
"""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from mcp_hub.registry import Registry
from mcp_hub.settings import Settings

from .conftest import PROBE, ROOT, create_key_now, probe_entry
from .hub_server import HubServer

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1280,900",
         "--disable-dev-shm-usage"]


@pytest.fixture
def browser() -> Iterator[object]:
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        if os.environ.get("CI") == "true":
            pytest.fail("chromium and chromium-driver are required in CI (.ci/run installs them)")
        pytest.skip("Debian's chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def _not_blank(png: bytes, path: Path) -> None:
    """The screenshot has real content: many colours, and dark text pixels on the light page."""
    from PIL import Image

    path.write_bytes(png)
    image = Image.open(io.BytesIO(png)).convert("RGB")
    assert image.size[0] >= 800 and image.size[1] >= 600
    colours: list[tuple[int, tuple[int, int, int]]] = image.getcolors(maxcolors=1 << 20) or []  # type: ignore[assignment]
    assert len(colours) > 50, f"{path.name}: {len(colours)} colours, the page looks blank"
    dark = sum(count for count, (r, g, b) in colours if r + g + b < 200)
    assert dark > 500, f"{path.name}: almost no text drawn ({dark} dark pixels)"


def test_console_shows_marketplace_executions_and_chain(browser: object, tmp_path: Path) -> None:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver: WebDriver = browser  # type: ignore[assignment]
    # A table the console re-renders while a condition reads it raises StaleElementReference: poll again.
    wait = WebDriverWait(driver, 20, ignored_exceptions=(StaleElementReferenceException,))
    settings = Settings.load(data_dir=tmp_path / "data", restart_backoff=0.05)
    registry = Registry.from_data({"servers": {"test/probe": probe_entry()}}, root=ROOT)
    key = create_key_now(settings, "acme", "console", "admin")
    with HubServer.serve(settings, registry) as server:
        auth = {"authorization": f"Bearer {key}"}
        with httpx2.Client(base_url=server.url, headers=auth, timeout=60) as http:
            created = http.post("/v1/servers", json={
                "slug": "acme/published-probe", "description": "A probe published through the API", "tags": ["market"],
                "connections": {"probe": {"fields": ["token"], "required": False, "env": {"PROBE_TOKEN": "{token}"},
                                          "description": "An optional token"}},
                "version": {"version": "2.0.0", "command": ["{python}", str(PROBE)]}})
            assert created.status_code == 201, created.text
            for text in ("first", "second"):
                assert http.post("/v1/tools/call", json={"server": "acme/published-probe", "tool": "echo",
                                                         "arguments": {"text": text}}).json()["is_error"] is False
            assert http.post("/v1/tools/call", json={"server": "test/probe", "tool": "fail",
                                                     "arguments": {"message": "on purpose"}}).json()["is_error"] is True
            # The console itself is public; its API calls are not.
            assert http.get("/console/", headers={"authorization": ""}).status_code == 200

        driver.get(f"{server.url}/console/")
        status = driver.find_element(By.ID, "status")
        wait.until(lambda d: "API key" in status.text)  # without a key the API answers 401
        driver.find_element(By.ID, "api-key").send_keys(key)
        driver.find_element(By.CSS_SELECTOR, "#key-form button[type=submit]").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#servers-table tr.server-row")) == 2)
        rows = {r.get_attribute("data-slug"): r.text for r in driver.find_elements(By.CSS_SELECTOR, "tr.server-row")}
        assert "published" in rows["acme/published-probe"] and "probe" in rows["acme/published-probe"]
        assert "registry file" in rows["test/probe"]
        _not_blank(driver.get_screenshot_as_png(), tmp_path / "marketplace.png")

        driver.find_element(By.ID, "search").send_keys("market")
        wait.until(lambda d: [r.get_attribute("data-slug") for r in d.find_elements(By.CSS_SELECTOR, "tr.server-row")]
                   == ["acme/published-probe"])
        driver.find_element(By.CSS_SELECTOR, "tr.server-row").click()
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#tools .tool[data-tool=echo]")))
        assert "2.0.0" in driver.find_element(By.ID, "versions-table").text
        connections = driver.find_element(By.ID, "connections-table").text
        assert "probe" in connections and "token" in connections and "An optional token" in connections
        echo = driver.find_element(By.CSS_SELECTOR, "#tools .tool[data-tool=echo]")
        assert "Return the text unchanged." in echo.text and '"text"' in echo.find_element(By.TAG_NAME, "pre").text
        _not_blank(driver.get_screenshot_as_png(), tmp_path / "server.png")

        driver.find_element(By.CSS_SELECTOR, "nav a[data-page=executions]").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "tr.execution-row")) >= 3)
        table = driver.find_element(By.ID, "executions-table").text
        assert "acme/published-probe" in table and "echo" in table and "test/probe" in table
        _not_blank(driver.get_screenshot_as_png(), tmp_path / "executions.png")
        driver.find_element(By.CSS_SELECTOR, "#filters select[name=is_error] option[value=true]").click()
        driver.find_element(By.CSS_SELECTOR, "#filters button").click()
        wait.until(lambda d: [r.text for r in d.find_elements(By.CSS_SELECTOR, "tr.execution-row")]
                   and all("test/probe" in r.text for r in d.find_elements(By.CSS_SELECTOR, "tr.execution-row")))
        driver.find_elements(By.CSS_SELECTOR, "tr.execution-row")[0].click()
        assert "on purpose" in driver.find_element(By.ID, "execution-detail").text

        driver.find_element(By.CSS_SELECTOR, "nav a[data-page=chain]").click()
        verdict = wait.until(ec.presence_of_element_located((By.ID, "chain-verdict")))
        assert verdict.text == "Verified: the chain is intact"
        assert "record(s) checked" in driver.find_element(By.ID, "chain-result").text
        _not_blank(driver.get_screenshot_as_png(), tmp_path / "chain.png")
        shots = Path(os.environ.get("MCP_HUB_CONSOLE_SHOTS", "")) if os.environ.get("MCP_HUB_CONSOLE_SHOTS") else None
        if shots:  # for a person to look at: MCP_HUB_CONSOLE_SHOTS=/some/folder
            shots.mkdir(parents=True, exist_ok=True)
            for name in ("marketplace", "server", "executions", "chain"):
                shutil.copy(tmp_path / f"{name}.png", shots / f"{name}.png")
