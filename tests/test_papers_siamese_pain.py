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
    split = study._train_val_test_split(labels, labels.astype(str), seed=0)
    parts = [split.train, split.val, split.test]
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(labels)))
    for part in parts:
        assert set(labels[part]) == {0, 1}


def _hits(model, lesions, correct, hit, area):
    return pd.DataFrame({"model": model, "lesion": lesions, "correct": correct, "hit": hit,
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
    assert (cohort["model_b"] == (cohort["womac_difference"] >= 3)).all()
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
