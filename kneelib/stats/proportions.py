"""Confidence intervals of a proportion (a prevalence, a share of cases).

Two cases, by the unit the proportion counts:

- one row per participant (e.g. unilateral frequent pain among participants): rows are
  independent and the Wilson score interval applies
  (:func:`statsmodels.stats.proportion.proportion_confint`, ``method="wilson"``;
  Wilson 1927; Brown, Cai & DasGupta 2001 recommend it over the Wald interval, which
  fails for small counts);
- several rows per participant (knees, knee time points): rows of one participant are
  not independent, so the interval comes from the cluster bootstrap that resamples
  participants with all their rows (:func:`kneelib.stats.bootstrap.resample_indices`),
  as every CI in the book does.

:func:`proportion_with_ci` chooses between them from ``groups``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = ["ProportionCI", "wilson_interval", "proportion_with_ci"]


@dataclass(frozen=True)
class ProportionCI:
    """``count`` of ``of`` with a ``level`` interval; ``method`` says how it was made."""

    count: int
    of: int
    ci_low: float
    ci_high: float
    method: str
    level: float = 0.95

    @property
    def proportion(self) -> float:
        return self.count / self.of if self.of else float("nan")


def wilson_interval(count: int, of: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of ``count / of`` (statsmodels); NaNs when ``of`` is 0."""
    from statsmodels.stats.proportion import proportion_confint

    if of <= 0:
        return float("nan"), float("nan")
    low, high = proportion_confint(int(count), int(of), alpha=1 - level, method="wilson")
    return float(low), float(high)


def proportion_with_ci(hit, groups=None, level: float = 0.95, n_boot: int = 1000,
                       seed: int = 0) -> ProportionCI:
    """The share of ``True`` in ``hit`` with a confidence interval.

    Parameters
    ----------
    hit : array-like of bool
        One entry per counted row (the denominator is ``len(hit)``).
    groups : array-like, optional
        Participant of each row. ``None`` or one row per participant: Wilson interval.
        Otherwise a percentile cluster bootstrap over participants (``n_boot`` resamples).
    level : float
        Coverage.
    n_boot, seed : int
        Bootstrap resamples and seed.

    Returns
    -------
    ProportionCI
    """
    from kneelib.stats.bootstrap import resample_indices

    hit = np.asarray(hit, dtype=bool)
    count, of = int(hit.sum()), int(len(hit))
    if groups is None or of == 0 or pd.Series(np.asarray(groups)).is_unique:
        low, high = wilson_interval(count, of, level)
        return ProportionCI(count, of, low, high, "Wilson (participants)", level)
    # aggregate to one row per participant, then resample participants
    per_participant = pd.DataFrame({"group": np.asarray(groups), "hit": hit}).groupby("group")["hit"].agg(
        ["sum", "size"])
    hits, sizes = per_participant["sum"].to_numpy(float), per_participant["size"].to_numpy(float)
    values = np.array([hits[idx].sum() / sizes[idx].sum()
                       for idx in resample_indices(len(hits), n_boot, seed=seed)])
    alpha = (1 - level) / 2
    low, high = np.quantile(values, [alpha, 1 - alpha])
    return ProportionCI(count, of, float(low), float(high), "cluster bootstrap (participants)", level)
