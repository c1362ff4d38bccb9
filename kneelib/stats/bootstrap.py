"""Bootstrap confidence intervals for any metric of paired predictions.

Used for every metric with a 95% CI in the book (AUC in paper 000, kappa,
balanced accuracy, F1 and MSE in paper 004 Table 3, which uses a *stratified*
bootstrap).

The unit of resampling matters. A subject contributes two knees and often two
visits, so images of one subject are not independent: resampling images treats
them as if they were and gives intervals that are too narrow. Pass ``groups``
(one subject identifier per row) and the bootstrap resamples *subjects* with all
their rows (the cluster bootstrap; Field & Welsh 2007), which every CI in the book
uses. The unit is recorded in :attr:`BootstrapResult.unit`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

__all__ = ["BootstrapResult", "bootstrap_ci", "resample_indices", "bootstrap_unit"]


@dataclass(frozen=True)
class BootstrapResult:
    """A point estimate with a percentile bootstrap interval.

    ``unit`` names what was resampled: ``"subjects"`` (cluster bootstrap over
    ``groups``) or ``"observations"`` (rows taken as independent).
    """

    estimate: float
    ci_low: float
    ci_high: float
    n_boot: int
    level: float = 0.95
    unit: str = "observations"

    def __str__(self) -> str:
        return f"{self.estimate:.3f} [{self.ci_low:.3f}, {self.ci_high:.3f}]"


def bootstrap_unit(groups) -> str:
    """The resampling unit that :func:`bootstrap_ci` uses for ``groups``."""
    return "observations" if groups is None else "subjects"


def resample_indices(n: int, n_boot: int, groups=None, strata_of=None, seed: int = 0):
    """Yield ``n_boot`` arrays of row indices of one bootstrap resample each.

    Parameters
    ----------
    n : int
        Number of rows.
    n_boot : int
        Number of resamples.
    groups : array-like, shape (n,), optional
        Cluster (subject) of each row. When given, whole clusters are drawn with
        replacement and every row of a drawn cluster enters the resample (the cluster
        bootstrap). When ``None``, rows are drawn as independent observations.
    strata_of : array-like, shape (n,), optional
        Stratum of each row; resampling keeps each stratum's size (rows) or each
        stratum's number of clusters (with ``groups``; a cluster's stratum is that of
        its first row).
    seed : int
        Seed; the same seed gives the same resamples.
    """
    rng = np.random.default_rng(seed)
    strata_of = np.zeros(n, dtype=int) if strata_of is None else np.asarray(strata_of)
    if len(strata_of) != n:
        raise ValueError(f"strata has {len(strata_of)} entries for {n} rows")
    if groups is None:
        strata = [np.flatnonzero(strata_of == s) for s in np.unique(strata_of)]
        for _ in range(n_boot):
            yield np.concatenate([rng.choice(s, size=len(s), replace=True) for s in strata])
        return
    groups = np.asarray(groups)
    if len(groups) != n:
        raise ValueError(f"groups has {len(groups)} entries for {n} rows")
    if groups.dtype.kind == "f" and np.isnan(groups).any():
        raise ValueError("groups holds missing values: every row needs its subject")
    cluster_ids, first, inverse = np.unique(groups, return_index=True, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    starts = np.searchsorted(inverse[order], np.arange(len(cluster_ids)))
    ends = np.append(starts[1:], n)
    members = [order[a:b] for a, b in zip(starts, ends)]
    cluster_stratum = strata_of[first]
    cluster_strata = [np.flatnonzero(cluster_stratum == s) for s in np.unique(cluster_stratum)]
    for _ in range(n_boot):
        drawn = np.concatenate([rng.choice(s, size=len(s), replace=True) for s in cluster_strata])
        yield np.concatenate([members[c] for c in drawn])


def bootstrap_ci(
    metric: Callable[[np.ndarray, np.ndarray], float],
    y_true,
    y_score,
    n_boot: int = 1000,
    level: float = 0.95,
    stratify: bool = True,
    seed: int = 0,
    groups=None,
) -> BootstrapResult:
    """Percentile bootstrap CI of ``metric(y_true, y_score)``.

    Parameters
    ----------
    metric : callable
        ``metric(y_true, y_score) -> float``, e.g. ``sklearn.metrics.roc_auc_score``.
    y_true : array-like, shape (n,)
        Labels; with ``stratify`` the resampling keeps each class's count (the
        stratified bootstrap of Tiulpin & Saarakkala 2020, Statistical analysis).
    y_score : array-like, shape (n,) or (n, k)
        Predictions, resampled with the same indices as ``y_true``.
    n_boot : int
        Number of resamples.
    level : float
        Coverage of the interval.
    stratify : bool
        Resample within each class of ``y_true``. With ``groups``, subjects are
        stratified by the label of their first row (a subject whose knees differ
        in grade still enters whole).
    seed : int
        Seed of the resampling; the same seed gives the same interval.
    groups : array-like, shape (n,), optional
        Subject of each row: resample subjects, not rows (cluster bootstrap). Use it
        whenever a subject contributes more than one row (two knees, two visits).

    Returns
    -------
    BootstrapResult
        The estimate on the full data and the percentile interval. Resamples on
        which the metric is undefined (e.g. one class only) are skipped.
    """
    y_true = np.asarray(y_true)
    y_score = np.asarray(y_score)
    if len(y_true) != len(y_score):
        raise ValueError(f"y_true has {len(y_true)} rows but y_score has {len(y_score)}")
    if len(y_true) == 0:
        raise ValueError("cannot bootstrap a metric of zero samples")
    estimate = float(metric(y_true, y_score))
    strata_of = (y_true if y_true.ndim == 1 else y_true[:, 0]) if stratify else None
    values = []
    for idx in resample_indices(len(y_true), n_boot, groups=groups, strata_of=strata_of, seed=seed):
        try:
            value = float(metric(y_true[idx], y_score[idx]))
        except ValueError:
            continue
        if np.isfinite(value):
            values.append(value)
    unit = bootstrap_unit(groups)
    if not values:
        return BootstrapResult(estimate, float("nan"), float("nan"), 0, level, unit)
    alpha = (1 - level) / 2
    low, high = np.quantile(values, [alpha, 1 - alpha])
    return BootstrapResult(estimate, float(low), float(high), len(values), level, unit)
