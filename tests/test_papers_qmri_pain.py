"""The chronic-pain chapter's own pieces (paper 001, second half) on tiny data, and Table 3 on the real data."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kneelib.papers import qmri_pain as study


def test_chronic_pain_cohort_labels_and_exclusions(monkeypatch):
    import kneelib.data
    import kneelib.data.qmri_cohort

    knees = pd.DataFrame({"participant_id": ["1", "2", "3", "4", "5"], "visit_month": [0] * 5,
                          "kl_grade": [0, 2, 3, 1, 4], "age": [60.0] * 5, "bmi": [28.0] * 5, "sex": [1, 2, 1, 2, 2]})
    table = pd.DataFrame({"ID": ["1", "2", "3", "4", "5", "1"], "SIDE": [1, 1, 1, 1, 1, 2], "VISIT": [0] * 6,
                          "knee_pain_any_12m": [0, 1, 1, 1, np.nan, 1], "knee_pain_months_12m": [0, 7, 3, 12, np.nan, 9],
                          "widespread_pain_above_waist": [0, 0, 0, 1, 0, 0], "widespread_pain_below_waist": [0, 0, 0, 1, 0, 0],
                          "widespread_pain_axial": [0, 0, 0, 1, 0, 0], "jsn_medial": [0, 1, 2, 0, 3, 0],
                          "jsn_lateral": [0] * 6, "min_medial_jsw_mm": [5.0, 4, 3, 5, 1, 5]})
    monkeypatch.setattr(kneelib.data.qmri_cohort, "qmri_knee_table", lambda root, visits: knees)
    monkeypatch.setattr(kneelib.data, "knee_table", lambda root, variables, visits: table)
    out, exclusions = study.chronic_pain_cohort("unused")
    assert out["chronic_pain"].tolist()[:2] == [0.0, 1.0]           # no pain in 12 months; 7 months of most days
    assert out["chronic_pain"].isna().tolist()[2:] == [True, True, True]
    assert out["oa"].tolist() == [0, 1, 1, 0, 1]
    assert dict(zip(exclusions.participant_id, exclusions.reason)) == {
        "3": "knee pain in the past 12 months, on most days for at most 6 months", "4": "widespread pain",
        "5": "no 12-month knee pain answer"}


def test_splits_keep_subjects_whole():
    rng = np.random.default_rng(0)
    knees = pd.DataFrame({"participant_id": np.repeat([str(i) for i in range(40)], 2), "visit_month": [0, 12] * 40,
                          "chronic_pain": rng.choice([0.0, 1.0, np.nan], 80)})
    out = study.assign_splits(knees, (0.6, 0.2, 0.2), seed=0)
    assert out.groupby("participant_id")["split"].nunique().max() == 1
    assert set(out["split"]) == {"train", "valid", "test"}


def test_grid_configurations_collapse_the_imagenet_substitute():
    grid = {"lr": [1e-4], "arch": ["resnet18", "resnet34"], "init": ["random", "imagenet", "oa"], "freeze": ["none"]}
    configurations = study._configurations(grid)
    assert len(configurations) == 5 and sum(c["init"] == "imagenet" for c in configurations) == 1


def test_results_table_bootstraps_subjects():
    rng = np.random.default_rng(1)
    y = np.r_[np.ones(20), np.zeros(30)].astype(int)
    predictions = pd.DataFrame({"participant_id": [str(i) for i in range(50)], "label": y,
                                "probability": np.clip(0.3 * y + rng.uniform(0, 0.7, 50), 0, 1),
                                "strategy": "thickness", "bone": "femur"})
    table = study.results_table(predictions, n_boot=50)
    row = table.iloc[0]
    assert row["n"] == 50 and row["positive"] == 20
    assert row["auc_low"] <= row["auc"] <= row["auc_high"] and row["auc"] > 60


@pytest.mark.realdata
def test_real_table3_lrt_p_values_to_the_printed_digits(real_data_root):
    table, comparison = study.table3_real(real_data_root)
    lrt = comparison[comparison["quantity"] == "LRT p-value"].set_index("bone")
    assert lrt.loc["femur", "reproduced"] == "7.01e-33" and lrt.loc["tibia", "reproduced"] == "1.93e-14"
    assert lrt["match"].all()
    assert comparison["match"].sum() == len(comparison) - 1  # the one printed typo (femur MF 1.289)
    selection = study.model_selection({("femur", "thickness"): pd.DataFrame(
        {"init": ["random", "oa"], "auc": [0.6, 0.7]})}, real_data_root)
    assert {"paper oa", "paper imagenet", "paper random", "ours oa"} <= set(selection.columns)
