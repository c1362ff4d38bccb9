import numpy as np
import pytest

from kneelib.train.splits import make_strata, stratified_kfold, stratified_train_val_test_split


def cohort(n=400, seed=0):
    rng = np.random.default_rng(seed)
    return dict(labels=rng.integers(0, 2, n), sex=rng.integers(1, 3, n),
                age=rng.normal(61, 9, n), bmi=rng.normal(28.7, 4.7, n))


def test_strata_cross_label_sex_age_and_bmi_and_merge_rare_ones():
    c = cohort()
    strata = make_strata(c["labels"], c["sex"], c["age"], c["bmi"], min_count=10)
    assert len(np.unique(strata)) == 16  # 2 labels x 2 sexes x 2 age bins x 2 BMI bins
    labels = np.array([0] * 12 + [1] * 12)
    sex = np.array([1] * 11 + [2] + [1] * 12)
    merged = make_strata(labels, sex, min_count=3)
    assert merged[11] == "0" and set(merged[:11]) == {"0|1"}  # the lone woman falls back to her label
    with pytest.raises(ValueError, match="age"):
        make_strata(labels, age=np.r_[np.full(23, 50.0), np.nan])


def test_kfold_tests_every_subject_once_and_keeps_strata_balanced():
    c = cohort()
    strata = make_strata(c["labels"], c["sex"], c["age"], c["bmi"], min_count=10)
    fold = stratified_kfold(c["labels"], 10, strata=strata, seed=1)
    assert fold.shape == (400,) and set(fold) == set(range(10))
    sizes = np.bincount(fold)
    assert sizes.min() >= 38 and sizes.max() <= 42
    for k in range(10):
        share = c["labels"][fold == k].mean()
        assert abs(share - c["labels"].mean()) < 0.08
    np.testing.assert_array_equal(fold, stratified_kfold(c["labels"], 10, strata=strata, seed=1))
    assert not np.array_equal(fold, stratified_kfold(c["labels"], 10, strata=strata, seed=2))


def test_grouped_kfold_keeps_all_rows_of_a_subject_together():
    rng = np.random.default_rng(3)
    subjects = np.repeat(np.arange(60), 2)  # two knees per subject
    labels = rng.integers(0, 2, 120)
    fold = stratified_kfold(labels, 5, groups=subjects, seed=0)
    for s in range(60):
        assert len(set(fold[subjects == s])) == 1
    with pytest.raises(ValueError, match="subjects"):
        stratified_kfold(labels[:8], 5, groups=subjects[:8])


def test_train_val_test_split_is_70_15_15_disjoint_and_stratified():
    c = cohort(n=710)
    strata = make_strata(c["labels"], c["sex"], c["age"], c["bmi"], min_count=20)
    split = stratified_train_val_test_split(c["labels"], strata=strata, seed=0)
    parts = [split.train, split.val, split.test]
    assert sum(len(p) for p in parts) == 710
    assert len(np.unique(np.concatenate(parts))) == 710
    assert [round(len(p) / 710, 2) for p in parts] == pytest.approx([0.70, 0.15, 0.15], abs=0.02)
    for p in parts:
        assert abs(c["sex"][p].mean() - c["sex"].mean()) < 0.06
        assert abs(c["age"][p].mean() - c["age"].mean()) < 1.5
    assert set(split.part_of(710)) == {"train", "val", "test"}
    with pytest.raises(ValueError, match="fractions"):
        stratified_train_val_test_split(c["labels"], fractions=(0.5, 0.2, 0.2))
