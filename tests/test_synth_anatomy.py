"""Tests of kneelib.synth.anatomy: labels, mirror symmetry, planted findings, determinism."""
from dataclasses import replace

import numpy as np
import pytest

from kneelib.synth.anatomy import build_knee
from kneelib.synth.spec import LESION_MASKS, TISSUE_LABELS, KneeSpec

VOXEL_MM = 2.0   # tiny grid: each build well under a second


def _spec(**kwargs) -> KneeSpec:
    return KneeSpec(participant_id="9000001", side="R", visit_month=0, seed=11, shape_seed=5, **kwargs)


@pytest.fixture(scope="module")
def healthy():
    return build_knee(_spec(), voxel_mm=VOXEL_MM)


def test_all_main_tissues_present(healthy):
    present = set(np.unique(healthy.labels).tolist())
    for name in ("femur", "tibia", "patella", "fibula", "femoral_cartilage", "tibial_cartilage_medial",
                 "tibial_cartilage_lateral", "patellar_cartilage", "meniscus_medial", "meniscus_lateral",
                 "pcl", "acl", "hoffa_fat_pad", "muscle", "subcutaneous_fat", "skin", "patellar_tendon"):
        assert TISSUE_LABELS[name] in present, name
    assert set(healthy.lesion_masks) == set(LESION_MASKS)
    assert all(healthy.lesion_masks[k].shape == healthy.labels.shape for k in LESION_MASKS)
    assert not healthy.lesion_masks["bml"].any() and not healthy.lesion_masks["osteophyte"].any()


def test_left_knee_is_mirror_of_right(healthy):
    left = build_knee(replace(_spec(), side="L"), voxel_mm=VOXEL_MM)
    np.testing.assert_array_equal(left.labels, healthy.labels[::-1])
    assert left.landmarks_mm["plateau_medial"][0] == pytest.approx(-healthy.landmarks_mm["plateau_medial"][0])


def test_deterministic(healthy):
    again = build_knee(_spec(), voxel_mm=VOXEL_MM)
    np.testing.assert_array_equal(again.labels, healthy.labels)
    other = build_knee(replace(_spec(), shape_seed=6), voxel_mm=VOXEL_MM)
    assert (other.labels != healthy.labels).any()


def test_effusion_grade_increases_fluid(healthy):
    effusion = build_knee(_spec(effusion_grade=3), voxel_mm=VOXEL_MM)
    assert effusion.volume_ml("joint_fluid") > healthy.volume_ml("joint_fluid") + 5.0
    assert effusion.lesion_masks["effusion_synovitis"].sum() > 0


def test_osteophyte_grade_increases_marginal_bone(healthy):
    def margin_bone(model):
        bone = np.isin(model.labels, [TISSUE_LABELS["femur"], TISSUE_LABELS["tibia"]])
        x = model.origin_mm[0] + model.voxel_mm * np.arange(model.labels.shape[0])
        return int(bone[x < -41.0].sum())          # medial margin of a right knee
    grade1 = build_knee(_spec(osteophyte_grade={"FM": 1, "TM": 1, "FL": 0, "TL": 0}), voxel_mm=VOXEL_MM)
    grade3 = build_knee(_spec(osteophyte_grade={"FM": 3, "TM": 3, "FL": 0, "TL": 0}), voxel_mm=VOXEL_MM)
    assert margin_bone(healthy) <= margin_bone(grade1) < margin_bone(grade3)
    assert grade3.lesion_masks["osteophyte"].sum() > grade1.lesion_masks["osteophyte"].sum() > 0


def test_bml_lies_in_the_named_bone():
    model = build_knee(_spec(bml_sites=(("TM", 3),)), voxel_mm=VOXEL_MM)
    bml = model.lesion_masks["bml"]
    assert bml.sum() > 0
    assert np.all(model.labels[bml] == TISSUE_LABELS["tibia"])
    x = model.origin_mm[0] + model.voxel_mm * np.nonzero(bml)[0]
    assert np.all(x < 0)                               # medial (right knee)


def test_joint_space_follows_spec():
    narrow = build_knee(_spec(jsw_medial_mm=2.0), voxel_mm=1.0)
    lm = narrow.landmarks_mm
    # landmarks sit at slightly different (x, y), where the smooth deformation differs a little
    assert lm["condyle_lowest_medial"][2] - lm["plateau_medial"][2] == pytest.approx(2.0, abs=0.15)


def test_cartilage_loss_and_meniscal_damage_are_planted():
    model = build_knee(_spec(cartilage_loss_fraction={"FM": 0.8}, meniscal_damage_medial=3), voxel_mm=1.5)
    assert model.lesion_masks["cartilage_loss"].sum() > 0
    assert np.all(model.labels[model.lesion_masks["cartilage_loss"]] == TISSUE_LABELS["joint_fluid"])
    assert model.lesion_masks["meniscal_damage"].sum() > 0


def test_bad_spec_raises_clear_error():
    with pytest.raises(ValueError, match="side"):
        build_knee(replace(_spec(), side="X"), voxel_mm=VOXEL_MM)
    with pytest.raises(ValueError, match="osteophyte_grade"):
        build_knee(_spec(osteophyte_grade={"FM": 5}), voxel_mm=VOXEL_MM)
