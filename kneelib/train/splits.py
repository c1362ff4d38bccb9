"""Subject-level stratified splits shared by every chapter.

Paper 000 (Methods, "Class activation mapping and radiologist review" and the
cross-validation paragraph after it): 10-fold cross-validation in which "every
subject in the entire selected dataset appeared in the testing set exactly once",
and a 70:15:15 train/validation/test split "stratified based on risk factors of OA,
including gender, age and body mass index (BMI)". Other chapters use the same
helpers (e.g. paper 004's subject-level splits of knees).

Splits are always by subject: with ``groups`` (one id per row, e.g. two knees or
several visits of one participant) all rows of a subject land in the same part,
using :class:`sklearn.model_selection.StratifiedGroupKFold`; without groups each
row is a subject and :class:`sklearn.model_selection.StratifiedKFold` is used.

Strata are the label crossed with sex, an age bin and a BMI bin
(:func:`make_strata`); strata too small for the requested split are merged by
dropping the least important factor first (BMI, then age, then sex), so the label
is always kept.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

__all__ = ["make_strata", "stratified_kfold", "TrainValTestSplit", "stratified_train_val_test_split"]


def _bin(values, edges, name: str) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    if np.any(~np.isfinite(values)):
        raise ValueError(f"{name} has missing or non-finite values; impute or exclude those subjects first")
    return np.digitize(values, np.asarray(edges, dtype=float))


def make_strata(labels, sex=None, age=None, bmi=None, age_edges=(60.0,), bmi_edges=(30.0,),
                min_count: int = 2) -> np.ndarray:
    """Stratum label per subject: outcome x sex x age bin x BMI bin.

    Parameters
    ----------
    labels : array-like, shape (n,)
        Outcome (e.g. painful side).
    sex, age, bmi : array-like or None
        Risk factors to stratify on (paper 000: gender, age, BMI); ``None`` leaves a
        factor out.
    age_edges, bmi_edges : sequence of float
        Bin edges (defaults: the paper's subgroup cut-offs, age 60 and BMI 30).
    min_count : int
        Smallest allowed stratum size (use the number of folds). Subjects in smaller
        strata fall back to a coarser stratum (BMI dropped, then age, then sex).

    Returns
    -------
    ndarray of str, shape (n,)
    """
    labels = np.asarray(labels)
    n = len(labels)
    factors = []
    for name, values, edges in (("sex", sex, None), ("age", age, age_edges), ("bmi", bmi, bmi_edges)):
        if values is None:
            continue
        if len(values) != n:
            raise ValueError(f"{name} has {len(values)} values but labels has {n}")
        factors.append(np.asarray(values).astype(str) if edges is None else _bin(values, edges, name).astype(str))
    keys = [labels.astype(str)] + factors
    strata = np.full(n, "", dtype=object)
    assigned = np.zeros(n, dtype=bool)
    for depth in range(len(keys), 0, -1):  # finest first, then drop the last factor
        candidate = np.array(["|".join(parts) for parts in zip(*keys[:depth])], dtype=object)
        values, counts = np.unique(candidate[~assigned], return_counts=True)
        big_enough = set(values[counts >= min_count])
        take = ~assigned & np.isin(candidate, list(big_enough))
        if depth == 1:
            take = ~assigned  # the label alone is always kept
        strata[take] = candidate[take]
        assigned |= take
    return strata.astype(str)


def _coarsen_rare(strata: np.ndarray, labels: np.ndarray, min_count: int) -> np.ndarray:
    """Replace strata with fewer than ``min_count`` rows by the label alone."""
    values, counts = np.unique(strata, return_counts=True)
    rare = np.isin(strata, values[counts < min_count])
    return np.where(rare, labels.astype(str), strata) if rare.any() else strata


def stratified_kfold(labels, n_splits: int = 10, strata=None, groups=None, seed: int = 0) -> np.ndarray:
    """Fold index of every row for subject-level stratified k-fold cross-validation.

    Parameters
    ----------
    labels : array-like, shape (n,)
    n_splits : int
        Number of folds (10 in paper 000); every subject is in exactly one test fold.
    strata : array-like or None
        Stratum per row (e.g. from :func:`make_strata`); default the labels.
    groups : array-like or None
        Subject id per row; rows of one subject share a fold.
    seed : int
        Shuffling seed; the same seed gives the same folds.

    Returns
    -------
    ndarray of int, shape (n,)
        ``fold[i]`` is the test fold of row ``i``; train on ``fold != k``, test on
        ``fold == k``.
    """
    labels = np.asarray(labels)
    if n_splits < 2:
        raise ValueError(f"n_splits must be >= 2, got {n_splits}")
    strata_values = labels.astype(str) if strata is None else np.asarray(strata).astype(str)
    if len(strata_values) != len(labels):
        raise ValueError(f"strata has {len(strata_values)} values but labels has {len(labels)}")
    strata_values = _coarsen_rare(strata_values, labels, n_splits)
    fold = np.full(len(labels), -1, dtype=int)
    if groups is None:
        if len(labels) < n_splits:
            raise ValueError(f"{len(labels)} subjects cannot fill {n_splits} folds")
        splitter = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        for k, (_, test) in enumerate(splitter.split(np.zeros(len(labels)), strata_values)):
            fold[test] = k
    else:
        groups = np.asarray(groups)
        if len(np.unique(groups)) < n_splits:
            raise ValueError(f"{len(np.unique(groups))} subjects cannot fill {n_splits} folds")
        splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        for k, (_, test) in enumerate(splitter.split(np.zeros(len(labels)), strata_values, groups)):
            fold[test] = k
    return fold


@dataclass(frozen=True)
class TrainValTestSplit:
    """Row indices of the three parts of a subject-level split."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def part_of(self, n: int) -> np.ndarray:
        """``"train"``/``"val"``/``"test"`` per row, for a cohort table column."""
        part = np.full(n, "", dtype=object)
        part[self.train], part[self.val], part[self.test] = "train", "val", "test"
        return part.astype(str)


def stratified_train_val_test_split(labels, fractions=(0.70, 0.15, 0.15), strata=None, groups=None,
                                    seed: int = 0) -> TrainValTestSplit:
    """Subject-level stratified train/validation/test split (paper 000: 70:15:15).

    Implemented as stratified k-fold on subjects: with fractions that are multiples
    of ``1/k`` (0.70/0.15/0.15 -> k = 20: 14 + 3 + 3 folds) each part takes whole
    folds, so every part keeps the stratum proportions.

    Parameters
    ----------
    labels : array-like, shape (n,)
    fractions : (float, float, float)
        Train, validation and test shares; must sum to 1.
    strata, groups, seed
        As in :func:`stratified_kfold`.

    Returns
    -------
    TrainValTestSplit
    """
    fractions = np.asarray(fractions, dtype=float)
    if fractions.shape != (3,) or np.any(fractions <= 0) or not np.isclose(fractions.sum(), 1.0):
        raise ValueError(f"fractions must be three positive shares summing to 1, got {fractions.tolist()}")
    labels = np.asarray(labels)
    n_subjects = len(labels) if groups is None else len(np.unique(groups))
    # smallest k with fractions * k close to integers, capped by the subject count
    k = next((k for k in range(3, 101) if np.allclose(fractions * k, np.round(fractions * k), atol=1e-6)), 20)
    k = min(k, n_subjects)
    if k < 3:
        raise ValueError(f"{n_subjects} subjects cannot make a train/val/test split")
    folds_per_part = np.maximum(1, np.round(fractions * k).astype(int))
    folds_per_part[0] = k - folds_per_part[1:].sum()
    if folds_per_part[0] < 1:
        raise ValueError(f"{n_subjects} subjects are too few for fractions {fractions.tolist()}")
    fold = stratified_kfold(labels, n_splits=k, strata=strata, groups=groups, seed=seed)
    order = np.random.default_rng(seed).permutation(k)  # which folds form which part
    cut = np.cumsum(folds_per_part)
    parts = [np.flatnonzero(np.isin(fold, order[a:b])) for a, b in zip([0, *cut[:-1]], cut)]
    return TrainValTestSplit(*parts)
