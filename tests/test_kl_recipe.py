"""The CPU recipe of the real-radiograph KL grader (issue 14) on tiny seeded data.

Schedule, cross-validated training with held-out predictions, out-of-sample inference
choices (flip TTA, temperature, decoding), calibration and the out-of-distribution score.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from kneelib.stats.calibration import (apply_temperature, expected_calibration_error, fit_temperature,
                                       negative_log_likelihood, reliability_table)
from kneelib.stats.feature_density import FeatureDensity, fit_feature_density
from kneelib.train.grading import (KLFoldModels, KLRecipe, choose_kl_inference, ensemble_kl_probabilities,
                                   kl_subject_folds, train_kl_folds)
from kneelib.train.multitask import finetune_phases, predict_probabilities

torch.set_num_threads(1)
TINY = KLRecipe(backbone="resnet18", image_size=24, max_epochs=2, imagenet=False, batch_size=8)


def _graded_images(n=24, size=28, seed=0):
    """Crops whose brightness rises with the grade (learnable), two knees per subject."""
    rng = np.random.default_rng(seed)
    grades = np.tile(np.arange(5), n // 5 + 1)[:n]
    images = np.clip(rng.normal(40 + 40 * grades[:, None, None], 20, (n, size, size)), 0, 255).astype(np.uint8)
    subjects = np.array([f"90{i // 2:05d}" for i in range(n)])
    return images, grades, subjects


def test_finetune_schedule_is_heads_then_one_discriminative_cycle():
    phases = finetune_phases(8, head_epochs=1, head_lr=1e-2, lr=3e-3, lr_mult=3)
    assert [p.n_epochs for p in phases] == [1, 7]
    assert not phases[0].train_backbone and not phases[0].one_cycle
    assert phases[1].train_backbone and phases[1].one_cycle
    assert phases[1].backbone_lr == pytest.approx(1e-3) and phases[1].lr == pytest.approx(3e-3)
    assert [p.n_epochs for p in finetune_phases(1)] == [1]  # a single epoch trains only the heads
    with pytest.raises(ValueError, match="lr_mult"):
        finetune_phases(4, lr_mult=0.5)


def test_subject_folds_keep_both_knees_of_a_participant_together():
    _, grades, subjects = _graded_images(n=40)
    folds = kl_subject_folds(grades, subjects, 3, seed=1)
    assert set(folds) == {0, 1, 2}
    assert (pd.Series(folds).groupby(subjects).nunique() == 1).all()


def test_fold_training_predicts_only_held_out_rows_and_repeats_exactly():
    images, grades, subjects = _graded_images()
    folds = np.where(np.arange(len(grades)) < 8, 0, -1)  # a single internal split
    first = train_kl_folds(images, grades, folds, TINY, seed=3)
    assert len(first.models) == 1 and set(first.history["fold"]) == {0}
    assert len(first.history) == TINY.max_epochs
    assert np.isfinite(first.held_out[:8]).all() and np.isnan(first.held_out[8:]).all()
    assert np.allclose(first.held_out[:8].sum(axis=1), 1, atol=1e-5)
    assert set(first.held_out_tta) == {"plain", "flip TTA", "rotation TTA", "rotation+zoom TTA"}
    for option, p in first.held_out_tta.items():
        assert np.allclose(p[:8].sum(axis=1), 1, atol=1e-5) and np.isnan(p[8:]).all(), option
        assert np.allclose(ensemble_kl_probabilities(first.models, images[:8], TINY.image_size, tta=option),
                           p[:8], atol=1e-6), option
    assert first.held_out_tta["plain"] is first.held_out
    assert not np.allclose(first.held_out_tta["rotation TTA"][:8], first.held_out[:8], atol=1e-6)
    again = train_kl_folds(images, grades, folds, TINY, seed=3)
    assert np.allclose(first.held_out[:8], again.held_out[:8], atol=1e-6)
    ensemble = ensemble_kl_probabilities(first.models, images[:8], TINY.image_size)
    assert np.allclose(ensemble, first.held_out[:8], atol=1e-6)
    with pytest.raises(ValueError, match="no held-out fold"):
        train_kl_folds(images, grades, np.full(len(grades), -1), TINY)


def test_fold_checkpoints_resume_an_interrupted_ensemble_with_the_same_models(tmp_path):
    images, grades, subjects = _graded_images(n=30)
    folds = kl_subject_folds(grades, subjects, 2, seed=0)
    whole = train_kl_folds(images, grades, folds, TINY, seed=1)
    first = train_kl_folds(images, grades, folds, TINY, seed=1, checkpoint_dir=tmp_path)
    saved = sorted(tmp_path.glob("fold*.pt"))
    assert [p.name[:5] for p in saved] == ["fold0", "fold1"] and not list(tmp_path.glob("*.partial"))
    saved[1].unlink()  # "interrupted" after the first fold
    resumed = train_kl_folds(images, grades, folds, TINY, seed=1, checkpoint_dir=tmp_path)
    for run in (first, resumed):
        assert np.array_equal(np.isnan(run.held_out), np.isnan(whole.held_out))
        assert np.allclose(run.held_out[run.held_out_rows], whole.held_out[whole.held_out_rows], atol=1e-6)
        for a, b in zip(run.models, whole.models):
            assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert resumed.seconds == pytest.approx(first.seconds, rel=0.9)  # the loaded fold keeps its training time
    # a checkpoint written with fewer TTA options gains the missing ones from its weights, once
    partial = train_kl_folds(images, grades, folds, TINY, seed=1, checkpoint_dir=tmp_path / "p",
                             tta_options=["flip TTA"])
    assert set(partial.held_out_tta) == {"plain", "flip TTA"}
    completed = train_kl_folds(images, grades, folds, TINY, seed=1, checkpoint_dir=tmp_path / "p")
    for option, p in whole.held_out_tta.items():
        assert np.allclose(completed.held_out_tta[option][whole.held_out_rows], p[whole.held_out_rows],
                           atol=1e-6), option
    saved_again = torch.load(sorted((tmp_path / "p").glob("fold*.pt"))[0], weights_only=False)
    assert set(saved_again["held_out_tta"]) == set(whole.held_out_tta)
    changed = train_kl_folds(255 - images, grades, folds, TINY, seed=1, checkpoint_dir=tmp_path)
    assert len(list(tmp_path.glob("fold*.pt"))) == 4  # other data, other keys: nothing reused
    assert not np.allclose(changed.held_out[changed.held_out_rows], whole.held_out[whole.held_out_rows])


def test_flip_tta_averages_an_image_and_its_mirror():
    torch.manual_seed(0)
    from kneelib.models.multitask import KL_ONLY, MultiTaskNet

    model = MultiTaskNet("resnet18", tasks=KL_ONLY).eval()
    images, _, _ = _graded_images(n=4)
    mirrored = np.ascontiguousarray(images[:, :, ::-1])
    plain = predict_probabilities(model, images, 24)["kl"]
    flipped = predict_probabilities(model, mirrored, 24)["kl"]
    tta = predict_probabilities(model, images, 24, tta_flip=True)["kl"]
    assert np.allclose(tta, (plain + flipped) / 2, atol=1e-5)
    assert not np.allclose(plain, flipped, atol=1e-4)  # the untrained net is not mirror-symmetric


def test_rotation_views_rotate_the_prepared_image_before_the_central_crop():
    from kneelib.models.multitask import KL_ONLY, MultiTaskNet
    from kneelib.train.multitask import TTA_OPTIONS, View, predict_view_probabilities, rotate_zoom

    torch.manual_seed(0)
    model = MultiTaskNet("resnet18", tasks=KL_ONLY).eval()
    images, _, _ = _graded_images(n=4)
    rotated = np.stack([(rotate_zoom(torch.from_numpy(im.astype(np.float32) / 255), 5.0, 1.05).numpy() * 255)
                        for im in images]).astype(np.float32) / 255
    direct = predict_probabilities(model, rotated, 24)["kl"]
    view = predict_probabilities(model, images, 24, views=[View(5.0, 1.05)])["kl"]
    assert np.allclose(view, direct, atol=1e-5)
    per_view = predict_view_probabilities(model, images, 24, TTA_OPTIONS["rotation+zoom TTA"])
    option = predict_probabilities(model, images, 24, views=TTA_OPTIONS["rotation+zoom TTA"])["kl"]
    assert np.allclose(option, np.mean([p["kl"] for p in per_view], axis=0), atol=1e-6)
    assert not np.allclose(per_view[0]["kl"], per_view[1]["kl"], atol=1e-4)  # the views differ
    assert np.array_equal(predict_probabilities(model, images, 24, tta_flip=True)["kl"],
                          predict_probabilities(model, images, 24, views=TTA_OPTIONS["flip TTA"])["kl"])
    with pytest.raises(ValueError, match="unknown test-time augmentation"):
        ensemble_kl_probabilities([model], images, 24, tta="mystery TTA")


def _fold_models(p_plain, p_flip, folds, **more_options):
    held_out_tta = {"plain": np.asarray(p_plain), "flip TTA": np.asarray(p_flip), **more_options}
    return KLFoldModels([], np.asarray(folds), held_out_tta, pd.DataFrame(), 0.0)


def test_inference_choices_follow_the_held_out_evidence():
    rng = np.random.default_rng(0)
    n = 300
    y = rng.integers(0, 5, n)
    subjects = np.array([str(i // 2) for i in range(n)])
    logits = 4.0 * np.eye(5)[y] + rng.normal(0, 2.0, (n, 5))
    confident = np.exp(3 * logits)  # overconfident: temperature > 1 should help
    confident /= confident.sum(axis=1, keepdims=True)
    noisy = np.full((n, 5), 0.2)  # flip TTA that destroys the signal must not be chosen
    folds = kl_subject_folds(y, subjects, 3)
    choices = choose_kl_inference(_fold_models(confident, noisy, folds), y, subjects)
    assert choices.tta == "plain"
    assert choices.temperature > 1.5
    table = choices.table
    assert set(table["choice"]) == {"test-time augmentation", "temperature scaling", "decoding"}
    assert table.groupby("choice")["chosen"].sum().eq(1).all()
    better_flip = _fold_models(noisy, confident, folds)
    assert choose_kl_inference(better_flip, y, subjects).tta == "flip TTA"
    # the option with the highest held-out kappa wins; a tie keeps the one with fewer views
    sharper = np.exp(5 * logits)
    sharper /= sharper.sum(axis=1, keepdims=True)
    better_rotation = {"rotation TTA": 0.5 * (confident + np.eye(5)[y])}
    assert choose_kl_inference(_fold_models(confident, noisy, folds, **better_rotation), y, subjects).tta == "rotation TTA"
    tied = choose_kl_inference(_fold_models(confident, noisy, folds, **{"rotation+zoom TTA": sharper}), y, subjects)
    assert tied.tta == "plain" and tied.table.query("chosen")["option"].iloc[0] == "plain"


def test_temperature_recovers_a_known_temperature_and_lowers_the_error():
    rng = np.random.default_rng(1)
    n = 4000
    logits = rng.normal(0, 1.5, (n, 5))
    calibrated = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y = np.array([rng.choice(5, p=p) for p in calibrated])
    sharpened = apply_temperature(calibrated, 0.5)
    assert fit_temperature(sharpened, y) == pytest.approx(2.0, rel=0.1)
    assert expected_calibration_error(calibrated, y) < 0.03
    assert expected_calibration_error(sharpened, y) > expected_calibration_error(calibrated, y) + 0.05
    assert negative_log_likelihood(apply_temperature(sharpened, 2.0), y) < negative_log_likelihood(sharpened, y)
    assert np.array_equal(apply_temperature(sharpened, 3.0).argmax(1), sharpened.argmax(1))
    table = reliability_table(calibrated, y, n_bins=10)
    assert table["n"].sum() == n and (table["confidence"].between(table["bin_low"], table["bin_high"])).all()
    with pytest.raises(ValueError, match="temperature"):
        apply_temperature(calibrated, 0)


def test_feature_density_flags_far_away_features_only():
    rng = np.random.default_rng(2)
    reference = rng.normal(0, 1, (400, 20)) @ rng.normal(0, 1, (20, 20))
    held_out = rng.normal(0, 1, (200, 20)) @ rng.normal(0, 1, (20, 20)) * 0 + reference[:200] + rng.normal(0, .1, (200, 20))
    density = fit_feature_density(reference, n_components=5).with_threshold(held_out, 0.99)
    assert density.flag(held_out).mean() <= 0.02
    far = reference[:50] + 30 * rng.normal(0, 1, (50, 20))
    assert density.flag(far).all()
    restored = FeatureDensity.from_dict(density.to_dict())
    assert np.allclose(restored.score(far), density.score(far)) and restored.threshold == density.threshold
    with pytest.raises(ValueError, match="features must be"):
        density.score(far[:, :3])


def test_chapter_folds_single_model_or_subject_level_cv():
    from kneelib.data.chen_kl import KLCohort
    from kneelib.papers import kl_real_radiographs as study

    rng = np.random.default_rng(4)
    table = pd.DataFrame({"subject_id": [f"{9000000 + i // 2}" for i in range(60)], "side": ["L", "R"] * 30,
                          "kl_grade": rng.integers(0, 5, 60)})
    table.attrs["qc"] = pd.DataFrame()
    cohort = KLCohort(table.iloc[:48], table.iloc[48:], table.iloc[:0], pd.DataFrame())
    knees, folds = study.chapter_folds(cohort, 1)
    assert list(folds) == [-1] * 48 + [0] * 12 and len(knees) == 60
    knees, folds = study.chapter_folds(cohort, 3)
    assert set(folds) == {0, 1, 2} and (pd.Series(folds).groupby(knees["subject_id"]).nunique() == 1).all()
    with pytest.raises(ValueError, match="n_folds"):
        study.chapter_folds(cohort, 0)
    params = study.parameter_set("smoke")
    assert study.recipe_from_params(params).image_size == params["image_size"]
    assert "one model" in study.describe_params(params) and "No `paper` grader" in study.paper_summary(None)
    assert study.recipe_from_params(params).augmentation().geometric is False
    paper = study.parameter_set("paper")
    augmentation = study.recipe_from_params(paper).augmentation()
    assert augmentation.rotation_deg == paper["rotation_deg"] > 0
    assert augmentation.scale_range == (paper["scale_low"], paper["scale_high"])
    assert f"rotation up to {paper['rotation_deg']:g} degrees" in study.describe_params(paper)
    described = study.describe_inference("rotation+zoom TTA", 1.3, (0.9005, 1.7649, 2.207, 3.0054))
    assert described == ("test-time augmentation: rotation+zoom TTA; temperature 1.30; "
                         "decoding: cut-points 0.90 / 1.76 / 2.21 / 3.01 on the expected grade")
    assert study.describe_inference("plain", 1.0, None).endswith("decoding: arg-max")


def test_frozen_prefix_keeps_the_stem_and_first_blocks_unchanged():
    from dataclasses import replace

    from kneelib.models.multitask import KL_ONLY, build_multitask_model
    from kneelib.train.multitask import backbone_prefix

    images, grades, _ = _graded_images(n=20, size=36)
    recipe = replace(TINY, backbone="efficientnet_lite0", image_size=32, frozen_blocks=2)
    torch.manual_seed(0)
    reference = build_multitask_model("efficientnet_lite0", KL_ONLY, imagenet=False)
    folds = np.where(np.arange(len(grades)) < 5, 0, -1)
    trained = train_kl_folds(images, grades, folds, recipe, seed=0).models[0]
    # same seed -> same initial weights: compare the frozen stem and an unfrozen late block
    from kneelib.train.grading import set_determinism

    set_determinism(0)
    initial = build_multitask_model("efficientnet_lite0", KL_ONLY, imagenet=False)
    assert torch.equal(initial.backbone.conv_stem.weight, trained.backbone.conv_stem.weight)
    assert torch.equal(initial.backbone.bn1.running_mean, trained.backbone.bn1.running_mean)
    assert not torch.equal(initial.backbone.blocks[-1][0].conv_pw.weight, trained.backbone.blocks[-1][0].conv_pw.weight)
    assert len(backbone_prefix(reference, 3)) == 5
    with pytest.raises(ValueError, match="n_blocks"):
        backbone_prefix(reference, 99)


def test_layered_density_flags_an_image_unlike_the_training_images_at_any_stage():
    from kneelib.stats.feature_density import LayeredDensity, density_from_dict, fit_layered_density

    rng = np.random.default_rng(0)
    reference = {"early": rng.normal(0, 1, (300, 6)), "pooled": rng.normal(0, 1, (300, 10))}
    held_out = {"early": rng.normal(0, 1, (200, 6)), "pooled": rng.normal(0, 1, (200, 10))}
    density = fit_layered_density(reference, held_out, quantile=0.99, n_components=4)
    assert np.mean(density.flag(held_out)) <= 0.02
    odd_early = {"early": np.full((1, 6), 8.0), "pooled": np.zeros((1, 10))}  # only the early stage is off
    assert density.flag(odd_early)[0] and density.stage_scores(odd_early)[0, 1] < 1
    restored = density_from_dict(density.to_dict())
    assert isinstance(restored, LayeredDensity) and restored.names == ("early", "pooled")
    assert np.allclose(restored.score(odd_early), density.score(odd_early))
    with pytest.raises(ValueError, match="stages"):
        density.score({"early": np.zeros((1, 6))})


def test_layer_features_hold_every_stage_and_the_pooled_features():
    from kneelib.models.multitask import KL_ONLY, MultiTaskNet
    from kneelib.train.multitask import layer_features, pooled_features

    torch.manual_seed(0)
    model = MultiTaskNet("resnet18", tasks=KL_ONLY)
    images, _, _ = _graded_images(n=5, size=36)
    features = layer_features(model, images, 32)
    stages = [info["module"] for info in model.backbone.feature_info]
    assert list(features) == [*stages, "pooled"]
    for info in model.backbone.feature_info:
        assert features[info["module"]].shape == (5, 2 * info["num_chs"])
    assert np.allclose(features["pooled"], pooled_features(model, images, 32), atol=1e-5)
    assert not any(m._forward_hooks for m in model.modules())  # hooks removed


def test_development_rows_record_out_of_fold_agreement_and_replace_older_rows(tmp_path, monkeypatch):
    from kneelib.papers import kl_real_radiographs as study

    rng = np.random.default_rng(2)
    grades = np.repeat(np.arange(5), 12)
    folds = np.tile(np.arange(3), 20)
    perfect = np.eye(5)[grades] * 0.9 + 0.02
    noisy = rng.dirichlet(np.ones(5), len(grades))
    result = KLFoldModels([None] * 3, folds, {"plain": perfect, "flip TTA": noisy}, pd.DataFrame(), 12.0)
    recipe = KLRecipe(rotation_deg=10.0, scale_range=(0.9, 1.1))
    rows = study.development_rows("candidate", recipe, result, grades, "L")
    assert [r["inference"] for r in rows] == ["plain", "flip TTA"]
    assert rows[0]["kappa"] == pytest.approx(1.0) and rows[1]["kappa"] < 0.5
    assert rows[0]["n_folds"] == 3 and rows[0]["rotation_deg"] == 10.0 and rows[0]["scale_high"] == 1.1
    out = tmp_path / "development_cv.csv"
    pd.DataFrame([{"recipe": "older", "inference": "plain", "kappa": 0.3}]).to_csv(out, index=False)
    study.append_development_rows(rows, out)
    table = study.append_development_rows(rows, out)
    assert list(table["recipe"]) == ["older", "candidate", "candidate"]
    monkeypatch.setattr(study, "DEVELOPMENT_CV", out)
    shown = study.development_cv().set_index("recipe")
    assert shown.loc["older", "rotation_deg"] == 0.0 and shown.loc["older", "scale_low"] == 1.0


def test_development_summary_is_one_row_per_recipe_and_inference_with_minutes():
    from kneelib.papers import kl_real_radiographs as study

    table = pd.DataFrame({"recipe": ["a", "a"], "inference": ["plain", "flip TTA"], "kappa": [0.7, 0.6],
                          "kappa_cutpoints": [0.75, 0.7], "balanced_accuracy": [0.5, 0.4], "mae": [0.6, 0.7],
                          "ece": [0.1, 0.05], "n_knees": [100, 100], "train_seconds": [120.0, 120.0]})
    summary = study.development_summary(table)
    assert list(summary.index) == [("a", "plain"), ("a", "flip TTA")]
    assert summary.loc[("a", "plain"), "training (min)"] == 2.0 and summary.loc[("a", "flip TTA"), "kappa"] == 0.6
    assert len(study.development_summary()) == len(study.development_cv())
