"""The HTML report rendered in headless Chromium: no console errors, tables and images present, not blank.

Needs Debian's ``chromium`` and ``chromium-driver`` (``apt-get install -y chromium chromium-driver``); skipped
only when one of them is missing. The browser runs offline-friendly: no background networking, no sync, no
component updates, a fresh profile in tmp_path.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image

from relprop.cli import main

pytestmark = pytest.mark.browser

_CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
_DRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def grid_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if _CHROMIUM is None or _DRIVER is None:
        pytest.skip("headless Chromium test needs `chromium` and `chromedriver` on PATH "
                    "(Debian: apt-get install -y chromium chromium-driver)")
    grid = tmp_path_factory.mktemp("browser") / "grid"
    assert main(["--quiet", "reproduce", "--quick", "--datasets", "digits-maj", "--archs", "rlstm_sd",
                 "--epochs", "1", "--limit", "100", "--test-limit", "30", "--out", str(grid)]) == 0
    assert main(["--quiet", "report", str(grid)]) == 0
    return grid / "report.html"


def _driver(profile: Path):  # -> selenium.webdriver.Chrome
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(_CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 f"--user-data-dir={profile}", "--window-size=1280,900"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=str(_DRIVER)), options=options)


def test_report_renders_in_headless_chromium(grid_report: Path, tmp_path: Path) -> None:
    driver = _driver(tmp_path / "profile")
    try:
        driver.get(grid_report.resolve().as_uri())
        assert driver.execute_script("return document.readyState") == "complete"
        severe = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        assert severe == []
        counts = driver.execute_script(
            "return {tables: document.querySelectorAll('table').length,"
            " rows: document.querySelectorAll('tbody tr').length,"
            " images: document.images.length,"
            " broken: Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0).length,"
            " title: document.title, height: document.documentElement.scrollHeight}")
        assert counts["tables"] == 4 and counts["rows"] >= 4  # cells, accuracy, cosine, AOPC
        assert counts["images"] == 6 and counts["broken"] == 0  # cosine bars, gallery, 4 flipping figures
        assert counts["title"] == "relprop reproduce grid"
        driver.set_window_size(1280, min(int(counts["height"]) + 100, 6000))
        shot = tmp_path / "report.png"
        assert driver.save_screenshot(str(shot))
    finally:
        driver.quit()
    with Image.open(shot) as image:
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
        assert image.width >= 1000 and image.height > 900
    assert colours is not None and len(colours) > 2
    # saturated red or blue pixels (heatmaps, plot lines) exist: the page is drawn in colour, not blank
    assert any(r > 200 and g < 80 and b < 80 or b > 200 and r < 80 and g < 80 for _, (r, g, b) in colours)
