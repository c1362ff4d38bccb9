"""Binary-classification metrics with subject-level CIs, and the paired reader benchmark (paper 002).

Schiratti et al. 2021, 2.2.3: "ROC AUC score, area under the Precision-Recall (PR) curve and
F1 score"; 3.1 adds precision and recall and a confusion matrix (Fig. 4), 3.3 the
"weighted-F1". Every interval here resamples *participants* with both their knees
(:func:`kneelib.stats.bootstrap.bootstrap_ci` with ``groups``; the ROC AUC through
:func:`kneelib.stats.roc.auc_with_ci`), because the two knees of a participant are not
independent.

2.5, "Human Benchmark": 150 pairs of one 12-month progressor and one non-progressor, the
progressors drawn as 10 "almost certain" (JSN < -1.1 mm), 130 typical (-1.1 <= JSN < -0.6)
and 10 "doubtful" (-0.6 <= JSN < -0.5); a reader (or a model) scores a pair correct when it
ranks the progressor above the non-progressor. :func:`reader_benchmark_pairs` draws such
pairs and :func:`pairwise_ranking_accuracy` scores them.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["BinaryInputError", "binary_metrics", "confusion_matrix", "PAPER_PAIR_MIX", "reader_benchmark_pairs",
           "pairwise_ranking_accuracy"]


class BinaryInputError(ValueError):
    """Labels, scores or groups that the metrics cannot use."""


def _check(y_true, y_score, groups=None):
    y_true = np.asarray(y_true)
    y_score = np.asarray(y_score, dtype=float)
    if y_true.ndim != 1 or y_true.shape != y_score.shape:
        raise BinaryInputError(f"y_true {y_true.shape} and y_score {y_score.shape} must be equal-length 1-D arrays")
    if not np.isin(y_true, (0, 1)).all():
        raise BinaryInputError("y_true must hold only 0 and 1")
    if len(np.unique(y_true)) < 2:
        raise BinaryInputError("both classes are needed")
    if not np.all(np.isfinite(y_score)):
        raise BinaryInputError("y_score holds missing or non-finite values")
    if groups is not None and len(groups) != len(y_true):
        raise BinaryInputError(f"groups has {len(groups)} entries for {len(y_true)} rows")
    return y_true.astype(int), y_score


def _average_precision(y, s) -> float:
    from sklearn.metrics import average_precision_score

    if len(np.unique(y)) < 2:
        raise ValueError("one class")
    return float(average_precision_score(y, s))


def _thresholded(metric, threshold):
    def score(y, s):
        if len(np.unique(y)) < 2:
            raise ValueError("one class")
        return float(metric(y, (s >= threshold).astype(int)))
    return score


def binary_metrics(y_true, y_score, groups=None, threshold: float = 0.5, n_boot: int = 1000,
                   seed: int = 0) -> pd.DataFrame:
    """ROC AUC, PR AUC, weighted F1, precision and recall with subject-bootstrap 95% CIs.

    Parameters
    ----------
    y_true : array-like of {0, 1}
    y_score : array-like of float
        Probability (or any score) of class 1.
    groups : array-like, optional
        Participant of each row; CIs resample participants (else rows).
    threshold : float
        Scores at or above it are called positive (F1, precision, recall).
    n_boot, seed : int

    Returns
    -------
    DataFrame
        Index ``roc_auc``, ``pr_auc``, ``f1_weighted``, ``precision``, ``recall``; columns
        ``value``, ``ci_low``, ``ci_high``, ``unit``; ``attrs["prevalence"]``.
    """
    from sklearn.metrics import precision_score, recall_score

    from kneelib.stats.agreement import f1_weighted
    from kneelib.stats.bootstrap import bootstrap_ci
    from kneelib.stats.roc import auc_with_ci

    y, s = _check(y_true, y_score, groups)
    rows = {}
    auc = auc_with_ci(y, s, method="bootstrap", n_boot=n_boot, seed=seed, groups=groups)
    rows["roc_auc"] = (auc.auc, auc.ci_low, auc.ci_high, auc.unit)
    metrics = {"pr_auc": _average_precision,
               "f1_weighted": _thresholded(f1_weighted, threshold),
               "precision": _thresholded(lambda a, b: precision_score(a, b, zero_division=0), threshold),
               "recall": _thresholded(recall_score, threshold)}
    for name, metric in metrics.items():
        result = bootstrap_ci(metric, y, s, n_boot=n_boot, seed=seed, groups=groups)
        rows[name] = (result.estimate, result.ci_low, result.ci_high, result.unit)
    table = pd.DataFrame.from_dict(rows, orient="index", columns=["value", "ci_low", "ci_high", "unit"])
    table.attrs["prevalence"] = float(y.mean())
    return table


def confusion_matrix(y_true, y_score, threshold: float = 0.5) -> pd.DataFrame:
    """2x2 counts, rows true class, columns predicted class (Fig. 4 / 5 of paper 002)."""
    from kneelib.stats.agreement import confusion

    y, s = _check(y_true, y_score)
    counts = confusion(y, (s >= threshold).astype(int), 2)
    return pd.DataFrame(counts, index=pd.Index(["true 0", "true 1"]), columns=pd.Index(["predicted 0", "predicted 1"]))


#: Paper 002, 2.5: progressors per JSN band of the 150 benchmark pairs, (low, high] in mm as
#: ``low <= JSN < high``.
PAPER_PAIR_MIX: dict[str, tuple[float, float, int]] = {
    "almost certain (JSN < -1.1 mm)": (-np.inf, -1.1, 10),
    "typical (-1.1 <= JSN < -0.6 mm)": (-1.1, -0.6, 130),
    "doubtful (-0.6 <= JSN < -0.5 mm)": (-0.6, -0.5, 10),
}


def reader_benchmark_pairs(jsn_mm, progressor, groups, mix=None, n_pairs: int = 150, seed: int = 0,
                           skip_empty_bands: bool = False) -> pd.DataFrame:
    """Pairs of one progressor and one non-progressor with the paper's progressor mix (2.5).

    The paper's 150 distinct progressors need a large cohort. With fewer, each band keeps its
    share of ``n_pairs`` and its progressors are reused in turn (every progressor of a band
    once before any twice); each pair's non-progressor is drawn without replacement while
    any remain, never from the progressor's participant.

    Parameters
    ----------
    jsn_mm : array-like of float
        12-month JSN per knee.
    progressor : array-like of {0, 1}
    groups : array-like
        Participant per knee.
    mix : mapping, optional
        Band name -> ``(low, high, count)``; default :data:`PAPER_PAIR_MIX`.
    n_pairs : int
        Pairs in all; band counts are scaled from ``mix`` to this total.
    seed : int
    skip_empty_bands : bool
        Drop a band without progressors (a tiny cohort) instead of raising; the returned
        table then has fewer pairs, which ``attrs["skipped_bands"]`` names.

    Returns
    -------
    DataFrame
        ``positive``, ``negative`` (row indices), ``band``.

    Raises
    ------
    BinaryInputError
        When a band with a non-zero count has no progressor, or there is no non-progressor.
    """
    jsn = np.asarray(jsn_mm, dtype=float)
    label = np.asarray(progressor)
    groups = np.asarray(groups)
    if not (len(jsn) == len(label) == len(groups)):
        raise BinaryInputError("jsn_mm, progressor and groups must have one entry per knee")
    mix = PAPER_PAIR_MIX if mix is None else mix
    total = sum(c for _, _, c in mix.values())
    counts = {band: int(round(n_pairs * c / total)) for band, (_, _, c) in mix.items()}
    rng = np.random.default_rng(seed)
    negatives = np.flatnonzero(label == 0)
    if len(negatives) == 0:
        raise BinaryInputError("no non-progressor to pair with")
    negative_pool = list(rng.permutation(negatives))
    rows, skipped = [], []
    for band, (low, high, _) in mix.items():
        with np.errstate(invalid="ignore"):
            members = np.flatnonzero((label == 1) & (jsn >= low) & (jsn < high))
        if counts[band] and len(members) == 0:
            if skip_empty_bands:
                skipped.append(band)
                continue
            raise BinaryInputError(f"no progressor in band {band!r}")
        order = np.concatenate([rng.permutation(members) for _ in range(-(-counts[band] // max(len(members), 1)))]
                               ) if counts[band] else np.array([], int)
        for positive in order[:counts[band]]:
            if not negative_pool:
                negative_pool = list(rng.permutation(negatives))
            choice = next((i for i, n in enumerate(negative_pool) if groups[n] != groups[positive]), None)
            if choice is None:
                continue
            rows.append({"positive": int(positive), "negative": int(negative_pool.pop(choice)), "band": band})
    pairs = pd.DataFrame(rows, columns=["positive", "negative", "band"])
    pairs.attrs["skipped_bands"] = skipped
    return pairs


def pairwise_ranking_accuracy(scores, pairs: pd.DataFrame, groups=None, n_boot: int = 1000, seed: int = 0):
    """Share of pairs whose progressor outranks the non-progressor (ties count one half), with CI.

    The CI resamples the progressors' participants (``groups`` per knee row) when given.

    Returns
    -------
    kneelib.stats.bootstrap.BootstrapResult
    """
    from kneelib.stats.bootstrap import bootstrap_ci

    scores = np.asarray(scores, dtype=float)
    if len(pairs) == 0:
        raise BinaryInputError("no pairs to score")
    pos = scores[pairs["positive"].to_numpy()]
    neg = scores[pairs["negative"].to_numpy()]
    if not (np.all(np.isfinite(pos)) and np.all(np.isfinite(neg))):
        raise BinaryInputError("a paired knee has no finite score")
    credit = np.where(pos > neg, 1.0, np.where(pos == neg, 0.5, 0.0))
    pair_groups = None if groups is None else np.asarray(groups)[pairs["positive"].to_numpy()]
    return bootstrap_ci(lambda y, c: float(np.mean(c)), np.ones(len(credit)), credit, n_boot=n_boot, seed=seed,
                        stratify=False, groups=pair_groups)
