"""The HTML report rendered in headless Chromium: no console errors, tables and images present, not blank.

Needs Debian's ``chromium`` and ``chromium-driver`` (``apt-get install -y chromium chromium-driver``); skipped
only when one of them is missing. The browser runs offline-friendly: no background networking, no sync, no
component updates, a fresh profile in tmp_path.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from relprop.cli import main
from relprop.viz.report import GridSummary, RunSummary, SampleMaps, render
from relprop.viz.text import html_page, html_sentence

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


# --- no script runs in a page built from hostile input ---------------------------------------------------

_MARKUP = [
    "<script>window.pwned=(window.pwned||0)+1</script>",
    '<img src=x onerror="window.pwned=(window.pwned||0)+1">',
    '"><svg onload="window.pwned=(window.pwned||0)+1">',
    "'><iframe srcdoc=\"<script>parent.pwned=1</script>\"></iframe>",
    "</title></style><body onload=\"window.pwned=1\">",
]
_HOSTILE = "".join(_MARKUP)


def _hostile_samples(methods: list[str]) -> SampleMaps:
    generator = np.random.default_rng(0)
    return SampleMaps(inputs=generator.uniform(-1, 1, (2, 8, 24)), masks=np.array([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]]),
                      labels=np.array([3, 5]), relevance={m: generator.normal(size=(2, 8, 24)) for m in methods},
                      clipped=np.array([False, True]))


def _hostile_pages(root: Path) -> dict[str, Path]:
    """Pages whose every text field, name, directory, number and sentence holds markup that would run a script."""
    methods = ["sa", _HOSTILE]
    method_scores = {"cosine": {"mean": _HOSTILE, "ci95": _HOSTILE}, "relevance_in_region": {"mean": _HOSTILE},
                     "conservation_error": {"mean": _HOSTILE}, "aopc": {"mean": _HOSTILE}, "flip_curve": _HOSTILE}
    run = RunSummary(
        directory=f"/runs/{_HOSTILE}", config={"arch": _HOSTILE, "dataset": _HOSTILE, "epochs": _HOSTILE, _HOSTILE: 1},
        history=[{"epoch": _HOSTILE, "loss": _HOSTILE, "train_accuracy": _HOSTILE, "val_accuracy": _HOSTILE,
                  "seconds": _HOSTILE}],
        evaluation={"accuracy": _HOSTILE, "test_samples": _HOSTILE, "methods": {m: method_scores for m in methods},
                    "random_flip": {"aopc": {"mean": _HOSTILE}, "flip_curve": _HOSTILE}},
        conservative=frozenset(methods), samples=_hostile_samples(methods))
    cell = {"arch": _HOSTILE, "dataset": _HOSTILE, "seed": _HOSTILE, "methods": {m: method_scores for m in methods},
            "random_flip": {"aopc": {"mean": _HOSTILE}}}
    grid = GridSummary(
        directory=_HOSTILE, status=[(_HOSTILE,) * 6], evaluated=1, methods=methods,
        first_seed={_HOSTILE: [cell]},
        accuracy_rows=[{_HOSTILE: _HOSTILE, "arch": _HOSTILE}],
        cosine_rows=[{"arch": _HOSTILE, "dataset": _HOSTILE, **{k: _HOSTILE for m in methods
                                                                for k in (m, f"{m} (thesis)")}}],
        scores={_HOSTILE: {_HOSTILE: {m: np.array([0.5, 0.7]) for m in methods}}},
        samples={_HOSTILE: {_HOSTILE: _hostile_samples(methods)}})
    tokens = [*_MARKUP, "fine"]
    sentence = html_sentence(tokens, np.linspace(-1, 1, len(tokens)), predicted=_HOSTILE, true=_HOSTILE,
                             title=_HOSTILE)
    pages = {"run": render(run), "grid": render(grid), "sentences": html_page([(_HOSTILE, sentence)], title=_HOSTILE)}
    paths = {}
    for name, page in pages.items():
        for markup in _MARKUP:
            assert markup not in page, (name, markup)
        paths[name] = root / f"{name}.html"
        paths[name].write_text(page, encoding="utf-8")
    return paths


def _hostile_run_report(root: Path) -> Path:
    """``relprop report`` of a trained run in a directory named like markup, with markup in its evaluation
    numbers and a method name. (Markup in config.json, whose ``epochs`` went into the page unescaped once, is
    refused before anything renders: tests/unit/test_report.py.)"""
    run = root / f"run{_MARKUP[1].replace('/', '_')}"
    assert main(["--quiet", "train", "--arch", "rlstm_sd", "--dataset", "digits-maj", "--epochs", "1",
                 "--limit", "60", "--out", str(run)]) == 0
    assert main(["--quiet", "evaluate", str(run), "--limit", "20", "--flip-limit", "10"]) == 0
    evaluation = json.loads((run / "evaluation.json").read_text())
    evaluation["methods"][_HOSTILE] = evaluation["methods"]["sa"]
    evaluation["accuracy"] = evaluation["test_samples"] = _HOSTILE
    (run / "evaluation.json").write_text(json.dumps(evaluation))
    assert main(["--quiet", "report", str(run), "--out", str(root / "run-directory.html")]) == 0
    return root / "run-directory.html"


def test_no_script_runs_in_pages_built_from_hostile_input(tmp_path: Path) -> None:
    if _CHROMIUM is None or _DRIVER is None:
        pytest.skip("headless Chromium test needs `chromium` and `chromedriver` on PATH "
                    "(Debian: apt-get install -y chromium chromium-driver)")
    pages = _hostile_pages(tmp_path)
    pages["run directory"] = _hostile_run_report(tmp_path)
    driver = _driver(tmp_path / "profile")
    try:
        # the check itself works: a page with a live script sets the flag
        control = tmp_path / "control.html"
        control.write_text(f"<!DOCTYPE html><title>c</title><body>{_MARKUP[1]}</body>", encoding="utf-8")
        driver.get(control.as_uri())
        from selenium.webdriver.support.ui import WebDriverWait

        WebDriverWait(driver, 5).until(lambda d: d.execute_script("return window.pwned === 1"))
        for name, path in pages.items():
            driver.get(path.resolve().as_uri())
            assert driver.execute_script("return document.readyState") == "complete"
            time.sleep(0.3)  # let image errors and onload handlers fire, if any were live
            assert driver.execute_script("return typeof window.pwned") == "undefined", name
            assert driver.execute_script("return document.querySelectorAll('script, iframe, svg').length") == 0, name
            assert "<script>" in driver.execute_script("return document.body.innerText"), name  # shown as text
    finally:
        driver.quit()
