"""``relprop prototypes`` (class prototypes of a trained MAJ run: simple AM, AM + expert) and ``relprop report``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import load_file

from relprop.cli import main

UserError = Callable[[list[str]], str]


def test_prototypes_expert_raises_data_likelihood(tiny_run: Path) -> None:
    classes = [0, 3, 7]
    assert main(["--quiet", "prototypes", str(tiny_run), "--classes", "0,3,7", "--expert", "--steps", "40",
                 "--fit-limit", "300"]) == 0
    out = tiny_run / "prototypes"
    for name in ("am", "am_expert"):
        with Image.open(out / f"prototypes_{name}.png") as image:
            assert image.format == "PNG" and image.width > image.height > 0
    scores = json.loads((out / "prototypes.json").read_text())
    tensors = load_file(str(out / "prototypes.safetensors"))
    assert tuple(tensors["am"].shape) == (len(classes), 12, 16)  # digits-maj: 12 steps of 8x2 pixels
    assert float(tensors["am"].abs().max()) <= 1.0  # the box constraint of the pixel range
    assert [r["class"] for r in scores["am"]] == classes
    for simple, expert in zip(scores["am"], scores["am_expert"]):
        assert simple["log_p_class"] <= 0.0 and expert["log_p_class"] <= 0.0
        assert expert["log_p_x"] >= simple["log_p_x"], (simple, expert)
    # simple AM maximises log p(c|x) alone: its prototypes are classified as their class
    assert [r["predicted"] for r in scores["am"]] == classes
    assert scores["prior"]["weight"] == 0.01


def test_prototypes_default_prior_weight_keeps_classes_apart(tiny_run: Path, tmp_path: Path) -> None:
    # a prior weight of 1 lets log p(x) (hundreds of nats) drown log p(c|x): every class becomes the mean
    # input. The default weight keeps the class term in play: prototypes of different classes differ.
    spread, class_scores = {}, {}
    for weight in ("1", None):
        out = tmp_path / f"weight{weight}"
        extra = ["--prior-weight", weight] if weight else []
        assert main(["--quiet", "prototypes", str(tiny_run), "--classes", "0,3,7", "--expert", "--steps", "40",
                     "--fit-limit", "300", "--out", str(out), *extra]) == 0
        expert = load_file(str(out / "prototypes.safetensors"))["am_expert"].reshape(3, -1).double()
        spread[weight] = float(torch.cdist(expert, expert).max())
        scores = json.loads((out / "prototypes.json").read_text())["am_expert"]
        class_scores[weight] = sum(r["log_p_class"] for r in scores)
    assert spread[None] > 3 * spread["1"], spread
    assert class_scores[None] > class_scores["1"], class_scores


def test_prototypes_without_expert_and_norm_constraint(tiny_run: Path, tmp_path: Path) -> None:
    assert main(["--quiet", "prototypes", str(tiny_run), "--classes", "1", "--steps", "10", "--norm", "3",
                 "--fit-limit", "200", "--out", str(tmp_path / "p")]) == 0
    scores = json.loads((tmp_path / "p" / "prototypes.json").read_text())
    assert "am_expert" not in scores and scores["constraint"]["norm"] == 3.0
    x = load_file(str(tmp_path / "p" / "prototypes.safetensors"))["am"]
    assert float(x.reshape(1, -1).norm()) <= 3.0 + 1e-4
    assert not (tmp_path / "p" / "prototypes_am_expert.png").exists()


def test_prototypes_bad_arguments(tiny_run: Path, tmp_path: Path, user_error: UserError) -> None:
    assert "0..9" in user_error(["prototypes", str(tiny_run), "--classes", "0,12"])
    assert "does not exist" in user_error(["prototypes", str(tmp_path / "missing")])
    assert "is not a run directory" in user_error(["prototypes", str(tmp_path)])
    (tmp_path / "file").write_text("x")
    assert "is a file" in user_error(["prototypes", str(tmp_path / "file")])
    for option, value in [("--steps", "0"), ("--fit-limit", "0"), ("--components", "-1"), ("--lr", "nan"),
                          ("--norm", "0"), ("--prior", "laplace"), ("--out", str(tmp_path / "file"))]:
        assert option in user_error(["prototypes", str(tiny_run), option, value])


def test_report_bad_arguments(tiny_run: Path, tmp_path: Path, user_error: UserError) -> None:
    (tmp_path / "file").write_text("x")
    assert "is a file" in user_error(["report", str(tmp_path / "file")])
    assert "does not exist" in user_error(["report", str(tmp_path / "missing")])
    assert "is a directory" in user_error(["report", str(tiny_run), "--out", str(tmp_path)])
    assert "is a file" in user_error(["report", str(tiny_run), "--out", str(tmp_path / "file" / "r.html")])
