"""What relprop, zennit and Captum do with a stock ``nn.LSTM`` classifier: the conservation error of each.

Conservation: with bias-free layers and epsilon -> 0, LSTM-LRP (Arras et al. 2017) redistributes exactly the
explained logit, so ``|sum R - f(x)| / |f(x)|`` should be ~0. The model is trained briefly on digits-maj
sequences (no download) so that its logits are those of a real classifier.

    python benchmarks/lstm_peers.py [--out benchmarks/results/lstm_peers.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from torch import nn  # noqa: E402


class LSTMClassifier(nn.Module):
    """A stock nn.LSTM reading (batch, steps, features), its last hidden state mapped to 10 logits."""

    def __init__(self, features: int, hidden: int = 32, bias: bool = False) -> None:
        super().__init__()
        self.lstm = nn.LSTM(features, hidden, batch_first=True, bias=bias)
        self.out = nn.Linear(hidden, 10, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        output, _ = self.lstm(x)  # (batch, steps, hidden)
        return self.out(output[:, -1])


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int = 10) -> None:
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        for index in torch.randperm(len(y), generator=generator).split(50):
            loss = nn.functional.cross_entropy(model(x[index]), y[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()


def _error(relevance: torch.Tensor, logit: torch.Tensor) -> float:
    total = relevance.reshape(len(logit), -1).sum(1)
    return float(((total - logit).abs() / logit.abs().clamp(min=1e-12)).mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/lstm_peers.json")
    parser.add_argument("--samples", type=int, default=100)
    args = parser.parse_args(argv)

    import relprop
    from relprop.data import load_maj
    from relprop.files import write_json

    torch.manual_seed(0)
    train, test = load_maj("digits-maj", "train"), load_maj("digits-maj", "test")
    rows = []
    for bias in (False, True):
        model = LSTMClassifier(train.sequences().shape[-1], bias=bias)
        _train(model, train.sequences(), train.y)
        model = model.double().eval()
        x = test.sequences()[: args.samples].double()
        logits = model(x).detach()
        target = logits.argmax(1)
        logit = logits.gather(1, target[:, None]).squeeze(1)
        accuracy = float((model(test.sequences().double()).argmax(1) == test.y).float().mean())
        row = {"bias": bias, "test_accuracy": round(accuracy, 3)}

        for epsilon in (1e-9, 1e-3):
            explanation = relprop.explain(model, x, target, method="lrp", preset="lstm_epsilon", epsilon=epsilon,
                                          stabilizer=min(epsilon, 1e-6))
            row[f"relprop lstm_epsilon eps={epsilon:g}"] = _error(explanation.relevance, logit)

        try:
            from zennit.attribution import Gradient
            from zennit.composites import EpsilonPlusFlat, LayerMapComposite
            from zennit.rules import Epsilon

            for name, composite in (("EpsilonPlusFlat", EpsilonPlusFlat()),
                                    ("Epsilon(1e-9) on Linear", LayerMapComposite([(nn.Linear, Epsilon(1e-9))]))):
                with Gradient(model, composite) as attributor:
                    start = torch.zeros_like(logits).scatter(1, target[:, None], logit[:, None])
                    _, relevance = attributor(x, start)
                row[f"zennit {name}"] = _error(relevance, logit)
        except ImportError:
            row["zennit"] = "not installed"

        try:
            from captum.attr import LRP

            relevance = LRP(model).attribute(x, target=target)
            row["captum LRP"] = _error(relevance, logit)
        except ImportError:
            row["captum LRP"] = "not installed"
        except Exception as error:  # Captum refuses nn.LSTM: record what it says
            row["captum LRP"] = f"raises {type(error).__name__}: {str(error).splitlines()[0][:100]}"
        rows.append(row)

    for row in rows:
        print(json.dumps(row, indent=1))
    write_json(args.out, {"command": " ".join([os.path.basename(sys.executable), *sys.argv]), "rows": rows,
                          "torch": torch.__version__})
    return 0


if __name__ == "__main__":
    sys.exit(main())
