"""The demo: train an explainable recurrent net briefly on MAJ sequences, explain it, score the explanations.

:func:`demo_configs` holds the demo's policy (how long and how to train per dataset, which methods, how many
test sequences); :func:`run_demo` trains and evaluates into one run directory and returns the evaluation.

>>> train, evaluation = demo_configs(DemoConfig())
>>> (train.dataset, train.epochs, evaluation.methods)
('digits-maj', 40, ('sa', 'gb', 'dtd', 'lrp_a1.5b0.5'))
>>> demo_configs(DemoConfig(dataset="mnist-maj", epochs=3))[0].epochs
3
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .evaluate import EvalConfig, evaluate
from .train import TrainConfig, train

__all__ = ["DemoConfig", "DEMO_DATASETS", "DEMO_METHODS", "demo_configs", "run_demo"]

DEMO_DATASETS = ("digits-maj", "mnist-maj", "fashion-maj")
DEMO_METHODS = ("sa", "gb", "dtd", "lrp_a1.5b0.5")


@dataclass(frozen=True)
class DemoConfig:
    """What the user chooses; ``epochs=None`` means the dataset's default (40 on digits-maj, 2 on the others)."""

    dataset: str = "digits-maj"
    arch: str = "rlstm_sd"
    epochs: int | None = None
    seed: int = 0


def demo_configs(config: DemoConfig) -> tuple[TrainConfig, EvalConfig]:
    """The training and evaluation configs of the demo: the small bundled digits train long on few samples,
    real MNIST-type datasets briefly on 10,000 sequences and are scored on 1,000 test sequences."""
    if config.dataset not in DEMO_DATASETS:
        raise ConfigError(f"demo dataset '{config.dataset}' is unknown; valid: {', '.join(DEMO_DATASETS)}")
    if config.epochs is not None and config.epochs < 1:
        raise ConfigError(f"demo epochs must be at least 1, got {config.epochs}")
    real = config.dataset != "digits-maj"
    train_config = TrainConfig(arch=config.arch, dataset=config.dataset,
                               epochs=config.epochs if config.epochs is not None else (2 if real else 40),
                               batch_size=50, lr=2e-4 if real else 2e-3, limit=10000 if real else None,
                               eval_limit=2000 if real else None, seed=config.seed)
    evaluation = EvalConfig(methods=DEMO_METHODS, limit=1000 if real else None, flip_limit=200)
    return train_config, evaluation


def run_demo(config: DemoConfig, out: str | Path, *, progress: bool = True) -> dict[str, Any]:
    """Train (or resume) and evaluate the demo into ``out``; returns the results of
    :func:`relprop.experiments.evaluate.evaluate`."""
    train_config, evaluation = demo_configs(config)
    train(train_config, out, progress=progress)
    return evaluate(out, evaluation, progress=progress)
