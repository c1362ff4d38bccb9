"""Agreement of predicted and reference ordinal grades, with bootstrap 95% CIs.

Paper 004 (Tiulpin & Saarakkala 2020) reports, per task, Cohen's quadratic kappa and
balanced accuracy (Table 2, Supplementary Table 1), and on the test set also F1 and
the mean squared error, with 95% CIs from a *stratified* bootstrap (Table 3,
*Test-set Performance*), and confusion matrices in percent (Fig. 4, Suppl. Fig. 1).
Everything here is a thin layer over :mod:`sklearn.metrics`; the intervals come from
:func:`kneelib.stats.bootstrap.bootstrap_ci`.
"""
from __future__ import annotations

import warnings
from typing import Callable, Iterable

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from kneelib.stats.bootstrap import bootstrap_ci, resample_indices

#: Grades 0..4 of the Kellgren-Lawrence scale; OARSI atlas grades use 0..3.
KL_GRADES = tuple(range(5))

__all__ = [
    "KL_GRADES",
    "quadratic_kappa",
    "balanced_accuracy",
    "accuracy",
    "f1_weighted",
    "mean_squared_error",
    "mean_absolute_error",
    "confusion",
    "confusion_percent",
    "AGREEMENT_METRICS",
    "agreement_table",
    "confusion_with_ci",
    "majority_grade_predictions",
    "chance_predictions",
]


def _as_labels(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} must be 1-D and equal in length")
    if len(y_true) == 0:
        raise ValueError("agreement metrics need at least one sample")
    return y_true.astype(int), y_pred.astype(int)


def quadratic_kappa(y_true, y_pred, grades=None) -> float:
    """Cohen's kappa with quadratic weights (paper 004's main agreement measure).

    Parameters
    ----------
    y_true, y_pred : array-like of int
    grades : sequence of int, optional
        The full grade scale. The quadratic weight of a disagreement is
        ``(i - j)**2 / (K - 1)**2`` over the positions of the grades on this scale,
        so a grade that neither rater used (common in small OARSI folds) must still
        be on it: otherwise a 1-vs-3 disagreement would weigh like 1-vs-2. Default:
        ``0 .. max(grade)``, i.e. every integer grade from 0 to the largest one seen.

    Defined as 0 when both raters give one and the same constant grade.
    """
    y_true, y_pred = _as_labels(y_true, y_pred)
    seen = np.concatenate([y_true, y_pred])
    if np.unique(seen).size == 1:
        return 0.0
    if grades is None:
        grades = range(int(min(0, seen.min())), int(seen.max()) + 1)
    grades = [int(g) for g in grades]
    outside = sorted(set(np.unique(seen).tolist()) - set(grades))
    if outside:
        raise ValueError(f"grades {outside} are not on the scale {grades}")
    return float(skm.cohen_kappa_score(y_true, y_pred, weights="quadratic", labels=grades))


def balanced_accuracy(y_true, y_pred) -> float:
    """Mean of per-grade recalls (over the grades present in ``y_true``).

    The value of :func:`sklearn.metrics.balanced_accuracy_score`, computed directly so
    that a bootstrap resample with one grade, or predictions of a grade absent from
    ``y_true``, raise no warning (they are ordinary cases, not mistakes).
    """
    y_true, y_pred = _as_labels(y_true, y_pred)
    return float(np.mean([np.mean(y_pred[y_true == grade] == grade) for grade in np.unique(y_true)]))


def accuracy(y_true, y_pred) -> float:
    """Fraction of exactly matching grades."""
    y_true, y_pred = _as_labels(y_true, y_pred)
    return float(skm.accuracy_score(y_true, y_pred))


def f1_weighted(y_true, y_pred) -> float:
    """Support-weighted mean of per-grade F1 scores (paper 004 Table 3, "F1").

    The paper does not say how it averaged over grades; the support-weighted mean
    is the sklearn choice that matches its reported magnitudes.
    """
    y_true, y_pred = _as_labels(y_true, y_pred)
    return float(skm.f1_score(y_true, y_pred, average="weighted", zero_division=0))


def mean_squared_error(y_true, y_pred) -> float:
    """Mean squared grade difference (paper 004 Table 3, "MSE")."""
    y_true, y_pred = _as_labels(y_true, y_pred)
    return float(skm.mean_squared_error(y_true, y_pred))


def mean_absolute_error(y_true, y_pred) -> float:
    """Mean absolute grade difference."""
    y_true, y_pred = _as_labels(y_true, y_pred)
    return float(skm.mean_absolute_error(y_true, y_pred))


def confusion(y_true, y_pred, n_grades: int) -> np.ndarray:
    """Confusion matrix of counts, rows = reference grade 0..n-1, columns = predicted."""
    y_true, y_pred = _as_labels(y_true, y_pred)
    return skm.confusion_matrix(y_true, y_pred, labels=list(range(n_grades)))


