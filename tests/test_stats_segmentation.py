"""DSC, MPTS, the per-structure table with subject CIs, the QC rule and the Fig. S2 error map."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kneelib.data.errors import KneelibDataError
from kneelib.stats.segmentation import (ERROR_CODES, dice_coefficient, error_map, mean_point_to_surface_distance,
                                        segmentation_metrics, segmented_volumes_ml, structure_table, volume_qc)


def sphere(radius, n=24, centre=None, spacing=(1.0, 1.0, 1.0)):
    centre = np.full(3, (n - 1) / 2) if centre is None else np.asarray(centre, float)
    grid = np.indices((n, n, n)).astype(float)
    d2 = sum(((grid[i] - centre[i]) * spacing[i]) ** 2 for i in range(3))
    return d2 <= radius ** 2


def test_dice_of_known_overlaps_is_exact():
    a = np.zeros((4, 5, 6), bool)
    b = np.zeros_like(a)
    a[0, :, :] = True          # 30 voxels
    b[0, :, :3] = True         # 15 voxels, all inside a
    b[1, 0, 0] = True          # plus 1 outside
    assert dice_coefficient(a, b) == pytest.approx(2 * 15 / (30 + 16), abs=1e-12)
    assert dice_coefficient(a, a) == 1.0
    assert dice_coefficient(a, ~a) == 0.0
    assert np.isnan(dice_coefficient(np.zeros(3, bool), np.zeros(3, bool)))


def test_mpts_of_concentric_spheres_is_the_radius_difference():
    assert mean_point_to_surface_distance(sphere(8), sphere(8)) == 0.0
    assert mean_point_to_surface_distance(sphere(8), sphere(5)) == pytest.approx(3.0, abs=0.35)
    # spacing counts: 0.5 mm voxels halve the distance
    assert mean_point_to_surface_distance(sphere(8), sphere(5), (0.5, 0.5, 0.5)) == pytest.approx(1.5, abs=0.2)
    # anisotropic voxels, spheres defined in mm
    spacing = (2.0, 1.0, 1.0)
    outer, inner = sphere(10, spacing=spacing), sphere(6, spacing=spacing)
    assert mean_point_to_surface_distance(outer, inner, spacing) == pytest.approx(4.0, abs=0.6)
    assert np.isnan(mean_point_to_surface_distance(sphere(5), np.zeros((24, 24, 24), bool)))


def test_mpts_is_symmetric_over_both_surfaces():
    truth = np.zeros((1, 1, 6), bool)
    truth[0, 0, 0] = True
    prediction = truth.copy()
    prediction[0, 0, 4] = True   # a stray voxel 4 mm away
    # prediction -> truth: 0 and 4 mm; truth -> prediction: 0 mm; mean over the three points
    assert mean_point_to_surface_distance(prediction, truth) == pytest.approx(4 / 3)
    assert mean_point_to_surface_distance(truth, prediction) == pytest.approx(4 / 3)


def test_metrics_per_structure_and_volumes():
    truth = sphere(8).astype(np.uint8) + sphere(4).astype(np.uint8)   # 1 outer shell, 2 core
    prediction = truth.copy()
    prediction[prediction == 2] = 1                                   # core missed
    table = segmentation_metrics(prediction, truth, (1, 1, 2), ("background", "shell", "core")).set_index("structure")
    assert table.loc["core", "dsc"] == 0.0 and np.isnan(table.loc["core", "mpts_mm"])
    shell = (truth == 1).sum()
    assert table.loc["shell", "dsc"] == pytest.approx(2 * shell / (shell + (prediction == 1).sum()))
    assert table.loc["shell", "truth_volume_ml"] == pytest.approx(shell * 2 / 1000)
    volumes = segmented_volumes_ml(truth, (1, 1, 2), ("background", "shell", "core"))
    assert volumes == {"shell": pytest.approx(shell * 2 / 1000), "core": pytest.approx((truth == 2).sum() * 2 / 1000)}


def test_structure_table_resamples_subjects():
    rng = np.random.default_rng(0)
    rows = []
    for subject in range(12):
        level = rng.normal(0.9, 0.03)
        for visit in range(2):  # two visits per subject, strongly correlated
            rows.append({"subject_id": f"s{subject}", "structure": "femur", "dsc": level + rng.normal(0, 0.001),
                         "mpts_mm": 0.4 + rng.normal(0, 0.05)})
    per_volume = pd.DataFrame(rows)
    table = structure_table(per_volume, n_boot=400, seed=1).set_index("structure")
    row = table.loc["femur"]
    assert row["n_volumes"] == 24 and row["n_subjects"] == 12 and row["unit"] == "subjects"
    assert row["dsc_low"] < row["dsc"] < row["dsc_high"]
    assert row["dsc"] == pytest.approx(per_volume["dsc"].mean())
    # treating the 24 rows as independent would narrow the interval ~sqrt(2)-fold
    by_row = structure_table(per_volume.assign(subject_id=np.arange(24)), n_boot=400, seed=1).iloc[0]
    assert (row["dsc_high"] - row["dsc_low"]) > 1.2 * (by_row["dsc_high"] - by_row["dsc_low"])
    with pytest.raises(KneelibDataError):
        structure_table(per_volume.drop(columns="mpts_mm"))


def test_qc_excludes_an_outlier_volume_and_records_why():
    rng = np.random.default_rng(0)
    training = pd.DataFrame({"femur": rng.normal(100, 5, 40), "tibia": rng.normal(80, 4, 40),
                             "patella": [np.nan] * 39 + [10.0]})
    volumes = pd.DataFrame({"femur": [101, 160, 99, np.nan], "tibia": [79, 80, 50, 80], "patella": [1, 2, 3, 4]},
                           index=["ok", "big_femur", "small_tibia", "missing"])
    qc = volume_qc(volumes, training)
    assert qc["excluded"].tolist() == [False, True, True, True]
    assert qc.loc["ok", "reason"] == ""
    assert "femur" in qc.loc["big_femur", "reason"] and "SD" in qc.loc["big_femur", "reason"]
    assert "tibia" in qc.loc["small_tibia", "reason"] and qc.loc["small_tibia", "z_tibia"] < -3
    assert "missing" in qc.loc["missing", "reason"]
    assert "patella not checked" in qc.loc["ok", "notes"]
    # just inside 3 SD stays
    mean, sd = training["femur"].mean(), training["femur"].std()
    inside = volume_qc(pd.DataFrame({"femur": [mean + 2.9 * sd]}), training)
    assert not inside["excluded"].iloc[0]


def test_error_map_codes():
    truth = np.array([0, 1, 1, 0, 2, 2])
    pred = np.array([0, 1, 0, 1, 1, 2])
    codes = error_map(pred, truth)
    c = ERROR_CODES
    assert codes.tolist() == [c["background"], c["agreement"], c["false_negative"], c["false_positive"],
                              c["wrong_structure"], c["agreement"]]
    only_one = error_map(pred, truth, label=1)
    assert only_one.tolist() == [0, c["agreement"], c["false_negative"], c["false_positive"], c["false_positive"], 0]
    with pytest.raises(KneelibDataError):
        error_map(pred, truth[:3])
