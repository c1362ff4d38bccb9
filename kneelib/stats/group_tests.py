"""Demographics by group with significance tests (paper 000, Table 1).

Paper 000, Methods "Statistical analysis": "Unpaired Student's t-test was used to
compare the mean value of two different groups, and Fisher's exact test was used to
examine the non-random association between two groups of categorical variables."
Table 1b-d compares subjects with left and right knee pain: percent female (Fisher),
age and BMI (mean +/- SD, t-test).

Paper 001, Table 4: independence of the demographics across the training, validation and
test splits, Pearson's chi-square for sex (:func:`pearson_chi_square_test`) and a one-way
MANOVA of age and BMI (:func:`one_way_manova`); :func:`split_independence` gives both.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from scipy import stats

__all__ = ["unpaired_t_test", "fisher_exact_test", "table1_by_group", "pearson_chi_square_test",
           "one_way_manova", "split_independence"]


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


# --------------------------------------------------------------------------- paper 001, Table 4
def pearson_chi_square_test(categories, groups, name: str = "categories") -> tuple[float, float, int]:
    """Pearson's chi-square test of independence of a categorical variable across groups.

    Paper 001, Methods "Chronic pain model training" / Table 4: "The independence of sex was
    tested with a Pearson's chi-squared test" across the training, validation and test splits
    (any number of groups). No continuity correction (Pearson's statistic as printed).
    Rows with a missing category or group are dropped.

    Returns
    -------
    statistic : float
    p_value : float
        NaN when the table has a single row or column (nothing varies).
    dof : int

    Raises
    ------
    ValueError
        Lengths differ, or no row is left.
    """
    categories, groups = pd.Series(np.asarray(categories)), pd.Series(np.asarray(groups))
    if len(categories) != len(groups):
        raise ValueError(f"{name}: {len(categories)} values but {len(groups)} group labels")
    keep = categories.notna() & groups.notna()
    if not keep.any():
        raise ValueError(f"{name}: no row with both a value and a group")
    table = pd.crosstab(groups[keep].rename("group"), categories[keep].rename(name))
    if min(table.shape) < 2:
        return float("nan"), float("nan"), 0
    result = stats.chi2_contingency(table.to_numpy(), correction=False)
    return float(result.statistic), float(result.pvalue), int(result.dof)


def one_way_manova(frame: pd.DataFrame, outcomes: Sequence[str], group: str) -> tuple[float, float]:
    """One-way MANOVA of several continuous outcomes across groups (statsmodels), Wilks' lambda.

    Paper 001, Table 4: "a one-way Multivariate Analysis of Variance (MANOVA) for the joint
    effect of age and BMI" across the splits. Rows missing an outcome or the group are dropped.

    Returns
    -------
    wilks_lambda : float
    p_value : float
        The F approximation of Wilks' lambda (statsmodels ``MANOVA.mv_test``).

    Raises
    ------
    ValueError
        A column is missing, fewer than two groups, or too few rows for the test.
    """
    from statsmodels.multivariate.manova import MANOVA

    missing = [c for c in [*outcomes, group] if c not in frame.columns]
    if missing:
        raise ValueError(f"MANOVA: frame has no column(s) {missing}")
    data = frame[[*outcomes, group]].dropna().copy()
    data.columns = [f"y{i}" for i in range(len(outcomes))] + ["group"]
    data["group"] = data["group"].astype(str)
    n_groups = data["group"].nunique()
    if n_groups < 2 or len(data) <= n_groups + len(outcomes):
        raise ValueError(f"MANOVA of {list(outcomes)} by {group!r}: {len(data)} complete rows in {n_groups} "
                         "groups is too few")
    formula = " + ".join(data.columns[:-1]) + " ~ C(group)"
    test = MANOVA.from_formula(formula, data=data).mv_test()
    row = test.results["C(group)"]["stat"].loc["Wilks' lambda"]
    return float(row["Value"]), float(row["Pr > F"])


def split_independence(frame: pd.DataFrame, split: str = "split", sex: str = "sex",
                       continuous: Sequence[str] = ("age", "bmi")) -> dict[str, float]:
    """Table 4 of paper 001: chi-square p for sex and one-way MANOVA p for age and BMI across splits.

    ``frame`` holds one row per image volume (time point), as the paper's table counts volumes.
    """
    _, p_sex, _ = pearson_chi_square_test(frame[sex].to_numpy(), frame[split].to_numpy(), sex)
    _, p_manova = one_way_manova(frame, continuous, split)
    return {"chi_square_sex_p": p_sex, "manova_age_bmi_p": p_manova}
