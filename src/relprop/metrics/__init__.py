"""Metrics that score explanations, grouped by category; each records ``higher_is_better``."""

from __future__ import annotations

from relprop.metrics.axiomatic import conservation_error
from relprop.metrics.faithfulness import FlipCurve, pixel_flipping, word_deletion
from relprop.metrics.localisation import (
    BlockCosine,
    RelevanceInRegion,
    block_cosine,
    block_relevance,
    relevance_in_region,
)

__all__ = [
    "BlockCosine",
    "FlipCurve",
    "RelevanceInRegion",
    "block_cosine",
    "block_relevance",
    "conservation_error",
    "pixel_flipping",
    "relevance_in_region",
    "word_deletion",
]
