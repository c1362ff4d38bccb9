"""Paper 004's synthetic chapter (kneelib.papers.oarsi_grading) and its stage modules on tiny seeded arrays."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import numpy as np
import pandas as pd
import pytest
import torch

from kneelib.papers import oarsi_grading as study
from kneelib.preprocess import knee_crops
from kneelib.train import grading, grading_evaluation

torch.set_num_threads(1)
TASKS = list(study.TASK_LABELS)
N_GRADES = (5, 4, 4, 4, 4, 4, 4)
REPO = Path(__file__).resolve().parents[1]


def _prepared(n=16, size=40, seed=0):
    rng = np.random.default_rng(seed)
    targets = np.column_stack([rng.integers(0, g, n) for g in N_GRADES])
    targets[0, 1] = -1                                       # one missing grade
    knees = pd.DataFrame({"participant_id": [str(i // 2) for i in range(n)], "kl_grade": targets[:, 0],
                          "visit_month": [0, 12] * (n // 2), "side": ["R", "L"] * (n // 2)})
    images = rng.integers(0, 255, (n, size, size)).astype(np.uint8)
    masks = {t: np.zeros((n, size, size), bool) for t in TASKS if t.startswith("osteophyte")}
    return knee_crops.PreparedKnees(images, targets, knees, masks)


def _perfect_probabilities(targets):
    probabilities = {}
    for index, (task, n) in enumerate(zip(TASKS, N_GRADES)):
        p = np.full((len(targets), n), 0.01)
        p[np.arange(len(targets)), np.clip(targets[:, index], 0, None)] = 1.0
        probabilities[task] = p / p.sum(axis=1, keepdims=True)
    return probabilities


def test_osteophyte_boxes_sit_above_and_below_the_margins():
    masks = knee_crops.osteophyte_region_masks({"lateral": (50.0, 20.0), "medial": (50.0, 80.0)}, out_size=100,
                                          size_mm=100.0, reach_mm=10.0, half_width_mm=5.0)
    assert set(masks) == {"osteophyte_fl", "osteophyte_fm", "osteophyte_tl", "osteophyte_tm"}
    rows, cols = np.nonzero(masks["osteophyte_fl"])
    assert rows.min() == 40 and rows.max() == 52 and cols.min() == 15 and cols.max() == 25
    rows, cols = np.nonzero(masks["osteophyte_tm"])
    assert rows.min() == 48 and rows.max() == 60 and cols.min() == 75
    assert not (masks["osteophyte_fl"] & masks["osteophyte_fm"]).any()


def test_table3_is_perfect_for_perfect_predictions_and_skips_missing_grades():
    prepared = _prepared()
    table = grading_evaluation.table3(prepared, _perfect_probabilities(prepared.targets), n_boot=20, seed=0)
    assert set(table["task"]) == set(TASKS)
    kappa = table[table["metric"] == "quadratic_kappa"].set_index("task")["estimate"]
    assert np.allclose(kappa, 1.0)
    assert table.loc[table["task"] == "osteophyte_fl", "n"].iloc[0] == len(prepared.targets) - 1
    mse = table[table["metric"] == "mse"]["estimate"]
    assert np.allclose(mse, 0.0)
    wide = grading_evaluation.wide_table(table.assign(model="perfect"), "quadratic_kappa")
    assert list(wide.columns) == list(study.TASK_LABELS.values())
    assert wide.loc["perfect", "KL"].startswith("1.00")


def test_binary_curves_report_auc_one_for_separating_scores():
    prepared = _prepared(n=40, seed=3)
    table, curves = grading_evaluation.binary_curves(prepared, _perfect_probabilities(prepared.targets), n_boot=20)
    assert set(table["curve"]) == {"KL >= 2", "osteophyte >= 1", "JSN >= 1"}
    assert np.allclose(table["auc"].dropna(), 1.0) and np.allclose(table["average_precision"].dropna(), 1.0)
    assert set(table["unit"]) == {"subjects"}                # two knee images per subject: subject bootstrap
    plt.close(study.plot_binary_curves(curves))


def test_cross_validation_gives_out_of_fold_probabilities_and_ensemble_averages_snapshots():
    prepared = _prepared(n=12, size=36)
    folds = np.repeat([0, 1], 6)
    run = grading.cross_validate_backbone(prepared, folds, "resnet18", "scratch", False, image_size=32,
                                          max_epochs=1, batch_size=6, seed=0)
    assert len(run.snapshots) == 2 and set(run.history["fold"]) == {0, 1}
    for task, n in zip(TASKS, N_GRADES):
        assert run.oof[task].shape == (12, n) and np.allclose(run.oof[task].sum(axis=1), 1.0, atol=1e-5)
    long = grading_evaluation.table2(prepared, [run], n_boot=10)
    assert set(long["metric"]) == {"quadratic_kappa", "balanced_accuracy"}
    assert grading.best_runs(long, [run], n_best=2) == [run]
    averaged = grading.ensemble_probabilities([run], prepared.images[:3], 32)
    assert averaged["kl"].shape == (3, 5) and np.allclose(averaged["kl"].sum(axis=1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="schedule"):
        grading.cross_validate_backbone(prepared, folds, "resnet18", "cosine", False, image_size=32, max_epochs=1)


def test_pointing_game_hits_only_when_the_box_holds_the_hot_spot():
    """Half the knees get a box around the map's hot spot, half a box that excludes its whole cell."""
    from kneelib.explain.gradcam import grad_cam
    from kneelib.explain.pointing import hot_spot
    from kneelib.models.multitask import build_multitask_model
    from kneelib.train.multitask import RadiographDataset

    image_size, size = 64, 70
    top = (size - image_size) // 2
    prepared = _prepared(n=6, size=size, seed=4)
    prepared.targets[:, 1] = 2                               # every knee has an FL osteophyte
    torch.manual_seed(0)
    model = build_multitask_model("resnet18", imagenet=False).eval()
    dataset = RadiographDataset(prepared.images, prepared.targets, image_size, augment=False)
    cams, _ = grad_cam(model, torch.stack([dataset.image_tensor(i) for i in range(6)]), "osteophyte_fl")
    assert cams.shape[1:] == (2, 2) and np.ptp(cams.reshape(6, -1), axis=1).min() > 0
    cell = image_size // cams.shape[1]
    masks = prepared.masks["osteophyte_fl"]
    for k in range(6):
        row, col = hot_spot(cams[k], (image_size, image_size))
        if k < 3:                                            # a 3 x 3 box on the hot spot: a hit
            masks[k, top + row - 1:top + row + 2, top + col - 1:top + col + 2] = True
        else:                                                # everything but the hottest cell: a miss
            cell_row, cell_col = np.unravel_index(np.argmax(cams[k]), cams.shape[1:])
            masks[k, top:top + image_size, top:top + image_size] = True
            masks[k, top + cell_row * cell:top + (cell_row + 1) * cell,
                  top + cell_col * cell:top + (cell_col + 1) * cell] = False
            assert not masks[k, top + row, top + col]
    table, examples = grading_evaluation.pointing_game_table(model, prepared, image_size=image_size)
    row = table.set_index("head").loc["FO L"]
    assert row["knees"] == 6 and row["hits"] == 3 and row["pointing_accuracy"] == 0.5
    assert row["cell_pointing_accuracy"] == 0.5 and row["map_cells"] == "2x2"
    cropped = masks[:, top:top + image_size, top:top + image_size]
    assert row["chance"] == pytest.approx(cropped.mean())
    assert [t.endswith("(hit)") for t in examples["osteophyte_fl"][3]] == [True, True, True, False]
    plt.close(study.plot_pointing_examples(examples))


