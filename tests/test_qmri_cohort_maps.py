"""Cohort spherical maps from the cohort's files, content-addressed cache (kneelib.qmri.cohort_maps)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest


@pytest.fixture(scope="module")
def smoke_root():
    from kneelib.synth.cohort import generate_cohort

    return generate_cohort("smoke", seed=0, progress=False)


def test_one_knee_is_computed_once_then_read_and_carries_its_planted_loss(smoke_root, tmp_path):
    from kneelib.qmri.cohort_maps import cohort_spherical_maps, knee_spherical_maps

    truth = pd.read_csv(smoke_root / "ground_truth" / "knees.csv", dtype={"participant_id": str})
    truth = truth[(truth.side == "R")]
    femoral = truth[["cartilage_loss_fraction_FM", "cartilage_loss_fraction_FL"]].max(axis=1)
    row = truth.loc[femoral.idxmax()]
    first = knee_spherical_maps(smoke_root, row.participant_id, int(row.visit_month), cache_dir=tmp_path, t2=False)
    assert first.seconds > 0 and set(first.biomarkers.bones) == {"femur", "tibia", "patella"}
    assert first.biomarkers.bones["femur"].maps["thickness"].shape == (224, 224)
    assert len(list(tmp_path.rglob("*.npz"))) == 2 and not list(tmp_path.rglob(".*"))  # no temporary left
    again = knee_spherical_maps(smoke_root, row.participant_id, int(row.visit_month), cache_dir=tmp_path, t2=False)
    assert again.seconds == 0 and again.biomarkers.key == first.biomarkers.key
    np.testing.assert_array_equal(again.biomarkers.bones["femur"].maps["bone_shape"],
                                  first.biomarkers.bones["femur"].maps["bone_shape"].astype(np.float32))
    distance = again.driver_distance_mm["femur"]
    assert np.isfinite(distance).any() and (distance <= 3.0).any()  # a femoral defect lies on the femur
    assert np.allclose(np.linalg.norm(again.right), 1.0)
    maps, failures = cohort_spherical_maps(smoke_root, pd.DataFrame({"participant_id": [row.participant_id, "0"],
                                                                     "visit_month": [int(row.visit_month), 0]}),
                                           cache_dir=tmp_path, t2=False)
    assert len(maps) == 1 and len(failures) == 1 and failures[0].startswith("0/0")
    parallel, parallel_failures = cohort_spherical_maps(smoke_root, pd.DataFrame(
        {"participant_id": [row.participant_id, "0"], "visit_month": [int(row.visit_month), 0]}),
        cache_dir=tmp_path, t2=False, n_jobs=2)
    assert list(parallel) == list(maps) and parallel_failures == failures
    assert next(iter(parallel.values())).seconds == 0  # read from the cache, not recomputed


def test_filling_the_cache_computes_only_what_is_missing_and_records_failures(smoke_root, tmp_path):
    from kneelib.qmri.cohort_maps import cohort_spherical_maps, fill_cohort_maps_cache

    truth = pd.read_csv(smoke_root / "ground_truth" / "knees.csv", dtype={"participant_id": str})
    first = truth[(truth.side == "R") & (truth.visit_month == 0)].iloc[0]
    knees = pd.DataFrame({"participant_id": [first.participant_id, "0"], "visit_month": [0, 0]})
    summary = fill_cohort_maps_cache(smoke_root, knees, cache_dir=tmp_path, t2=False, n_jobs=1)
    assert summary["knees"] == 2 and summary["cached"] == 0 and summary["computed"] == 1
    assert summary["seconds_per_computed_knee"] > 0
    assert len(summary["failures"]) == 1 and summary["failures"][0].startswith("0/0")
    again = fill_cohort_maps_cache(smoke_root, knees, cache_dir=tmp_path, t2=False, n_jobs=1)
    # the cached knee is not recomputed; the failing one is tried again (and fails again)
    assert again["cached"] == 1 and again["computed"] == 0 and len(again["failures"]) == 1
    maps, _ = cohort_spherical_maps(smoke_root, knees, cache_dir=tmp_path, t2=False)
    assert [m.seconds for m in maps.values()] == [0]  # the chapter reads what the fill wrote
