"""Synthetic-chapter functions of kneelib.papers.oarsi_grading (paper 004) on tiny seeded arrays."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
import torch

from kneelib.papers import oarsi_grading as study

torch.set_num_threads(1)
TASKS = list(study.TASK_LABELS)
N_GRADES = (5, 4, 4, 4, 4, 4, 4)


def _prepared(n=16, size=40, seed=0):
    rng = np.random.default_rng(seed)
    targets = np.column_stack([rng.integers(0, g, n) for g in N_GRADES])
    targets[0, 1] = -1                                       # one missing grade
    knees = pd.DataFrame({"participant_id": [str(i // 2) for i in range(n)], "kl_grade": targets[:, 0],
                          "visit_month": [0, 12] * (n // 2), "side": ["R", "L"] * (n // 2)})
    images = rng.integers(0, 255, (n, size, size)).astype(np.uint8)
    masks = {t: np.zeros((n, size, size), bool) for t in TASKS if t.startswith("osteophyte")}
    return study.PreparedKnees(images, targets, knees, masks)


def _perfect_probabilities(targets):
    probabilities = {}
    for index, (task, n) in enumerate(zip(TASKS, N_GRADES)):
        p = np.full((len(targets), n), 0.01)
        p[np.arange(len(targets)), np.clip(targets[:, index], 0, None)] = 1.0
        probabilities[task] = p / p.sum(axis=1, keepdims=True)
    return probabilities


def test_osteophyte_boxes_sit_above_and_below_the_margins():
    masks = study.osteophyte_region_masks({"lateral": (50.0, 20.0), "medial": (50.0, 80.0)}, out_size=100,
                                          size_mm=100.0, reach_mm=10.0, half_width_mm=5.0)
    assert set(masks) == {"osteophyte_fl", "osteophyte_fm", "osteophyte_tl", "osteophyte_tm"}
    rows, cols = np.nonzero(masks["osteophyte_fl"])
    assert rows.min() == 40 and rows.max() == 52 and cols.min() == 15 and cols.max() == 25
    rows, cols = np.nonzero(masks["osteophyte_tm"])
    assert rows.min() == 48 and rows.max() == 60 and cols.min() == 75
    assert not (masks["osteophyte_fl"] & masks["osteophyte_fm"]).any()


def test_table3_is_perfect_for_perfect_predictions_and_skips_missing_grades():
    prepared = _prepared()
    table = study.table3(prepared, _perfect_probabilities(prepared.targets), n_boot=20, seed=0)
    assert set(table["task"]) == set(TASKS)
    kappa = table[table["metric"] == "quadratic_kappa"].set_index("task")["estimate"]
    assert np.allclose(kappa, 1.0)
    assert table.loc[table["task"] == "osteophyte_fl", "n"].iloc[0] == len(prepared.targets) - 1
    mse = table[table["metric"] == "mse"]["estimate"]
    assert np.allclose(mse, 0.0)
    wide = study.wide_table(table.assign(model="perfect"), "quadratic_kappa")
    assert list(wide.columns) == list(study.TASK_LABELS.values())
    assert wide.loc["perfect", "KL"].startswith("1.00")


def test_binary_curves_report_auc_one_for_separating_scores():
    prepared = _prepared(n=40, seed=3)
    fig, table = study.binary_curves(prepared, _perfect_probabilities(prepared.targets), n_boot=20)
    assert set(table["curve"]) == {"KL >= 2", "osteophyte >= 1", "JSN >= 1"}
    assert np.allclose(table["auc"].dropna(), 1.0) and np.allclose(table["average_precision"].dropna(), 1.0)
    matplotlib.pyplot.close(fig)


def test_cross_validation_gives_out_of_fold_probabilities_and_ensemble_averages_snapshots():
    prepared = _prepared(n=12, size=36)
    folds = np.repeat([0, 1], 6)
    run = study.cross_validate_backbone(prepared, folds, "resnet18", "scratch", False, image_size=32,
                                        max_epochs=1, batch_size=6, seed=0)
    assert len(run.snapshots) == 2 and set(run.history["fold"]) == {0, 1}
    for task, n in zip(TASKS, N_GRADES):
        assert run.oof[task].shape == (12, n) and np.allclose(run.oof[task].sum(axis=1), 1.0, atol=1e-5)
    long = study.table2(prepared, [run], n_boot=10)
    assert set(long["metric"]) == {"quadratic_kappa", "balanced_accuracy"}
    assert study.best_runs(long, [run], n_best=2) == [run]
    averaged = study.ensemble_probabilities([run], prepared.images[:3], 32)
    assert averaged["kl"].shape == (3, 5) and np.allclose(averaged["kl"].sum(axis=1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="schedule"):
        study.cross_validate_backbone(prepared, folds, "resnet18", "cosine", False, image_size=32, max_epochs=1)


def test_pointing_game_counts_hits_inside_the_site_box():
    prepared = _prepared(n=6, size=36)
    prepared.targets[:, 1] = 2                               # every knee has an FL osteophyte
    run = study.cross_validate_backbone(prepared, np.repeat([0, 1], 3), "resnet18", "scratch", False,
                                        image_size=32, max_epochs=1, batch_size=3)
    prepared.masks["osteophyte_fl"][:] = True                # the whole image: every hot spot hits
    table, examples = study.pointing_game_table(run.snapshots[0], prepared, image_size=32)
    row = table.set_index("head").loc["FO L"]
    assert row["knees"] == 6 and row["pointing_accuracy"] == 1.0 and row["chance"] == 1.0
    assert row["cell_pointing_accuracy"] == 1.0 and row["cell_chance"] == 1.0
    assert "osteophyte_fl" in examples
    matplotlib.pyplot.close(study.plot_pointing_examples(examples))


def test_comparisons_carry_the_paper_numbers():
    prepared = _prepared()
    table = study.table3(prepared, _perfect_probabilities(prepared.targets), n_boot=10)
    cv = table[table["metric"].isin(["quadratic_kappa", "balanced_accuracy"])].assign(model="m")
    rows = study.synthetic_comparisons(cv, table, "ensemble", "cv data", "test data", first_visit=table)
    kl_test = [r for r in rows if r.quantity == "KL quadratic kappa (test)"][0]
    assert kl_test.published == 0.82 and kl_test.reproduced == pytest.approx(1.0)
    assert any(r.source == "Table 2" for r in rows) and any("first visit" in r.quantity for r in rows)