def test_comparisons_carry_the_paper_numbers():
    prepared = _prepared()
    table = grading_evaluation.table3(prepared, _perfect_probabilities(prepared.targets), n_boot=10)
    cv = table[table["metric"].isin(["quadratic_kappa", "balanced_accuracy"])].assign(model="m")
    rows = study.synthetic_comparisons(cv, table, "ensemble", "cv data", "test data", first_visit=table)
    kl_test = [r for r in rows if r.quantity == "KL quadratic kappa (test)"][0]
    published = study.published()
    assert kl_test.published == published["table3"]["metrics"]["kl"]["quadratic_kappa"]
    assert kl_test.reproduced == pytest.approx(1.0)
    assert any(r.source == "Table 2" for r in rows) and any("first visit" in r.quantity for r in rows)
    # every published value of Table 3 and of the first-visit analysis has a reproduced row
    n_table3 = sum(len(metrics) for metrics in published["table3"]["metrics"].values())
    assert sum(r.source == "Table 3" for r in rows) == n_table3
    assert sum("first visit" in r.quantity for r in rows) == len(published["first_visit"]["kappa"])


def test_papers_module_defines_no_published_constants():
    source = (REPO / "kneelib" / "papers" / "oarsi_grading.py").read_text()
    assert "PUBLISHED_" not in source and "0.82" not in source


