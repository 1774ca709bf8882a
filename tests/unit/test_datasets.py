"""explain_dataset and its store: equal to explain() batch by batch, resumable, strict about loaders and options."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save
from torch import Tensor, nn

import relprop
from relprop.api import Explanation
from relprop.errors import ConfigError, DataError
from relprop.metrics import BlockCosine, Entropy, PixelFlipping, Sparseness, block_cosine, entropy, pixel_flipping
from relprop.metrics.faithfulness import FlipConfig
from relprop.store import ResultStore


def build_mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 5), nn.ReLU(), nn.Linear(5, 3)).double().eval()


def _batches(count: int = 5, size: int = 4, seed: int = 0) -> list[tuple[Tensor, Tensor, Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        x = torch.randn(size, 6, generator=generator, dtype=torch.float64)
        target = torch.randint(0, 3, (size,), generator=generator)
        mask = torch.randint(0, 2, (size, 3), generator=generator)
        out.append((x, target, mask))
    return out


def _metrics() -> dict[str, object]:
    return {"sparseness": Sparseness(), "entropy": Entropy(), "flip": PixelFlipping(FlipConfig(steps=3, fill=0.0)),
            "cosine": BlockCosine(layout="image")}


def test_results_equal_explain_batch_by_batch(tmp_path: Path) -> None:
    model = build_mlp()
    batches = _batches()
    result = relprop.explain_dataset(model, batches, method="lrp", preset="epsilon", metrics=_metrics(),
                                     store=tmp_path / "store", progress=False)
    store = ResultStore.open(tmp_path / "store")
    assert store.complete and len(store) == result.samples == 20
    for index, (x, target, mask) in enumerate(batches):
        expected = relprop.explain(model, x, target, method="lrp", preset="epsilon")
        shard = store.load(index)
        assert torch.equal(shard["relevance"], expected.relevance)
        assert torch.equal(shard["target"], target)
        assert torch.equal(shard["details/conservation_gap"], expected.details["conservation_gap"])
        rows = slice(4 * index, 4 * index + 4)
        assert torch.equal(result.scores["entropy"][rows], entropy(expected.relevance))
        assert torch.equal(result.scores["cosine"][rows], block_cosine(expected.relevance, mask, layout="image"))
        curve = pixel_flipping(model, x, expected.relevance, target, steps=3, fill=0.0)
        assert torch.equal(result.scores["flip/aopc"][rows], curve.aopc)
        assert torch.equal(shard["score/flip/curve"], curve.scores)
    assert torch.equal(store.tensor("score/sparseness"), result.scores["sparseness"])


class _Interrupted(Exception):
    pass


def _failing(batches: list[tuple[Tensor, Tensor, Tensor]], after: int) -> object:
    for index, batch in enumerate(batches):
        if index == after:
            raise _Interrupted
        yield batch


def test_an_interrupted_run_resumes_and_matches_an_uninterrupted_one(tmp_path: Path) -> None:
    model = build_mlp()
    batches = _batches(count=6)
    calls: list[int] = []

    def counted(m: nn.Module, x: Tensor, target: Tensor | None) -> Explanation:
        calls.append(len(x))
        return relprop.explain(m, x, target, method="gradient_x_input")

    whole = relprop.explain_dataset(model, batches, method=counted, metrics=_metrics(), store=tmp_path / "a",
                                    progress=False)
    calls.clear()
    with pytest.raises(_Interrupted):
        relprop.explain_dataset(model, _failing(batches, 4), method=counted, metrics=_metrics(),  # type: ignore[arg-type]
                                store=tmp_path / "b", progress=False)
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert len(manifest["shards"]) == 4 and not manifest["complete"]
    calls.clear()
    resumed = relprop.explain_dataset(model, batches, method=counted, metrics=_metrics(), store=tmp_path / "b",
                                      progress=False)
    assert len(calls) == 2  # only the unfinished batches 4 and 5 were explained
    assert whole.scores.keys() == resumed.scores.keys()
    for key in whole.scores:
        assert torch.equal(whole.scores[key], resumed.scores[key]), key
    a, b = ResultStore.open(tmp_path / "a"), ResultStore.open(tmp_path / "b")
    assert a.names() == b.names() and b.complete
    for name in a.names():
        assert torch.equal(a.tensor(name), b.tensor(name)), name


def test_resuming_with_reordered_batches_or_other_options_fails(tmp_path: Path) -> None:
    model = build_mlp()
    batches = _batches(count=3)
    with pytest.raises(_Interrupted):
        relprop.explain_dataset(model, _failing(batches, 2), method="gradient",  # type: ignore[arg-type]
                                store=tmp_path / "s", progress=False)
    with pytest.raises(DataError, match="same order"):
        relprop.explain_dataset(model, batches[::-1], method="gradient", store=tmp_path / "s", progress=False)
    with pytest.raises(ConfigError, match="another run"):
        relprop.explain_dataset(model, batches, method="lrp", store=tmp_path / "s", progress=False)
    with pytest.raises(DataError, match="fewer batches"):
        relprop.explain_dataset(model, batches[:1], method="gradient", store=tmp_path / "s", progress=False)
    baseline = {"baseline": torch.zeros(6, dtype=torch.float64), "steps": 4}
    relprop.explain_dataset(model, batches, method="integrated_gradients", store=tmp_path / "ig", progress=False,
                            **baseline)
    with pytest.raises(ConfigError, match="another run"):  # a tensor option with other values is another run
        relprop.explain_dataset(model, batches, method="integrated_gradients", store=tmp_path / "ig",
                                progress=False, baseline=torch.ones(6, dtype=torch.float64), steps=4)


def test_batch_forms_and_errors() -> None:
    model = build_mlp()
    x, target, mask = _batches(count=1)[0]
    as_tensor = relprop.explain_dataset(model, [x], method="gradient", metrics=[Sparseness()], progress=False)
    as_mapping = relprop.explain_dataset(model, [{"x": x, "target": None}], method="gradient",
                                         metrics=[Sparseness()], progress=False)
    argmax = relprop.explain(model, x, None, method="gradient").relevance
    assert torch.equal(as_tensor.scores["sparseness"], as_mapping.scores["sparseness"])
    assert torch.allclose(as_tensor.scores["sparseness"], relprop.metrics.sparseness(argmax))
    with pytest.raises(ConfigError, match="ground truth"):
        relprop.explain_dataset(model, [(x, target)], method="gradient", metrics=[BlockCosine()], progress=False)
    with pytest.raises(ConfigError, match="batch 0"):
        relprop.explain_dataset(model, ["text"], method="gradient", progress=False)
    with pytest.raises(ConfigError, match="callable"):
        relprop.explain_dataset(model, [x], method=lambda m, x, t: relprop.explain(m, x, t), preset="epsilon",
                                progress=False)
    with pytest.raises(ConfigError, match="per-sample"):
        relprop.explain_dataset(model, [x], metrics={"bad": lambda batch: batch.relevance.sum()}, progress=False)


def test_progress_prints_plain_lines_off_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    relprop.explain_dataset(build_mlp(), [b[0] for b in _batches(count=3)], method="gradient")
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines and all(line.startswith("explain_dataset: ") for line in lines)
    assert "\r" not in "".join(lines) and "3/3 batches" in lines[-1] and "12 samples: done" in lines[-1]
    assert len(lines) == 3  # batches 1 and 2 (every tenth of 3 is every one), then the last line


def test_maj_style_run_with_masks_and_a_clipping_method() -> None:
    # the MAJ protocol: true-class targets, relevance zeroed where the logit is negative, block metrics on the masks
    torch.manual_seed(3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12 * 4, 10), nn.ReLU(), nn.Linear(10, 3)).double().eval()
    generator = torch.Generator().manual_seed(4)
    batches = [(torch.randn(5, 12, 4, generator=generator, dtype=torch.float64), torch.randint(0, 3, (5,)),
                torch.randint(0, 2, (5, 3))) for _ in range(3)]

    def clipped(m: nn.Module, x: Tensor, target: Tensor | None) -> Explanation:
        explanation = relprop.explain(m, x, target, method="lrp", preset="epsilon")
        keep = (explanation.score > 0).to(x)[:, None, None]
        return Explanation(explanation.relevance * keep, explanation.output, explanation.target, "lrp")

    metrics = {"cosine": BlockCosine(), "region": relprop.metrics.RelevanceInRegion()}
    result = relprop.explain_dataset(model, batches, method=clipped, metrics=metrics, progress=False)
    for index, (x, target, mask) in enumerate(batches):
        relevance = clipped(model, x, target).relevance
        rows = slice(5 * index, 5 * index + 5)
        assert torch.equal(result.scores["cosine"][rows], block_cosine(relevance, mask))
        assert torch.equal(result.scores["region"][rows], relprop.metrics.relevance_in_region(relevance, mask))


def test_a_torch_dataloader_streams_with_its_length(capsys: pytest.CaptureFixture[str]) -> None:
    from torch.utils.data import DataLoader, TensorDataset

    model = build_mlp()
    x, target, _ = zip(*_batches(count=3))
    loader = DataLoader(TensorDataset(torch.cat(x), torch.cat(target)), batch_size=5)  # yields [x, target] lists
    result = relprop.explain_dataset(model, loader, method="gradient", metrics=[Sparseness()])
    expected = torch.cat([relprop.metrics.sparseness(relprop.explain(model, xb, yb, method="gradient").relevance)
                          for xb, yb in loader])
    assert result.samples == 12 and torch.equal(result.scores["sparseness"], expected)
    assert "3/3 batches" in capsys.readouterr().err


def test_a_store_resumes_only_the_same_targets_model_and_metric_settings(tmp_path: Path) -> None:
    """The fingerprint covers the model's weights and each metric's settings, the batch checksums the targets and
    masks: none of them changed may give the stored results back as if they were the new run's."""
    model, batches = build_mlp(), _batches(count=2)
    flip = {"flip": PixelFlipping(FlipConfig(steps=3, fill=0.0))}
    relprop.explain_dataset(model, batches, method="gradient", metrics=flip, store=tmp_path / "s", progress=False)
    with pytest.raises(ConfigError, match="another run"):  # the same metric name, other settings
        relprop.explain_dataset(model, batches, method="gradient", metrics={"flip": PixelFlipping(
            FlipConfig(steps=5, fill=0.0))}, store=tmp_path / "s", progress=False)
    other_targets = [(x, (t + 1) % 3, m) for x, t, m in batches]
    with pytest.raises(DataError, match="x, target or mask"):
        relprop.explain_dataset(model, other_targets, method="gradient", metrics=flip, store=tmp_path / "s",
                                progress=False)
    retrained = build_mlp()
    with torch.no_grad():
        retrained[0].weight[0, 0] += 1.0
    with pytest.raises(ConfigError, match="another run"):
        relprop.explain_dataset(retrained, batches, method="gradient", metrics=flip, store=tmp_path / "s",
                                progress=False)
    again = relprop.explain_dataset(model, batches, method="gradient", metrics=flip, store=tmp_path / "s",
                                    progress=False)  # the same run: resumed, every batch from the store
    assert again.samples == 8


