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
        """Bone voxels medial to the template's medial plateau margin, at joint level."""
        bone = np.isin(model.labels, [TISSUE_LABELS["femur"], TISSUE_LABELS["tibia"]])
        x = model.origin_mm[0] + model.voxel_mm * np.arange(model.labels.shape[0])
        z = model.origin_mm[2] + model.voxel_mm * np.arange(model.labels.shape[2])
        margin_x = model.landmarks_mm["plateau_margin_medial"][0]
        return int(bone[x < margin_x - 1.0][:, :, np.abs(z) < 12.0].sum())
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


def test_planted_thickness_scales_the_template_cartilage():
    thin = build_knee(_spec(cartilage_thickness_mm={"FM": 1.0, "FL": 2.0, "TM": 1.8, "TL": 2.4, "P": 2.6, "TR": 2.3}),
                      voxel_mm=1.0)
    thick = build_knee(_spec(cartilage_thickness_mm={"FM": 2.0, "FL": 2.0, "TM": 1.8, "TL": 2.4, "P": 2.6, "TR": 2.3}),
                       voxel_mm=1.0)
    fm = 1  # CARTILAGE_REGIONS.index("FM") + 1
    ratio = (thick.cartilage_region == fm).sum() / max((thin.cartilage_region == fm).sum(), 1)
    assert 1.6 < ratio < 2.4
    fl = 2
    assert abs(int((thick.cartilage_region == fl).sum()) - int((thin.cartilage_region == fl).sum())) \
        < 0.1 * (thin.cartilage_region == fl).sum()


def test_bones_come_from_the_real_template():
    """Each bone of a knee of size 1 at the template's proportions overlaps the template's."""
    from kneelib.synth.template import load_template

    template = load_template()
    model = build_knee(_spec(jsw_medial_mm=5.0, jsw_lateral_mm=5.0), voxel_mm=1.5)
    x, y, z = (model.origin_mm[i] + model.voxel_mm * np.arange(n) for i, n in enumerate(model.labels.shape))
    X, Y, Z = np.meshgrid(x, y, z, indexing="ij")
    for name, code, shift in (("femur", "femur", 2.5), ("tibia", "tibia", -2.5)):
        inside_template = template.distance(name, X, Y, Z - shift) < -2.0      # well inside, up to the shaft
        labelled = model.labels == TISSUE_LABELS[code]
        # the knee is the template bent by a small smooth deformation (and a few % in size)
        assert labelled[inside_template].mean() > 0.85, name


def test_random_deformation_is_a_diffeomorphism():
    """The per-knee displacement has a positive Jacobian determinant everywhere on the grid."""
    from kneelib.synth.anatomy import _deformation, _grid_axes

    ax, ay, az = _grid_axes(2.0)
    for seed in range(20):
        p = _deformation(np.random.default_rng(seed), ax, ay, az)
        # displacement components as functions on the grid (see _deformation)
        X, Y, Z = np.meshgrid(ax, ay, az, indexing="ij")
        ii, jj, kk = np.meshgrid(np.arange(ax.size), np.arange(ay.size), np.arange(az.size), indexing="ij")
        dx = p["dx_y"][jj] + p["dx_z"][kk] + p["dx_x"][ii] * p["dx_zx"][kk]
        dy = p["dy_x"][ii] + p["dy_z"][kk] + p["dy_y"][jj] * p["dy_zy"][kk]
        dz = p["dz_x"][ii] + p["dz_y"][jj]
        grads = [np.gradient(X + dx, 2.0), np.gradient(Y + dy, 2.0), np.gradient(Z + dz, 2.0)]
        jac = np.linalg.det(np.stack([np.stack(g, -1) for g in grads], -2))
        assert jac.min() > 0.5, seed


def _toy_label_map(tmp_path):
    """A small right knee of boxes in pymskt codes on the OAI DESS grid (slices, rows, columns)."""
    import SimpleITK as sitk

    k, r, c = 64, 150, 120                       # 45 x 55 x 44 mm
    lab = np.zeros((k, r, c), np.uint8)
    rows_per_mm = 1 / 0.3645833
    joint = 80                                   # row of the joint line
    cart = int(round(2.0 * rows_per_mm))         # 2 mm cartilage
    gap = int(round(5.0 * rows_per_mm))          # 5 mm bone to bone
    lab[6:58, :joint - gap // 2, 25:100] = 5                             # femur (cut by the top)
    lab[6:58, joint - gap // 2:joint - gap // 2 + cart, 30:95] = 1       # femoral cartilage
    lab[6:58, joint + gap // 2:, 25:100] = 6                             # tibia (cut by the bottom)
    lab[6:30, joint + gap // 2 - cart:joint + gap // 2, 35:90] = 2       # medial tibial cartilage
    lab[34:58, joint + gap // 2 - cart:joint + gap // 2, 35:90] = 3      # lateral
    lab[8:28, joint - 4:joint + gap // 2 - cart, 30:36] = 10             # medial meniscus (a bar)
    lab[36:56, joint - 4:joint + gap // 2 - cart, 30:36] = 9             # lateral meniscus
    lab[20:44, 20:60, 4:14] = 7                                          # patella
    lab[20:44, 20:60, 14:18] = 4                                         # patellar cartilage
    lab[50:60, joint + 30:, 105:116] = 8                                 # fibula
    # a slightly lower medial condyle (real knees are not level)
    lab[6:30, joint - gap // 2:joint - gap // 2 + 2, 45:80] = 5
    image = sitk.GetImageFromArray(lab)
    image.SetSpacing((0.3645833, 0.3645833, 0.7))
    path = tmp_path / "toy-label.nrrd"
    sitk.WriteImage(image, str(path))
    return path


def test_derive_template_from_a_label_map(tmp_path):
    """The template derivation on a box knee: frames, signed distances, cartilage cover, JSW."""
    from kneelib.synth.derive_template import main
    from kneelib.synth.template import load_template

    out = tmp_path / "template.npz"
    assert main([str(_toy_label_map(tmp_path)), "--out", str(out)]) == 0
    template = load_template(out)
    land = template.landmarks_mm
    # condyle low points on z = 0 of the femoral space, medial at -x
    assert land["condyle_low_medial"][2] == pytest.approx(0.0, abs=0.05)
    assert land["condyle_low_lateral"][2] == pytest.approx(0.0, abs=0.05)
    assert land["condyle_low_medial"][0] < 0 < land["condyle_low_lateral"][0]
    # minimum JSW points are level in their two spaces (the opened gap is the planted JSW)
    for side in ("medial", "lateral"):
        assert land[f"jsw_femur_{side}"][2] == pytest.approx(land[f"jsw_tibia_{side}"][2], abs=0.05)
    # inside the femur above the joint, outside below; the tibia the other way round
    def at(name, z):
        return float(template.distance(name, np.zeros(1), np.zeros(1), np.array([z]))[0])
    assert at("femur", 10.0) < -5.0 < 5.0 < at("femur", -10.0)
    assert at("tibia", -10.0) < -5.0
    # the shafts continue beyond the grid
    assert at("femur", 300.0) < -5.0
    # cartilage cover: 2 mm over the lateral condyle; the medial one's 2-row bone bump
    # (0.73 mm) takes that much of its cartilage
    thickness, region = template.cover("femur", np.array([-8.0, 8.0]), np.zeros(2), np.array([-1.0, -1.0]))
    np.testing.assert_allclose(thickness, [2.0 - 2 * 0.3645833, 2.0], atol=0.3)
    assert list(region) == [1, 2]                  # FM, FL
    assert template.mean_thickness_mm["TM"] == pytest.approx(2.0, abs=0.5)
