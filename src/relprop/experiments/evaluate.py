"""Evaluation of a trained MAJ run: accuracy, and for every explanation method the thesis's coarse-grained
explainability (cosine to the ground-truth block mask), the relevance in the data region, the conservation
error and a pixel-flipping curve with its AOPC.

Protocol (Chormai 2018): relevance starts at the true-class logit clipped at 0 (relevance is linear in its
start, so samples whose logit is not positive get zero relevance); SA and GB are squared gradients.
Results go to ``evaluation.json`` and ``evaluation.csv`` in the run directory, per-sample scores to
``evaluation_samples.safetensors``, sample heatmaps to ``heatmaps/``.
"""

from __future__ import annotations

import csv
import io as _stringio
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save
from torch import Tensor
from tqdm.auto import tqdm

from .. import api, metrics
from ..data import from_sequence, load_maj
from ..files import atomic_write, read_json, write_json
from .train import accuracy, best_epoch, load_run, lr_schedule, maj_shape

__all__ = ["MAJ_METHODS", "EvalConfig", "evaluate", "explain_maj"]

# name -> (relprop method, options)
MAJ_METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "sa": ("sensitivity", {}),
    "gb": ("guided_backprop", {"squared": True}),
    "dtd": ("lrp", {"preset": "dtd", "low": -1.0, "high": 1.0}),
    # the thesis's alpha-beta LRP: alpha-beta in hidden layers, zB on pixels
    "lrp_a1.5b0.5": ("lrp", {"preset": "thesis_lrp", "alpha": 1.5, "beta": 0.5}),
    "lrp_a2b1": ("lrp", {"preset": "thesis_lrp", "alpha": 2.0, "beta": 1.0}),
    "lrp_a1.2b0.2": ("lrp", {"preset": "thesis_lrp", "alpha": 1.2, "beta": 0.2}),
    "lrp_a3b2": ("lrp", {"preset": "thesis_lrp", "alpha": 3.0, "beta": 2.0}),
    "lrp_eps": ("lrp", {"preset": "lstm_epsilon", "epsilon": 1e-3}),
    "gxi": ("gradient_x_input", {}),
    "ig": ("integrated_gradients", {"baseline": -1.0, "steps": 32}),
    "smoothgrad": ("smoothgrad", {"noise": 0.1, "samples": 16}),
    "deconvnet": ("deconvnet", {}),
}


@dataclass(frozen=True)
class EvalConfig:
    """What to evaluate: methods (keys of MAJ_METHODS), how many test samples, and the flipping subset."""

    methods: Sequence[str] = ("sa", "gb", "dtd", "lrp_a1.5b0.5")
    limit: int | None = None
    flip_limit: int = 500
    flip_steps: int = 20
    batch_size: int = 250
    heatmap_samples: int = 6


def explain_maj(model: torch.nn.Module, x: Tensor, y: Tensor, name: str) -> tuple[Tensor, Tensor]:
    """Relevance of the thesis protocol for method ``name`` on sequences x (N, steps, F); returns (relevance, score)."""
    if name not in MAJ_METHODS:
        raise ValueError(f"unknown MAJ method '{name}'; valid: {', '.join(MAJ_METHODS)}")
    method, options = MAJ_METHODS[name]
    explanation = api.explain(model, x, target=y, method=method, **options)
    clip = (explanation.score > 0).to(explanation.relevance)  # start at max(logit, 0)
    return explanation.relevance * clip.reshape(-1, *(1,) * (x.dim() - 1)), explanation.score.clamp(min=0)


def _summary(values: Tensor) -> dict[str, float]:
    values = values.double()
    n = values.numel()
    std = float(values.std()) if n > 1 else 0.0
    return {"mean": float(values.mean()), "std": std, "ci95": 1.96 * std / math.sqrt(max(n, 1)), "n": n}


def evaluate(run_dir: str | Path, config: EvalConfig = EvalConfig(), *, progress: bool = True) -> dict[str, Any]:
    """Evaluate the best checkpoint of ``run_dir``; writes and returns the results."""
    run_dir = Path(run_dir)
    model, train_config = load_run(run_dir)
    history = read_json(run_dir / "history.json")
    device = next(model.parameters()).device
    test = load_maj(train_config.dataset, "test", variant=train_config.variant, seed=train_config.data_seed,
                    limit=config.limit)
    x, y, mask = test.sequences(), test.y, test.mask  # (N, steps, F), (N,), (N, blocks)
    geometry = maj_shape(train_config.dataset, train_config.variant)
    results: dict[str, Any] = {
        "run": str(run_dir), "arch": train_config.arch, "dataset": train_config.dataset,
        "variant": train_config.variant, "epochs": len(history), "schedule": lr_schedule(history),
        "batch_size": train_config.batch_size,
        "checkpoint_epoch": best_epoch(run_dir), "test_samples": len(y),
        "accuracy": accuracy(model, x, y), "methods": {},
    }
    samples: dict[str, Tensor] = {}
    heatmaps: dict[str, Tensor] = {}
    for name in tqdm(config.methods, desc="methods", disable=not progress, leave=False):
        cosine: list[Tensor] = []
        region: list[Tensor] = []
        conservation: list[Tensor] = []
        relevances: list[Tensor] = []
        size = config.batch_size
        for xb, yb, mb in zip(torch.split(x, size), torch.split(y, size), torch.split(mask, size)):
            relevance, score = explain_maj(model, xb.to(device), yb.to(device), name)
            relevance = relevance.cpu()
            cosine.append(metrics.block_cosine(relevance, mb))
            region.append(metrics.relevance_in_region(relevance, mb))
            conservation.append(metrics.conservation_error(relevance, score.cpu(), absolute=True))
            if sum(r.shape[0] for r in relevances) < config.flip_limit:
                relevances.append(relevance)
        flip_relevance = torch.cat(relevances)[: config.flip_limit]
        n_flip = len(flip_relevance)
        curve = metrics.pixel_flipping(model, x[:n_flip].to(device), flip_relevance.to(device), y[:n_flip].to(device),
                                       steps=config.flip_steps, fill=-1.0)
        samples[f"{name}/cosine"] = torch.cat(cosine)
        results["methods"][name] = {
            "cosine": _summary(torch.cat(cosine)),
            "relevance_in_region": _summary(torch.cat(region)),
            "conservation_error": _summary(torch.cat(conservation)),
            "aopc": _summary(curve.aopc.cpu()),
            "flip_curve": curve.scores.mean(0).tolist(),
        }
        heatmaps[name] = from_sequence(flip_relevance[: config.heatmap_samples], geometry["height"])
    random_curve = metrics.pixel_flipping(model, x[:n_flip].to(device), flip_relevance.to(device),
                                          y[:n_flip].to(device), steps=config.flip_steps, fill=-1.0, order="random")
    results["random_flip"] = {"aopc": _summary(random_curve.aopc.cpu()),
                              "flip_curve": random_curve.scores.mean(0).tolist()}
    write_json(run_dir / "evaluation.json", results)
    atomic_write(run_dir / "evaluation.csv", _csv(results).encode())
    atomic_write(run_dir / "evaluation_samples.safetensors", save({k: v.contiguous() for k, v in samples.items()}))
    _save_heatmaps(run_dir / "heatmaps", heatmaps, test, config.heatmap_samples)
    return results


def _csv(results: dict[str, Any]) -> str:
    buffer = _stringio.StringIO()
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
