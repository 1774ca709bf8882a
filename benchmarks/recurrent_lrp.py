"""LRP on recurrent nets, as a ratio to a plain gradient on the same model, in one process.

Models: an LSTM and an R-LSTM (relprop's explicit cells, hidden 128) reading 12 steps of 196 features with a
linear read-out of the last state, the thesis's R-LSTM architecture, and a stock ``nn.LSTM`` (explained through
the ExplicitRecurrent canonizer; its gradient uses PyTorch's fused kernel). Batch 128.

    python benchmarks/recurrent_lrp.py [--threads 2] [--repeats 15] [--out benchmarks/results/recurrent_lrp.json]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: shared machines make idle threads spin

import argparse  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402


class _Classifier(nn.Module):
    def __init__(self, rnn: nn.Module) -> None:
        super().__init__()
        self.rnn, self.out = rnn, nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        output, _ = self.rnn(x)  # (batch, steps, hidden)
        return self.out(output[:, -1])


def _models() -> dict[str, nn.Module]:
    from relprop.models import Recurrent, build

    return {
        "lstm (explicit cells)": _Classifier(Recurrent("lstm", 196, 128)),
        "rlstm (explicit cells)": _Classifier(Recurrent("rlstm", 196, 128)),
        "thesis rlstm (recurrent 72)": build("rlstm"),
        "nn.LSTM (canonizer)": _Classifier(nn.LSTM(196, 128, batch_first=True)),
    }


def _timed(function: Callable[[], object]) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="LRP on recurrent nets vs a plain gradient")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--out", default="benchmarks/results/recurrent_lrp.json")
    args = parser.parse_args(argv)

    import relprop
    from relprop.files import write_json

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.rand(args.batch, 12, 196) * 2 - 1
    rows = []
    for name, model in _models().items():
        model.eval()
        target = model(x).argmax(1)

        def gradient(model: nn.Module = model, target: torch.Tensor = target) -> None:
            leaf = x.clone().requires_grad_()
            torch.autograd.grad(model(leaf).gather(1, target[:, None]).sum(), leaf)

        contenders = {
            "gradient": gradient,
            "lrp lstm_epsilon": lambda model=model, target=target: relprop.methods.lrp(
                model, x, target, preset="lstm_epsilon"),
            "lrp thesis_lrp (alpha1.5beta0.5)": lambda model=model, target=target: relprop.methods.lrp(
                model, x, target, preset="thesis_lrp"),
        }
        if isinstance(getattr(model, "rnn", None), nn.RNNBase):
            # the thesis presets' zB on the first layer would land inside the stock module (one step's map of input
            # and state), which relprop refuses: docs/recurrent.md
            del contenders["lrp thesis_lrp (alpha1.5beta0.5)"]
        for function in contenders.values():  # warm-up
            function()
        times: dict[str, list[float]] = {k: [] for k in contenders}
        for _ in range(args.repeats):  # round-robin: load affects every contender alike
            for key, function in contenders.items():
                times[key].append(_timed(function))
        for key in contenders:
            ratios = [t / g for t, g in zip(times[key], times["gradient"])]
            rows.append({"model": name, "method": key, "median_ms": round(1e3 * statistics.median(times[key]), 1),
                         "ratio_to_gradient": round(statistics.median(ratios), 2)})
    print("| model | method | median ms | ratio to gradient |\n|---|---|--:|--:|")
    for row in rows:
        print(f"| {row['model']} | {row['method']} | {row['median_ms']} | {row['ratio_to_gradient']} |")
    write_json(args.out, {
        "command": " ".join(["python", *sys.argv]), "threads": args.threads, "batch": args.batch,
        "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
        "load_average": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M"), "rows": rows,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
