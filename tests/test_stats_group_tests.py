import numpy as np
import pandas as pd
import pytest
from scipy import stats

from kneelib.stats.group_tests import fisher_exact_test, table1_by_group, unpaired_t_test


def exact_sample(mean, sd, n, seed):
    """n values with exactly this sample mean and SD."""
    z = np.random.default_rng(seed).normal(size=n)
    return mean + sd * (z - z.mean()) / z.std(ddof=1)


def paper_model_a_cohort():
    """Paper 000 Table 1B summary (Model A): left n=734, right n=771."""
    n_left, n_right = 734, 771
    return pd.DataFrame({
        "painful_side": ["L"] * n_left + ["R"] * n_right,
        "age": np.r_[exact_sample(60.13, 9.18, n_left, 0), exact_sample(61.24, 8.98, n_right, 1)],
        "bmi": np.r_[exact_sample(28.97, 4.88, n_left, 2), exact_sample(28.38, 4.53, n_right, 3)],
        "sex": np.r_[[2] * 425 + [1] * 309, [2] * 431 + [1] * 340],  # 57.9% and 55.9% female
    })


def test_table1_reproduces_the_papers_t_test_p_values():
    cohort = paper_model_a_cohort()
    table = table1_by_group(cohort, "painful_side", group_labels={"L": "Left Knee Pain", "R": "Right Knee Pain"},
                            names={"age": "Age (years)", "bmi": "BMI"})
    assert list(table.columns) == ["Left Knee Pain", "Right Knee Pain", "p-value"]
    assert table.loc["Subjects", "Left Knee Pain"] == "n = 734"
    assert table.loc["Percent female", "Left Knee Pain"] == "57.9"
    assert table.loc["Age (years)", "Left Knee Pain"] == "60.13 \u00b1 9.18"
    assert table.loc["Age (years)", "p-value"] == "0.018"  # paper: 0.018
    assert table.loc["BMI", "p-value"] == "0.015"  # paper: 0.015
    female_p = table.attrs["values"]["female_percent"][2]
    expected = stats.fisher_exact([[309, 425], [340, 431]]).pvalue
    assert female_p == pytest.approx(expected)  # the paper prints 0.700 for these counts


def test_tests_drop_missing_values_and_reject_bad_groups():
    values = np.array([1.0, 2.0, np.nan, 3.0, 4.0, 5.0])
    groups = np.array([0, 0, 0, 1, 1, 1])
    t, p = unpaired_t_test(values, groups)
    expected = stats.ttest_ind([1.0, 2.0], [3.0, 4.0, 5.0])
    assert t == pytest.approx(expected.statistic) and p == pytest.approx(expected.pvalue)
    with pytest.raises(ValueError, match="two groups"):
        unpaired_t_test(values, np.zeros(6))
    with pytest.raises(ValueError, match="binary"):
        fisher_exact_test(np.array([1, 2, 3, 1, 2, 3]), groups)
    with pytest.raises(KeyError, match="weight"):
        table1_by_group(pd.DataFrame({"g": [0, 1], "sex": [1, 2]}), "g", continuous=("weight",))


def test_fisher_keeps_an_unobserved_boolean_value_and_gives_p_one():
    all_female = np.array([True, True, True, True, True])
    groups = np.array([0, 0, 1, 1, 1])
    _, p = fisher_exact_test(all_female, groups, "female")
    assert p == pytest.approx(1.0)
    cohort = pd.DataFrame({"g": [0, 0, 1, 1, 1], "sex": [2] * 5, "age": [50.0, 60, 55, 65, 70],
                           "bmi": [25.0, 27, 30, 28, 26]})
    table = table1_by_group(cohort, "g")
    assert table.loc["Percent female", "p-value"] == "1.000"
