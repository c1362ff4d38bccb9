"""The renderer's development check (kneelib.train.realism_development): the cohort's films, real train crops only."""
from __future__ import annotations

import numpy as np
import pytest

from kneelib.train import realism_development as dev


@pytest.fixture(scope="module")
def smoke_cohort():
    from kneelib.synth.cohort import generate_cohort

    return generate_cohort("smoke", seed=0, n_workers=1, progress=False)


def test_development_films_are_the_films_the_cohort_writes(smoke_cohort):
    from kneelib.data.knee_radiographs import load_synthetic_knees, read_radiographs

    knees, films = dev.render_development_films(2, seed=0, preset="smoke", n_jobs=1)
    cohort = load_synthetic_knees(smoke_cohort)
    cohort = cohort[cohort["participant_id"].isin(set(knees["participant_id"]))]
    assert len(cohort) == len(knees) == 2 * 2 * 2          # 2 participants x 2 visits x 2 knees
    written = read_radiographs(cohort, progress=False)
    for row in knees.itertuples():
        match = cohort[(cohort["participant_id"] == row.participant_id) & (cohort["visit_month"] == row.visit_month)
                       & (cohort["side"] == row.side)].iloc[0]
        np.testing.assert_array_equal(films[row.path][0], written[match["path"]][0])
        assert films[row.path][1] == pytest.approx(written[match["path"]][1])
        for column in ("kl_grade", "jsn_medial", "jsn_lateral", "osteophyte_fm", "osteophyte_tl"):
            assert getattr(row, column) == match[column], column
        for column in ("joint_centre_row", "plateau_margin_medial_col"):
            assert getattr(row, column) == pytest.approx(match[column], abs=1e-3), column


def test_development_films_refuse_an_empty_cohort():
    with pytest.raises(ValueError, match="n_subjects"):
        dev.render_development_films(0)


@pytest.mark.realdata
def test_development_check_reads_only_real_train_crops(real_data_root, monkeypatch):
    from kneelib.train import realism

    knees, films = dev.render_development_films(8, seed=0, preset="smoke", n_jobs=1)
    crops = dev.development_crops(knees, films, image_size=40)
    splits = []
    original = realism.real_knee_crops

    def recording(root, split, *args, **kwargs):
        splits.append(split)
        return original(root, split, *args, **kwargs)

    monkeypatch.setattr(realism, "real_knee_crops", recording)
    from kneelib.train import grading

    trained = []
    original_train = grading.train_kl_model

    def counting(*args, **kwargs):
        trained.append(kwargs["transfer_schedule"])
        return original_train(*args, **kwargs)

    monkeypatch.setattr(grading, "train_kl_model", counting)
    with pytest.raises(ValueError, match="n_graders"):
        dev.development_check(real_data_root, crops=crops, n_graders=0)
    result = dev.development_check(real_data_root, seed=0, image_size=40, n_real_subjects=10, transfer_epochs=1,
                                   disc_epochs=1, n_boot=20, n_jobs=1, crops=crops, n_graders=2)
    assert splits == ["train"]
    assert trained == [realism.TRANSFER_SCHEDULE] * 2 and len(result["proxy_kappa_per_grader"]) == 2
    assert 0 <= result["discriminator_auc"] <= 1 and -1 <= result["proxy_kappa"] <= 1
    assert sum(result["proxy_predicted_counts"]) == sum(result["proxy_reference_counts"]) == result["n_real_proxy"]
    assert result["n_real_proxy"] > 0 and result["n_real_disc"] > 0
    assert result["n_synthetic_crops"] == 8 * 2 * 2


@pytest.mark.realdata
def test_real_grader_trains_once_on_real_train_crops_and_grades_synthetic_knees(real_data_root, monkeypatch, tmp_path):
    from kneelib.train import grading, realism

    splits, trained = [], []
    original_crops, original_train = realism.real_knee_crops, grading.train_kl_model

    def recording(root, split, *args, **kwargs):
        splits.append(split)
        return original_crops(root, split, *args, **kwargs)

    def counting(*args, **kwargs):
        trained.append(kwargs["transfer_schedule"])
        return original_train(*args, **kwargs)

    monkeypatch.setattr(realism, "real_knee_crops", recording)
    monkeypatch.setattr(grading, "train_kl_model", counting)
    settings = dict(image_size=40, max_epochs=1, n_crops=60, cache_dir=tmp_path, seed=0)
    first = dev.real_grader(real_data_root, **settings)
    again = dev.real_grader(real_data_root, **settings)
    assert splits == ["train", "train"]                      # val is never read
    assert trained == [realism.TRANSFER_SCHEDULE]              # the second call loads the cached weights
    assert again["path"] == first["path"] and first["path"].is_file()
    assert again["internal_kappa"] == first["internal_kappa"] and first["n_train_crops"] > 0
    other = dev.real_grader(real_data_root, **{**settings, "n_crops": 70})
    assert other["path"] != first["path"]                      # other crops, other key

    knees, films = dev.render_development_films(3, seed=0, preset="smoke", n_jobs=1)
    crops = dev.development_crops(knees, films, image_size=40)
    with pytest.raises(ValueError, match="n_graders"):
        dev.real_to_synthetic_check(real_data_root, crops=crops, n_graders=0)
    result = dev.real_to_synthetic_check(real_data_root, crops=crops, graders=[first], image_size=40, n_boot=20,
                                         seed=0)
    reloaded = dev.real_to_synthetic_check(real_data_root, crops=crops, graders=[again], image_size=40, n_boot=20,
                                           seed=0)
    assert result["kappa"] == reloaded["kappa"]                # the cached grader is the trained one
    assert result["kappa_per_grader"] == [result["kappa"]]     # one grader: its own kappa
    both = dev.real_to_synthetic_check(real_data_root, crops=crops, graders=[first, other], image_size=40,
                                       n_boot=20, seed=0)
    assert len(both["kappa_per_grader"]) == 2 and both["kappa_per_grader"][0] == result["kappa"]
    assert both["real_internal_kappa"] == pytest.approx((first["internal_kappa"] + other["internal_kappa"]) / 2)
    assert (result["confusion"].to_numpy() == reloaded["confusion"].to_numpy()).all()
    assert -1 <= result["kappa"] <= 1 and result["ci_low"] <= result["kappa"] <= result["ci_high"]
    assert result["n_crops"] == 3 * 2 * 2 == int(result["confusion"].to_numpy().sum())
    assert result["planted_counts"] == np.bincount(crops.targets[:, 0].astype(int), minlength=5).tolist()
    assert result["confusion"].sum(axis=1).tolist() == result["planted_counts"]
    assert result["confusion"].sum(axis=0).tolist() == result["predicted_counts"]
    np.testing.assert_allclose(result["mean_probabilities"].dropna().sum(axis=1), 1.0, atol=1e-5)
