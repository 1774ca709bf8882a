"""Smoke test of benchmarks/hf_families.py: two families in-process into JSON, and a refusal's row."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from benchmark_scripts import load_benchmark

pytest.importorskip("transformers")


class Cumulative(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.cumsum(-1)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_two_families_write_their_outcomes(tmp_path: Path) -> None:
    script = load_benchmark("hf_families")
    out = tmp_path / "hf.json"
    assert script.main(["--families", "gpt2,nystromformer", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert "--families gpt2,nystromformer" in result["command"] and result["machine"]["threads"] == 1
    rows = {row["family"]: row for row in result["rows"]}
    for preset in script.PRESETS:  # nystromformer: its 1 / max(sum(k)) is held constant, as a normaliser's
        for family in ("gpt2", "nystromformer"):
            assert rows[family][preset]["status"] == "ok" and rows[family][preset]["smallest_score"] > 0
    assert rows["gpt2"]["deeplift"]["status"] == "ok" and rows["gpt2"]["deeplift"]["relative_gap"] < 1e-9
    assert rows["nystromformer"]["deeplift"]["status"] == "refused"  # (its iterations fold the batch)
    cumulative = nn.Sequential(nn.Linear(4, 3), Cumulative()).double().eval()  # no rule for cumsum: a refusal
    refused = script.outcome(cumulative, torch.randn(2, 4, dtype=torch.float64), "attnlrp")
    assert refused["status"] == "refused" and "'cumsum'" in refused["message"]
    with pytest.raises(SystemExit):
        script.main(["--families", "no-such-family", "--out", str(out)])
