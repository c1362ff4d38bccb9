"""Labels of paper 002 (JSN progression, relative criterion, WOMAC pain classes) on tiny data."""
import numpy as np
import pandas as pd
import pytest

from kneelib.data.labels import (jsn_progression_cohort, progressor_12m, relative_progressor_12m,
                                 womac_pain_class)


def test_relative_progressor_threshold_and_missing():
    change = np.array([-1.0, -0.9, -0.5, np.nan, -0.2])
    baseline = np.array([4.0, 4.0, 1.0, 4.0, 0.0])
    out = relative_progressor_12m(change, baseline)
    # -25 % exactly is a progressor, -22.5 % is not; missing change / zero baseline undefined
    np.testing.assert_array_equal(out[:3], [1.0, 0.0, 1.0])
    assert np.isnan(out[3]) and np.isnan(out[4])


def test_relative_progressor_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="differ in shape"):
        relative_progressor_12m([-1.0, -2.0], [3.0])


def test_womac_pain_class_leaves_out_the_middle():
    out = womac_pain_class([0, 0.5, 1.0, 1.5, 2.0, 7, np.nan])
    np.testing.assert_array_equal(out[[0, 1, 4, 5]], [0, 0, 1, 1])
    assert np.isnan(out[[2, 3, 6]]).all()
    with pytest.raises(ValueError):
        womac_pain_class([1.0], high=1.0, low=2.0)


def test_absolute_progressor_at_the_threshold():
    np.testing.assert_array_equal(progressor_12m([-0.5, -0.49, -1.2]), [1.0, 0.0, 1.0])


def _write(path, header, rows):
    path.write_text("|".join(header) + "\n" + "\n".join("|".join(str(v) for v in r) for r in rows) + "\n")


def test_cohort_reads_oai_tables_and_counts_knees_without_jsw(tmp_path):
    _write(tmp_path / "Enrollees.txt", ["ID", "P02SEX"], [["9000001", "2: Female"], ["9000002", "1: Male"]])
    _write(tmp_path / "AllClinical00.txt", ["ID", "V00AGE", "P01BMI", "P01HEIGHT", "P01WEIGHT", "V00WOMKPR", "V00WOMKPL"],
           [["9000001", 60, 31.0, 1600, 80, 3, 0], ["9000002", 70, 25.0, 1800, 81, 1.5, 0.5]])
    _write(tmp_path / "AllClinical01.txt", ["ID", "V01WOMKPR", "V01WOMKPL"], [["9000001", 3, 0], ["9000002", 1, 0]])
    _write(tmp_path / "kXR_QJSW_Duryea00.txt", ["ID", "SIDE", "V00MCMJSW"],
           [["9000001", 1, 4.0], ["9000001", 2, 3.0], ["9000002", 1, 5.0], ["9000002", 2, 2.0]])
    _write(tmp_path / "kXR_QJSW_Duryea01.txt", ["ID", "SIDE", "V01MCMJSW"],
           [["9000001", 1, 3.4], ["9000001", 2, 2.9], ["9000002", 1, 4.9]])
    _write(tmp_path / "kXR_SQ_BU00.txt", ["ID", "SIDE", "V00XRKL"],
           [["9000001", 1, 2], ["9000001", 2, 1], ["9000002", 1, 0], ["9000002", 2, 3]])
    _write(tmp_path / "kXR_SQ_BU01.txt", ["ID", "SIDE", "V01XRKL"],
           [["9000001", 1, 2], ["9000001", 2, 1], ["9000002", 1, 0], ["9000002", 2, 3]])
    knees, excluded = jsn_progression_cohort(tmp_path)
    assert len(knees) == 4 and list(knees["side"]) == ["L", "R", "L", "R"]
    row = knees.set_index(["participant_id", "side"])
    assert row.loc[("9000001", "R"), "jsn_12m_mm"] == pytest.approx(-0.6)
    assert row.loc[("9000001", "R"), "progressor"] == 1 and row.loc[("9000001", "L"), "progressor"] == 0
    assert row.loc[("9000001", "R"), "pain_class"] == 1 and row.loc[("9000001", "L"), "pain_class"] == 0
    assert np.isnan(row.loc[("9000002", "R"), "pain_class"])  # WOMAC 1.5: left out
    assert np.isnan(row.loc[("9000002", "L"), "progressor"])
    assert list(excluded["reason"]) == ["no 12-month JSW"] and list(excluded["side"]) == ["L"]


def _truth_root(tmp_path, n=60, seed=0):
    rng = np.random.default_rng(seed)
    ids = [f"90{i:05d}" for i in range(n // 2) for _ in (0, 1)]
    sides = ["R", "L"] * (n // 2)
    effusion = rng.integers(0, 4, n)
    rows = [dict(participant_id=p, side=s, visit_month=v, oa_severity=float(rng.normal()) + v,
                 meniscal_damage_medial=int(rng.integers(0, 3)), effusion_grade=int(e) if v == 0 else 0, artefact="")
            for v in (12, 0) for p, s, e in zip(ids, sides, effusion)]
    (tmp_path / "ground_truth").mkdir()
    pd.DataFrame(rows).to_csv(tmp_path / "ground_truth" / "knees.csv", index=False)
    return tmp_path, ids, sides, effusion


def test_progression_drivers_are_the_baseline_rows(tmp_path):
    from kneelib.synth.ground_truth import (PROGRESSION_DRIVER_COLUMNS, MissingGroundTruthError,
                                            progression_drivers)

    root, ids, sides, effusion = _truth_root(tmp_path)
    drivers = progression_drivers(root)
    assert list(drivers.columns) == ["participant_id", "side", *PROGRESSION_DRIVER_COLUMNS]
    assert len(drivers) == len(ids) and drivers["participant_id"].tolist() == ids
    assert drivers["effusion_grade"].tolist() == effusion.tolist()  # the 12-month rows (written first) are not read
    with pytest.raises(MissingGroundTruthError):
        progression_drivers(tmp_path / "elsewhere")


def test_planted_driver_ceiling_scores_on_the_task_folds(tmp_path):
    from kneelib.papers.jsn_progression import TaskResult, planted_driver_ceiling
    from kneelib.train.splits import stratified_kfold

    root, ids, sides, effusion = _truth_root(tmp_path, n=80, seed=1)
    labels = (effusion >= 2).astype(int)
    knees = pd.DataFrame({"participant_id": ids, "side": sides, "bmi": np.random.default_rng(2).normal(28, 4, 80)})
    fold = stratified_kfold(labels, 4, groups=np.asarray(ids), seed=0)
    result = TaskResult("progression", "attention + BMI", knees, labels, fold, cv=None)
    planted_driver_ceiling(root, result, n_boot=20)
    auc = result.metrics["planted drivers + BMI (truth)"].loc["roc_auc", "value"]
    assert auc > 0.9
    untouched = TaskResult("progression", "attention + BMI", knees, labels, fold, cv=None)
    assert planted_driver_ceiling(tmp_path / "real", untouched, n_boot=20).scores == {}
