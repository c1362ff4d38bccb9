"""Bland-Altman with a subject bootstrap of the bias (supplement 003, Fig. S3)."""
from __future__ import annotations

import numpy as np
import pytest

from kneelib.stats.bland_altman import bland_altman


def test_bias_limits_and_ci_on_known_differences():
    rng = np.random.default_rng(0)
    reference = rng.normal(2.0, 0.3, 400)
    test = reference + 0.1 + rng.normal(0, 0.05, 400)
    result = bland_altman(test, reference, n_boot=300)
    d = test - reference
    assert result.mean_difference == pytest.approx(d.mean())
    assert result.sd_difference == pytest.approx(d.std(ddof=1))
    assert result.lower_limit == pytest.approx(d.mean() - 1.96 * d.std(ddof=1))
    assert result.upper_limit == pytest.approx(d.mean() + 1.96 * d.std(ddof=1))
    assert result.bias_ci.ci_low < 0.1 < result.bias_ci.ci_high
    assert result.bias_ci.ci_high - result.bias_ci.ci_low < 0.02
    assert result.n == 400 and result.bias_ci.unit == "observations"
    assert bland_altman(test, reference, k=2.0, n_boot=10).upper_limit == pytest.approx(d.mean() + 2 * d.std(ddof=1))


def test_subject_bootstrap_is_wider_when_subjects_share_their_error():
    rng = np.random.default_rng(1)
    subjects = np.repeat(np.arange(30), 4)  # four knees/visits per subject, one subject effect each
    reference = rng.normal(2.0, 0.3, subjects.size)
    test = reference + rng.normal(0, 0.2, 30)[subjects] + rng.normal(0, 0.01, subjects.size)
    rows = bland_altman(test, reference, n_boot=400)
    clustered = bland_altman(test, reference, groups=subjects, n_boot=400)
    assert clustered.bias_ci.unit == "subjects"
    assert (clustered.bias_ci.ci_high - clustered.bias_ci.ci_low) > 1.5 * (rows.bias_ci.ci_high - rows.bias_ci.ci_low)


def test_non_finite_pairs_dropped_and_bad_input_refused():
    result = bland_altman([1.0, 2.0, np.nan, 4.0], [1.5, 2.0, 3.0, np.inf], n_boot=10)
    assert result.n == 2
    assert result.mean_difference == pytest.approx(-0.25)
    with pytest.raises(ValueError, match="values"):
        bland_altman([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="two finite"):
        bland_altman([1.0, np.nan], [1.0, 2.0])
