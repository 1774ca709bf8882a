"""Evaluation of a trained MAJ run: accuracy, and for every explanation method the thesis's coarse-grained
explainability (cosine to the ground-truth block mask), the relevance in the data region, a fine-grained score
(the share of the correct blocks' positive relevance on the object's pixels rather than their background), the
conservation error and a pixel-flipping curve with its AOPC.

Protocol (Chormai 2018): relevance starts at the true-class logit clipped at 0 (relevance is linear in its
start, so samples whose logit is not positive get zero relevance); SA and GB are squared gradients.
Results go to the run directory, committed atomically: per-sample scores to
``evaluation_samples-<digest>.safetensors``, then ``evaluation.json`` naming that file (the commit; a run killed
in between keeps its previous evaluation, or none), then ``evaluation.csv`` and sample heatmaps in
``heatmaps/``. A model with NaN or inf weights, or an evaluation that produced NaN, is refused: the cell does
not count as evaluated.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import hashlib
import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save
from torch import Tensor

from .. import api, metrics
from ..data import from_sequence, load_maj
from ..data.maj import maj_shape
from ..datasets import explain_dataset
from ..errors import ConfigError, DataError
from ..files import atomic_write, load_tensors, read_json, write_json
from ..metrics.batch import Batch
from ..progress import progress as progress_of
from .provenance import code_version
from .train import accuracy, best_epoch, load_run, lr_schedule, read_history

__all__ = [
    "MAJ_METHODS", "EvalConfig", "evaluate", "explain_maj", "maj_explanation", "missing_scores", "read_evaluation",
    "read_samples", "REGION_CAP",
]

REGION_CAP = 0.8  # the thesis's tau: each correct block's share of the relevance counts up to 0.8
BACKGROUND = -1.0  # an empty pixel of a MAJ sequence (pixels are scaled to [-1, 1])
# methods whose relevance should sum to the explained score (the conservation error means something)
_CONSERVATIVE = ("dtd", "lrp")

# name -> (relprop method, options)
MAJ_METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "sa": ("sensitivity", {}),
    "gb": ("guided_backprop", {"squared": True, "gates": "frozen"}),  # the thesis's final GB: gates frozen
    "gb_std": ("guided_backprop", {"squared": True}),  # standard GB: only the ReLUs guided
    "dtd": ("lrp", {"preset": "dtd", "low": -1.0, "high": 1.0}),
    # the thesis's alpha-beta LRP: alpha-beta in hidden layers, zB on pixels
    "lrp_a1.5b0.5": ("lrp", {"preset": "thesis_lrp", "alpha": 1.5, "beta": 0.5}),
    "lrp_a2b1": ("lrp", {"preset": "thesis_lrp", "alpha": 2.0, "beta": 1.0}),
    "lrp_a1.2b0.2": ("lrp", {"preset": "thesis_lrp", "alpha": 1.2, "beta": 0.2}),
    "lrp_a3b2": ("lrp", {"preset": "thesis_lrp", "alpha": 3.0, "beta": 2.0}),
    "lrp_eps": ("lrp", {"preset": "lstm_epsilon", "epsilon": 1e-3}),
    "gxi": ("gradient_x_input", {}),
    "ig": ("integrated_gradients", {"baseline": -1.0, "steps": 32}),
    "deeplift": ("deeplift", {"baseline": -1.0}),  # the empty sequence, as IG's baseline
    "smoothgrad": ("smoothgrad", {"noise": 0.1, "samples": 16}),
    "deconvnet": ("deconvnet", {}),
}


CHECKPOINTS = ("best", "last")


@dataclass(frozen=True)
class EvalConfig:
    """What to evaluate: methods (keys of MAJ_METHODS), how many test samples, the flipping subset, and which
    checkpoint: ``"best"`` (the epoch of the best validation accuracy, relprop's protocol) or ``"last"`` (the last
    epoch trained, the thesis's: it trained a fixed number of epochs and reported the last)."""

    methods: Sequence[str] = ("sa", "gb", "gb_std", "dtd", "lrp_a1.5b0.5")
    limit: int | None = None
    flip_limit: int = 500
    flip_steps: int = 20
    batch_size: int = 250
    heatmap_samples: int = 6
    checkpoint: str = "best"

    def __post_init__(self) -> None:
        if self.checkpoint not in CHECKPOINTS:
            raise ConfigError(f"checkpoint must be one of {', '.join(CHECKPOINTS)}, got {self.checkpoint!r}")


def evaluated_epoch(run_dir: str | Path, checkpoint: str = "best") -> int:
    """The epoch (1-based) whose weights ``checkpoint`` ("best" or "last") of ``run_dir`` holds now."""
    return best_epoch(run_dir) if checkpoint == "best" else len(read_history(run_dir))


def maj_explanation(model: torch.nn.Module, x: Tensor, y: Tensor, name: str) -> api.Explanation:
    """The explanation of the thesis protocol for method ``name`` on sequences x (N, steps, F): relevance that
    starts at the true-class logit clipped at 0 (samples whose logit is not positive get zero relevance)."""
    if name not in MAJ_METHODS:
        raise ValueError(f"unknown MAJ method '{name}'; valid: {', '.join(MAJ_METHODS)}")
    method, options = MAJ_METHODS[name]
    explanation = api.explain(model, x, target=y, method=method, **options)
    clip = (explanation.score > 0).to(explanation.relevance)  # start at max(logit, 0)
    return dataclasses.replace(explanation, relevance=explanation.relevance * clip.reshape(-1, *(1,) * (x.dim() - 1)))


def explain_maj(model: torch.nn.Module, x: Tensor, y: Tensor, name: str) -> tuple[Tensor, Tensor]:
    """Relevance of the thesis protocol for method ``name`` on sequences x (N, steps, F); returns (relevance, score)."""
    explanation = maj_explanation(model, x, y, name)
    return explanation.relevance, explanation.score.clamp(min=0)


def _maj_scores(name: str) -> dict[str, Callable[[Batch], Tensor]]:
    """The per-sample scores of the thesis, as dataset metrics (conservation only where it means something)."""
    scores: dict[str, Callable[[Batch], Tensor]] = {
        "cosine": lambda b: metrics.block_cosine(b.relevance, b.require_mask("cosine")),
        "relevance_in_region": lambda b: metrics.relevance_in_region(b.relevance, b.require_mask("region")),
        "relevance_in_region_capped": lambda b: metrics.relevance_in_region(
            b.relevance, b.require_mask("region"), cap=REGION_CAP),
        # fine-grained: the positive relevance in the correct blocks on the digit or garment, not its background
        "relevance_on_object": lambda b: metrics.relevance_on_object(
            b.relevance, b.x, b.require_mask("region"), background=BACKGROUND),
    }
    if name.startswith(_CONSERVATIVE):
        scores["conservation_error"] = lambda b: metrics.conservation_error(
            b.relevance, b.explanation.score.clamp(min=0), absolute=True)
    return scores


def missing_scores(results: dict[str, Any]) -> list[str]:
    """The per-method scores (``"<method>/<score>"``) that this version evaluates and ``results`` lack: an
    evaluation made before a score was added, which :func:`relprop.experiments.reproduce.run_cell` repeats
    where the weights are still there."""
    return [f"{name}/{key}" for name, scores in results.get("methods", {}).items() if name in MAJ_METHODS
            for key in _maj_scores(name) if key not in scores]


def _explain_method(model: torch.nn.Module, x: Tensor, target: Tensor | None, *, name: str) -> api.Explanation:
    assert target is not None  # the MAJ batches always carry their labels
    return maj_explanation(model, x, target, name)


def _summary(values: Tensor) -> dict[str, float]:
    values = values.double()
    n = values.numel()
    std = float(values.std()) if n > 1 else 0.0
    return {"mean": float(values.mean()), "std": std, "ci95": 1.96 * std / math.sqrt(max(n, 1)), "n": n}


def evaluate(run_dir: str | Path, config: EvalConfig = EvalConfig(), *, progress: bool = True) -> dict[str, Any]:
    """Evaluate the checkpoint of ``run_dir`` that ``config.checkpoint`` names (the best, by default); writes and
    returns the results, which name it (``checkpoint``) and its epoch (``checkpoint_epoch``)."""
    run_dir = Path(run_dir)
    for name in ("evaluation.json", "evaluation.csv", "heatmaps"):  # what is written: before the work, not after
        path = run_dir / name
        if path.exists() and path.is_dir() != (name == "heatmaps"):
            raise DataError(f"{path} is in the way of the evaluation (a {'file' if path.is_file() else 'directory'}"
                            f" where it writes a {'directory' if name == 'heatmaps' else 'file'}); move it away")
    model, train_config = load_run(run_dir, which=config.checkpoint)
    history = read_history(run_dir)
    bad = [name for name, p in model.state_dict().items() if not bool(p.isfinite().all())]
    if bad:
        raise DataError(f"{run_dir}: the {config.checkpoint} checkpoint holds NaN or inf in {', '.join(bad[:3])}; "
                        "retrain the run")
    device = next(model.parameters()).device
    test = load_maj(train_config.dataset, "test", variant=train_config.variant, seed=train_config.data_seed,
                    limit=config.limit, fold=train_config.fold, folds=train_config.folds)
    x, y, mask = test.sequences(), test.y, test.mask  # (N, steps, F), (N,), (N, blocks)
    geometry = maj_shape(train_config.dataset, train_config.variant)
    results: dict[str, Any] = {
        "run": str(run_dir), "arch": train_config.arch, "dataset": train_config.dataset,
        "variant": train_config.variant, "epochs": len(history), "schedule": lr_schedule(history),
        "batch_size": train_config.batch_size,
        "checkpoint": config.checkpoint, "checkpoint_epoch": evaluated_epoch(run_dir, config.checkpoint),
        "test_samples": len(y),
        "accuracy": accuracy(model, x, y), "code": code_version(), "methods": {},
    }
    samples: dict[str, Tensor] = {}
    heatmaps: dict[str, Tensor] = {}
    for name in progress_of(config.methods, desc=f"evaluating {train_config.arch}", enabled=progress):
        size = config.batch_size
        batches = [(xb.to(device), yb.to(device), mb.to(device))
                   for xb, yb, mb in zip(torch.split(x, size), torch.split(y, size), torch.split(mask, size))]
        scored = explain_dataset(model, batches, method=functools.partial(_explain_method, name=name),
                                 metrics=_maj_scores(name), progress=False)
        n_flip = min(config.flip_limit, len(y))
        flip_relevance = torch.cat([maj_explanation(model, xb.to(device), yb.to(device), name).relevance.cpu()
                                    for xb, yb in zip(torch.split(x[:n_flip], size), torch.split(y[:n_flip], size))])
        curve = metrics.pixel_flipping(model, x[:n_flip].to(device), flip_relevance.to(device), y[:n_flip].to(device),
                                       steps=config.flip_steps, fill=-1.0)
        per_sample = {key: values.cpu() for key, values in scored.scores.items()}
        samples.update({f"{name}/{key}": values for key, values in per_sample.items() if key != "conservation_error"})
        results["methods"][name] = {
            **{key: _summary(values) for key, values in per_sample.items()},
            "aopc": _summary(curve.aopc.cpu()),
            "flip_curve": curve.scores.mean(0).tolist(),
        }
        heatmaps[name] = from_sequence(flip_relevance[: config.heatmap_samples], geometry["height"])
    random_curve = metrics.pixel_flipping(model, x[:n_flip].to(device), flip_relevance.to(device),
                                          y[:n_flip].to(device), steps=config.flip_steps, fill=-1.0, order="random")
    results["random_flip"] = {"aopc": _summary(random_curve.aopc.cpu()),
                              "flip_curve": random_curve.scores.mean(0).tolist()}
    not_finite = [f"{m}/{k}" for m, scores in results["methods"].items() for k, v in scores.items()
                  if isinstance(v, dict) and not math.isfinite(v["mean"])]
    if not_finite or not math.isfinite(results["accuracy"]):
        raise DataError(f"{run_dir}: the evaluation produced NaN in {', '.join(not_finite) or 'accuracy'}; "
                        "the cell is not counted as evaluated")
    payload = save({k: v.contiguous() for k, v in samples.items()})
    samples_file = f"evaluation_samples-{hashlib.sha256(payload).hexdigest()[:12]}.safetensors"
    atomic_write(run_dir / samples_file, payload)
    results["samples_file"] = samples_file
    write_json(run_dir / "evaluation.json", results)  # the commit: names the samples written before it
    for old in run_dir.glob("evaluation_samples*.safetensors"):
        if old.name != samples_file:
            old.unlink(missing_ok=True)
    atomic_write(run_dir / "evaluation.csv", _csv(results).encode())
    _save_heatmaps(run_dir / "heatmaps", heatmaps, test, config.heatmap_samples)
    return results


def read_evaluation(run_dir: str | Path) -> dict[str, Any] | None:
    """The committed evaluation of a run (None when there is none, or its samples file is missing)."""
    path = Path(run_dir) / "evaluation.json"
    if not path.exists():
        return None
    results = read_json(path)
    if not isinstance(results, dict) or not isinstance(results.get("methods"), dict):
        raise DataError(f"{path} is not a relprop evaluation (no 'methods'); delete it to evaluate again")
    samples = results.get("samples_file")
    if not isinstance(samples, str) or not (Path(run_dir) / samples).exists():
        return None  # the older layout, or its samples are gone: evaluate again
    return results


def read_samples(run_dir: str | Path) -> dict[str, Tensor]:
    """The per-sample scores of a run's committed evaluation (``"<method>/<metric>" -> (N,)``)."""
    results = read_evaluation(run_dir)
    if results is None:
        raise DataError(f"{run_dir} has no committed evaluation; run relprop evaluate on it")
    return load_tensors(Path(run_dir) / results["samples_file"])


def _csv(results: dict[str, Any]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["arch", "dataset", "method", "metric", "mean", "std", "ci95", "n"])
    writer.writerow([results["arch"], results["dataset"], "-", "accuracy", results["accuracy"], "", "",
                     results["test_samples"]])
    for method, scores in results["methods"].items():
        for metric, s in scores.items():
            if isinstance(s, dict):
                writer.writerow([results["arch"], results["dataset"], method, metric, s["mean"], s["std"], s["ci95"],
                                 s["n"]])
    return buffer.getvalue()


def _save_heatmaps(folder: Path, heatmaps: dict[str, Tensor], test: Any, count: int) -> None:
    from .. import viz

    blocks = test.mask.shape[1]
    for name, maps in heatmaps.items():
        pictures = {
            (name, f"sample {i} (label {int(test.y[i])})"): viz.maj_heatmap(maps[i], blocks=blocks, mask=test.mask[i])
            for i in range(min(count, len(maps)))
        }
        figure = viz.grid(pictures, rows=[name], cols=[c for _, c in pictures], path=folder / f"{name}.png")
        import matplotlib.pyplot as plt

        plt.close(figure)
