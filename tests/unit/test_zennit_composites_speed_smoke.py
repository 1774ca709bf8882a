"""Smoke test of benchmarks/zennit_composites_speed.py: two models at a tiny size, one round, refusals recorded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmark_scripts import load_benchmark

pytest.importorskip("zennit")
pytest.importorskip("torchvision")


@pytest.mark.slow
def test_two_models_write_their_ratios_agreement_and_refusals(tmp_path: Path) -> None:
    script = load_benchmark("zennit_composites_speed")
    out = tmp_path / "speed.json"
    assert script.main(["--models", "resnet18,vgg11", "--size", "32", "--batch", "1", "--rounds", "1",
                        "--patterns", "2", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert "--models resnet18,vgg11" in result["command"] and result["machine"]["threads"] == 1
    resnet, vgg = result["rows"]
    # ResNet: batch norms and residual sums; VGG at 32 pixels: its adaptive pool spreads a 1 x 1 map to 7 x 7
    assert "batch_norm" in resnet["refused"]["pattern_net"] and "avg_pool" in vgg["refused"]["pattern_attribution"]
    assert "relprop_pattern_net" not in resnet["ratio_median"]
    assert vgg["relative_difference_to_zennit"]["epsilon_alpha2beta1"] < 1e-5  # no batch norm for zennit to merge
    for row in result["rows"]:
        assert row["learn_patterns_cpu_s_per_image"] > 0 and row["ms"]["gradient"] > 0
        assert all(value > 0 for value in row["ratio_median"].values())
