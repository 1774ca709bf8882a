"""relprop.files: atomic writes, JSON against a schema, and checkpoints that fail with one DataError each."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save
from torch import nn

from relprop.errors import DataError
from relprop.experiments.train import TrainConfig
from relprop.files import (
    atomic_write,
    check_schema,
    load_tensors,
    load_torch,
    load_weights,
    read_json,
    save_weights,
    schema_of,
    write_json,
)


def test_atomic_write_leaves_no_temp_file_after_an_error(tmp_path: Path) -> None:
    def fails(handle: object) -> None:
        raise RuntimeError("disk full")

    with pytest.raises(DataError, match=r"cannot write .*a.json: disk full \(is the disk full\?\)"):
        atomic_write(tmp_path / "a.json", fails)  # (torch.save reports a failed write as a RuntimeError)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(("content", "message"), [
    (b"{", r"is not valid JSON"),
    (b"\xff\xfe{}", r"is not valid JSON"),
    (b"[" * 100_000 + b"]" * 100_000, r"is nested too deeply|is not valid JSON"),
])
def test_malformed_json_names_the_file(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "history.json"
    path.write_bytes(content)
    with pytest.raises(DataError, match=rf"{path} ({message})"):
        read_json(path)
    with pytest.raises(DataError, match=r"missing file .*nothing\.json"):
        read_json(tmp_path / "nothing.json")


CONFIG = schema_of(TrainConfig)


@pytest.mark.parametrize(("change", "message"), [
    ({"epochs": "10"}, r"field 'epochs' must be int, got str '10'"),
    ({"epochs": True}, r"field 'epochs' must be int, got bool"),
    ({"lr": float("nan")}, r"field 'lr' must be a finite number"),
    ({"limit": [1]}, r"field 'limit' must be int or null, got list"),
    ({"evil": "<script>"}, r"the file has unknown keys \['evil'\]"),
])
def test_config_json_with_wrong_types_or_unknown_keys_names_the_field(
    tmp_path: Path, change: dict[str, object], message: str
) -> None:
    import dataclasses

    path = tmp_path / "config.json"
    write_json(path, {**dataclasses.asdict(TrainConfig()), **change})
    with pytest.raises(DataError, match=rf"config\.json: .*{message}"):
        read_json(path, CONFIG)
    write_json(path, dataclasses.asdict(TrainConfig()))
    assert TrainConfig(**read_json(path, CONFIG)) == TrainConfig()


def test_nested_schema_names_the_list_index_and_a_missing_key() -> None:
    history = [{"epoch": int, "loss": float, "val_accuracy": float, "lr?": float}]
    check_schema([{"epoch": 1, "loss": 0.5, "val_accuracy": 1}], history, "history.json")
    with pytest.raises(DataError, match=r"history.json: field '\[1\].loss' must be float, got str"):
        check_schema([{"epoch": 1, "loss": 0.5, "val_accuracy": 1.0},
                      {"epoch": 2, "loss": "x", "val_accuracy": 1.0}], history, "history.json")
    with pytest.raises(DataError, match=r"field '\[0\]' misses keys \['val_accuracy'\]"):
        check_schema([{"epoch": 1, "loss": 0.5}], history, "history.json")
    with pytest.raises(DataError, match=r"the file must be a list, got dict"):
        check_schema({}, history, "history.json")


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))


def _header_file(path: Path, header: dict[str, object], payload: bytes = b"") -> Path:
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + payload)
    return path


@pytest.mark.parametrize("kind", ["empty", "garbage", "truncated", "huge-header", "offsets-outside", "overlapping"])
def test_corrupt_or_malicious_safetensors_give_one_data_error(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "model.safetensors"
    good = save({k: v.contiguous() for k, v in _model().state_dict().items()})
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "garbage":
        path.write_bytes(os.urandom(64))
    elif kind == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif kind == "huge-header":
        path.write_bytes(struct.pack("<Q", 1 << 60) + b"{}")
    elif kind == "offsets-outside":
        _header_file(path, {"0.weight": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 1 << 40]}})
    else:
        _header_file(path, {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                            "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, bytes(12))
    with pytest.raises(DataError, match=str(path)):
        load_weights(_model(), path)
    with pytest.raises(DataError, match=str(path)):
        load_tensors(path)


def test_weights_that_do_not_fit_or_are_not_finite_name_the_tensor(tmp_path: Path) -> None:
    path = save_weights(_model(), tmp_path / "model.safetensors")
    with pytest.raises(DataError, match=r"does not fit Linear"):
        load_weights(nn.Linear(3, 2), path)
    state = _model().state_dict()
    state["0.weight"] = state["0.weight"].clone().fill_(float("nan"))
    path.write_bytes(save(state))
    with pytest.raises(DataError, match=r"tensor '0.weight' holds NaN"):
        load_weights(_model(), path)
    state["0.weight"] = torch.zeros(2, 3, dtype=torch.float64)
    path.write_bytes(save(state))
    with pytest.raises(DataError, match=r"tensor '0.weight' is torch.float64"):
        load_weights(_model(), path)


def test_evaluation_samples_are_checked_against_the_expected_tensors(tmp_path: Path) -> None:
    path = tmp_path / "evaluation_samples.safetensors"
    path.write_bytes(save({"x": torch.zeros(2, 3), "relevance": torch.full((2, 3), float("inf"))}))
    with pytest.raises(DataError, match=r"holds tensors \['relevance', 'x'\], expected \['x'\]"):
        load_tensors(path, {"x": torch.float32})
    with pytest.raises(DataError, match=r"tensor 'relevance' holds NaN or infinite"):
        load_tensors(path, {"x": torch.float32, "relevance": torch.float32})


class _Exploit:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("kind", ["pickle-exploit", "garbage", "empty"])
def test_malicious_or_corrupt_optimizer_state_runs_nothing(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "optimizer.pt"
    if kind == "pickle-exploit":
        torch.save({"state": _Exploit()}, path)
    else:
        path.write_bytes(b"" if kind == "empty" else b"\x80\x02garbage, not a checkpoint")
    with pytest.raises(DataError, match=rf"{path} is corrupt or not a plain tensor checkpoint") as caught:
        load_torch(path)
    assert "weights_only set to False" not in str(caught.value)  # torch's advice of an unsafe load is not passed on
    optimizer = torch.optim.Adam(_model().parameters())
    torch.save(optimizer.state_dict(), path)
    assert load_torch(path)["param_groups"][0]["lr"] == optimizer.param_groups[0]["lr"]
