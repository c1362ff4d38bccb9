"""Demographics by group with significance tests (paper 000, Table 1).

Paper 000, Methods "Statistical analysis": "Unpaired Student's t-test was used to
compare the mean value of two different groups, and Fisher's exact test was used to
examine the non-random association between two groups of categorical variables."
Table 1b-d compares subjects with left and right knee pain: percent female (Fisher),
age and BMI (mean +/- SD, t-test).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from scipy import stats

__all__ = ["unpaired_t_test", "fisher_exact_test", "table1_by_group"]


def _two_groups(values, groups, name: str):
    values = np.asarray(values)
    groups = np.asarray(groups)
    if len(values) != len(groups):
        raise ValueError(f"{name} has {len(values)} values but the group variable has {len(groups)}")
    levels = pd.unique(groups[pd.notna(groups)])
    if len(levels) != 2:
        raise ValueError(f"need exactly two groups to compare {name}; found {list(levels)}")
    return levels, values, groups


def unpaired_t_test(values, groups, name: str = "values") -> tuple[float, float]:
    """Student's two-sample t-test (equal variances) of ``values`` between two groups.

    Missing values are dropped. Returns ``(t statistic, two-sided p)``.
    """
    levels, values, groups = _two_groups(values, groups, name)
    values = values.astype(float)
    a = values[(groups == levels[0]) & np.isfinite(values)]
    b = values[(groups == levels[1]) & np.isfinite(values)]
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"t-test of {name} needs at least two values per group ({len(a)}, {len(b)})")
    result = stats.ttest_ind(a, b, equal_var=True)
    return float(result.statistic), float(result.pvalue)


def fisher_exact_test(categories, groups, name: str = "categories") -> tuple[float, float]:
    """Fisher's exact test of a binary variable between two groups (2 x 2 table).

    Returns ``(odds ratio, two-sided p)``. A boolean variable keeps both of its columns
    even when one value never occurs (e.g. no men in a small subgroup): the table then
    has a zero column and the test gives p = 1, as it should with no variation.
    """
    levels, categories, groups = _two_groups(categories, groups, name)
    keep = pd.notna(categories)
    table = pd.crosstab(pd.Series(groups[keep], name="group"), pd.Series(categories[keep], name=name))
    if np.asarray(categories).dtype == bool:
        table = table.reindex(columns=[False, True], fill_value=0)
    if table.shape != (2, 2):
        raise ValueError(f"Fisher's exact test needs a binary {name} in both groups; got table {table.shape}")
    result = stats.fisher_exact(table.to_numpy())
    return float(result.statistic), float(result.pvalue)


def table1_by_group(cohort: pd.DataFrame, group: str, continuous: Sequence[str] = ("age", "bmi"),
                    sex: str | None = "sex", female_code=2, group_labels: dict | None = None,
                    names: dict | None = None) -> pd.DataFrame:
    """Table 1 of paper 000: subjects, percent female, mean +/- SD per group with p-values.

    Parameters
    ----------
    cohort : DataFrame
        One row per subject.
    group : str
        Column with two groups (e.g. painful side, ``"L"``/``"R"`` or 0/1).
    continuous : sequence of str
        Columns compared by unpaired t-test (age, BMI).
    sex : str or None
        Column compared by Fisher's exact test as percent female; ``None`` to skip.
    female_code
        Value of ``sex`` meaning female (OAI ``P02SEX``: 2).
    group_labels : dict or None
        Display names of the groups, e.g. ``{0: "Left knee pain", 1: "Right knee pain"}``.
    names : dict or None
        Display names of the rows, e.g. ``{"age": "Age (years)"}``.

    Returns
    -------
    DataFrame
        Rows ``Subjects``, ``Percent female`` and one per continuous variable;
        a column per group (formatted) and ``p-value``; the raw numbers are in
        ``df.attrs["values"]``.
    """
    for column in [group, *continuous, *([sex] if sex else [])]:
        if column not in cohort.columns:
            raise KeyError(f"cohort has no column {column!r}")
    levels = sorted(pd.unique(cohort[group].dropna()), key=str)
    if len(levels) != 2:
        raise ValueError(f"column {group!r} must hold exactly two groups; found {levels}")
    group_labels = group_labels or {}
    names = names or {}
    headers = [str(group_labels.get(level, level)) for level in levels]
    parts = [cohort[cohort[group] == level] for level in levels]
    rows, raw = [], {}
    rows.append(["Subjects", *[f"n = {len(p)}" for p in parts], ""])
    if sex:
        female = [100.0 * (p[sex] == female_code).mean() for p in parts]
        _, p_value = fisher_exact_test((cohort[sex] == female_code).to_numpy(), cohort[group].to_numpy(), sex)
        rows.append(["Percent female", *[f"{f:.1f}" for f in female], f"{p_value:.3f}"])
        raw["female_percent"] = (*female, p_value)
    for column in continuous:
        means = [p[column].mean() for p in parts]
        sds = [p[column].std(ddof=1) for p in parts]
        _, p_value = unpaired_t_test(cohort[column].to_numpy(), cohort[group].to_numpy(), column)
        rows.append([names.get(column, column), *[f"{m:.2f} \u00b1 {s:.2f}" for m, s in zip(means, sds)],
                     f"{p_value:.3f}"])
        raw[column] = (*means, *sds, p_value)
    table = pd.DataFrame(rows, columns=["Parameter", *headers, "p-value"]).set_index("Parameter")
    table.attrs["values"] = raw
    return table
