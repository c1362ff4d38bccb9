"""Tests of kneelib.papers.siamese_pain (paper 000) on tiny seeded data."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from kneelib.papers import siamese_pain as study

torch.set_num_threads(1)


def test_paper_fisher_check_reproduces_the_mismatch():
    table = study.paper_fisher_check().set_index("model")
    assert table.loc["Model A", "recomputed p"] == pytest.approx(0.435, abs=0.002)
    assert table.loc["Model B", "recomputed p"] == pytest.approx(0.759, abs=0.002)
    assert table.loc["Model A", "printed p"] == 0.700


def test_center_slice_accuracy_counts_exact_and_near_hits():
    knees = pd.DataFrame({"detected_center": [10, 11, 14, -1], "true_center": [10, 10, 10, 10],
                          "n_slices_in_series": [21, 21, 21, 21]})
    table = study.center_slice_accuracy(knees).set_index("method")
    auto = table.loc["automatic PCL detection"]
    assert auto["n knees"] == 3  # the knee without a detection is not scored
    assert auto["exact %"] == pytest.approx(100 / 3)
    assert auto["within 1 %"] == pytest.approx(200 / 3)
    assert table.loc["middle slice of the stack", "exact %"] == pytest.approx(100.0)


def test_small_cohort_split_keeps_both_classes_in_every_part():
    labels = np.array([0] * 5 + [1] * 6)
    cohort = pd.DataFrame({"label": labels, "sex": 1, "age": 50.0, "bmi": 25.0})
    split = study.train_val_test_split(cohort, seed=0)
    parts = [split.train, split.val, split.test]
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(labels)))
    for part in parts:
        assert set(labels[part]) == {0, 1}


def _hits(model, lesions, correct, hit, area):
    return pd.DataFrame({"model": model, "participant_id": [f"9{i:06d}" for i in range(len(lesions))],
                         "lesion": lesions, "correct": correct, "hit": hit,
                         "lesion_area_fraction": area, "random_map_hit": [False] * len(lesions)})


def test_lesion_and_pointing_tables():
    hits = pd.concat([
        _hits("siamese", ["effusion_synovitis", "effusion_synovitis", "bml", "none"],
              [True, False, True, True], [True, True, True, False], [0.1, 0.2, 0.1, 0.0]),
        _hits("vgg16_cam", ["none"] * 4, [True] * 4, [False] * 4, [0.1, 0.2, 0.1, 0.0]),
    ])
    lesions = study.lesion_table(hits).set_index("lesion")
    assert lesions.loc["Effusion/Synovitis", "subjects"] == 2
    assert lesions.loc["Effusion/Synovitis", "pred. wrong"] == 1
    assert lesions.loc["Effusion/Synovitis", "paper subjects"] == 95
    assert lesions["percent"].sum() == pytest.approx(100.0)
    pointing = study.pointing_table(hits, n_boot=200).set_index("model")
    assert pointing.loc["siamese", "n scored"] == 3  # the slice without lesions is not scored
    assert pointing.loc["siamese", "pointing game"] == pytest.approx(1.0)
    assert pointing.loc["vgg16_cam", "pointing game"] == pytest.approx(0.0)
    assert pointing.loc["siamese", "chance (lesion area fraction)"] == pytest.approx(0.4 / 3)
    assert set(pointing["unit"]) == {"subjects"}


def test_pointing_table_resamples_subjects_and_refuses_a_subject_scored_twice():
    hits = _hits("siamese", ["bml"] * 6, [True] * 6, [True, False] * 3, [0.1] * 6)
    table = study.pointing_table(hits, n_boot=200)
    assert table.loc[0, "unit"] == "subjects"
    assert table.loc[0, "ci_low"] < 0.5 < table.loc[0, "ci_high"]
    hits.loc[1, "participant_id"] = hits.loc[0, "participant_id"]
    with pytest.raises(ValueError, match="more than once"):
        study.pointing_table(hits, n_boot=50)


def test_model_factory_builds_both_architectures():
    images = torch.zeros(2, 2, 3, 32, 32)
    for architecture in ("siamese", "vgg16_cam"):
        model = study.model_factory(3, (4, 8, 8, 16), architecture)()
        assert model(images).shape == (2, 2)
    with pytest.raises(ValueError, match="architecture"):
        study.model_factory(3, architecture="resnet")


def test_preprocess_smoke_cohort_is_cached_and_carries_lesions(tmp_path):
    from kneelib.synth.cohort import generate_cohort

    root = generate_cohort(preset="smoke", seed=3, n_subjects=24, progress=False)  # shared with the smoke chapter
    cohort = study.unilateral_pain_cohort(root)
    assert set(cohort["label"]) == {0, 1}
    assert (cohort["model_b"] == (cohort["womac_difference"] > 2 + 1e-6)).all()
    painful_kl = np.where(cohort["label"] == 1, cohort["kl_right"], cohort["kl_left"])
    assert np.array_equal(cohort["kl_painful_knee"], painful_kl)
    config = study.PreprocessConfig(image_size=24, n_each_side=1, step=2, center_slice="middle")
    first = study.preprocess_cohort(root, cohort.head(2), config, cache_dir=tmp_path, progress=False)
    assert first.images.shape == (2, 2, 3, 24, 24) and first.lesions.dtype == np.uint8
    assert len(list(tmp_path.rglob("*.npz"))) == 4 and not list(tmp_path.rglob("*.tmp*"))
    again = study.preprocess_cohort(root, cohort.head(2), config, cache_dir=tmp_path, progress=False)
    np.testing.assert_array_equal(first.images, again.images)
    np.testing.assert_array_equal(first.lesions, again.lesions)
    masks = first.lesion_masks(0, 0, 1)
    assert list(masks) == list(study.LESION_NAMES)
    with pytest.raises(ValueError, match="center_slice"):
        study.preprocess_cohort(root, cohort.head(1),
                                study.PreprocessConfig(image_size=24, n_each_side=1, center_slice="manual"),
                                cache_dir=tmp_path / "other", progress=False)


def test_preprocessing_in_worker_processes_and_on_a_local_cluster_equals_the_in_process_run(tmp_path):
    """Issue 15, part 3: the per-knee registration and crops are executor tasks; the result does not
    depend on who computes them (this process, joblib processes, dask workers)."""
    distributed = pytest.importorskip("distributed")
    from kneelib.synth.cohort import generate_cohort

    root = generate_cohort(preset="smoke", seed=3, n_subjects=24, progress=False)  # shared with the smoke chapter
    cohort = study.unilateral_pain_cohort(root).head(3)
    config = study.PreprocessConfig(image_size=24, n_each_side=1, step=2, center_slice="middle")
    here = study.preprocess_cohort(root, cohort, config, cache_dir=tmp_path / "here", progress=False, n_jobs=1)
    processes = study.preprocess_cohort(root, cohort, config, cache_dir=tmp_path / "processes", progress=False,
                                        n_jobs=2)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  silence_logs=40) as cluster:
        there = study.preprocess_cohort(root, cohort, config, cache_dir=tmp_path / "there", progress=False,
                                        scheduler=cluster)
    assert here.images.shape[0] == 3 and here.images.any()
    for other in (processes, there):
        np.testing.assert_array_equal(here.images, other.images)
        np.testing.assert_array_equal(here.lesions, other.lesions)
        pd.testing.assert_frame_equal(here.knees, other.knees)
        pd.testing.assert_frame_equal(here.exclusions, other.exclusions)
        pd.testing.assert_frame_equal(here.cohort, other.cohort)
    for folder in ("here", "processes", "there"):  # each computed its six knee entries itself, atomically
        assert len(list((tmp_path / folder).rglob("*.npz"))) == 6 and not list((tmp_path / folder).rglob("*.tmp*"))


def test_out_of_fold_hot_spots_explain_each_subject_once_with_the_model_that_did_not_see_it():
    from kneelib.train.siamese import TrainConfig

    rng = np.random.default_rng(0)
    n, size = 12, 16
    images = rng.normal(size=(n, 2, 3, size, size)).astype(np.float32)
    lesions = np.zeros((n, 2, 3, size, size), dtype=np.uint8)
    lesions[:, :, :, 4:8, 4:8] = 1  # effusion-synovitis (bit 0) on every slice of both knees
    cohort = pd.DataFrame({"participant_id": [f"90000{i:02d}" for i in range(n)], "label": np.arange(n) % 2,
                           "sex": 1 + np.arange(n) % 2, "age": 60.0, "bmi": 28.0,
                           "kl_painful_knee": np.arange(n) % 3})
    data = study.PreprocessedCohort(images, lesions, cohort, pd.DataFrame())
    config = TrainConfig(epochs=1, lr=0.05, batch_size=4, valid_fraction=0.0, seed=0)
    model = study.cross_validated_auc("Model A", data, np.arange(n), 2, config, (4, 8), seed=0,
                                      show_progress=False, keep_models=True)
    assert sorted(model.result.models) == [0, 1]
    assert model.auc.unit == "subjects"
    assert set(model.per_fold["unit"]) == {"subjects"} and set(model.subgroups["unit"]) == {"subjects"}
    hits = study.out_of_fold_hot_spots(data, model, seed=0)
    assert sorted(hits["participant_id"]) == sorted(cohort["participant_id"])
    assert hits["lesion_area_fraction"].to_numpy() == pytest.approx(16 / size**2)
    # the probability comes from the fold model that held the subject out: the CV's own prediction
    by_id = hits.set_index("participant_id")["probability_right"]
    np.testing.assert_allclose(by_id[model.cohort["participant_id"]].to_numpy(), model.result.probability,
                               rtol=1e-5)
    without = study.cross_validated_auc("Model A", data, np.arange(n), 2, config, (4, 8), seed=0,
                                        show_progress=False)
    with pytest.raises(ValueError, match="keep_models"):
        study.out_of_fold_hot_spots(data, without)


# ------------------------------------------------------------------------------------------
# issue 9, item 4: Model B keeps WOMAC differences strictly greater than 2 (float-safe)
# ------------------------------------------------------------------------------------------
def _knee_rows(participant, right_pain, left_pain, womac_right, womac_left, bmi=28.0):
    common = {"ID": participant, "VISIT": 0, "kl_grade": 1.0, "age_years": 61.0, "bmi_kg_m2": bmi, "sex": 2}
    return [{**common, "SIDE": 1, "frequent_pain": right_pain, "womac_pain": womac_right},
            {**common, "SIDE": 2, "frequent_pain": left_pain, "womac_pain": womac_left}]


def test_model_b_keeps_a_womac_difference_above_2_and_drops_2(monkeypatch):
    import kneelib.data

    rows = (_knee_rows("9000001", 1, 0, 4.5, 2.0)      # 2.5: kept (the old ">= 3" dropped it)
            + _knee_rows("9000002", 0, 1, 1.0, 3.0)    # 2.0: dropped
            + _knee_rows("9000003", 1, 0, 5.1, 3.1)    # 2.0 up to rounding (1.9999999999999996): dropped
            + _knee_rows("9000004", 1, 0, 3.0 + 2 + 1e-12, 3.0)  # 2 + rounding: dropped
            + _knee_rows("9000005", 0, 1, 0.0, 3.0)    # 3.0: kept
            + _knee_rows("9000006", 1, 1, 9.0, 0.0))   # bilateral: not in the cohort
    monkeypatch.setattr(kneelib.data, "knee_table", lambda root, variables, visits=(0,): pd.DataFrame(rows))
    cohort = study.unilateral_pain_cohort("unused").set_index("participant_id")
    assert list(cohort.index) == ["9000001", "9000002", "9000003", "9000004", "9000005"]
    assert cohort["model_b"].to_dict() == {"9000001": True, "9000002": False, "9000003": False,
                                           "9000004": False, "9000005": True}
    assert cohort.loc["9000001", "womac_difference"] == pytest.approx(2.5)
    stricter = study.unilateral_pain_cohort("unused", womac_difference_above=2.5)
    assert stricter.set_index("participant_id").loc["9000001", "model_b"] == False  # noqa: E712


def test_params_name_the_womac_threshold_for_what_it_is():
    import yaml

    from kneelib.config import repo_root

    for path in sorted((repo_root() / "params" / "siamese_pain").glob("*.yaml")):
        values = yaml.safe_load(path.read_text())
        assert "min_womac_difference" not in values, path
        assert values["womac_difference_above"] == 2, path


# ------------------------------------------------------------------------------------------
# issue 9, item 8: a missing covariate excludes the subject with a reason, never crashes CV
# ------------------------------------------------------------------------------------------
def test_exclude_missing_covariates_records_each_reason():
    cohort = pd.DataFrame({"participant_id": ["1", "2", "3", "4"], "label": [0, 1, 0, 1],
                           "age": [60.0, np.nan, 55.0, np.nan], "bmi": [np.nan, 25.0, 30.0, np.nan],
                           "sex": [1, 2, np.nan, 2]})
    kept, excluded = study.exclude_missing_covariates(cohort)
    assert kept["participant_id"].tolist() == []
    assert excluded.set_index("participant_id")["reason"].to_dict() == {
        "1": "missing BMI", "2": "missing age", "3": "missing sex", "4": "missing age, BMI"}
    assert set(excluded["step"]) == {"covariates"}
    from kneelib.data.errors import KneelibDataError

    with pytest.raises(KneelibDataError, match="bmi"):
        study.exclude_missing_covariates(cohort.drop(columns="bmi"))


def test_a_missing_bmi_excludes_the_subject_and_cross_validation_runs(tmp_path):
    from kneelib.synth.cohort import generate_cohort
    from kneelib.train.siamese import TrainConfig

    root = generate_cohort(preset="smoke", seed=3, n_subjects=24, progress=False)  # shared with the smoke chapter
    cohort = study.unilateral_pain_cohort(root)
    chosen = pd.concat([cohort[cohort["label"] == 0].head(4), cohort[cohort["label"] == 1].head(4)])
    chosen = chosen.sort_values("participant_id").reset_index(drop=True)
    missing_id = chosen["participant_id"].iloc[1]
    chosen.loc[1, "bmi"] = np.nan
    config = study.PreprocessConfig(image_size=16, n_each_side=1, step=2, center_slice="middle")
    data = study.preprocess_cohort(root, chosen, config, cache_dir=tmp_path, progress=False)
    row = data.exclusions.set_index("participant_id").loc[missing_id]
    assert (row["step"], row["reason"]) == ("covariates", "missing BMI")
    assert missing_id not in set(data.cohort["participant_id"])
    assert len(data.cohort) == len(chosen) - data.exclusions["participant_id"].nunique()
    train = TrainConfig(epochs=1, lr=0.05, batch_size=4, valid_fraction=0.0, seed=0)
    model = study.cross_validated_auc("Model A", data, np.arange(len(data.cohort)), 2, train, (4, 8), seed=0,
                                      show_progress=False)
    assert np.isfinite(model.result.probability).all()


# ------------------------------------------------------------------------------------------
# issue 9, item 16: no stratum smaller than the folds asked of it (no sklearn warnings)
# ------------------------------------------------------------------------------------------
def _random_cohort(n, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"participant_id": [f"9{i:06d}" for i in range(n)], "label": rng.integers(0, 2, n),
                         "sex": rng.integers(1, 3, n), "age": rng.normal(60, 9, n), "bmi": rng.normal(29, 5, n)})


@pytest.mark.parametrize("n_folds", [2, 5, 10])
def test_strata_for_folds_have_at_least_n_folds_subjects(n_folds):
    cohort = _random_cohort(53)
    from kneelib.train.siamese_cv import strata_for_folds

    strata = strata_for_folds(cohort, n_folds)
    _, counts = np.unique(strata, return_counts=True)
    assert counts.min() >= n_folds
    for value, label in zip(strata, cohort["label"]):
        assert value.split("|")[0] == str(label)  # a stratum never mixes sides


def test_splits_raise_no_stratification_warning():
    import warnings

    from kneelib.train.siamese import merge_small_strata
    from kneelib.train.splits import stratified_kfold

    cohort = _random_cohort(53)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        split = study.train_val_test_split(_random_cohort(90, seed=1), seed=0)
        from kneelib.train.siamese_cv import strata_for_folds

        strata = strata_for_folds(cohort, 10)
        fold = stratified_kfold(cohort["label"].to_numpy(), 10, strata=strata, seed=0)
        train = np.flatnonzero(fold != 0)  # the monitoring split inside a training fold
        labels = cohort["label"].to_numpy()
        stratified_kfold(labels[train], 10, strata=merge_small_strata(strata[train], labels[train], 10), seed=0)
    assert len(split.test) and len(np.unique(fold)) == 10
    with pytest.raises(ValueError, match="fewer than 10 folds"):
        merge_small_strata(np.array(["0", "1", "1"]), np.array([0, 1, 1]), 10)


# ------------------------------------------------------------------------------------------
# issue 9, item 17: published values come from book/published.yml only
# ------------------------------------------------------------------------------------------
def test_published_values_are_read_from_published_yml():
    import inspect

    from kneelib.report import published_values

    values = published_values("siamese_pain")
    assert values["auc"] == {"Model A": 0.808, "Model B": 0.853}
    assert values["subgroup_auc"]["Model B"]["KL grade of the painful knee = 0"] == 0.582
    assert values["lesions"]["effusion_synovitis"]["subjects"] == 95
    assert not [name for name in dir(study) if name.startswith("PAPER_")]
    assert "0.808" not in inspect.getsource(study)
    lesions = study.lesion_table(_hits("siamese", ["bml"], [True], [True], [0.1])).set_index("lesion")
    assert lesions.loc["Bone Marrow Lesion", "paper percent"] == pytest.approx(round(100 * 5 / 107, 1))


def test_knee_cache_key_follows_truth_content_not_mtime_or_place(tmp_path):
    """The preprocessing cache is content-addressed: a touched or moved truth file keeps its key."""
    import os
    import shutil

    from kneelib.preprocess.siamese_inputs import PreprocessConfig, _cache_key

    series = tmp_path / "series"
    series.mkdir()
    (series / "000001").write_bytes(b"not dicom")  # the series key reads the folder's files
    truth = tmp_path / "truth.npz"
    truth.write_bytes(b"labels-v1")
    key = _cache_key(series, [truth], PreprocessConfig(), "template")
    os.utime(truth, (1, 1))
    assert _cache_key(series, [truth], PreprocessConfig(), "template") == key
    moved = tmp_path / "elsewhere.npz"
    shutil.copy(truth, moved)
    assert _cache_key(series, [moved], PreprocessConfig(), "template") == key
    truth.write_bytes(b"labels-v2")
    os.utime(truth, (1, 1))
    assert _cache_key(series, [truth], PreprocessConfig(), "template") != key
