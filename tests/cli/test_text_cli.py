"""``relprop text train|explain|evaluate|report`` end to end on tiny models trained on the real SST files."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from relprop.cli import main

UserError = Callable[[list[str]], str]
_DATA = os.environ.get("RELPROP_DATA")
pytestmark = pytest.mark.skipif(
    not _DATA or not (Path(_DATA) / "sst" / "trees").is_dir(), reason="set RELPROP_DATA to the data folder"
)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("text")
    out = {"cnn": root / "cnn", "bilstm": root / "bilstm"}
    common = ["--classes", "2", "--epochs", "1", "--train-limit", "300", "--threads", "1"]
    with contextlib.redirect_stderr(io.StringIO()) as err:
        assert main(["--quiet", "text", "train", "--model", "cnn", "--filters", "8", *common,
                     "--out", str(out["cnn"])]) == 0
    assert "text cnn epoch 1/1: loss " in err.getvalue()  # --quiet keeps the per-epoch lines
    assert main(["--quiet", "text", "train", "--model", "bilstm", "--hidden", "6", *common,
                 "--out", str(out["bilstm"])]) == 0
    return out


def test_train_writes_runs(runs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    for model, path in runs.items():
        meta = json.loads((path / "run.json").read_text())
        assert meta["train_config"]["model"] == model and len(meta["history"]) == 1
        assert 0.0 <= meta["history"][0]["test_accuracy"] <= 1.0
        assert (path / "model.safetensors").stat().st_size > 0


@pytest.mark.parametrize(("model", "method"), [("cnn", "ig"), ("bilstm", "lstm_epsilon")])
def test_explain_prints_a_heatmap(
    runs: dict[str, Path], model: str, method: str, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    code = main(["text", "explain", str(runs[model]), "A gorgeous, witty film.", "Dull.", "--method", method,
                 "--color", "always"])
    printed = capsys.readouterr().out
    assert code == 0
    assert printed.count("predicted: ") == 2 and "\x1b[48;2;" in printed and "gorgeous" in printed
    assert printed.count("sum of relevance") == 2


def test_explain_colours_only_a_terminal(
    runs: dict[str, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert main(["text", "explain", str(runs["cnn"]), "Dull."]) == 0  # captured stdout is no terminal
    printed = capsys.readouterr().out
    assert "\x1b" not in printed and "Dull[" in printed
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    monkeypatch.setenv("NO_COLOR", "1")
    assert main(["text", "explain", str(runs["cnn"]), "Dull."]) == 0
    assert "\x1b" not in capsys.readouterr().out


def test_deprecated_run_option_still_works(runs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["text", "explain", "Dull.", "--run", str(runs["cnn"])]) == 0
    captured = capsys.readouterr()
    assert "--run is deprecated" in captured.err and captured.out.count("predicted: ") == 1


def test_explain_rejects_lstm_lrp_on_the_cnn(runs: dict[str, Path], user_error: UserError) -> None:
    assert "LSTM cells" in user_error(["text", "explain", str(runs["cnn"]), "fine", "--method", "lstm_epsilon"])


def test_text_user_errors(runs: dict[str, Path], tmp_path: Path, user_error: UserError) -> None:
    cnn = str(runs["cnn"])
    assert "without a word" in user_error(["text", "explain", cnn, "  "])
    assert "no sentence to explain" in user_error(["text", "explain", cnn])
    assert "not a run directory" in user_error(["text", "explain", str(tmp_path), "fine"])
    assert "unknown method bogus" in user_error(["text", "report", cnn, "--methods", "bogus"])
    assert "LSTM cells" in user_error(["text", "report", cnn, "--methods", "lstm_epsilon", "--out",
                                       str(tmp_path / "r.html")])
    assert "is a directory" in user_error(["text", "report", cnn, "--out", str(tmp_path)])
    assert "at least one" in user_error(["text", "evaluate", cnn, "--methods", ""])
    assert "LSTM cells" in user_error(["text", "evaluate", cnn, "--methods", "lstm_epsilon", "--limit", "3"])
    for option in (["--limit", "0"], ["--steps", "0"], ["--split", "train"], ["--threads", "0"]):
        assert option[0] in user_error(["text", "evaluate", cnn, *option])
    for option in (["--epochs", "0"], ["--batch-size", "-1"], ["--classes", "3"], ["--model", "gru"]):
        assert option[0] in user_error(["text", "train", *option])


def test_evaluate_and_report(runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    methods = "ig,lrp_epsilon,gradient_x_input"
    for path in runs.values():
        assert main(["--quiet", "text", "evaluate", str(path), "--limit", "12", "--steps", "4",
                     "--methods", methods]) == 0
        rows = list(csv.DictReader((path / "evaluation.csv").open()))
        assert [r["method"] for r in rows] == [*methods.split(","), "random"]
        assert all(int(r["sentences"]) == 12 for r in rows)
        evaluation = json.loads((path / "evaluation.json").read_text())
        assert evaluation["limit"] == 12 and len(evaluation["word_deletion"][0]["drops"]) == 5
    out = tmp_path / "report.html"
    assert main(["text", "report", str(runs["cnn"]), str(runs["bilstm"]), "--quiet", "--out", str(out),
                 "--count", "3", "--max-length", "12", "--methods", "ig,lstm_epsilon",
                 "--sentence", "<i>not</i> bad"]) == 0
    page = out.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and "<i>not" not in page and "&lt;" in page
    assert page.count('class="relprop-sentence"') == 4 * (2 + 1)  # 4 sentences: ig on both, lstm on the BiLSTM
    assert "Word deletion (AOPC)" in page and "&plusmn;" in page
    assert "report with 4 sentences x 2 runs" in capsys.readouterr().out
