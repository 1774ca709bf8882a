"""Metrics that score explanations, grouped by category; each records ``higher_is_better``.

Categories: axiomatic (conservation), faithfulness (pixel flipping, word deletion, infidelity), localisation
(block cosine, relevance in region, relevance on the object), complexity (sparseness, entropy), robustness
(max-sensitivity), randomisation (model-parameter randomisation test). The classes with a ``score(batch)`` method
run inside :func:`relprop.explain_dataset`.
"""

from __future__ import annotations

from relprop.metrics.axiomatic import conservation_error
from relprop.metrics.batch import Batch, BatchMetric, ExplainFn
from relprop.metrics.complexity import Entropy, Sparseness, entropy, sparseness
from relprop.metrics.faithfulness import (
    FlipConfig,
    FlipCurve,
    Infidelity,
    PixelFlipping,
    pixel_flipping,
    word_deletion,
)
from relprop.metrics.localisation import (
    BlockCosine,
    RelevanceInRegion,
    RelevanceOnObject,
    block_cosine,
    block_mask,
    block_relevance,
    relevance_in_region,
    relevance_on_object,
)
from relprop.metrics.randomisation import ModelRandomisation, RandomisationResult, similarity
from relprop.metrics.robustness import MaxSensitivity

__all__ = [
    "Batch",
    "BatchMetric",
    "BlockCosine",
    "Entropy",
    "ExplainFn",
    "FlipConfig",
    "FlipCurve",
    "Infidelity",
    "MaxSensitivity",
    "ModelRandomisation",
    "PixelFlipping",
    "RandomisationResult",
    "RelevanceInRegion",
    "RelevanceOnObject",
    "Sparseness",
    "block_cosine",
    "block_mask",
    "block_relevance",
    "conservation_error",
    "entropy",
    "pixel_flipping",
    "relevance_in_region",
    "relevance_on_object",
    "similarity",
    "sparseness",
    "word_deletion",
]
