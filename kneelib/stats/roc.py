"""ROC AUC with confidence intervals, ROC curves and subgroup AUCs (paper 000, Fig. 4).

Paper 000, Methods (cross-validation paragraph) and Results: 10-fold
cross-validation, "area under curve (AUC) of the receiver operating characteristic
(ROC) curves" -- 0.808 for Model A and 0.853 for Model B (Fig. 4A-B) -- and a
sub-group analysis by KL grade of the painful knee (0 vs >= 1), BMI (>= 30), age
(>= 60) and sex (Fig. 4C). The paper gives no CIs; the book adds 95% CIs by DeLong's
method (DeLong et al. 1988, in the fast midrank form of Sun & Xu 2014) or by the
stratified bootstrap of :func:`kneelib.stats.bootstrap.bootstrap_ci`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.metrics import roc_auc_score, roc_curve

from .bootstrap import bootstrap_ci

__all__ = [
    "AucResult",
    "delong_auc_variance",
    "auc_with_ci",
    "per_fold_auc",
    "PAPER_SUBGROUPS",
    "subgroup_auc_table",
    "plot_roc",
]


@dataclass(frozen=True)
class AucResult:
    """An AUC with its confidence interval."""

    auc: float
    ci_low: float
    ci_high: float
    n: int
    n_positive: int
    method: str
    level: float = 0.95
    unit: str = "observations"

    def __str__(self) -> str:
        return f"{self.auc:.3f} [{self.ci_low:.3f}, {self.ci_high:.3f}]"


def _check(y_true, y_score) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true).astype(int)
    y_score = np.asarray(y_score, dtype=float)
    if y_true.shape != y_score.shape or y_true.ndim != 1:
        raise ValueError(f"y_true {y_true.shape} and y_score {y_score.shape} must be equal-length 1-D arrays")
    if not np.isin(y_true, (0, 1)).all():
        raise ValueError("y_true must be binary 0/1")
    if not np.isfinite(y_score).all():
        raise ValueError("y_score holds missing or non-finite values (e.g. subjects without a prediction)")
    if len(np.unique(y_true)) < 2:
        raise ValueError("AUC needs both classes in y_true")
    return y_true, y_score


def delong_auc_variance(y_true, y_score) -> tuple[float, float]:
    """AUC and its DeLong variance (Sun & Xu 2014, fast midrank algorithm).

    Returns
    -------
    auc, variance : float
    """
    y_true, y_score = _check(y_true, y_score)
    positive, negative = y_score[y_true == 1], y_score[y_true == 0]
    m, n = len(positive), len(negative)
    all_ranks = stats.rankdata(np.concatenate([positive, negative]))  # midranks
    positive_ranks = stats.rankdata(positive)
    negative_ranks = stats.rankdata(negative)
    auc = (all_ranks[:m].sum() - m * (m + 1) / 2) / (m * n)
    v10 = (all_ranks[:m] - positive_ranks) / n           # structural components of positives
    v01 = 1.0 - (all_ranks[m:] - negative_ranks) / m     # and of negatives
    s10 = np.var(v10, ddof=1) if m > 1 else 0.0
    s01 = np.var(v01, ddof=1) if n > 1 else 0.0
    return float(auc), float(s10 / m + s01 / n)


def _resample_auc(y_true, y_score) -> float:
    """ROC AUC of one bootstrap resample; a one-class resample raises ``ValueError``, which
    :func:`~kneelib.stats.bootstrap.bootstrap_ci` skips (instead of sklearn's warning and NaN)."""
    if len(np.unique(y_true)) < 2:
        raise ValueError("a resample with one class has no ROC AUC")
    return roc_auc_score(y_true, y_score)


def auc_with_ci(y_true, y_score, method: str = "delong", level: float = 0.95, n_boot: int = 2000,
                seed: int = 0, groups=None) -> AucResult:
    """ROC AUC with a confidence interval.

    Parameters
    ----------
    y_true : array-like of {0, 1}
    y_score : array-like of float
        Higher = more likely class 1 (e.g. P(right knee painful)).
    method : {"delong", "bootstrap"}
        DeLong's asymptotic interval (clipped to [0, 1]) or the stratified percentile
        bootstrap of :func:`kneelib.stats.bootstrap.bootstrap_ci`.
    level : float
    n_boot, seed : int
        Bootstrap resamples and seed.
    groups : array-like, optional
        Subject of each row. DeLong's variance assumes independent rows, so with
        ``groups`` in which a subject has several rows the DeLong method is refused
        (use ``method="bootstrap"``, which then resamples subjects); when every
        subject has one row (e.g. paper 000's one prediction per participant) both
        methods hold and the unit is ``"subjects"``.

    Returns
    -------
    AucResult
        With ``unit``: what an independent observation is (``"subjects"`` or, when
        no ``groups`` are given, ``"observations"``).
    """
    y_true, y_score = _check(y_true, y_score)
    unit = "observations"
    if groups is not None:
        groups = np.asarray(groups)
        if len(groups) != len(y_true):
            raise ValueError(f"groups has {len(groups)} entries but y_true has {len(y_true)}")
        unit = "subjects"
        repeated = len(np.unique(groups)) < len(groups)
        if repeated and method == "delong":
            raise ValueError("DeLong's CI assumes independent rows but some subjects have several; "
                             "use method='bootstrap' (resamples subjects)")
        if not repeated:
            groups = None  # one row per subject: the row bootstrap is the subject bootstrap
    if method == "delong":
        auc, variance = delong_auc_variance(y_true, y_score)
        half = stats.norm.ppf(0.5 + level / 2) * np.sqrt(variance)
        low, high = max(0.0, auc - half), min(1.0, auc + half)
    elif method == "bootstrap":
        result = bootstrap_ci(_resample_auc, y_true, y_score, n_boot=n_boot, level=level, seed=seed,
                              groups=groups)
        auc, low, high = result.estimate, result.ci_low, result.ci_high
    else:
        raise ValueError(f"method must be 'delong' or 'bootstrap', got {method!r}")
    return AucResult(float(auc), float(low), float(high), len(y_true), int(y_true.sum()), method, level,
                     unit)


def per_fold_auc(y_true, y_score, fold, method: str = "delong", level: float = 0.95) -> pd.DataFrame:
    """AUC with CI in each cross-validation fold, plus the pooled out-of-fold AUC.

    Returns
    -------
    DataFrame
        Rows ``fold = 0 .. k-1`` and ``"pooled"``; columns ``n``, ``n_positive``,
        ``auc``, ``ci_low``, ``ci_high``. ``df.attrs["mean_fold_auc"]`` and
        ``["sd_fold_auc"]`` summarise the folds. A fold with one class only gets NaN.
    """
    y_true, y_score = np.asarray(y_true), np.asarray(y_score, dtype=float)
    fold = np.asarray(fold)
    if len(fold) != len(y_true):
        raise ValueError(f"fold has {len(fold)} entries but y_true has {len(y_true)}")
    rows = []
    for k in np.unique(fold):
        part = fold == k
        try:
            r = auc_with_ci(y_true[part], y_score[part], method, level)
            rows.append({"fold": str(k), "n": r.n, "n_positive": r.n_positive, "auc": r.auc,
                         "ci_low": r.ci_low, "ci_high": r.ci_high})
        except ValueError:
            rows.append({"fold": str(k), "n": int(part.sum()), "n_positive": int(y_true[part].sum()),
                         "auc": np.nan, "ci_low": np.nan, "ci_high": np.nan})
    pooled = auc_with_ci(y_true, y_score, method, level)
    rows.append({"fold": "pooled", "n": pooled.n, "n_positive": pooled.n_positive, "auc": pooled.auc,
                 "ci_low": pooled.ci_low, "ci_high": pooled.ci_high})
    table = pd.DataFrame(rows)
    fold_aucs = table["auc"].iloc[:-1]
    table.attrs["mean_fold_auc"] = float(fold_aucs.mean())
    table.attrs["sd_fold_auc"] = float(fold_aucs.std(ddof=1)) if fold_aucs.notna().sum() > 1 else float("nan")
    return table


#: Subgroups of paper 000 Fig. 4C: name -> row selector on a covariate table with columns
#: ``kl_painful_knee``, ``bmi``, ``age``, ``sex`` (OAI coding 1 = male, 2 = female).
PAPER_SUBGROUPS: dict[str, Callable[[pd.DataFrame], pd.Series]] = {
    "Overall": lambda d: pd.Series(True, index=d.index),
    "KL grade of the painful knee = 0": lambda d: d["kl_painful_knee"] == 0,
    "KL grade of the painful knee >= 1": lambda d: d["kl_painful_knee"] >= 1,
    "BMI >= 30": lambda d: d["bmi"] >= 30,
    "BMI < 30": lambda d: d["bmi"] < 30,
    "Age >= 60": lambda d: d["age"] >= 60,
    "Age < 60": lambda d: d["age"] < 60,
    "Male": lambda d: d["sex"] == 1,
    "Female": lambda d: d["sex"] == 2,
}


def subgroup_auc_table(y_true, y_score, covariates: pd.DataFrame,
                       subgroups: Mapping[str, Callable[[pd.DataFrame], pd.Series]] | None = None,
                       method: str = "delong", level: float = 0.95, min_per_class: int = 2) -> pd.DataFrame:
    """AUC with CI within each subgroup (paper 000, Fig. 4C).

    Parameters
    ----------
    y_true, y_score : array-like, shape (n,)
        Out-of-fold labels and scores.
    covariates : DataFrame, n rows in the same order
        Columns the selectors use (for :data:`PAPER_SUBGROUPS`: ``kl_painful_knee``,
        ``bmi``, ``age``, ``sex``).
    subgroups : mapping or None
        Name -> function of ``covariates`` returning a boolean Series; default
        :data:`PAPER_SUBGROUPS`.
    min_per_class : int
        Subgroups with fewer subjects of either class get NaN.

    Returns
    -------
    DataFrame
        Columns ``subgroup``, ``n``, ``n_positive``, ``auc``, ``ci_low``, ``ci_high``.
    """
    subgroups = PAPER_SUBGROUPS if subgroups is None else subgroups
    y_true, y_score = np.asarray(y_true).astype(int), np.asarray(y_score, dtype=float)
    if len(covariates) != len(y_true):
        raise ValueError(f"covariates has {len(covariates)} rows but y_true has {len(y_true)}")
    covariates = covariates.reset_index(drop=True)
    rows = []
    for name, select in subgroups.items():
        try:
            mask = np.asarray(select(covariates), dtype=bool)
        except KeyError as missing:
            raise KeyError(f"subgroup {name!r} needs column {missing} in covariates") from None
        n_pos = int(y_true[mask].sum())
        n_neg = int(mask.sum()) - n_pos
        row = {"subgroup": name, "n": int(mask.sum()), "n_positive": n_pos,
               "auc": np.nan, "ci_low": np.nan, "ci_high": np.nan}
        if min(n_pos, n_neg) >= min_per_class:
            r = auc_with_ci(y_true[mask], y_score[mask], method, level)
            row.update(auc=r.auc, ci_low=r.ci_low, ci_high=r.ci_high)
        rows.append(row)
    return pd.DataFrame(rows)


def plot_roc(curves: Mapping[str, tuple], ax=None, folds: Mapping[str, np.ndarray] | None = None,
             paper_auc: Mapping[str, float] | None = None, method: str = "delong",
             intervals: Mapping[str, tuple] | None = None):
    """ROC curves with AUC and 95% CI in the legend (paper 000, Fig. 4A-B).

    Parameters
    ----------
    curves : mapping
        Name (e.g. ``"Model A"``) -> ``(y_true, y_score)`` of pooled out-of-fold predictions.
    ax : matplotlib Axes or None
    folds : mapping or None
        Name -> fold index per subject; adds each fold's ROC as a thin line.
    paper_auc : mapping or None
        Name -> published AUC, shown in the legend beside the reproduced one.
    method : {"delong", "bootstrap"}
        The legend's interval (:func:`auc_with_ci`) for curves without ``intervals``.
    intervals : mapping or None
        Name -> ``(auc, ci_low, ci_high)`` computed elsewhere (e.g. the subject bootstrap of
        a results table), shown in the legend instead, so figure and table agree; the AUC
        must be the one of ``curves``.

    Returns
    -------
    matplotlib.axes.Axes

    Raises
    ------
    ValueError
        When an interval's AUC is not the AUC of its curve.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(4.5, 4.5))
    for index, (name, (y_true, y_score)) in enumerate(curves.items()):
        y_true, y_score = _check(y_true, y_score)
        color = f"C{index}"
        if folds is not None and name in folds:
            fold = np.asarray(folds[name])
            for k in np.unique(fold):
                part = fold == k
                if len(np.unique(y_true[part])) == 2:
                    fpr, tpr, _ = roc_curve(y_true[part], y_score[part])
                    ax.plot(fpr, tpr, color=color, alpha=0.2, lw=0.8)
        if intervals is not None and name in intervals:
            auc, low, high = (float(v) for v in intervals[name])
            own = float(roc_auc_score(y_true, y_score))
            if not np.isclose(auc, own, rtol=0, atol=1e-9):
                raise ValueError(f"interval for {name!r} has AUC {auc:.6f}, its curve {own:.6f}")
            label = f"{name}: AUC {auc:.3f} [{low:.3f}, {high:.3f}]"
        else:
            label = f"{name}: AUC {auc_with_ci(y_true, y_score, method)}"
        if paper_auc and name in paper_auc:
            label += f" (paper {paper_auc[name]:.3f})"
        fpr, tpr, _ = roc_curve(y_true, y_score)
        ax.plot(fpr, tpr, color=color, lw=2, label=label)
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
    ax.set(xlabel="False positive rate (1 - specificity)", ylabel="True positive rate (sensitivity)",
           xlim=(0, 1), ylim=(0, 1.01), aspect="equal")
    ax.legend(loc="lower right", fontsize="small")
    return ax