def confusion_percent(y_true, y_pred, n_grades: int) -> np.ndarray:
    """Row-normalised confusion matrix in percent (paper 004 Fig. 4); empty rows are NaN."""
    counts = confusion(y_true, y_pred, n_grades).astype(float)
    totals = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, 100.0 * counts / totals, np.nan)


#: Metric name -> function(y_true, y_pred), in the order of the book's tables.
AGREEMENT_METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "quadratic_kappa": quadratic_kappa,
    "balanced_accuracy": balanced_accuracy,
    "accuracy": accuracy,
    "f1_weighted": f1_weighted,
    "mse": mean_squared_error,
    "mae": mean_absolute_error,
}


def agreement_table(y_true, y_pred, metrics: Iterable[str] | None = None, n_boot: int = 1000,
                    stratify: bool = True, seed: int = 0, label: str | None = None,
                    groups=None, grades=None) -> pd.DataFrame:
    """Every agreement metric with a percentile bootstrap 95% CI.

    Parameters
    ----------
    y_true, y_pred : array-like of int
        Reference and predicted grades.
    metrics : iterable of str, optional
        Names from :data:`AGREEMENT_METRICS` (default: all).
    n_boot : int
        Bootstrap resamples (paper 004 used 100).
    stratify : bool
        Resample within each reference grade (paper 004's stratified bootstrap).
    seed : int
        Seed of the resampling.
    label : str, optional
        Value of a leading ``model`` column (e.g. ``"majority grade"``).
    groups : array-like, optional
        Subject of each row: the CIs resample subjects (cluster bootstrap), as every
        CI of the book does; ``None`` resamples rows as if independent.
    grades : sequence of int, optional
        The grade scale of the kappa weights (e.g. :data:`KL_GRADES`); default
        ``0 .. max`` over both raters on the full data, so that a bootstrap resample
        missing the top grade keeps the same weights.

    Returns
    -------
    DataFrame
        Columns ``[model,] metric, estimate, ci_low, ci_high, n, unit`` (``unit``:
        what the bootstrap resampled, ``"subjects"`` or ``"observations"``).
    """
    y_true, y_pred = _as_labels(y_true, y_pred)
    names = list(metrics) if metrics is not None else list(AGREEMENT_METRICS)
    unknown = [m for m in names if m not in AGREEMENT_METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; known: {list(AGREEMENT_METRICS)}")
    if grades is None:
        grades = range(0, int(max(y_true.max(), y_pred.max())) + 1)
    grades = tuple(int(g) for g in grades)
    rows = []
    for name in names:
        metric = AGREEMENT_METRICS[name]
        if metric is quadratic_kappa:
            def metric(a, b, _scale=grades):  # noqa: E306 -- one fixed scale for every resample
                return quadratic_kappa(a, b, grades=_scale)
        result = bootstrap_ci(metric, y_true, y_pred, n_boot=n_boot,
                              stratify=stratify, seed=seed, groups=groups)
        row = {"metric": name, "estimate": result.estimate, "ci_low": result.ci_low,
               "ci_high": result.ci_high, "n": len(y_true), "unit": result.unit}
        if label is not None:
            row = {"model": label, **row}
        rows.append(row)
    return pd.DataFrame(rows)


def confusion_with_ci(y_true, y_pred, n_grades: int, n_boot: int = 1000, stratify: bool = True,
                      seed: int = 0, level: float = 0.95,
                      groups=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row-percent confusion matrix with a per-cell percentile bootstrap interval.

    ``groups`` (subject of each row) makes the bootstrap resample subjects.

    Returns
    -------
    percent, low, high : ndarray, shape (n_grades, n_grades)
        Point estimate and interval bounds in percent (rows of absent grades are NaN).
    """
    y_true, y_pred = _as_labels(y_true, y_pred)
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    draws = np.empty((n_boot, n_grades, n_grades))
    resamples = resample_indices(len(y_true), n_boot, groups=groups,
                                 strata_of=y_true if stratify else None, seed=seed)
    for b, idx in enumerate(resamples):
        draws[b] = confusion_percent(y_true[idx], y_pred[idx], n_grades)
    alpha = (1 - level) / 2
    with warnings.catch_warnings():  # rows of grades absent from y_true are all-NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        low = np.nanquantile(draws, alpha, axis=0)
        high = np.nanquantile(draws, 1 - alpha, axis=0)
    return confusion_percent(y_true, y_pred, n_grades), low, high


def majority_grade_predictions(y_train, n: int) -> np.ndarray:
    """The baseline that always predicts the most frequent training grade."""
    values, counts = np.unique(np.asarray(y_train).astype(int), return_counts=True)
    if len(values) == 0:
        raise ValueError("majority baseline needs at least one training label")
    return np.full(n, int(values[np.argmax(counts)]), dtype=int)


def chance_predictions(n: int, n_grades: int, seed: int = 0, prior=None) -> np.ndarray:
    """Grades drawn at random, uniformly or from ``prior`` (a chance-level reference)."""
    rng = np.random.default_rng(seed)
    p = None if prior is None else np.asarray(prior, dtype=float) / np.sum(prior)
    return rng.choice(n_grades, size=n, p=p).astype(int)
