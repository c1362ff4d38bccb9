"""Point-wise statistical parametric map with max-T permutation control (paper 001, Fig. 1).

Paper 001, "Grad-CAM interpretation": "Point-by-point SPM was performed using ANOVA group
comparison considering age, sex and BMI as confounding factors" on the Grad-CAM surfaces of the
true-positive and true-negative groups; the paper does not say how the many vertices were
controlled. Here, per vertex, the linear model ``value ~ 1 + group + covariates`` gives the
group's t statistic (with two groups the ANOVA F is t squared); the family-wise error over all
vertices is controlled by the max-T permutation test (Westfall & Young; Nichols & Holmes 2002),
permuting the group labels after the covariates are regressed out of both the values and the
group (the scheme of nilearn's ``permuted_ols``, which is not installed here). ``p_fwe`` of a
vertex is the share of permutations whose largest |t| over all vertices reaches its |t|.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

__all__ = ["SpmResult", "permutation_spm"]


@dataclass(frozen=True)
class SpmResult:
    """Per vertex: ``t`` (group 1 minus group 0, adjusted), ``p`` (uncorrected, two-sided
    Student), ``p_fwe`` (max-T permutation); NaN where a value is missing in some subject."""

    t: np.ndarray
    p: np.ndarray
    p_fwe: np.ndarray
    n_permutations: int
    df: int

    def significant(self, alpha: float = 0.05) -> np.ndarray:
        return np.nan_to_num(self.p_fwe, nan=1.0) < alpha


def _residualise(y: np.ndarray, design: np.ndarray) -> np.ndarray:
    beta, *_ = np.linalg.lstsq(design, y, rcond=None)
    return y - design @ beta


def _t(group_res: np.ndarray, y_res: np.ndarray, df: int) -> np.ndarray:
    """t of the regression of residualised values on the residualised group (one column per permutation)."""
    ss_g = np.sum(group_res ** 2, axis=0)                       # (p,)
    beta = group_res.T @ y_res / ss_g[:, None]                  # (p, V)
    ss_y = np.sum(y_res ** 2, axis=0)[None, :]                  # (1, V)
    rss = np.maximum(ss_y - beta ** 2 * ss_g[:, None], 1e-30)
    return beta / np.sqrt(rss / df / ss_g[:, None])


def permutation_spm(values, group, covariates=None, *, n_permutations: int = 1000, seed: int = 0) -> SpmResult:
    """t map of ``group`` (0/1) on per-vertex ``values`` adjusted for ``covariates``, max-T FWE p.

    Parameters
    ----------
    values : ndarray (n_subjects, n_vertices)
    group : array-like (n_subjects,) of 0/1
    covariates : ndarray (n_subjects, k), optional
        E.g. age, sex, BMI; an intercept is always included.
    n_permutations : int
    seed : int

    Raises
    ------
    ValueError
        Shapes disagree, the group is not 0/1 with both levels, or too few subjects for the model.
    """
    y = np.asarray(values, float)
    g = np.asarray(group, float).reshape(-1)
    if y.ndim != 2 or len(y) != len(g):
        raise ValueError(f"values must be (n_subjects, n_vertices) with n_subjects = {len(g)}, got {y.shape}")
    if not np.isin(g, (0.0, 1.0)).all() or len(np.unique(g)) < 2:
        raise ValueError("group must hold 0 and 1, both present")
    z = np.ones((len(g), 1)) if covariates is None else np.column_stack([np.ones(len(g)), np.asarray(covariates, float)])
    if len(z) != len(g):
        raise ValueError("covariates need one row per subject")
    df = len(g) - z.shape[1] - 1
    if df < 1:
        raise ValueError(f"{len(g)} subjects are too few for {z.shape[1]} nuisance terms and the group")
    t = np.full(y.shape[1], np.nan)
    p = np.full(y.shape[1], np.nan)
    p_fwe = np.full(y.shape[1], np.nan)
    complete = np.isfinite(y).all(axis=0)  # vertices every subject has (no warning on all-missing ones)
    complete[complete] = y[:, complete].std(axis=0) > 0
    if not complete.any():
        return SpmResult(t, p, p_fwe, n_permutations, df)
    y_res = _residualise(y[:, complete], z)
    g_res = _residualise(g[:, None], z)
    observed = _t(g_res, y_res, df)[0]
    rng = np.random.default_rng(seed)
    maxima = np.empty(n_permutations)
    for start in range(0, n_permutations, 64):
        block = min(64, n_permutations - start)
        permuted = np.column_stack([g_res[rng.permutation(len(g)), 0] for _ in range(block)])
        maxima[start:start + block] = np.abs(_t(permuted, y_res, df)).max(axis=1)
    t[complete] = observed
    p[complete] = 2 * stats.t.sf(np.abs(observed), df)
    p_fwe[complete] = (1 + (maxima[None, :] >= np.abs(observed)[:, None]).sum(axis=1)) / (n_permutations + 1)
    return SpmResult(t, p, p_fwe, n_permutations, df)
