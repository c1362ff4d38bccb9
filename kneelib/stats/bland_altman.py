"""Bland-Altman agreement of two measurements, with a subject-level bootstrap CI of the bias.

Supplement 003, Fig. S3: the spherical-map average of a biomarker (cartilage thickness, T2)
against its original bone-surface average, per bone; "the differences [...] were calculated
using the original average values as a reference, by subtracting the original average values
from the average spherical values"; the plot shows the mean difference and "two standard
deviations above or below the mean". :func:`bland_altman` returns the mean difference (bias),
its limits of agreement (``bias +- k SD``, ``k = 1.96`` by default, ``k = 2`` the supplement's)
and a percentile bootstrap CI of the bias that resamples subjects (``groups``) through
:func:`kneelib.stats.bootstrap.bootstrap_ci`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kneelib.stats.bootstrap import BootstrapResult, bootstrap_ci

__all__ = ["BlandAltman", "bland_altman"]


@dataclass(frozen=True)
class BlandAltman:
    """Bland-Altman summary of ``test - reference``.

    Attributes
    ----------
    mean_difference : float
        The bias (test minus reference).
    sd_difference : float
        Sample SD of the differences (ddof 1).
    lower_limit, upper_limit : float
        ``mean_difference -+ k * sd_difference``.
    k : float
    bias_ci : BootstrapResult
        Bootstrap CI of the bias (``unit`` says what was resampled).
    n : int
        Pairs used (both values finite).
    means, differences : ndarray
        Per pair: the mean of the two and the difference (for the plot).
    """

    mean_difference: float
    sd_difference: float
    lower_limit: float
    upper_limit: float
    k: float
    bias_ci: BootstrapResult
    n: int
    means: np.ndarray
    differences: np.ndarray


def bland_altman(test, reference, *, groups=None, k: float = 1.96, n_boot: int = 1000, level: float = 0.95,
                 seed: int = 0) -> BlandAltman:
    """Bias and limits of agreement of ``test`` against ``reference`` (supplement 003, Fig. S3).

    Parameters
    ----------
    test, reference : array-like, shape (n,)
        E.g. spherical-map averages and original surface averages of one biomarker and bone,
        one pair per knee. Pairs with a non-finite value are dropped.
    groups : array-like, shape (n,), optional
        Subject of each pair: the bias CI resamples subjects (cluster bootstrap). Give it
        whenever a subject has several knees or visits.
    k : float
        Limits at ``bias +- k SD`` (1.96: 95% limits; the supplement draws 2 SD).
    n_boot, level, seed
        Bootstrap of the bias.

    Returns
    -------
    BlandAltman

    Raises
    ------
    ValueError
        Lengths differ, fewer than two finite pairs, ``k`` not positive.
    """
    test = np.asarray(test, dtype=float).reshape(-1)
    reference = np.asarray(reference, dtype=float).reshape(-1)
    if test.shape != reference.shape:
        raise ValueError(f"test has {test.size} values but reference has {reference.size}")
    if groups is not None:
        groups = np.asarray(groups).reshape(-1)
        if groups.shape != test.shape:
            raise ValueError(f"groups has {groups.size} entries for {test.size} pairs")
    if not (np.isfinite(k) and k > 0):
        raise ValueError(f"k must be positive, got {k}")
    keep = np.isfinite(test) & np.isfinite(reference)
    if keep.sum() < 2:
        raise ValueError(f"Bland-Altman needs at least two finite pairs, got {int(keep.sum())}")
    test, reference = test[keep], reference[keep]
    groups = groups[keep] if groups is not None else None
    differences = test - reference
    bias = float(differences.mean())
    sd = float(differences.std(ddof=1))
    ci = bootstrap_ci(lambda d, _: float(np.mean(d)), differences, differences, n_boot=n_boot, level=level,
                      stratify=False, seed=seed, groups=groups)
    return BlandAltman(mean_difference=bias, sd_difference=sd, lower_limit=bias - k * sd,
                       upper_limit=bias + k * sd, k=float(k), bias_ci=ci, n=int(differences.size),
                       means=(test + reference) / 2, differences=differences)
