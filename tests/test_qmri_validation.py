"""Thickness and T2 checks against the synthetic ground truth (issue 11, steps 4-5)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kneelib.qmri import QmriInputError
from kneelib.qmri.relaxometry import cartilage_depth
from kneelib.qmri.validation import (elevation_from_truth, known_thickness_from_truth, median_absolute_errors,
                                     planted_layer_t2, t2_errors, thickness_errors)
from kneelib.synth.spec import TISSUE_LABELS as L
from kneelib.synth.tissue import cartilage_t2_ms

SPACING = (0.25, 0.25, 0.25)


def slab_knee(n_cart=8):
    """Array axes R, A, S; femoral and tibial cartilage slabs n_cart voxels (0.25 mm) thick, patellar 6."""
    labels = np.zeros((30, 44, 80), np.uint8)
    labels[4:26, 4:30, 50:78] = L["femur"]
    labels[6:24, 6:28, 50 - n_cart:50] = L["femoral_cartilage"]
    labels[4:26, 4:30, 2:30] = L["tibia"]
    labels[6:24, 6:28, 30:30 + n_cart] = L["tibial_cartilage_medial"]
    labels[10:20, 36:42, 52:70] = L["patella"]
    labels[11:19, 30:36, 54:68] = L["patellar_cartilage"]
    return labels


def test_planted_layer_t2_is_the_generators_profile_averaged_over_depth():
    depth = np.linspace(0, 1, 200_001)
    profile = cartilage_t2_ms(depth, 3.0).astype(float)
    planted = planted_layer_t2(3.0)
    assert planted["deep"] == pytest.approx(profile[depth <= 0.5].mean(), abs=1e-3)
    assert planted["superficial"] == pytest.approx(profile[depth > 0.5].mean(), abs=1e-3)
    assert planted["total"] == pytest.approx(profile.mean(), abs=1e-3)


def test_thickness_errors_on_slabs_of_known_thickness():
    labels = slab_knee()
    known = {"femoral_cartilage": 2.0, "tibial_cartilage": 2.0, "patellar_cartilage": 1.5}
    table = thickness_errors(labels, SPACING, known, knee="k1")
    assert list(table["cartilage"]) == ["femoral_cartilage", "tibial_cartilage", "patellar_cartilage"]
    # per-slice: the doubled EDT reads between the thickness and one pixel more, except at the
    # skeleton's ends at the slab's edges (less), which pull the mean down a little
    assert ((table["error_per_slice_mm"] >= -0.1) & (table["error_per_slice_mm"] <= 0.26)).all(), table
    assert (table["error_normals_mm"].abs() < 0.15).all(), table
    wrong = thickness_errors(labels, SPACING, {"femoral_cartilage": 3.0})
    assert len(wrong) == 1 and wrong["error_normals_mm"].iloc[0] == pytest.approx(-1.0, abs=0.15)
    summary = median_absolute_errors(pd.concat([table, table]), ["error_per_slice_mm", "error_normals_mm"])
    assert list(summary["n_knees"]) == [2, 2, 2]
    empty = labels.copy()
    empty[empty == L["patellar_cartilage"]] = 0
    with pytest.raises(QmriInputError, match="patellar_cartilage"):
        thickness_errors(empty, SPACING, known)


def test_t2_errors_recover_a_planted_profile_with_noise():
    labels = slab_knee(n_cart=16)
    rng = np.random.default_rng(0)
    t2 = np.full(labels.shape, np.nan)
    elevation = {"femoral_cartilage": 0.0, "tibial_cartilage": 5.0, "patellar_cartilage": 2.0}
    for bone, name, codes in (("femur", "femoral_cartilage", [L["femoral_cartilage"]]),
                              ("tibia", "tibial_cartilage", [L["tibial_cartilage_medial"]]),
                              ("patella", "patellar_cartilage", [L["patellar_cartilage"]])):
        cart = np.isin(labels, codes)
        depth = cartilage_depth(cart, labels == L[bone], SPACING)
        # each half at the planted layer value of the generator's profile (a slab's 3-D depth is not
        # uniform near its open edges, so the continuous profile itself would bias the layer means)
        planted = planted_layer_t2(elevation[name])
        layer = np.where(depth[cart] <= 0.5, planted["deep"], planted["superficial"])
        t2[cart] = layer + rng.normal(0, 1.0, cart.sum())
    table = t2_errors(t2, labels, SPACING, elevation)
    assert len(table) == 9
    layers = table.set_index(["cartilage", "layer"])["error_ms"]
    assert (layers.xs("deep", level="layer").abs() < 0.3).all(), table
    assert (layers.xs("superficial", level="layer").abs() < 0.3).all(), table
    # total = the voxel-weighted mean of the two halves
    fitted = table.set_index(["cartilage", "layer"])
    for name in elevation:
        d, s_, t = (fitted.loc[(name, k)] for k in ("deep", "superficial", "total"))
        expected = (d.fitted_ms * d.n_voxels + s_.fitted_ms * s_.n_voxels) / (d.n_voxels + s_.n_voxels)
        assert t.fitted_ms == pytest.approx(expected, rel=1e-9)
        assert t.planted_ms == pytest.approx(planted_layer_t2(elevation[name])["total"])
    shifted = t2_errors(t2 + 4.0, labels, SPACING, elevation)
    assert (shifted["error_ms"] - table["error_ms"]).to_numpy() == pytest.approx(4.0, abs=1e-9)


def test_one_smoke_knee_against_its_truth(smoke_truth_knee):
    volume, labels, row = smoke_truth_knee
    known = known_thickness_from_truth(row)
    assert known["tibial_cartilage"] == pytest.approx((row["cartilage_thickness_mm_TM"]
                                                       + row["cartilage_thickness_mm_TL"]) / 2)
    assert set(elevation_from_truth(row)) == set(known)
    table = thickness_errors(labels, volume.spacing_mm, known, affine=volume.affine)
    pixel = min(volume.spacing_mm[:2])
    # at the smoke grid (2.2 mm pixels) a 2 mm cartilage is one or two pixels: the doubled EDT
    # reads up to two pixels; along the normals (sub-voxel crossings) is nearer the truth
    assert (table["error_per_slice_mm"] < 2 * pixel + 0.5).all(), table
    assert (table["error_normals_mm"].abs() < table["error_per_slice_mm"].abs()).all(), table
    with pytest.raises(QmriInputError, match="lacks"):
        known_thickness_from_truth({"cartilage_thickness_mm_FM": 2.0})


@pytest.fixture(scope="module")
def smoke_truth_knee():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / ".cache" / "synthetic" / "oai_smoke_seed0"
    if not (root / "ground_truth" / "knees.csv").is_file():
        from kneelib.synth.cohort import generate_cohort
        root = generate_cohort("smoke", seed=0)
    from kneelib.data import read_image_index
    from kneelib.synth.ground_truth import load_series_with_truth, series_truth_table

    knees = pd.read_csv(root / "ground_truth" / "knees.csv", dtype={"participant_id": str})
    row = knees[(knees.side == "R") & (knees.visit_month == 0)].iloc[1]
    volume, labels, _ = load_series_with_truth(root, read_image_index(root), series_truth_table(root),
                                               row.participant_id, 0, "SAG_3D_DESS_RIGHT")
    return volume, np.transpose(labels, (2, 1, 0)), row
