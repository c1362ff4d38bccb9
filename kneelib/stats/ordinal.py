"""Decoding ordinal grades from class probabilities: arg-max, or cut-points on the expected grade.

A grading network's softmax over ordinal grades (KL 0-4, OARSI 0-3) is usually turned
into a grade by the arg-max, as in paper 004 (Tiulpin & Saarakkala 2020, *Training
strategy*). Arg-max ignores the order of the grades: a knee whose probability is spread
over KL 1, 2 and 3 is graded by whichever single grade is largest, and a grade that is
never the single largest (KL 1 between a crowded KL 0 and KL 2; KL 4 beside KL 3 in a
small image) is never predicted at all. The ordinal alternative used by regression
graders (e.g. cumulative-link models, and the "optimised rounding" of the Kaggle
diabetic-retinopathy graders) reads the *expected grade* ``sum_k k p_k`` and cuts it at
``K - 1`` thresholds fitted to maximise quadratic kappa.

Cut-points are fitted on out-of-fold predictions only (the model never saw those
images); whether they beat arg-max is itself decided out of sample, by cross-fitting the
cut-points over the same folds (:func:`choose_decoding`), so the test set never steers
the choice.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from kneelib.stats.agreement import quadratic_kappa

__all__ = ["expected_grade", "decode_grades", "fit_cutpoints", "cross_fitted_grades", "GradeDecoding",
           "choose_decoding"]


def _probabilities(probabilities) -> np.ndarray:
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"probabilities must be (n, n_grades >= 2), got shape {p.shape}")
    if not np.all(np.isfinite(p)):
        raise ValueError("probabilities hold NaN or infinite values")
    return p


def expected_grade(probabilities) -> np.ndarray:
    """Expected grade ``sum_k k p_k`` of each row of an ``(n, K)`` probability array (grades 0..K-1)."""
    p = _probabilities(probabilities)
    return p @ np.arange(p.shape[1], dtype=np.float64)


def decode_grades(probabilities, cutpoints=None) -> np.ndarray:
    """Grades 0..K-1 from probabilities: arg-max, or the expected grade cut at ``cutpoints``.

    Parameters
    ----------
    probabilities : array-like, (n, K)
    cutpoints : sequence of K - 1 increasing floats, optional
        Grade ``g`` is given when ``cutpoints[g - 1] <= expected grade < cutpoints[g]``.
        ``None``: the arg-max (paper 004).

    Returns
    -------
    ndarray of int, (n,)
    """
    p = _probabilities(probabilities)
    if cutpoints is None:
        return p.argmax(axis=1)
    cuts = np.asarray(cutpoints, dtype=np.float64)
    if cuts.shape != (p.shape[1] - 1,) or np.any(np.diff(cuts) < 0):
        raise ValueError(f"cutpoints must be {p.shape[1] - 1} non-decreasing values, got {cutpoints!r}")
    return np.searchsorted(cuts, expected_grade(p), side="right")


def fit_cutpoints(expected, y_true, n_grades: int, n_candidates: int = 101, max_rounds: int = 5) -> tuple:
    """Cut-points on the expected grade that maximise quadratic kappa on ``(expected, y_true)``.

    Coordinate ascent from the arg-max-like cuts ``0.5, 1.5, ...``: each cut in turn moves
    to the candidate (quantiles of ``expected`` between its neighbours) with the highest
    kappa; ties keep the current value. Stops when a round changes nothing.

    Parameters
    ----------
    expected : array-like, (n,)
        Expected grades (:func:`expected_grade`).
    y_true : array-like of int, (n,)
        Reference grades 0..n_grades-1.
    n_grades : int
        Size of the grade scale (KL: 5; OARSI features: 4).
    n_candidates : int
        Quantiles of ``expected`` tried for each cut.
    max_rounds : int

    Returns
    -------
    tuple of float
        ``n_grades - 1`` non-decreasing cut-points.
    """
    expected = np.asarray(expected, dtype=np.float64)
    y_true = np.asarray(y_true).astype(int)
    if expected.shape != y_true.shape or expected.ndim != 1 or len(expected) == 0:
        raise ValueError(f"expected {expected.shape} and y_true {y_true.shape} must be 1-D, equal and non-empty")
    if n_grades < 2 or y_true.min() < 0 or y_true.max() >= n_grades:
        raise ValueError(f"grades must lie in 0..{n_grades - 1}; got {y_true.min()}..{y_true.max()}")
    grades = range(n_grades)
    quantiles = np.unique(np.quantile(expected, np.linspace(0.0, 1.0, n_candidates)))
    cuts = np.arange(n_grades - 1, dtype=np.float64) + 0.5

    def kappa(c):
        return quadratic_kappa(y_true, np.searchsorted(c, expected, side="right"), grades=grades)

    best = kappa(cuts)
    for _ in range(max_rounds):
        changed = False
        for i in range(n_grades - 1):
            low = cuts[i - 1] if i > 0 else -np.inf
            high = cuts[i + 1] if i < n_grades - 2 else np.inf
            for value in quantiles[(quantiles >= low) & (quantiles <= high)]:
                trial = cuts.copy()
                trial[i] = value
                score = kappa(trial)
                if score > best + 1e-12:
                    best, cuts, changed = score, trial, True
        if not changed:
            break
    return tuple(float(c) for c in cuts)


def cross_fitted_grades(probabilities, y_true, folds, **fit_options) -> np.ndarray:
    """Grades of each fold decoded with cut-points fitted on the other folds only.

    The out-of-sample check of :func:`fit_cutpoints`: its kappa can be compared with the
    arg-max kappa on the same rows without the optimism of fitting and scoring on the
    same predictions.
    """
    p = _probabilities(probabilities)
    y_true = np.asarray(y_true).astype(int)
    folds = np.asarray(folds)
    if len(folds) != len(p) or len(y_true) != len(p):
        raise ValueError(f"probabilities ({len(p)}), y_true ({len(y_true)}) and folds ({len(folds)}) differ in length")
    expected = expected_grade(p)
    decoded = np.empty(len(p), dtype=int)
    for fold in np.unique(folds):
        held_out = folds == fold
        if held_out.all():
            raise ValueError("cross-fitting needs at least two folds")
        cuts = fit_cutpoints(expected[~held_out], y_true[~held_out], p.shape[1], **fit_options)
        decoded[held_out] = np.searchsorted(cuts, expected[held_out], side="right")
    return decoded


@dataclass(frozen=True)
class GradeDecoding:
    """Per-head decoding chosen out of fold (:func:`choose_decoding`).

    Attributes
    ----------
    cutpoints : dict
        Head -> cut-points (fitted on every out-of-fold row), or None for arg-max.
    table : DataFrame
        ``task, n, argmax_kappa, cutpoints_kappa`` (cross-fitted), ``decoding``, ``cutpoints``.
    """

    cutpoints: dict
    table: pd.DataFrame


def choose_decoding(probabilities: dict, targets: dict, folds, min_gain: float = 0.0, **fit_options) -> GradeDecoding:
    """Arg-max or expected-grade cut-points per head, whichever has the higher cross-fitted kappa.

    Parameters
    ----------
    probabilities : dict
        Head -> ``(n, K)`` out-of-fold probabilities (each row predicted by a model that
        did not train on it).
    targets : dict
        Head -> ``(n,)`` reference grades; ``-1`` marks an unknown grade (row skipped).
    folds : array-like, (n,)
        The cross-validation folds the out-of-fold predictions came from (subject-level).
    min_gain : float
        Cut-points are used only when their cross-fitted kappa exceeds arg-max's by more.

    Returns
    -------
    GradeDecoding
    """
    folds = np.asarray(folds)
    rows, cutpoints = [], {}
    for task, p in probabilities.items():
        y = np.asarray(targets[task]).astype(int)
        known = y >= 0
        p_known, y_known = np.asarray(p)[known], y[known]
        grades = range(np.asarray(p).shape[1])
        argmax_kappa = quadratic_kappa(y_known, decode_grades(p_known), grades=grades)
        crossed = cross_fitted_grades(p_known, y_known, folds[known], **fit_options)
        cut_kappa = quadratic_kappa(y_known, crossed, grades=grades)
        use = cut_kappa > argmax_kappa + min_gain
        cuts = fit_cutpoints(expected_grade(p_known), y_known, p_known.shape[1], **fit_options) if use else None
        cutpoints[task] = cuts
        rows.append({"task": task, "n": int(known.sum()), "argmax_kappa": argmax_kappa,
                     "cutpoints_kappa": cut_kappa, "decoding": "cut-points" if use else "arg-max",
                     "cutpoints": "" if cuts is None else ", ".join(f"{c:.2f}" for c in cuts)})
    return GradeDecoding(cutpoints, pd.DataFrame(rows))
