"""Point-wise SPM with max-T permutation control (paper 001, Fig. 1) on tiny seeded data."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from kneelib.stats.spm import permutation_spm


def _data(n=40, vertices=60, effect=0.0, seed=0):
    rng = np.random.default_rng(seed)
    group = np.r_[np.ones(n // 2), np.zeros(n // 2)]
    age = rng.normal(60, 9, n)
    values = rng.normal(size=(n, vertices)) + 0.05 * (age - 60)[:, None]
    values[:, :10] += effect * group[:, None]
    return values, group, age[:, None]


def test_t_equals_the_ols_t_of_the_group_with_covariates():
    values, group, age = _data(effect=0.5)
    result = permutation_spm(values, group, age, n_permutations=20)
    import statsmodels.api as sm

    design = np.column_stack([np.ones(len(group)), group, age])
    fit = sm.OLS(values[:, 3], design).fit()
    assert result.t[3] == pytest.approx(fit.tvalues[1], rel=1e-8)
    assert result.p[3] == pytest.approx(fit.pvalues[1], rel=1e-6)
    assert result.df == len(group) - 3


def test_planted_effect_is_found_and_the_null_controls_family_wise_error():
    values, group, age = _data(effect=2.0, seed=1)
    result = permutation_spm(values, group, age, n_permutations=500, seed=0)
    assert result.significant().sum() >= 8 and result.significant()[:10].sum() == result.significant().sum()
    false_positive_maps = 0
    for seed in range(20):
        null = permutation_spm(*_data(seed=100 + seed), n_permutations=200, seed=seed)
        false_positive_maps += bool(null.significant().any())
    assert false_positive_maps <= 4  # FWE 5%: about 1 of 20 maps; binomial 99.7% bound is 4
    assert (result.p_fwe >= result.p - 1e-12).all()


def test_vertices_with_missing_values_are_nan_and_bad_input_raises():
    values, group, age = _data()
    values[0, 5] = np.nan
    values[:, 6] = np.nan  # a vertex no subject has: NaN, and no RuntimeWarning on the page
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = permutation_spm(values, group, age, n_permutations=10)
    assert np.isnan(result.t[5]) and np.isnan(result.t[6]) and np.isfinite(result.t[4])
    with pytest.raises(ValueError):
        permutation_spm(values, np.ones(len(group)), age)
    with pytest.raises(ValueError):
        permutation_spm(values[:3], group[:3], np.ones((3, 2)))
