"""The thesis's conclusions as statistical tests over repeated runs (seeds or folds), with scipy.

Chormai (2018) tests its conclusions on the percentage of relevance in the data region (the share of a
sample's relevance on the two correct blocks; also with each block's share capped at 0.8) over its 10-fold
models: one-sided paired t-tests against the shallow RNN at 0.025, a one-way ANOVA with eta squared and Tukey's
HSD at a family-wise error rate of 0.01. Here the same tests run over relprop's runs:

- runs that share their data (seeds on the official split) are independent samples, so the comparison of two
  architectures is Welch's one-sided t-test; runs on cross-validation folds are paired by fold, as in the
  thesis (paired one-sided t-test);
- per test sequence, a paired one-sided Wilcoxon signed-rank test on the scores averaged over runs (seeds
  share the test set);
- equivalence (two one-sided tests) within a margin fixed in advance, :data:`MARGIN` = 0.03 on the share.

The thesis judged one conclusion, "convolutional layers help fine-grained explanations", from heatmaps alone.
It is tested here on a score of relprop's (:data:`FINE`): the share of the correct blocks' positive relevance
that lies on the object rather than its background, each conv model against the same cell without the conv
front end. Only runs evaluated with that score count (see :func:`relprop.metrics.relevance_on_object`).

Verdicts: "holds" (one-sided p < :data:`ALPHA` in the claimed direction), "does not hold" (the opposite
direction is significant, or the two are equivalent within the margin), otherwise "inconclusive".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .cells import GRID_ARCHS

__all__ = ["ALPHA", "FWER", "MARGIN", "MeanCI", "mean_ci", "compare", "anova", "tukey", "conclusions", "pairwise",
           "CLAIMS", "DEEPER", "FINE", "METRICS"]

ALPHA = 0.025  # one-sided, as the thesis's t-tests
FWER = 0.01  # Tukey HSD, as the thesis
MARGIN = 0.03  # equivalence margin on the share of relevance (and on the cosine), fixed before the runs
# scipy's survival function of the studentized range is 1 - cdf: below about 1e-14 it has no resolution and
# returns 0, so a Tukey p-value below this is reported as "<1e-14", not as 0
TUKEY_P_FLOOR = 1e-14
METRICS = ("relevance_in_region", "relevance_in_region_capped")  # the thesis's scores (coarse-grained)
FINE = ("relevance_on_object",)  # relprop's fine-grained score: the correct blocks' relevance on the object

# Every architecture of the grid but shallow, each tested against shallow as the thesis's notebook tests every
# architecture it is given against its base.
DEEPER = tuple(arch for arch in GRID_ARCHS if arch != "shallow")

# (claim, better architecture, worse architecture, the scores it is tested on): the comparisons each conclusion
# rests on. The thesis judged "convolutional layers help fine-grained explanations" from heatmaps; here it is
# tested on the share of the correct blocks' positive relevance that lies on the digit or garment, conv front
# end against the same cell without it.
CLAIMS: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    *(("deeper and LSTM-type RNNs explain better than the shallow RNN", arch, "shallow", METRICS)
      for arch in DEEPER),
    ("stationary dropout helps", "rlstm_sd", "rlstm", METRICS),
    ("stationary dropout helps", "deep_sd", "deep", METRICS),
    *(("convolutional layers help fine-grained explanations", conv, plain, FINE)
      for conv, plain in (("convdeep", "deep"), ("conv+deep", "deep"), ("convrlstm_sd", "rlstm_sd"),
                          ("conv+rlstm_sd", "rlstm_sd"))),
)


@dataclass(frozen=True)
class MeanCI:
    """Mean of ``n`` values with the half-width of its 95% t-interval (0 for a single value)."""

    mean: float
    half_width: float
    n: int

    def text(self, digits: int = 3) -> str:
        if self.n == 0:
            return ""
        if self.n == 1:
            return f"{self.mean:.{digits}f} (1 run)"
        return f"{self.mean:.{digits}f} ± {self.half_width:.{digits}f}"


def mean_ci(values: Sequence[float] | np.ndarray) -> MeanCI:
    """Mean and 95% confidence interval (Student t with n - 1 degrees of freedom) of ``values``.

    >>> mean_ci([0.9, 1.0, 1.1]).text(2)
    '1.00 ± 0.25'
    """
    from scipy import stats

    array = np.asarray(values, dtype=np.float64)
    n = len(array)
    if n == 0:
        return MeanCI(math.nan, math.nan, 0)
    if n == 1:
        return MeanCI(float(array[0]), 0.0, 1)
    half = float(stats.t.ppf(0.975, n - 1) * array.std(ddof=1) / math.sqrt(n))
    return MeanCI(float(array.mean()), half, n)


def _verdict(p_claim: float, p_opposite: float, p_equivalent: float) -> str:
    if p_claim < ALPHA:
        return "holds"
    if p_opposite < ALPHA or p_equivalent < ALPHA:
        return "does not hold"
    return "inconclusive"


def compare(better: Sequence[float], worse: Sequence[float], *, paired: bool) -> dict[str, Any]:
    """One-sided test that ``better`` > ``worse`` (per-run means), its opposite, and equivalence within MARGIN.

    Returns the t statistic, the one-sided p-values, the mean difference with its 95% CI, Cohen's d (Hedges'
    correction for independent samples; d_z for paired ones) and the verdict.
    """
    from scipy import stats

    a, b = np.asarray(better, dtype=np.float64), np.asarray(worse, dtype=np.float64)
    if len(a) < 2 or len(b) < 2 or (paired and len(a) != len(b)):
        return {"test": "t (too few runs)", "n": f"{len(a)}/{len(b)}", "verdict": "inconclusive"}
    if paired:
        diff = a - b
        result = stats.ttest_rel(a, b, alternative="greater")
        opposite = stats.ttest_rel(a, b, alternative="less").pvalue
        lower = stats.ttest_rel(diff + MARGIN, np.zeros_like(diff), alternative="greater").pvalue
        upper = stats.ttest_rel(diff - MARGIN, np.zeros_like(diff), alternative="less").pvalue
        sd = diff.std(ddof=1)
        effect = float(diff.mean() / sd) if sd > 0 else math.inf * np.sign(diff.mean())
        interval = mean_ci(diff)
        test = "paired t (one-sided)"
    else:
        result = stats.ttest_ind(a, b, equal_var=False, alternative="greater")
        opposite = stats.ttest_ind(a, b, equal_var=False, alternative="less").pvalue
        lower = stats.ttest_ind(a + MARGIN, b, equal_var=False, alternative="greater").pvalue
        upper = stats.ttest_ind(a - MARGIN, b, equal_var=False, alternative="less").pvalue
        pooled = math.sqrt(((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1)) / (len(a) + len(b) - 2))
        correction = 1 - 3 / (4 * (len(a) + len(b)) - 9)
        effect = float((a.mean() - b.mean()) / pooled * correction) if pooled > 0 else math.inf
        se = math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
        dof = float(result.df)
        half = float(stats.t.ppf(0.975, dof) * se)
        interval = MeanCI(float(a.mean() - b.mean()), half, len(a) + len(b))
        test = "Welch t (one-sided)"
    p_equivalent = float(max(lower, upper))
    return {
        "test": test, "n": f"{len(a)}/{len(b)}", "statistic": float(result.statistic), "p": float(result.pvalue),
        "difference": f"{interval.mean:+.3f} ± {interval.half_width:.3f}", "effect size (d)": round(effect, 2),
        "p (opposite)": float(opposite), f"p (equivalent ±{MARGIN:.2f})": p_equivalent,
        "verdict": _verdict(float(result.pvalue), float(opposite), p_equivalent),
    }


def per_sample(better: np.ndarray, worse: np.ndarray) -> dict[str, Any]:
    """Paired one-sided Wilcoxon signed-rank test on per-sample scores of the same test sequences."""
    from scipy import stats

    if np.shape(better) != np.shape(worse):  # different test sets (folds): no per-sample pairing
        return {"wilcoxon p": "", "median difference": ""}
    diff = np.asarray(better, dtype=np.float64) - np.asarray(worse, dtype=np.float64)
    if diff.size < 10 or not np.any(diff):
        return {"wilcoxon p": "", "median difference": ""}
    result = stats.wilcoxon(diff, alternative="greater")
    return {"wilcoxon p": float(result.pvalue), "median difference": round(float(np.median(diff)), 4)}


def anova(groups: dict[str, Sequence[float]]) -> dict[str, Any]:
    """One-way ANOVA of the per-run scores across architectures, with eta squared (SS between / SS total)."""
    from scipy import stats

    arrays = [np.asarray(v, dtype=np.float64) for v in groups.values() if len(v) >= 2]
    if len(arrays) < 2:
        return {"F": "", "p": "", "eta squared": "", "archs": len(arrays)}
    everything = np.concatenate(arrays)
    total = float(((everything - everything.mean()) ** 2).sum())
    between = float(sum(len(a) * (a.mean() - everything.mean()) ** 2 for a in arrays))
    result = stats.f_oneway(*arrays)
    return {"F": float(result.statistic), "p": float(result.pvalue),
            "eta squared": round(between / total, 3) if total > 0 else "", "archs": len(arrays)}


def tukey(groups: dict[str, Sequence[float]]) -> list[dict[str, Any]]:
    """Tukey's HSD over all pairs of architectures at FWER 0.01 (scipy.stats.tukey_hsd).

    ``p`` is a float, or the text ``"<1e-14"`` where it is below :data:`TUKEY_P_FLOOR` (scipy computes it as
    ``1 - cdf`` and returns 0 there)."""
    from scipy import stats

    names = [name for name, values in groups.items() if len(values) >= 2]
    if len(names) < 2:
        return []
    result = stats.tukey_hsd(*(np.asarray(groups[n], dtype=np.float64) for n in names))
    interval = result.confidence_interval(confidence_level=1 - FWER)
    rows = []
    for i, first in enumerate(names):
        for j in range(i + 1, len(names)):
            rows.append({"pair": f"{first} - {names[j]}", "mean difference": round(float(result.statistic[i, j]), 4),
                         "p": _tukey_p(float(result.pvalue[i, j])),
                         "interval": f"[{interval.low[i, j]:+.3f}, {interval.high[i, j]:+.3f}]",
                         "reject at FWER 0.01": bool(result.pvalue[i, j] < FWER)})
    return rows


def _tukey_p(p: float) -> float | str:
    """
    >>> _tukey_p(0.0), _tukey_p(0.02)
    ('<1e-14', 0.02)
    """
    return p if p >= TUKEY_P_FLOOR else f"<{TUKEY_P_FLOOR:g}"


def conclusions(cells: list[dict[str, Any]], methods: Sequence[str],
                samples: dict[tuple[str, str, int], dict[str, np.ndarray]] | None = None) -> list[dict[str, Any]]:
    """One row per claim x dataset x method x metric with the test, statistic, p-value, effect size and verdict.

    ``samples`` maps (dataset, arch, replicate) to per-sample scores ``{"<method>/<metric>": array}`` for the
    Wilcoxon tests. The sensitivity claim ("DTD depends far more on the architecture than the other methods")
    is tested by each method's eta squared of a one-way ANOVA across architectures.
    """
    rows: list[dict[str, Any]] = []
    datasets = sorted({c["dataset"] for c in cells})
    for dataset in datasets:
        group = [c for c in cells if c["dataset"] == dataset]
        paired = all(c.get("fold") is not None for c in group)
        for method in methods:
            for metric in (*METRICS, *FINE):
                scores = _scores(group, method, metric)
                for claim, better, worse, tested_on in CLAIMS:
                    if metric not in tested_on or better not in scores or worse not in scores:
                        continue
                    a, b = _aligned(scores[better], scores[worse], paired)
                    row = {"claim": claim, "dataset": dataset, "method": method, "metric": metric,
                           "comparison": f"{better} > {worse}", **compare(a, b, paired=paired)}
                    if samples is not None:
                        row.update(per_sample(*(_sample_mean(samples, dataset, arch, method, metric, scores[arch])
                                                for arch in (better, worse))))
                    rows.append(row)
        rows.extend(_sensitivity(group, dataset, methods))
    return rows


def pairwise(cells: list[dict[str, Any]], methods: Sequence[str]) -> list[dict[str, Any]]:
    """Tukey's HSD between every pair of architectures, per dataset x method x metric, over the runs' means.

    The thesis's notebook follows its ANOVA with these pairs; the rows name the pair, the mean difference (first
    minus second), its simultaneous interval at 1 - :data:`FWER` and whether the pair differs at that rate.
    Architectures with fewer than two runs are left out, as the test needs a variance per group.
    """
    rows: list[dict[str, Any]] = []
    for dataset in sorted({c["dataset"] for c in cells}):
        group = [c for c in cells if c["dataset"] == dataset]
        for method in methods:
            for metric in METRICS:
                scores = _scores(group, method, metric)
                rows.extend({"dataset": dataset, "method": method, "metric": metric, **row}
                            for row in tukey({arch: list(runs.values()) for arch, runs in scores.items()}))
    return rows


def _sensitivity(group: list[dict[str, Any]], dataset: str, methods: Sequence[str]) -> list[dict[str, Any]]:
    claim = "DTD depends far more on the architecture than the other methods"
    etas = {m: anova({a: list(v.values()) for a, v in _scores(group, m, METRICS[0]).items()}) for m in methods}
    valid = {m: e["eta squared"] for m, e in etas.items() if isinstance(e["eta squared"], float)}
    if "dtd" not in valid or len(valid) < 2:
        return []
    largest = max(valid, key=lambda m: valid[m])
    rows = []
    for method, result in etas.items():
        rows.append({"claim": claim, "dataset": dataset, "method": method, "metric": METRICS[0],
                     "comparison": "ANOVA across architectures", "test": "one-way ANOVA",
                     "statistic": result["F"], "p": result["p"], "effect size (eta squared)": result["eta squared"],
                     "verdict": ("holds" if largest == "dtd" else "does not hold") if method == "dtd" else ""})
    return rows


def _scores(group: list[dict[str, Any]], method: str, metric: str) -> dict[str, dict[int, float]]:
    """arch -> replicate -> the run's test-set mean of ``metric`` for ``method``."""
    scores: dict[str, dict[int, float]] = {}
    for cell in group:
        value = cell["methods"].get(method, {}).get(metric)
        if value is not None:
            scores.setdefault(cell["arch"], {})[int(cell["replicate"])] = float(value["mean"])
    return scores


def _aligned(a: dict[int, float], b: dict[int, float], paired: bool) -> tuple[list[float], list[float]]:
    if paired:
        shared = sorted(set(a) & set(b))
        return [a[r] for r in shared], [b[r] for r in shared]
    return list(a.values()), list(b.values())


def _sample_mean(samples: dict[tuple[str, str, int], dict[str, np.ndarray]], dataset: str, arch: str, method: str,
                 metric: str, runs: dict[int, float]) -> np.ndarray:
    arrays = [samples[(dataset, arch, r)][f"{method}/{metric}"] for r in runs
              if f"{method}/{metric}" in samples.get((dataset, arch, r), {})]
    return np.mean(arrays, axis=0) if arrays else np.zeros(0)
