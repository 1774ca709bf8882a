"""Time relprop's transformer presets against a plain gradient (and LXT, where it runs) on ViT-B/16 and a small BERT.

In one process, after warm-up, the contenders run interleaved round-robin; the table gives the median time and the
median per-round ratio to the plain gradient (forward + backward of the target logit to the input). LXT 2.1 needs
transformers 4.52, so it runs in its own venv (``--lxt-python``, created as benchmarks/lxt_reference.py says) as a
child process that times, the same way, its monkey-patched model (AttnLRP as gradient x input) against the plain
gradient of an unpatched copy loaded in a second child: its ratio compares two processes, so it is noisier.

    PYTHONPATH=src python benchmarks/transformer_speed.py --threads 2 --lxt-python /tmp/lxt-venv/bin/python
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: shared machine, spinning OpenMP threads hurt

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "transformer_speed.json"
BERT = {"vocab_size": 1000, "hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 512, "num_labels": 2, "attn_implementation": "sdpa"}
BERT_SHAPE = (8, 64)  # batch, tokens


def _model(name: str) -> tuple[nn.Module, Tensor, dict[str, Any]]:
    """(model, input, keyword arguments) with seeded random weights, float32, eval mode."""
    torch.manual_seed(0)
    if name == "vit_b_16":
        import torchvision

        model = torchvision.models.vit_b_16(weights=None).eval()
        with torch.no_grad():
            model.heads.head.weight.normal_(0, 0.02)  # torchvision starts the head at zero
        return model, torch.randn(1, 3, 224, 224), {}
    import transformers

    config = dict(BERT)
    implementation = config.pop("attn_implementation")
    model = transformers.BertForSequenceClassification(
        transformers.BertConfig(**config, attn_implementation=implementation)).eval()
    ids = torch.randint(0, BERT["vocab_size"], BERT_SHAPE, generator=torch.Generator().manual_seed(1))
    return model, ids, {"attention_mask": torch.ones(BERT_SHAPE, dtype=torch.long)}


def _gradient(model: nn.Module, x: Tensor, kwargs: dict[str, Any]) -> Callable[[], None]:
    """Forward and backward of the target logits to the (embedded) input."""
    embedding = model.get_input_embeddings() if x.dtype == torch.long else None  # type: ignore[operator]

    def run() -> None:
        if embedding is None:
            inputs = x.detach().requires_grad_()
            logits = model(inputs)
        else:
            inputs = embedding(x).detach().requires_grad_()
            logits = model(inputs_embeds=inputs, **kwargs).logits
        torch.autograd.grad(logits[:, 0].sum(), inputs)

    return run


def _time(contenders: dict[str, Callable[[], None]], repeats: int) -> dict[str, Any]:
    for run in contenders.values():  # warm-up
        run()
    names = list(contenders)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(repeats):
        for name in names[round_ % len(names):] + names[: round_ % len(names)]:  # rotate the start
            started = time.perf_counter()
            contenders[name]()
            times[name].append(time.perf_counter() - started)
    return {name: {"median_s": statistics.median(t),
                   "ratio_to_gradient": statistics.median(a / g for a, g in zip(t, times["gradient"]))}
            for name, t in times.items()}


def _relprop(names: list[str], repeats: int) -> dict[str, Any]:
    import relprop

    results = {}
    for name in names:
        model, x, kwargs = _model(name)
        target = torch.zeros(x.shape[0], dtype=torch.long)
        contenders = {"gradient": _gradient(model, x, kwargs)}
        for preset in ("attnlrp", "cp_lrp"):
            contenders[f"relprop {preset}"] = (
                lambda p=preset, m=model, i=x, k=kwargs, t=target: relprop.explain(
                    m, i, t, method="lrp", preset=p, model_kwargs=k or None))
        results[name] = _time(contenders, repeats)
    return results


def _lxt_child(name: str, patched: bool, repeats: int) -> dict[str, float]:
    """Runs in LXT's venv: the median time of LXT's AttnLRP (patched) or of the plain gradient (unpatched)."""
    if patched:
        from lxt.efficient import monkey_patch

        if name == "vit_b_16":
            from torchvision.models import vision_transformer as module
        else:
            from transformers.models.bert import modeling_bert as module  # type: ignore[no-redef]
        monkey_patch(module)
    model, x, kwargs = _model(name)
    run = _gradient(model, x, kwargs)  # under LXT's patches the gradient x input is AttnLRP
    run()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return {"median_s": statistics.median(times)}


def _lxt(python: str, names: list[str], repeats: int, threads: int) -> dict[str, Any]:
    results = {}
    for name in names:
        medians = {}
        for patched in (False, True):
            command = [python, __file__, "--lxt-child", name, "--threads", str(threads), "--repeats", str(repeats)]
            output = subprocess.run(command + (["--patched"] if patched else []), capture_output=True, text=True,
                                    check=True).stdout
            medians["lxt attnlrp" if patched else "gradient"] = json.loads(output.strip().splitlines()[-1])
        ratio = medians["lxt attnlrp"]["median_s"] / medians["gradient"]["median_s"]
        results[name] = {**medians, "lxt attnlrp ratio_to_gradient (two processes)": ratio}
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--repeats", type=int, default=10, help="timed rounds per contender (default 10)")
    parser.add_argument("--models", default="vit_b_16,bert", help="comma-separated: vit_b_16, bert")
    parser.add_argument("--lxt-python", help="the python of a venv with lxt 2.1 (see benchmarks/lxt_reference.py)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results (default %(default)s)")
    parser.add_argument("--lxt-child", help=argparse.SUPPRESS)
    parser.add_argument("--patched", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        if args.lxt_child:
            print(json.dumps(_lxt_child(args.lxt_child, args.patched, args.repeats)))
            return 0
        names = args.models.split(",")
        result: dict[str, Any] = {
            "command": "python benchmarks/transformer_speed.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "threads": args.threads, "repeats": args.repeats, "torch": torch.__version__,
            "models": {"vit_b_16": "torchvision vit_b_16, batch 1, 224x224, float32",
                       "bert": f"BertForSequenceClassification {BERT}, batch x tokens {BERT_SHAPE}, float32"},
            "relprop": _relprop(names, args.repeats),
        }
        if args.lxt_python:
            result["lxt"] = _lxt(args.lxt_python, names, args.repeats, args.threads)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=args.out.parent, suffix=".tmp", delete=False) as handle:
            json.dump(result, handle, indent=1)
        os.replace(handle.name, args.out)
        print(json.dumps({"relprop": result["relprop"], "lxt": result.get("lxt")}, indent=1))
        return 0
    finally:
        torch.set_num_threads(threads_before)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    raise SystemExit(main())
