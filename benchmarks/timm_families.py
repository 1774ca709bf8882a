"""Which timm model families relprop explains under a CNN preset and a transformer preset, and which it refuses (and
why).

timm names its models ``<family><variant>`` (``resnet50``, ``tf_efficientnet_b0``, ``caformer_s18``): the family is
the name up to its first digit or underscore (with a ``tf_`` prefix kept). For each family the script takes one
model: of the five shortest names without "large", "huge", "giant", "xl" or "base" in them, the one with the
fewest parameters. It builds it with random weights and 3 classes (float32, eval mode) and explains class 0 of one
image (64x64, or the model's own input size where it needs that) under ``epsilon_plus_flat`` and ``attnlrp``, and
by DeepLIFT against a noise image (0.3 times standard normal: a zero image makes the norms of bias-free stems see
constants, whose attributions DeepLIFT refuses). A row holds the outcome per column: ``ok`` (DeepLIFT's with its
summation gap relative to f(x) - f(x')), ``refused`` with the first line of relprop's ExplanationError, ``crash``
(any other exception: a bug in relprop, and the script exits with 1) or ``timeout``. A model that does not build
or run at that size in plain PyTorch, or has more than 200M parameters, is ``not built`` and left out of the
counts. No weights are downloaded.

    PYTHONPATH=src python benchmarks/timm_families.py --threads 1          # all families, a few minutes
    PYTHONPATH=src python benchmarks/timm_families.py --families resnet,tf_efficientnet --out /tmp/timm.json
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: shared machine, spinning OpenMP threads hurt

import argparse  # noqa: E402
import re  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import torch_threads, write_record  # noqa: E402

import relprop  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "timm_families.json"
PRESETS = ("epsilon_plus_flat", "attnlrp")
COLUMNS = (*PRESETS, "deeplift")
_LARGE = ("large", "huge", "giant", "xl", "_l", "base")
MAX_PARAMETERS = 200_000_000  # a family whose smallest model is larger is left out (memory)


def family(name: str) -> str:
    """``resnet50`` -> ``resnet``, ``tf_efficientnet_b0`` -> ``tf_efficientnet``."""
    prefix = "tf_" if name.startswith("tf_") else ""
    return prefix + re.split(r"[_\d]", name[len(prefix):])[0]


def parameters(name: str) -> int:
    """How many parameters timm's model ``name`` has (built on the meta device, so without memory; 0 where that
    fails)."""
    import timm

    try:
        with torch.device("meta"):
            return sum(p.numel() for p in timm.create_model(name, pretrained=False, num_classes=3).parameters())
    except Exception:  # noqa: BLE001  (a model that cannot be built on the meta device is built for real later)
        return 0


def families(names: Sequence[str] | None = None) -> dict[str, str]:
    """Each timm family (of ``names``, default all) and the one model that stands for it: of the five shortest names
    without a large size in them, the one with the fewest parameters."""
    import timm

    members: dict[str, list[str]] = {}
    for name in timm.list_models():
        if names is None or family(name) in names:
            members.setdefault(family(name), []).append(name)
    chosen = {}
    for key, candidates in sorted(members.items()):
        shortest = sorted(candidates, key=lambda n: (any(k in n for k in _LARGE), len(n), n))[:5]
        chosen[key] = min(shortest, key=lambda n: (parameters(n) or float("inf"), shortest.index(n)))
    return chosen


class _Timeout(Exception):
    pass


def _alarm(*_: Any) -> None:
    raise _Timeout


def _input(model: torch.nn.Module) -> torch.Tensor:
    channels, height, width = model.pretrained_cfg.get("input_size", (3, 224, 224))
    fixed = getattr(getattr(model, "patch_embed", None), "img_size", None) is not None  # a ViT's fixed grid
    size = (height, width) if fixed or model.pretrained_cfg.get("fixed_input_size", False) else (64, 64)
    return torch.rand(1, channels, *size, generator=torch.Generator().manual_seed(0))


def run(name: str, timeout: int) -> dict[str, Any]:
    """One family's row: the model, and per column its outcome."""
    import timm

    row: dict[str, Any] = {"model": name}
    size = parameters(name)
    if size > MAX_PARAMETERS:
        return {**row, "status": "not built", "message": f"{size / 1e6:.0f}M parameters (the limit: "
                                                          f"{MAX_PARAMETERS / 1e6:.0f}M)"}
    signal.signal(signal.SIGALRM, _alarm)
    try:
        signal.alarm(timeout)
        torch.manual_seed(0)
        model = timm.create_model(name, pretrained=False, num_classes=3).eval()
        x = _input(model)
        model(x)
        signal.alarm(0)
    except BaseException as error:  # noqa: BLE001  (any failure to build is reported, not raised)
        signal.alarm(0)
        if isinstance(error, KeyboardInterrupt):
            raise
        return {**row, "status": "not built", "message": f"{type(error).__name__}: {str(error)[:200]}"}
    row["input"] = list(x.shape)
    reference = 0.3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    for column in COLUMNS:
        try:
            signal.alarm(timeout)
            if column == "deeplift":
                explanation = relprop.explain(model, x, 0, method="deeplift", baseline=reference)
                gap = explanation.details["summation_gap"]
                difference = (explanation.relevance.flatten(1).sum(1) - gap).abs()  # |f(x) - f(x')|
                row[column] = {"status": "ok", "gap": float(gap.abs().max()), "difference": float(difference.min())}
            else:
                relprop.explain(model, x, 0, method="lrp", preset=column)
                row[column] = {"status": "ok"}
        except relprop.ExplanationError as error:
            row[column] = {"status": "refused", "message": str(error).split("\n")[0][:400]}
        except _Timeout:
            row[column] = {"status": "timeout"}
        except Exception as error:  # noqa: BLE001  (a crash is the finding)
            row[column] = {"status": "crash", "message": f"{type(error).__name__}: {str(error)[:300]}"}
        finally:
            signal.alarm(0)
    return row


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", default="", help="comma-separated (default: all)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--timeout", type=int, default=120, help="seconds per model and column")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    known = families(args.families.split(",") if args.families else None)
    chosen = args.families.split(",") if args.families else list(known)
    unknown = [key for key in chosen if key not in known]
    if unknown:
        parser.error(f"unknown families: {', '.join(unknown)}")
    rows = []
    with torch_threads(args.threads), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for key in tqdm(chosen, desc="families", disable=None):
            rows.append({"family": key, **run(known[key], args.timeout)})
    built = [row for row in rows if row.get("status") != "not built"]
    explained = {column: sum(row[column]["status"] == "ok" for row in built) for column in COLUMNS}
    write_record(args.out, "timm_families.py", argv, args.threads, ["timm"],
                 {"built": len(built), "explained": explained}, rows)
    print(f"{len(built)} of {len(rows)} families built; explained: "
          + ", ".join(f"{count} {'by' if column == 'deeplift' else 'under'} {column}"
                      for column, count in explained.items()))
    crashed = [row["family"] for row in built if any(row[column]["status"] == "crash" for column in COLUMNS)]
    if crashed:
        print(f"crashed (a relprop bug): {', '.join(crashed)}")
    return 1 if crashed else 0


if __name__ == "__main__":
    raise SystemExit(main())
