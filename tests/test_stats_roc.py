import matplotlib

matplotlib.use("Agg")
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from kneelib.stats.roc import (PAPER_SUBGROUPS, auc_with_ci, delong_auc_variance, per_fold_auc, plot_roc,
                               subgroup_auc_table)


def scores(n=300, shift=1.2, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return y, np.round(y * shift + rng.normal(size=n), 1)  # rounding makes ties


def brute_force_delong(y, s):
    pos, neg = s[y == 1], s[y == 0]
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)
    return psi.mean(), v10.var(ddof=1) / len(pos) + v01.var(ddof=1) / len(neg)


def test_delong_matches_the_placement_value_definition_with_ties():
    y, s = scores()
    auc, variance = delong_auc_variance(y, s)
    expected_auc, expected_var = brute_force_delong(y, s)
    assert auc == pytest.approx(roc_auc_score(y, s)) == pytest.approx(expected_auc)
    assert variance == pytest.approx(expected_var, rel=1e-10)


def test_delong_and_bootstrap_intervals_agree_and_bracket_the_estimate():
    y, s = scores(n=400, seed=1)
    delong = auc_with_ci(y, s)
    boot = auc_with_ci(y, s, method="bootstrap", n_boot=300, seed=0)
    assert delong.ci_low < delong.auc < delong.ci_high
    assert boot.auc == pytest.approx(delong.auc)
    assert abs((delong.ci_high - delong.ci_low) - (boot.ci_high - boot.ci_low)) < 0.03
    with pytest.raises(ValueError, match="both classes"):
        auc_with_ci(np.ones(5), np.arange(5))
    with pytest.raises(ValueError, match="non-finite"):
        auc_with_ci([0, 1, 1], [0.1, np.nan, 0.3])


def test_per_fold_table_has_every_fold_and_the_pooled_auc():
    y, s = scores(n=200, seed=2)
    fold = np.arange(200) % 5
    table = per_fold_auc(y, s, fold)
    assert list(table["fold"]) == ["0", "1", "2", "3", "4", "pooled"]
    assert table["n"].iloc[:5].sum() == 200
    assert table["auc"].iloc[-1] == pytest.approx(roc_auc_score(y, s))
    assert table.attrs["mean_fold_auc"] == pytest.approx(table["auc"].iloc[:5].mean())


def test_subgroup_table_follows_the_papers_figure_4c():
    y, s = scores(n=300, seed=3)
    rng = np.random.default_rng(3)
    covariates = pd.DataFrame({"kl_painful_knee": rng.integers(0, 5, 300), "bmi": rng.normal(29, 5, 300),
                               "age": rng.normal(61, 9, 300), "sex": rng.integers(1, 3, 300)})
    s_mod = s + 3 * y * (covariates["sex"].to_numpy() == 1)  # males perfectly separated
    table = subgroup_auc_table(y, s_mod, covariates)
    assert list(table["subgroup"]) == list(PAPER_SUBGROUPS)
    rows = table.set_index("subgroup")
    assert rows.loc["Male", "n"] + rows.loc["Female", "n"] == 300
    assert rows.loc["Male", "auc"] > rows.loc["Female", "auc"]
    male = covariates["sex"] == 1
    assert rows.loc["Male", "auc"] == pytest.approx(roc_auc_score(y[male], s_mod[male]))
    with pytest.raises(KeyError, match="kl_painful_knee"):
        subgroup_auc_table(y, s, covariates.drop(columns="kl_painful_knee"))


def test_roc_plot_has_a_curve_per_model_and_the_papers_value_in_the_legend():
    ya, sa = scores(seed=4)
    yb, sb = scores(seed=5, shift=2)
    ax = plot_roc({"Model A": (ya, sa), "Model B": (yb, sb)}, folds={"Model A": np.arange(300) % 3},
                  paper_auc={"Model A": 0.808, "Model B": 0.853})
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert len(labels) == 2 and "paper 0.808" in labels[0] and "paper 0.853" in labels[1]
    assert len(ax.lines) == 3 + 2 + 1  # fold curves, pooled curves, chance line


def test_roc_plot_legend_shows_a_given_interval_and_refuses_one_of_another_curve():
    y, s = scores(seed=6)
    groups = np.arange(300) // 2  # two rows per subject: DeLong would not hold
    table = auc_with_ci(y, s, method="bootstrap", groups=groups, n_boot=200, seed=1)
    ax = plot_roc({"Model A": (y, s)}, intervals={"Model A": (table.auc, table.ci_low, table.ci_high)})
    (label,) = [t.get_text() for t in ax.get_legend().get_texts()]
    assert label == f"Model A: AUC {table}"
    assert label != f"Model A: AUC {auc_with_ci(y, s)}"  # not the DeLong interval
    with pytest.raises(ValueError, match="Model A"):
        plot_roc({"Model A": (y, s)}, intervals={"Model A": (table.auc + 0.01, 0.0, 1.0)})


def test_auc_ci_states_its_unit_and_refuses_delong_on_repeated_subjects():
    import numpy as np
    import pytest as _pytest

    from kneelib.stats.roc import auc_with_ci

    rng = np.random.default_rng(0)
    y = np.tile([0, 1], 30)
    s = y + rng.normal(size=60)
    assert auc_with_ci(y, s).unit == "observations"
    assert auc_with_ci(y, s, groups=np.arange(60)).unit == "subjects"
    knees = np.repeat(np.arange(30), 2)
    with _pytest.raises(ValueError, match="DeLong"):
        auc_with_ci(y, s, groups=knees)
    result = auc_with_ci(y, s, method="bootstrap", groups=knees, n_boot=200)
    assert result.unit == "subjects" and result.ci_low < result.auc < result.ci_high
