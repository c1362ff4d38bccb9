"""Grade decoding by cut-points on the expected grade (kneelib.stats.ordinal)."""
import numpy as np
import pytest

from kneelib.stats.agreement import quadratic_kappa
from kneelib.stats.ordinal import (choose_decoding, cross_fitted_grades, decode_grades, expected_grade,
                                   fit_cutpoints)


def _squeezed_middle(n=600, seed=0):
    """Three grades whose middle one is never the single most probable: arg-max never predicts it."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    p = np.empty((n, 3))
    for i, g in enumerate(y):
        lean = {0: 0.8, 1: 0.5, 2: 0.2}[g] + rng.normal(0, 0.05)
        p[i] = [lean * 0.6, 0.28, (1 - lean) * 0.6]
    return p / p.sum(axis=1, keepdims=True), y


def test_expected_grade_and_argmax_decoding():
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    assert np.allclose(expected_grade(p), [0.4, 1.5])
    assert decode_grades(p).tolist() == [0, 2]
    assert decode_grades(p, (0.5, 1.6)).tolist() == [0, 1]


def test_cutpoints_recover_a_grade_argmax_never_predicts():
    p, y = _squeezed_middle()
    argmax = decode_grades(p)
    assert 1 not in argmax
    cuts = fit_cutpoints(expected_grade(p), y, 3)
    decoded = decode_grades(p, cuts)
    assert (decoded == 1).sum() > 100
    assert quadratic_kappa(y, decoded, grades=range(3)) > quadratic_kappa(y, argmax, grades=range(3)) + 0.05


def test_choose_decoding_keeps_argmax_when_cutpoints_do_not_help_out_of_fold():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 400)
    noise = rng.random((400, 4))           # probabilities unrelated to the grades
    p = noise / noise.sum(axis=1, keepdims=True)
    sharp = np.eye(4)[y] * 0.9 + 0.025      # probabilities that argmax already decodes perfectly
    folds = np.arange(400) % 5
    decoding = choose_decoding({"noise": p, "sharp": sharp}, {"noise": y, "sharp": y}, folds)
    table = decoding.table.set_index("task")
    assert decoding.cutpoints["sharp"] is None and table.loc["sharp", "argmax_kappa"] == pytest.approx(1.0)
    # unrelated probabilities: whatever the decoding, the cross-fitted kappa stays near zero
    assert abs(table.loc["noise", "cutpoints_kappa"]) < 0.2


def test_choose_decoding_picks_cutpoints_on_a_squeezed_grade_and_skips_unknown_rows():
    p, y = _squeezed_middle(seed=2)
    y = y.copy()
    y[:10] = -1
    folds = np.arange(len(y)) % 5
    decoding = choose_decoding({"kl": p}, {"kl": y}, folds)
    row = decoding.table.iloc[0]
    assert row["decoding"] == "cut-points" and row["n"] == len(y) - 10
    assert row["cutpoints_kappa"] > row["argmax_kappa"]
    assert len(decoding.cutpoints["kl"]) == 2


def test_cross_fitting_never_uses_the_held_out_fold():
    p, y = _squeezed_middle(n=300, seed=3)
    folds = np.arange(300) % 3
    base = cross_fitted_grades(p, y, folds)
    y_changed = y.copy()
    y_changed[folds == 0] = 2 - y_changed[folds == 0]  # relabel fold 0 only
    changed = cross_fitted_grades(p, y_changed, folds)
    assert np.array_equal(base[folds == 0], changed[folds == 0])


@pytest.mark.parametrize("bad, reason", [(np.ones((3,)), "must be"), (np.full((2, 3), np.nan), "NaN")])
def test_bad_probabilities_are_typed_errors(bad, reason):
    with pytest.raises(ValueError, match=reason):
        decode_grades(bad)


def test_bad_cutpoints_and_grades_are_typed_errors():
    with pytest.raises(ValueError, match="cutpoints"):
        decode_grades(np.full((2, 3), 1 / 3), (1.0,))
    with pytest.raises(ValueError, match="grades must lie"):
        fit_cutpoints([0.1, 0.2], [0, 5], 3)
