"""Agreement metrics of paper 004 (kappa, balanced accuracy, F1, MSE, ...) with bootstrap CIs."""
import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score

from kneelib.stats.agreement import (AGREEMENT_METRICS, accuracy, agreement_table, balanced_accuracy,
                                     chance_predictions, confusion, confusion_percent,
                                     confusion_with_ci, f1_weighted, majority_grade_predictions,
                                     mean_absolute_error, mean_squared_error, quadratic_kappa)

Y_TRUE = np.array([0, 0, 1, 1, 2, 2, 3, 3, 4, 4])
Y_PRED = np.array([0, 1, 1, 1, 2, 3, 3, 2, 4, 3])


def test_hand_checked_values():
    assert quadratic_kappa(Y_TRUE, Y_TRUE) == 1.0
    assert quadratic_kappa(Y_TRUE, Y_PRED) == pytest.approx(
        cohen_kappa_score(Y_TRUE, Y_PRED, weights="quadratic"))
    assert accuracy(Y_TRUE, Y_PRED) == pytest.approx(0.6)
    # per-grade recall: 0.5, 1, 0.5, 0.5, 0.5
    assert balanced_accuracy(Y_TRUE, Y_PRED) == pytest.approx(0.6)
    assert mean_absolute_error(Y_TRUE, Y_PRED) == pytest.approx(0.4)
    assert mean_squared_error(Y_TRUE, Y_PRED) == pytest.approx(0.4)
    assert 0 < f1_weighted(Y_TRUE, Y_PRED) < 1
    # a reversed scale disagrees maximally
    assert quadratic_kappa(Y_TRUE, 4 - Y_TRUE) == pytest.approx(-1.0)


def test_constant_predictions_have_zero_kappa():
    assert quadratic_kappa(Y_TRUE, np.zeros_like(Y_TRUE)) == 0.0
    assert quadratic_kappa(np.ones(5), np.ones(5)) == 0.0


def test_confusion_counts_and_percent():
    counts = confusion(Y_TRUE, Y_PRED, 5)
    assert counts.sum() == 10 and counts[1, 1] == 2 and counts[3, 2] == 1
    percent = confusion_percent([0, 0, 1], [0, 1, 1], 3)
    assert np.allclose(percent[0], [50, 50, 0]) and np.isnan(percent[2]).all()


def test_agreement_table_has_cis_around_estimates():
    rng = np.random.default_rng(1)
    y_true = np.repeat(np.arange(5), 20)
    y_pred = np.clip(y_true + rng.integers(-1, 2, size=100), 0, 4)
    table = agreement_table(y_true, y_pred, n_boot=200, seed=3, label="model")
    assert list(table.columns) == ["model", "metric", "estimate", "ci_low", "ci_high", "n", "unit"]
    assert list(table["metric"]) == list(AGREEMENT_METRICS)
    assert (table["ci_low"] <= table["estimate"]).all() and (table["estimate"] <= table["ci_high"]).all()
    assert table.equals(agreement_table(y_true, y_pred, n_boot=200, seed=3, label="model"))
    with pytest.raises(ValueError, match="unknown metric"):
        agreement_table(y_true, y_pred, metrics=["auc"])
    with pytest.raises(ValueError, match="1-D and equal"):
        quadratic_kappa([0, 1], [0])


def test_confusion_with_ci_brackets_point_estimate():
    rng = np.random.default_rng(0)
    y_true = np.repeat(np.arange(3), 30)
    y_pred = np.where(rng.random(90) < 0.7, y_true, rng.integers(0, 3, 90))
    percent, low, high = confusion_with_ci(y_true, y_pred, 4, n_boot=100, seed=0)
    assert percent.shape == low.shape == high.shape == (4, 4)
    finite = np.isfinite(percent)
    assert (low[finite] <= percent[finite] + 1e-9).all() and (percent[finite] <= high[finite] + 1e-9).all()
    assert np.isnan(percent[3]).all()  # grade 3 never occurs in y_true


def test_baselines():
    assert (majority_grade_predictions([0, 0, 2, 1, 0], 4) == 0).all()
    a = chance_predictions(50, 5, seed=2, prior=[5, 1, 1, 1, 1])
    assert np.array_equal(a, chance_predictions(50, 5, seed=2, prior=[5, 1, 1, 1, 1]))
    assert set(np.unique(a)) <= set(range(5))
    with pytest.raises(ValueError):
        majority_grade_predictions([], 3)


