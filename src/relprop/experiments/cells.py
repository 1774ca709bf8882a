"""The architectures of the MAJ grid, in the thesis's order: one list for the grid, its tables and its statistics."""

from __future__ import annotations

__all__ = ["CONV_ARCHS", "GRID_ARCHS"]

CONV_ARCHS = ("convdeep", "conv+deep", "convrlstm_sd", "conv+rlstm_sd")
GRID_ARCHS = ("shallow", "deep", "deep_sd", "rlstm", "rlstm_sd", "rgru", *CONV_ARCHS)
