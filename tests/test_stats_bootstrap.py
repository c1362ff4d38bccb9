import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from kneelib.stats.bootstrap import bootstrap_ci


def _scores(seed=0, n=200, shift=1.0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return y, y * shift + rng.normal(size=n)


def test_interval_brackets_estimate_and_is_reproducible():
    y, s = _scores()
    first = bootstrap_ci(roc_auc_score, y, s, n_boot=300, seed=3)
    second = bootstrap_ci(roc_auc_score, y, s, n_boot=300, seed=3)
    assert first == second
    assert first.ci_low < first.estimate < first.ci_high
    assert first.estimate == pytest.approx(roc_auc_score(y, s))
    assert 0.7 < first.estimate < 0.85  # d'=1 -> AUC = Phi(1/sqrt2) ~ 0.76


def test_interval_narrows_with_more_data():
    small = bootstrap_ci(roc_auc_score, *_scores(n=100), n_boot=300)
    large = bootstrap_ci(roc_auc_score, *_scores(n=2000), n_boot=300)
    assert (large.ci_high - large.ci_low) < (small.ci_high - small.ci_low)


def test_stratified_resampling_keeps_class_counts():
    y = np.array([0] * 95 + [1] * 5)
    seen = []

    def positives(yt, _):
        seen.append(int(yt.sum()))
        return float(yt.mean())

    bootstrap_ci(positives, y, y, n_boot=50, stratify=True)
    assert set(seen) == {5}


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="3 rows but y_score has 2"):
        bootstrap_ci(roc_auc_score, [0, 1, 1], [0.1, 0.2])


def test_cluster_bootstrap_draws_whole_subjects():
    from kneelib.stats.bootstrap import resample_indices

    groups = np.array(["a", "a", "b", "b", "b", "c"])
    for idx in resample_indices(6, 50, groups=groups, seed=1):
        drawn = groups[idx]
        # every drawn subject comes with all of its rows, as many times as it was drawn
        for subject, size in (("a", 2), ("b", 3), ("c", 1)):
            assert (drawn == subject).sum() % size == 0
        assert len(set(drawn)) >= 1


def test_cluster_bootstrap_widens_interval_of_correlated_rows():
    # 50 subjects, each repeated 4 times (two knees x two visits, perfectly correlated):
    # resampling rows pretends there are 200 independent observations.
    y, s = _scores(n=50, seed=2)
    rows_y, rows_s = np.repeat(y, 4), np.repeat(s, 4)
    subjects = np.repeat(np.arange(50), 4)
    naive = bootstrap_ci(roc_auc_score, rows_y, rows_s, n_boot=400, seed=0)
    cluster = bootstrap_ci(roc_auc_score, rows_y, rows_s, n_boot=400, seed=0, groups=subjects)
    single = bootstrap_ci(roc_auc_score, y, s, n_boot=400, seed=0)
    assert naive.unit == "observations" and cluster.unit == "subjects"
    assert (cluster.ci_high - cluster.ci_low) > 1.5 * (naive.ci_high - naive.ci_low)
    # and matches the width of the one-row-per-subject data
    assert (cluster.ci_high - cluster.ci_low) == pytest.approx(single.ci_high - single.ci_low, rel=0.35)
    with pytest.raises(ValueError, match="groups has"):
        bootstrap_ci(roc_auc_score, rows_y, rows_s, groups=subjects[:-1])