def test_each_head_is_scored_on_its_own_grade_scale_and_resamples_subjects():
    """KL on 0-4, OARSI features on 0-3: an OARSI grade of 4 is refused, not silently added to the scale."""
    from kneelib.stats.agreement import quadratic_kappa

    prepared = _prepared(n=12, seed=5)
    prepared.targets[:, 1] = [0, 1, 3] * 4                   # grade 2 never occurs
    predicted = prepared.targets.copy()
    predicted[:2, 1] = [3, 3]                                # a 0 -> 3 and a 1 -> 3 disagreement
    table = grading_evaluation.table3(prepared, _perfect_probabilities(predicted), n_boot=10)
    kappa = table[(table["task"] == "osteophyte_fl") & (table["metric"] == "quadratic_kappa")].iloc[0]
    assert kappa["estimate"] == pytest.approx(quadratic_kappa(prepared.targets[:, 1], predicted[:, 1], range(4)))
    assert set(table["unit"]) == {"subjects"}
    prepared.targets[0, 1] = 4                               # not an OARSI grade
    probabilities = _perfect_probabilities(predicted)
    probabilities["osteophyte_fl"] = np.pad(probabilities["osteophyte_fl"], ((0, 0), (0, 1)))
    with pytest.raises(ValueError, match="scale"):
        grading_evaluation.table3(prepared, probabilities, n_boot=10)


def test_subject_folds_merge_rare_grades_without_warnings(recwarn):
    knees = pd.DataFrame({"participant_id": [str(i // 2) for i in range(20)],
                          "kl_grade": [0] * 10 + [1] * 6 + [2] * 2 + [4] * 2})   # grades 2 and 4: one subject each
    folds = grading.subject_folds(knees, n_folds=3, seed=0)
    assert not [w for w in recwarn if "least populated" in str(w.message)]
    assert set(folds) == {0, 1, 2}
    assert (knees.assign(fold=folds).groupby("participant_id")["fold"].nunique() == 1).all()


def test_no_graded_knee_is_cropped_by_a_localiser_trained_on_its_subject():
    """Issue item 5: one localiser, trained on subjects outside the CV and test sets, crops them all."""
    from test_preprocess_knee_localisation import _blob_knees

    knees, radiographs = _blob_knees(10, seed=0)
    test_knees, test_radiographs = _blob_knees(3, seed=1, prefix="T")
    localised = study.localise_and_crop(knees, test_knees, {**radiographs, **test_radiographs}, image_size=32,
                                        localisation_fraction=0.2, localiser_epochs=1, progress=False)
    trained_on = localised.localiser.trained_on
    assert trained_on == set(localised.localisation_knees["participant_id"]) and len(trained_on) == 2
    for part in (localised.grading, localised.test):
        assert not trained_on & set(part.knees["participant_id"])
    assert len(localised.localisation_knees) + len(localised.grading.knees) == len(knees)
    assert not trained_on & set(localised.errors["participant_id"])
    assert set(localised.errors["evaluated_on"]) == {"training cohort, cross-validation subjects",
                                                     "independent cohort"}


def test_tables_and_curves_warn_about_nothing_on_small_samples():
    """Bootstrap resamples with one grade or one class are ordinary, not warnings on the page (item 16)."""
    import warnings

    prepared = _prepared(n=8, seed=6)
    prepared.targets[:, 0] = [0, 0, 0, 0, 0, 0, 2, 3]       # KL >= 2: few positives, one-class resamples
    prepared.targets[:, 1] = 0                               # FO L: one reference grade ...
    predicted = prepared.targets.copy()
    predicted[4:, 1] = 1                                     # ... and predictions of another
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        grading_evaluation.table3(prepared, _perfect_probabilities(predicted), n_boot=30)
        grading_evaluation.binary_curves(prepared, _perfect_probabilities(predicted), n_boot=30)


def test_best_runs_keep_only_backbones_close_to_the_best_out_of_fold_kappa():
    from types import SimpleNamespace

    def long(kappas):
        return pd.DataFrame([{"model": m, "task": t, "metric": "quadratic_kappa", "estimate": k}
                             for m, k in kappas.items() for t in ("kl", "jsn_medial")])

    good, weak, failed = (SimpleNamespace(name=n) for n in ("good", "weak", "failed"))
    runs = [failed, weak, good]
    assert grading.best_runs(long({"good": 0.70, "weak": 0.65, "failed": 0.05}), runs) == [good, weak]
    assert grading.best_runs(long({"good": 0.70, "failed": 0.05}), runs) == [good]
    assert grading.best_runs(long({"good": 0.70, "failed": 0.05}), runs, max_kappa_gap=1.0) == [good, failed]
    with pytest.raises(ValueError, match="max_kappa_gap"):
        grading.best_runs(long({"good": 0.7}), runs, max_kappa_gap=-0.1)
