"""Class prototypes of a trained MAJ run: simple activation maximisation (AM) and AM with a data prior (expert).

:func:`run_prototypes` fits a Gaussian (or mixture) density to the run's training sequences, optimises one
prototype per class with :func:`relprop.methods.maximization.prototypes` for each variant, and writes
``prototypes.json`` (per class: log p(c|x), log p(x) under the fitted prior, the predicted class),
``prototypes.safetensors`` and one figure per variant into the output folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..methods.maximization import DensityModel, GaussianMixturePrior, GaussianPrior, Maximization, prototypes
from ..progress import progress
from .train import TrainConfig, load_run, maj_shape

__all__ = ["PrototypeConfig", "run_prototypes", "fit_prior", "summary", "PRIORS"]

PRIORS = ("gaussian", "mixture")


@dataclass(frozen=True)
class PrototypeConfig:
    """Objective, constraints and prior of the prototypes (``prior_weight`` scales log p(x) in the expert)."""

    classes: tuple[int, ...] = tuple(range(10))
    expert: bool = False
    steps: int = 200
    lr: float = 0.05
    norm: float | None = None
    prior: str = "gaussian"
    prior_weight: float = Maximization.prior_weight  # at 1 the prior dominates: every class becomes the mean digit
    components: int = 5
    fit_limit: int = 2000
    seed: int = 0
    box: tuple[float, float] = field(default=(-1.0, 1.0))

    def __post_init__(self) -> None:
        if self.prior not in PRIORS:
            raise ConfigError(f"prior '{self.prior}' is unknown; valid: {', '.join(PRIORS)}")
        for name in ("steps", "components", "fit_limit"):
            if getattr(self, name) < 1:
                raise ConfigError(f"prototypes {name} must be at least 1, got {getattr(self, name)}")
        if not self.classes:
            raise ConfigError("prototypes need at least one class")


def fit_prior(train_config: TrainConfig, config: PrototypeConfig) -> DensityModel:
    """Density of the run's training sequences, fitted on the first ``config.fit_limit`` of them."""
    from ..data import load_maj

    data = load_maj(train_config.dataset, "train", variant=train_config.variant, seed=train_config.data_seed,
                    limit=config.fit_limit).sequences()  # (N, steps, features)
    if config.prior == "mixture":
        return GaussianMixturePrior.fit(data, k=config.components, seed=config.seed)
    return GaussianPrior.fit(data)


def _scores(model: nn.Module, x: Tensor, classes: tuple[int, ...], prior: DensityModel) -> list[dict[str, Any]]:
    with torch.no_grad():
        log_class = torch.log_softmax(model(x), dim=1)  # (classes, 10)
        log_density = prior.log_prob(x)  # (classes,)
    return [{"class": c, "log_p_class": float(log_class[i, c]), "log_p_x": float(log_density[i]),
             "predicted": int(log_class[i].argmax())} for i, c in enumerate(classes)]


def run_prototypes(run_dir: str | Path, config: PrototypeConfig, out: str | Path) -> dict[str, Any]:
    """Prototypes of the best checkpoint of ``run_dir`` into ``out``; returns what ``prototypes.json`` holds.

    Variants: ``am`` (``log p(c|x)`` alone) and, with ``config.expert``, ``am_expert``
    (``log p(c|x) + prior_weight * log p(x)``). Every variant is scored under the same fitted prior.
    """
    from safetensors.torch import save

    from ..data import from_sequence
    from ..files import atomic_write, write_json
    from ..viz import prototype_grid

    model, train_config = load_run(run_dir)
    geometry = maj_shape(train_config.dataset, train_config.variant)
    shape = (geometry["steps"], geometry["height"] * geometry["step_width"])
    out = Path(out)
    prior = fit_prior(train_config, config)
    variants: dict[str, DensityModel | None] = {"am": None}
    if config.expert:
        variants["am_expert"] = prior
    prior_record = {"kind": config.prior, "fit_samples": config.fit_limit, "weight": config.prior_weight,
                    **({"components": config.components} if config.prior == "mixture" else {})}
    results: dict[str, Any] = {
        "run": str(run_dir), "arch": train_config.arch, "dataset": train_config.dataset, "steps": config.steps,
        "lr": config.lr, "constraint": {"box": list(config.box), "norm": config.norm}, "prior": prior_record,
        "log_p_x_note": f"log p(x) under the fitted {config.prior} prior for every variant",
    }
    tensors: dict[str, Tensor] = {}
    for name in progress(variants, desc="prototypes"):
        options = Maximization(steps=config.steps, lr=config.lr, prior=variants[name],
                               prior_weight=config.prior_weight, norm=config.norm, box=config.box, seed=config.seed)
        x = prototypes(model, config.classes, shape=shape, config=options)  # (classes, steps, features)
        results[name] = _scores(model, x, config.classes, prior)
        tensors[name] = x.detach().cpu().float().contiguous()
        images = from_sequence(tensors[name], geometry["height"])  # (classes, H, W)
        labels = [f"class {r['class']}: log p(c|x) {r['log_p_class']:.2f}\nlog p(x) {r['log_p_x']:.0f}"
                  for r in results[name]]
        prototype_grid(images, labels=labels, path=out / f"prototypes_{name}.png")
    write_json(out / "prototypes.json", results)
    atomic_write(out / "prototypes.safetensors", save(tensors))
    return results


def summary(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per variant: mean log p(c|x) and mean log p(x) over the classes."""
    rows = []
    for name in ("am", "am_expert"):
        if name in results:
            scores = results[name]
            mean_class = sum(r["log_p_class"] for r in scores) / len(scores)
            mean_density = sum(r["log_p_x"] for r in scores) / len(scores)
            rows.append({"variant": name, "mean log p(c|x)": f"{mean_class:.3f}",
                         "mean log p(x)": f"{mean_density:.1f}"})
    return rows

