"""Binary metrics with subject-bootstrap CIs, and the paired reader benchmark (paper 002, 2.5)."""
import numpy as np
import pandas as pd
import pytest

from kneelib.stats.binary import (BinaryInputError, PAPER_PAIR_MIX, binary_metrics, confusion_matrix,
                                  pairwise_ranking_accuracy, reader_benchmark_pairs)
from kneelib.train.baselines import cross_validated_logistic


def test_binary_metrics_values_and_subject_unit():
    rng = np.random.default_rng(0)
    y = np.repeat(rng.random(100) < 0.3, 2).astype(int)
    score = y * 0.5 + rng.random(200) * 0.8
    groups = np.repeat(np.arange(100), 2)
    table = binary_metrics(y, score, groups=groups, n_boot=200)
    from sklearn.metrics import average_precision_score, roc_auc_score
    assert table.loc["roc_auc", "value"] == pytest.approx(roc_auc_score(y, score))
    assert table.loc["pr_auc", "value"] == pytest.approx(average_precision_score(y, score))
    assert (table["unit"] == "subjects").all()
    assert (table["ci_low"] <= table["value"]).all() and (table["value"] <= table["ci_high"]).all()
    cm = confusion_matrix(y, score)
    assert cm.to_numpy().sum() == 200 and cm.loc["true 1"].sum() == y.sum()


@pytest.mark.parametrize("y, s", [([0, 0, 0], [0.1, 0.2, 0.3]), ([0, 1, 2], [0.1, 0.2, 0.3]),
                                  ([0, 1, 1], [0.1, np.nan, 0.3]), ([0, 1], [0.1])])
def test_binary_metrics_typed_errors(y, s):
    with pytest.raises(BinaryInputError):
        binary_metrics(y, s)


def test_reader_pairs_follow_the_paper_mix_and_never_pair_a_participant_with_itself():
    rng = np.random.default_rng(1)
    n = 400
    groups = np.repeat(np.arange(n // 2), 2)
    jsn = rng.normal(0, 0.15, n)
    progressor = np.zeros(n, int)
    progressor[:60] = 1
    jsn[:5], jsn[5:55], jsn[55:60] = -1.3, -0.8, -0.55
    pairs = reader_benchmark_pairs(jsn, progressor, groups, n_pairs=150, seed=0)
    counts = pairs["band"].value_counts()
    assert [counts[b] for b in PAPER_PAIR_MIX] == [10, 130, 10]
    assert (progressor[pairs["positive"]] == 1).all() and (progressor[pairs["negative"]] == 0).all()
    assert (groups[pairs["positive"]] != groups[pairs["negative"]]).all()
    assert pairs["negative"].is_unique  # enough non-progressors: none reused


def test_reader_pairs_empty_band():
    jsn = np.array([-0.8, -0.7, 0.0, 0.1])
    progressor = np.array([1, 1, 0, 0])
    with pytest.raises(BinaryInputError, match="no progressor in band"):
        reader_benchmark_pairs(jsn, progressor, np.arange(4), n_pairs=15)
    pairs = reader_benchmark_pairs(jsn, progressor, np.arange(4), n_pairs=15, skip_empty_bands=True)
    assert len(pairs) == 13 and len(pairs.attrs["skipped_bands"]) == 2


def test_pairwise_accuracy_counts_ties_half():
    pairs = pd.DataFrame({"positive": [0, 1, 2], "negative": [3, 4, 5], "band": "x"})
    scores = np.array([0.9, 0.5, 0.1, 0.2, 0.5, 0.3])
    result = pairwise_ranking_accuracy(scores, pairs, n_boot=50)
    assert result.estimate == pytest.approx((1 + 0.5 + 0) / 3)
    with pytest.raises(BinaryInputError):
        pairwise_ranking_accuracy(scores, pairs.iloc[:0])


def test_logistic_baseline_out_of_fold():
    rng = np.random.default_rng(2)
    table = pd.DataFrame({"a": rng.normal(size=200), "b": rng.normal(size=200)})
    y = (table["a"] + 0.3 * rng.normal(size=200) > 0.5).astype(int).to_numpy()
    fold = np.arange(200) % 4
    p = cross_validated_logistic(table, ["a"], y, fold)
    from sklearn.metrics import roc_auc_score
    assert roc_auc_score(y, p) > 0.9 and np.isfinite(p).all()
    with pytest.raises(ValueError, match="lacks"):
        cross_validated_logistic(table, ["c"], y, fold)
    bad = table.copy()
    bad.loc[0, "a"] = np.nan
    with pytest.raises(ValueError, match="missing"):
        cross_validated_logistic(bad, ["a"], y, fold)
