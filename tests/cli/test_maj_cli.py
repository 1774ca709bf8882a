"""``relprop demo|train|evaluate|reproduce``: parsing, one-line user errors (exit 2), tracebacks kept for bugs."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import relprop.cli.maj
from relprop.cli import main, parser
from relprop.experiments.demo import DemoConfig, demo_configs

UserError = Callable[[list[str]], str]


@pytest.mark.parametrize("argv", [
    ["train", "--limit", "0"], ["train", "--batch-size", "0"], ["train", "--batch-size", "-3"],
    ["train", "--epochs", "0"], ["train", "--epochs", "two"], ["train", "--lr", "0"], ["train", "--lr", "inf"],
    ["train", "--arch", "typo"], ["train", "--dataset", "mnist"], ["train", "--threads", "0"],
    ["demo", "--epochs", "0"], ["demo", "--threads", "-1"], ["demo", "--arch", "lstm"],
    ["evaluate", ".", "--methods", ""], ["evaluate", ".", "--methods", "sa,bogus"],
    ["reproduce", "--methods", ""], ["reproduce", "--archs", "rlstm,typo"], ["reproduce", "--seeds", "0,-1"],
    ["reproduce", "--test-limit", "0"], ["reproduce", "--datasets", ","], ["reproduce", "--seeds", "1,,2"],
    ["reproduce", "--archs", ",rlstm"], ["reproduce", "--out", ""], ["train", "--out", " "], ["demo", "--out", ""],
    ["reproduce", "--collect", "--train-only"],
])
def test_bad_values_are_one_line(argv: list[str], user_error: UserError) -> None:
    line = user_error(argv)
    assert line.startswith(f"relprop {argv[0]}: error: argument ")


def test_run_and_out_must_be_directories(tmp_path: Path, tiny_run: Path, user_error: UserError) -> None:
    file = tmp_path / "file"
    file.write_text("not a run")
    assert "is a file" in user_error(["evaluate", str(file)])
    assert "does not exist" in user_error(["evaluate", str(tmp_path / "missing")])
    assert "not a run directory" in user_error(["evaluate", str(tmp_path)])
    for command in ("demo", "train", "reproduce"):
        assert "is a file" in user_error([command, "--out", str(file)])
        assert "is a file" in user_error([command, "--out", str(file / "below")])


def test_records_are_checked_before_anything_trains(tmp_path: Path, user_error: UserError,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    file = tmp_path / "file"
    file.write_text("not a directory")
    monkeypatch.setattr("relprop.experiments.reproduce.reproduce",
                        lambda *args, **kwargs: pytest.fail("the grid ran with bad --records"))
    grid = ["reproduce", "--out", str(tmp_path / "grid"), "--quick"]
    assert "is a file" in user_error([*grid, "--records", str(file)])
    assert f"{file} is a file" in user_error([*grid, "--records", str(file / "below")])
    assert "does not exist" in user_error([*grid, "--collect", "--records", str(tmp_path / "typo")])
    locked = tmp_path / "locked"
    locked.mkdir()
    monkeypatch.setattr("relprop.cli.common.os.access", lambda path, mode: Path(path) != locked)
    assert "--records: cannot write" in user_error([*grid, "--records", str(locked / "records")])
    assert not (tmp_path / "grid").exists() and not (locked / "records").exists()


@pytest.mark.skipif(os.geteuid() == 0 if hasattr(os, "geteuid") else True,
                    reason="root writes into read-only directories")
def test_read_only_out(tmp_path: Path, user_error: UserError) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert "read-only" in user_error(["train", "--out", str(locked / "run")])
        assert "read-only" in user_error(["demo", "--out", str(locked)])
    finally:
        locked.chmod(0o700)


def test_read_only_out_as_any_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, user_error: UserError) -> None:
    monkeypatch.setattr("relprop.cli.common.os.access", lambda path, mode: False)
    assert "read-only" in user_error(["reproduce", "--out", str(tmp_path / "grid")])
    monkeypatch.chdir(tmp_path)
    line = user_error(["train", "--dataset", "digits-maj"])  # the default run directory is checked too
    assert "--out" in line and "read-only" in line
    assert not (tmp_path / "runs").exists()


def test_failed_train_writes_nothing(tmp_path: Path, user_error: UserError) -> None:
    out = tmp_path / "run"
    user_error(["train", "--arch", "typo", "--dataset", "digits-maj", "--out", str(out)])
    assert not out.exists()


def test_errors_from_the_library_are_one_line(tmp_path: Path, user_error: UserError) -> None:
    run = tmp_path / "broken"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"arch": "rlstm_sd", "dataset": "digits-maj"}))
    line = user_error(["evaluate", str(run)])  # no weights: a missing-file error from the library
    assert line.startswith("relprop evaluate: error:") and "broken" in line


def test_corrupt_or_other_runs_are_one_line(tmp_path: Path, tiny_run: Path, user_error: UserError) -> None:
    config = (tiny_run / "config.json").read_text()
    line = user_error(["train", "--dataset", "digits-maj", "--epochs", "1", "--limit", "60", "--out", str(tiny_run)])
    assert "another configuration" in line and (tiny_run / "config.json").read_text() == config
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "config.json").write_text("{")
    assert "not valid JSON" in user_error(["evaluate", str(corrupt)])


def test_a_bug_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(args: object) -> int:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(relprop.cli.maj, "_train", broken)
    with pytest.raises(ZeroDivisionError):
        main(["train", "--dataset", "digits-maj"])


def test_quiet_and_threads_go_before_or_after_the_command() -> None:
    assert parser().parse_args(["demo", "--quiet"]).quiet
    assert parser().parse_args(["--quiet", "demo"]).quiet
    assert parser().parse_args(["text", "--quiet", "explain", "RUN"]).quiet  # also between a group and its command
    assert parser().parse_args(["text", "explain", "RUN", "--quiet"]).quiet
    assert not parser().parse_args(["demo"]).quiet
    assert parser().parse_args(["train"]).threads == 1
    assert parser().parse_args(["reproduce", "--threads", "2"]).threads == 2


def test_version_and_help_show_every_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit:
        main(["--version"])
    assert exit.value.code == 0 and capsys.readouterr().out.startswith("relprop ")
    for command in ("demo", "train", "evaluate", "reproduce"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = capsys.readouterr().out
        assert "--threads" in text and "(default: 1)" in text, command
    sub = {a.dest: a for a in parser()._subparsers._group_actions[0].choices["train"]._actions}  # type: ignore[union-attr]
    assert "rlstm_sd" in sub["arch"].help and "shallow" in sub["arch"].help  # type: ignore[operator]


def _options(p: object) -> list[tuple[str, object]]:
    import argparse

    assert isinstance(p, argparse.ArgumentParser)
    found: list[tuple[str, object]] = []
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found += [(f"{name} {where}", a) for where, a in _options(child)]
        elif not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            found.append((action.dest, action))
    return found


def test_every_option_has_a_description_and_its_default() -> None:
    import argparse

    from relprop.cli.common import Formatter

    formatter = Formatter("relprop")
    for where, action in _options(parser()):
        assert isinstance(action, argparse.Action)
        assert action.help, where
        if action.help != argparse.SUPPRESS and action.default not in (None, False, argparse.SUPPRESS):
            assert "(default" in (formatter._get_help_string(action) or ""), where


def test_demo_policy() -> None:
    train, evaluation = demo_configs(DemoConfig())
    assert (train.dataset, train.epochs, train.lr, train.limit) == ("digits-maj", 40, 2e-3, None)
    real, real_evaluation = demo_configs(DemoConfig(dataset="mnist-maj"))
    assert (real.epochs, real.limit, real_evaluation.limit) == (2, 10000, 1000)
    assert demo_configs(DemoConfig(epochs=3))[0].epochs == 3
    assert evaluation.methods == ("sa", "gb", "dtd", "lrp_a1.5b0.5")


def test_train_then_evaluate(tiny_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    threads = torch.get_num_threads()
    try:
        assert main(["evaluate", str(tiny_run), "--limit", "20", "--flip-limit", "10", "--methods", "sa,gb",
                     "--quiet"]) == 0
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr().out
    assert printed.startswith("accuracy ") and "cosine to ground truth" in printed
    results = json.loads((tiny_run / "evaluation.json").read_text())
    assert list(results["methods"]) == ["sa", "gb"] and results["test_samples"] == 20


def test_quiet_lasts_one_command(monkeypatch: pytest.MonkeyPatch) -> None:
    from relprop import progress

    seen: list[bool] = []
    monkeypatch.setattr(relprop.cli.maj, "_train", lambda args: seen.append(progress.is_quiet()) or 0)
    assert main(["train", "--quiet", "--dataset", "digits-maj"]) == 0
    assert seen == [True] and not progress.is_quiet()


@pytest.mark.slow
def test_demo_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    threads = torch.get_num_threads()
    try:
        assert main(["demo", "--epochs", "1", "--out", str(tmp_path / "demo"), "--quiet"]) == 0
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr().out
    assert "for 1 epoch ->" in printed and "(1 thread)" in printed and "test accuracy" in printed
    assert printed.count("+-") == 4  # one row per method
    history = json.loads((tmp_path / "demo" / "checkpoint.json").read_text())["history"]
    assert len(history) == 1 and (tmp_path / "demo" / "evaluation.json").is_file()


def test_out_where_the_file_system_refuses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           user_error: UserError) -> None:
    """Permission bits may allow what the file system refuses (/proc, a read-only mount as root): the directory
    is tried before anything runs, and nothing of the try is left behind."""
    def refused(*args: object, **kwargs: object) -> str:
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr("relprop.cli.common.tempfile.mkdtemp", refused)
    line = user_error(["demo", "--out", str(tmp_path / "demo")])
    assert "cannot write to" in line and "Read-only file system" in line
    monkeypatch.undo()
    from relprop.cli.common import output_dir

    assert output_dir(str(tmp_path / "demo")) == tmp_path / "demo"  # where it works: the probe is gone again
    assert not list(tmp_path.iterdir())


def test_train_on_a_finished_run_says_there_is_nothing_to_do(tiny_run: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from relprop.cli import main

    assert main(["--quiet", "train", "--arch", "rlstm_sd", "--dataset", "digits-maj", "--epochs", "1",
                 "--limit", "100", "--out", str(tiny_run)]) == 0
    assert "nothing to train: the run has finished (1 epoch;" in capsys.readouterr().out


def test_demo_into_another_run_fails_before_its_banner(tiny_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The directory check comes first: no "training ... then explaining ..." lines above the error."""
    capsys.readouterr()
    assert main(["demo", "--dataset", "digits-maj", "--arch", "deep", "--out", str(tiny_run)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "another configuration" in captured.err


def _copy_run(source: Path, target: Path) -> Path:
    target.mkdir()
    for path in source.iterdir():
        if path.is_file():
            (target / path.name).write_bytes(path.read_bytes())
    return target


def test_damaged_runs_are_refused_and_nothing_is_lost(tmp_path: Path, tiny_run: Path, user_error: UserError) -> None:
    """A resume that fails on a damaged checkpoint leaves config.json as it was (it used to say 2 epochs, then
    fail), and a run directory with checkpoints but no config.json is not swept to start over (without a manifest
    they are a killed first epoch's, which config.json precedes)."""
    damaged = _copy_run(tiny_run, tmp_path / "damaged")
    config = (damaged / "config.json").read_text()
    (damaged / next(p.name for p in damaged.glob("last-*.safetensors"))).write_bytes(b"not safetensors")
    train = ["train", "--arch", "rlstm_sd", "--dataset", "digits-maj", "--epochs", "2", "--limit", "100", "--out"]
    assert "last-0001.safetensors is not the file" in user_error([*train, str(damaged)])  # its SHA-256 differs
    assert (damaged / "config.json").read_text() == config
    run = _copy_run(tiny_run, tmp_path / "without-config")
    (run / "config.json").unlink()
    kept = sorted(p.name for p in run.iterdir())
    line = user_error([*train, str(run)])
    assert "holds checkpoints" in line and "but no config.json" in line
    assert sorted(p.name for p in run.iterdir()) == kept


def test_a_config_that_is_not_a_mapping_is_one_line(tmp_path: Path, tiny_run: Path, user_error: UserError) -> None:
    run = _copy_run(tiny_run, tmp_path / "listed")
    (run / "config.json").write_text("[1]")
    for argv in (["report", str(run), "--out", str(tmp_path / "report")], ["evaluate", str(run)]):
        assert "config.json" in user_error(argv)
    del_arch = _copy_run(tiny_run, tmp_path / "no-arch")
    saved = json.loads((del_arch / "config.json").read_text())
    del saved["arch"]
    (del_arch / "config.json").write_text(json.dumps(saved))
    assert "arch" in user_error(["evaluate", str(del_arch)])


def test_one_fold_and_failed_cells(tmp_path: Path, user_error: UserError, capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """--folds 1 is a user error (it was sklearn's ValueError), and a grid whose cells fail exits 1, not 0."""
    assert "at least 2 folds" in user_error(["reproduce", "--quick", "--archs", "shallow", "--datasets", "digits-maj",
                                              "--folds", "1", "--out", str(tmp_path / "folds")])
    from relprop.experiments import reproduce as reproduce_module

    monkeypatch.setattr(reproduce_module, "run_cell", lambda *args: {"error": "digits-maj/shallow/seed0: broken"})
    capsys.readouterr()
    code = main(["--quiet", "reproduce", "--quick", "--archs", "shallow", "--datasets", "digits-maj", "--out",
                 str(tmp_path / "grid")])
    assert code == 1 and "digits-maj/shallow/seed0: broken" in capsys.readouterr().out
