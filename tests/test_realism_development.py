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
