"""Smoke test of benchmarks/timm_families.py: three families in-process, into JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmark_scripts import load_benchmark

pytest.importorskip("timm")


def test_three_families_write_their_outcomes(tmp_path: Path) -> None:
    script = load_benchmark("timm_families")
    assert script.family("tf_efficientnet_b0") == "tf_efficientnet" and script.family("resnet50") == "resnet"
    out = tmp_path / "timm.json"
    assert script.main(["--families", "resnet,tf_efficientnet,convit", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert "--families resnet,tf_efficientnet,convit" in result["command"] and result["machine"]["threads"] == 1
    rows = {row["family"]: row for row in result["rows"]}
    assert result["built"] == 3 and result["explained"] == {"epsilon_plus_flat": 2, "attnlrp": 3, "deeplift": 3}
    for preset in script.PRESETS:
        assert rows["resnet"][preset]["status"] == "ok" and rows["tf_efficientnet"][preset]["status"] == "ok"
    assert rows["convit"]["epsilon_plus_flat"]["status"] == "refused"  # softmax has no rule under a CNN preset
    assert rows["convit"]["attnlrp"]["status"] == "ok"  # its attn /= attn.sum(-1): the divisor held constant
    for family in rows:  # DeepLIFT sums to f(x) - f(x') up to float32 rounding
        assert rows[family]["deeplift"]["gap"] <= 1e-3 * rows[family]["deeplift"]["difference"], family
    with pytest.raises(SystemExit):
        script.main(["--families", "no-such-family", "--out", str(out)])