def test_a_rule_map_run_resumes(tmp_path: Path) -> None:
    """A RuleMap (and its rules, canonizers and selectors) is described by its fields, not by object addresses."""
    from relprop import rules
    from relprop.composites import RuleMap, get_preset

    model, batches = build_mlp(), _batches(count=2)
    for name, make in (("map", lambda: RuleMap([(nn.Linear, rules.Epsilon())], first=rules.Flat())),
                       ("preset", lambda: get_preset("epsilon_plus_flat"))):
        first = relprop.explain_dataset(model, batches, method="lrp", rule_map=make(), store=tmp_path / name,
                                        metrics=[Sparseness()], progress=False)
        again = relprop.explain_dataset(model, batches, method="lrp", rule_map=make(), store=tmp_path / name,
                                        metrics=[Sparseness()], progress=False)
        torch.testing.assert_close(again.scores["sparseness"], first.scores["sparseness"], rtol=0, atol=0)


class _Masked(nn.Module):
    """Scores that need the batch's attention mask (a keyword with no default)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 3)

    def forward(self, x: Tensor, attention_mask: Tensor) -> Tensor:
        return self.lin(x * attention_mask)  # type: ignore[no-any-return]


def test_metrics_that_explain_again_get_the_batch_model_kwargs() -> None:
    from relprop.metrics import MaxSensitivity

    torch.manual_seed(0)
    model = _Masked().double().eval()
    x = torch.randn(4, 6, dtype=torch.float64)
    mask = torch.ones(4, 6, dtype=torch.float64)
    mask[:, 3:] = 0
    batch = {"x": x, "target": torch.zeros(4, dtype=torch.long), "model_kwargs": {"attention_mask": mask}}
    result = relprop.explain_dataset(model, [batch], method="gradient", metrics=[MaxSensitivity(samples=2)],
                                     progress=False)
    assert result.scores["max_sensitivity"].shape == (4,)


@pytest.mark.parametrize(("damage", "message"), [
    (lambda m: m.pop("fingerprint"), "'fingerprint' is missing"),
    (lambda m: m.pop("shards"), "'shards' is missing"),
    (lambda m: m["shards"][0].update(file="../../outside.safetensors"), "shard 0 is not"),
])
def test_a_damaged_manifest_is_a_data_error(tmp_path: Path, damage: object, message: str) -> None:
    model, batches = build_mlp(), _batches(count=1)
    relprop.explain_dataset(model, batches, method="gradient", store=tmp_path / "s", progress=False)
    manifest = tmp_path / "s" / "manifest.json"
    data = json.loads(manifest.read_text())
    damage(data)  # type: ignore[operator]
    manifest.write_text(json.dumps(data))
    with pytest.raises(DataError, match=message):
        ResultStore.open(tmp_path / "s")
    manifest.write_text("[1, 2]")
    with pytest.raises(DataError, match="is not a relprop.explanations version"):
        ResultStore.open(tmp_path / "s")


def test_a_shard_with_other_rows_than_the_manifest_says_is_a_data_error(tmp_path: Path) -> None:
    """A shard replaced by a shorter one was read as it was: len(store) said 8 while tensor() gave 5 rows."""
    model, batches = build_mlp(), _batches(count=2)
    relprop.explain_dataset(model, batches, method="gradient", store=tmp_path / "s", progress=False)
    store = ResultStore.open(tmp_path / "s")
    shard = tmp_path / "s" / store.shards[1]["file"]
    shard.write_bytes(save({name: t[:1] for name, t in store.load(1).items()}))
    with pytest.raises(DataError, match="holds \\[1\\] rows where the manifest says"):
        store.tensor("relevance")


def test_an_empty_loader_or_a_file_as_store_is_refused(tmp_path: Path) -> None:
    model = build_mlp()
    with pytest.raises(ConfigError, match="yielded no batch"):
        relprop.explain_dataset(model, [], method="gradient", store=tmp_path / "s", progress=False)
    result = relprop.explain_dataset(model, _batches(count=1), method="gradient", store=tmp_path / "s",
                                     progress=False)  # the store was not marked complete by the empty run
    assert result.samples == 4
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="is a file"):
        relprop.explain_dataset(model, _batches(count=1), method="gradient", store=tmp_path / "file",
                                progress=False)
    with pytest.raises(ConfigError, match="has no score"):
        relprop.explain_dataset(model, _batches(count=1), method="gradient",
                                metrics=[Sparseness(), entropy],  # type: ignore[list-item]
                                progress=False)


def test_a_store_with_a_quantus_metric_resumes_with_the_same_object(tmp_path: Path) -> None:
    """Another library's metric is described by its settings, not by the scores it accumulates while it runs."""
    quantus = pytest.importorskip("quantus")
    from relprop.quantus_adapter import QuantusMetric

    model, batches = build_mlp(), _batches(count=2)
    metric = {"sparseness_q": QuantusMetric(quantus.Sparseness(disable_warnings=True))}
    first = relprop.explain_dataset(model, batches, method="gradient", metrics=metric, store=tmp_path / "s",
                                    progress=False)
    again = relprop.explain_dataset(model, batches, method="gradient", metrics=metric, store=tmp_path / "s",
                                    progress=False)  # the same object, now holding scores: the same run
    torch.testing.assert_close(again.scores["sparseness_q"], first.scores["sparseness_q"], rtol=0, atol=0)
