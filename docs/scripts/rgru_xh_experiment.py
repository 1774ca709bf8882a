"""Train and evaluate the R-GRU with dropout on ``in_t`` and ``h_t`` only (not the gates and the candidate).

An experiment, not a thesis cell: the thesis's ``rgru.py`` as stored (commit 7659581) drops out five places, as
relprop's ``rgru`` does; its last ``rlstm.py`` (359196c) drops out only ``in_t`` and ``h_t``, and relprop's
``rlstm`` built that way reproduces the thesis (docs/results.md). This registers that variant of the R-GRU as
``rgru_xh`` for the run and trains one seed with the grid's recipe, then prints accuracy and cosines:

    RELPROP_DATA=... python docs/scripts/rgru_xh_experiment.py OUT_DIR [SEED]
"""

from __future__ import annotations

import sys

import torch

from relprop import models
from relprop.experiments.reproduce import GridConfig, run_cell
from relprop.models import RGRU, RGRUConfig


def main(out: str, seed: int = 0) -> None:
    torch.set_num_threads(1)
    models.ARCHITECTURES["rgru_xh"] = models._variant(RGRU, RGRUConfig, cell_dropout=False)
    grid = GridConfig(archs=("rgru_xh",), datasets=("mnist-maj",), runs=(seed,))
    result = run_cell(grid, out, "mnist-maj", "rgru_xh", seed)
    assert result is not None and "error" not in result, result
    print(f"accuracy {result['accuracy']:.4f}, epochs {result['epochs']} (best {result['checkpoint_epoch']})")
    for method, scores in result["methods"].items():
        print(f"{method:14s} cosine {scores['cosine']['mean']:.3f}")


if __name__ == "__main__":
    main(sys.argv[1], *(int(a) for a in sys.argv[2:3]))
