"""Smoke test of benchmarks/hf_families.py: two families in-process, one explained and one refused, into JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmark_scripts import load_benchmark

pytest.importorskip("transformers")


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_two_families_write_their_outcomes(tmp_path: Path) -> None:
    script = load_benchmark("hf_families")
    out = tmp_path / "hf.json"
    assert script.main(["--families", "gpt2,nystromformer", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert "--families gpt2,nystromformer" in result["command"] and result["machine"]["threads"] == 1
    rows = {row["family"]: row for row in result["rows"]}
    for preset in script.PRESETS:
        assert rows["gpt2"][preset]["status"] == "ok" and rows["gpt2"][preset]["smallest_score"] > 0
    refused = rows["nystromformer"]["attnlrp"]  # a reciprocal of a path tensor (cp_lrp holds it constant)
    assert refused["status"] == "refused" and "'__rdiv__'" in refused["message"]
    with pytest.raises(SystemExit):
        script.main(["--families", "no-such-family", "--out", str(out)])