def _hand_quadratic_kappa(y_true, y_pred, n_grades):
    """Cohen's quadratic kappa written out: 1 - sum(w O) / sum(w E), w = (i-j)^2/(K-1)^2."""
    observed = np.zeros((n_grades, n_grades))
    for a, b in zip(y_true, y_pred):
        observed[a, b] += 1
    observed /= observed.sum()
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0))
    i, j = np.indices((n_grades, n_grades))
    weights = (i - j) ** 2 / (n_grades - 1) ** 2
    return 1 - (weights * observed).sum() / (weights * expected).sum()


def test_kappa_hand_computed_cases():
    # 4 knees, grades 0/1/2/3 on a 0..3 scale: computed by hand as 1 - 0.5/4.5 ... via the formula
    y_true = np.array([0, 1, 2, 3])
    y_pred = np.array([0, 2, 2, 3])
    # O = diag-ish, one 1->2 disagreement (weight 1/9); E from the marginals
    assert quadratic_kappa(y_true, y_pred) == pytest.approx(_hand_quadratic_kappa(y_true, y_pred, 4))
    assert quadratic_kappa(y_true, y_pred) == pytest.approx(1 - (1 / 9 / 4) / (
        sum((a - b) ** 2 / 9 for a in y_true for b in y_pred) / 16))


def test_kappa_with_a_grade_neither_rater_used():
    # Grade 2 is missing from both raters. On the full 0..3 scale a 1-vs-3 disagreement
    # weighs (3-1)^2/9 = 4/9, not the 1/4 of adjacent grades on a collapsed 0,1,3 scale.
    y_true = np.array([0, 0, 1, 1, 3, 3, 1, 0])
    y_pred = np.array([0, 1, 1, 3, 3, 3, 1, 0])
    expected = _hand_quadratic_kappa(y_true, y_pred, 4)
    assert quadratic_kappa(y_true, y_pred) == pytest.approx(expected)
    assert quadratic_kappa(y_true, y_pred, grades=range(4)) == pytest.approx(expected)
    collapsed = cohen_kappa_score(y_true, y_pred, weights="quadratic")  # sklearn's default scale
    assert abs(collapsed - expected) > 0.01
    # a top grade missing is on the scale when asked for
    assert quadratic_kappa(y_true, y_pred, grades=range(5)) == pytest.approx(
        _hand_quadratic_kappa(y_true, y_pred, 5))
    with pytest.raises(ValueError, match="not on the scale"):
        quadratic_kappa(y_true, y_pred, grades=range(3))


def test_agreement_table_keeps_one_scale_across_resamples():
    # With grade 4 seen once, many resamples lack it; their kappa must still use 0..4.
    y_true = np.array([0, 0, 1, 1, 2, 2, 3, 3, 4])
    y_pred = np.array([0, 1, 1, 2, 2, 3, 3, 4, 4])
    table = agreement_table(y_true, y_pred, metrics=["quadratic_kappa"], n_boot=50, seed=0,
                            stratify=False, grades=range(5))
    assert table.loc[0, "estimate"] == pytest.approx(_hand_quadratic_kappa(y_true, y_pred, 5))


def test_agreement_table_resamples_subjects_when_grouped():
    rng = np.random.default_rng(4)
    subjects = np.repeat(np.arange(40), 4)  # 2 knees x 2 visits per subject
    subject_effect = np.repeat(rng.integers(0, 5, 40), 4)
    y_true = subject_effect
    y_pred = np.clip(subject_effect + np.repeat(rng.integers(-1, 2, 40), 4), 0, 4)
    rows = agreement_table(y_true, y_pred, metrics=["accuracy"], n_boot=300, seed=0)
    grouped = agreement_table(y_true, y_pred, metrics=["accuracy"], n_boot=300, seed=0, groups=subjects)
    assert rows.loc[0, "unit"] == "observations" and grouped.loc[0, "unit"] == "subjects"
    width_rows = rows.loc[0, "ci_high"] - rows.loc[0, "ci_low"]
    width_subjects = grouped.loc[0, "ci_high"] - grouped.loc[0, "ci_low"]
    assert width_subjects > 1.5 * width_rows  # 4 identical rows per subject: ~2x wider
    percent, low, high = confusion_with_ci(y_true, y_pred, 5, n_boot=50, seed=0, groups=subjects)
    assert percent.shape == (5, 5)
