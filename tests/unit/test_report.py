"""Tests for relprop.viz.report and ``relprop report``: self-contained HTML of a tiny run and a tiny grid."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from relprop.cli import main
from relprop.errors import DataError
from relprop.experiments.reproduce import THESIS_FOLDS
from relprop.experiments.summary import write_report

_TINY = ["--quiet"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("report") / "run"
    assert main([*_TINY, "train", "--arch", "rlstm_sd", "--dataset", "digits-maj", "--epochs", "1", "--limit", "100",
                 "--out", str(run)]) == 0
    assert main([*_TINY, "evaluate", str(run), "--limit", "30", "--flip-limit", "20"]) == 0
    return run


@pytest.fixture(scope="module")
def tiny_grid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    grid = tmp_path_factory.mktemp("report") / "grid"
    assert main([*_TINY, "reproduce", "--quick", "--datasets", "digits-maj", "--archs", "rlstm_sd,deep",
                 "--epochs", "1", "--limit", "100", "--test-limit", "30", "--out", str(grid)]) == 0
    return grid


def _assert_self_contained(page: str) -> list[Image.Image]:
    """No network or file reference anywhere; every image is an embedded, decodable PNG. Returns the images."""
    assert page.startswith("<!DOCTYPE html>")
    for forbidden in ("http://", "https://", 'src="/', "<script", "url(", "@import"):
        assert forbidden not in page, forbidden
    for href in re.findall(r'href="([^"]*)"', page):
        assert href.startswith(("data:", "#")), href
    sources = re.findall(r'<img\b[^>]*\bsrc="([^"]*)"', page)
    assert len(sources) == page.count("<img")
    images = []
    for source in sources:
        assert source.startswith("data:image/png;base64,")
        image = Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1], validate=True)))
        assert image.format == "PNG" and image.width > 0 and image.height > 0
        images.append(image)
    return images


def test_run_report_has_tables_and_images(tiny_run: Path) -> None:
    assert main([*_TINY, "report", str(tiny_run)]) == 0
    page = (tiny_run / "report.html").read_text(encoding="utf-8")
    images = _assert_self_contained(page)
    evaluation = json.loads((tiny_run / "evaluation.json").read_text())
    methods = list(evaluation["methods"])
    # accuracy curve + the heatmap figure (input and every method, with a colour bar) + the pixel-flipping figure
    assert len(images) == 3
    gallery = images[1]
    assert gallery.width >= 1000 and gallery.height > 600  # large enough to read (it was ~130 px per map)
    assert page.count("<table") == 3  # configuration, training history, evaluation
    for text in ("Configuration", "Training", "Evaluation", "Heatmaps", "Pixel flipping", "validation accuracy",
                 "conservation error", "relevance on object", "random order", f"{evaluation['accuracy']:.4f}"):
        assert text in page, text
    for method in methods:
        cosine = evaluation["methods"][method]["cosine"]["mean"]
        assert f"<td>{method}</td><td>{cosine:.3f} &plusmn;" in page
        row = re.search(f"<tr><td>{re.escape(method)}</td>(.*?)</tr>", page)
        assert row is not None
        cells = re.findall("<td>(.*?)</td>", row.group(1))
        assert cells[2] == f"{evaluation['methods'][method]['relevance_on_object']['mean']:.3f}"
        conservation = cells[3]
        # SA and GB do not distribute the logit: no conservation error for them, one for the LRP family
        assert (conservation == "&ndash;") == (method in ("sa", "gb")), (method, conservation)
    for explained in ("exceeds 1 when the distractor block holds negative relevance", "logit &le; 0"):
        assert explained in page, explained


HOSTILE = '<script>window.pwned=1</script><img src=x onerror="window.pwned=1">'


def hostile_run(tiny_run: Path, parent: Path) -> Path:
    """A copy of the tiny run in a directory named like markup, with markup in config, evaluation and method names."""
    copy = parent / f"run{HOSTILE.replace('/', '_')}"
    shutil.copytree(tiny_run, copy)
    evaluation = json.loads((copy / "evaluation.json").read_text())
    evaluation["methods"][HOSTILE] = {**evaluation["methods"]["sa"], "aopc": {"mean": HOSTILE}}
    evaluation["accuracy"] = evaluation["test_samples"] = HOSTILE
    (copy / "evaluation.json").write_text(json.dumps(evaluation))
    return copy


def test_run_report_escapes_text(tiny_run: Path, tmp_path: Path) -> None:
    page = write_report(hostile_run(tiny_run, tmp_path), tmp_path / "out" / "page.html").read_text(encoding="utf-8")
    assert "<script" not in page and "<img src=x" not in page and "onerror=\"" not in page
    assert page.count("&lt;script&gt;window.pwned=1&lt;/script&gt;") >= 3  # directory, method, accuracy


def test_a_hostile_config_is_refused_before_anything_renders(tiny_run: Path, tmp_path: Path) -> None:
    copy = hostile_run(tiny_run, tmp_path)
    config = json.loads((copy / "config.json").read_text())
    config["epochs"] = HOSTILE  # the field that once went into the page unescaped
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(DataError, match="config.json: field 'epochs' must be int"):
        write_report(copy, tmp_path / "out" / "page.html")
    assert not (tmp_path / "out" / "page.html").exists()


def test_report_of_a_run_not_yet_evaluated_recomputes_heatmaps(tiny_run: Path, tmp_path: Path) -> None:
    copy = tmp_path / "run"
    copy.mkdir()
    manifest = json.loads((tiny_run / "checkpoint.json").read_text())
    for name in ("config.json", "checkpoint.json", *manifest["files"].values()):
        shutil.copy(tiny_run / name, copy / name)
    page = write_report(copy).read_text(encoding="utf-8")
    images = _assert_self_contained(page)
    assert "Not evaluated yet" in page and "recomputed from the evaluated checkpoint" in page
    assert len(images) == 2  # accuracy curve, heatmap grid (input + 4 methods)
    assert page.count("<table") == 2


def test_an_evaluation_of_an_older_checkpoint_is_flagged(tiny_run: Path, tmp_path: Path) -> None:
    """A run that trained on after its evaluation: the page says the table is of another epoch than the heatmaps."""
    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy)
    page = write_report(copy).read_text(encoding="utf-8")
    assert "Out of date" not in page
    evaluation = json.loads((copy / "evaluation.json").read_text())
    (copy / "evaluation.json").write_text(json.dumps({**evaluation, "checkpoint_epoch": 7}))
    page = write_report(copy).read_text(encoding="utf-8")
    assert "<b>Out of date:</b> this evaluation is of epoch 7" in page and "now holds epoch 1" in page


def test_grid_report_has_tables_gallery_and_curves(tiny_grid: Path) -> None:
    out = tiny_grid / "site" / "grid.html"
    assert main([*_TINY, "report", str(tiny_grid), "--out", str(out)]) == 0
    page = out.read_text(encoding="utf-8")
    images = _assert_self_contained(page)
    methods = ["sa", "gb", "dtd", "lrp_a1.5b0.5"]
    # cosine bars, one heatmap figure per architecture, one flipping figure per method
    assert len(images) == 1 + 2 + len(methods)
    assert page.count("<table") == 4  # cells, accuracy, cosine, AOPC
    for text in ("2 of 2 cells evaluated", "heatmaps rlstm_sd on digits-maj", "heatmaps deep on digits-maj",
                 "thesis (single model)", "thesis (10-fold mean)", "<td>lrp_a1.5b0.5</td>",
                 "Pixel flipping", "random order"):
        assert text in page, text
    gallery = max(images, key=lambda image: image.width * image.height)
    assert len(gallery.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 20  # digits and heatmaps, not blank


def test_grid_report_partial_grid_and_thesis_numbers(tiny_grid: Path, tmp_path: Path) -> None:
    copy = tmp_path / "grid"
    shutil.copytree(tiny_grid, copy)
    (copy / "digits-maj" / "deep" / "seed0" / "evaluation.json").unlink()  # a cell still training
    # present the R-LSTM-SD cell as an MNIST-MAJ result so that thesis numbers exist for it
    moved = copy / "mnist-maj" / "rlstm_sd" / "seed0"
    moved.parent.mkdir(parents=True)
    shutil.move(copy / "digits-maj" / "rlstm_sd" / "seed0", moved)
    evaluation = json.loads((moved / "evaluation.json").read_text())
    evaluation["dataset"] = "mnist-maj"
    (moved / "evaluation.json").write_text(json.dumps(evaluation))
    page = write_report(copy).read_text(encoding="utf-8")
    _assert_self_contained(page)
    assert "1 of 2 cells evaluated" in page
    thesis = THESIS_FOLDS[("rlstm_sd", "mnist-maj")]  # the thesis has 10-fold means only for this cell
    ours = evaluation["methods"]["sa"]["cosine"]["mean"]
    assert f"<td>{ours:.3f} (1 run)</td><td>&ndash;</td><td>{thesis['sa']:.3f}</td>" in page


def test_grid_without_its_data_fails_saying_how_to_supply_it(
    tiny_grid: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = tmp_path / "grid"
    shutil.copytree(tiny_grid, copy)
    config_path = copy / "digits-maj" / "deep" / "seed0" / "config.json"
    config = json.loads(config_path.read_text())
    config["dataset"] = "mnist-maj"  # a dataset that is not bundled: its files are absent here
    config_path.write_text(json.dumps(config))
    monkeypatch.setenv("RELPROP_DATA", str(tmp_path / "empty"))
    monkeypatch.setenv("RELPROP_CACHE", str(tmp_path / "cache"))

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    assert main(["report", str(copy)]) == 2
    error = capsys.readouterr().err
    assert "need the test data of mnist-maj" in error and "Set RELPROP_DATA" in error, error
    assert not (copy / "report.html").exists()


def test_bad_directory_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes.txt").write_text("not a run")
    with pytest.raises(ValueError, match="neither a run directory"):
        write_report(tmp_path)
    with pytest.raises(DataError, match="not a directory"):
        write_report(tmp_path / "missing")
    assert main(["report", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"relprop report: error: {tmp_path} is neither a run directory"), error
    assert error.count("relprop report:") == 1, error
    assert not (tmp_path / "report.html").exists()
