"""Synthetic-next-to-real figures of the cohort chapter (issue 10, "Constraints: Figures"):
planes in patient orientation, marching-cubes bone surfaces in RAS millimetres, the template
label map's LPS -> RAS affine, T2 maps by the paper-001 fit, and the realism numbers' glue."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from kneelib.data.errors import KneelibDataError  # noqa: E402
from kneelib.figures import synthetic_vs_real as svr  # noqa: E402
from kneelib.papers import cohort  # noqa: E402


def _sagittal_affine():
    """A DICOM-like sagittal grid: i runs anterior -> posterior, j superior -> inferior, k right -> left."""
    affine = np.zeros((4, 4))
    affine[:3, 0] = (0.0, -0.5, 0.0)   # i: -y (posterior)
    affine[:3, 1] = (0.0, 0.0, -0.5)   # j: -z (inferior)
    affine[:3, 2] = (-2.0, 0.0, 0.0)   # k: -x (towards the patient's left)
    affine[3, 3] = 1.0
    return affine


def test_planes_are_drawn_in_patient_orientation():
    shape = (40, 60, 10)
    array = np.zeros(shape)
    # marker: most anterior (i = 0), most superior (j = 0), most right (k = 0) voxel
    array[0, 0, 0] = 1.0
    affine = _sagittal_affine()
    sagittal, extent = svr.oriented_plane(array, affine, "sagittal", (0, 0, 0))
    assert sagittal.shape == (60, 40)  # rows superior-inferior, columns anterior-posterior
    assert sagittal[0, 0] == 1.0  # superior row, anterior (left) column
    assert extent == (0.0, 20.0, 30.0, 0.0)  # 40 x 0.5 mm wide, 60 x 0.5 mm high
    coronal, extent = svr.oriented_plane(array, affine, "coronal", (0, 0, 0))
    assert coronal.shape == (60, 10)  # rows superior-inferior, columns right-left
    assert coronal[0, 0] == 1.0  # patient's right on the viewer's left (radiological)
    assert extent == (0.0, 20.0, 30.0, 0.0)
    with pytest.raises(ValueError, match="axial"):
        svr.oriented_plane(array, affine, "axial", (0, 0, 0))


def test_bone_meshes_lie_in_ras_millimetres():
    spacing = np.array([0.5, 0.5, 1.0])
    grid = np.indices((80, 80, 40)).astype(float)
    centre_index = np.array([40.0, 40.0, 20.0])
    radius_mm = 10.0
    distance = np.sqrt(sum(((grid[a] - centre_index[a]) * spacing[a]) ** 2 for a in range(3)))
    labels = np.where(distance <= radius_mm, 3, 0)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = (100.0, -50.0, 7.0)
    meshes = svr.bone_meshes(labels, affine, {"patella": 3, "femur": 1}, mesh_mm=1.0)
    assert set(meshes) == {"patella"}  # an absent structure is left out
    centre_mm = centre_index * spacing + affine[:3, 3]
    radii = np.linalg.norm(meshes["patella"].vertices - centre_mm, axis=1)
    assert abs(radii.mean() - radius_mm) < 0.7 and radii.std() < 0.6
    fig = svr.plot_bone_surfaces({"a sphere": meshes})
    assert len(fig.axes) == 2


def test_template_label_map_is_read_with_a_ras_affine(tmp_path):
    import SimpleITK as sitk

    labels = np.zeros((6, 5, 4), dtype=np.uint8)  # x, y, z
    labels[1, 2, 3] = 5
    image = sitk.GetImageFromArray(np.transpose(labels, (2, 1, 0)))
    image.SetSpacing((0.5, 0.6, 0.7))
    image.SetOrigin((10.0, 20.0, 30.0))
    path = tmp_path / "labels.nrrd"
    sitk.WriteImage(image, str(path))
    read, affine = svr.read_template_labels(path)
    assert read.shape == (6, 5, 4) and read[1, 2, 3] == 5
    lps = np.array(image.TransformIndexToPhysicalPoint((1, 2, 3)))
    assert np.allclose(affine @ [1, 2, 3, 1], [-lps[0], -lps[1], lps[2], 1.0])
    with pytest.raises(KneelibDataError, match="not found"):
        svr.read_template_labels(tmp_path / "missing.nrrd")
    (tmp_path / "bad.nrrd").write_text("not an image")
    with pytest.raises(KneelibDataError, match="bad.nrrd"):
        svr.read_template_labels(tmp_path / "bad.nrrd")


def test_slice_t2_map_recovers_t2_and_leaves_background_empty():
    te = np.array([10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0])
    t2 = np.full((20, 20), 40.0)
    t2[:, 10:] = 25.0
    echoes = 1000.0 * np.exp(-te / t2[..., None]) + 20.0
    echoes[:4] = 0.0  # background rows
    found = svr.slice_t2_map(echoes, te)
    assert np.isnan(found[:4]).all()
    assert np.allclose(found[4:, :10], 40.0, atol=0.05) and np.allclose(found[4:, 10:], 25.0, atol=0.05)


def _fake_realism_result():
    part = {"auc": 0.9, "ci_low": 0.8, "ci_high": 0.97, "unit": "subjects", "n_test_real": 30,
            "n_test_synthetic": 40, "caveat": "one exam"}
    return {"transfer": {"kappa": 0.41, "ci_low": 0.3, "ci_high": 0.5, "unit": "subjects", "n_test_crops": 186,
                         "n_test_subjects": 173},
            "radiograph_discriminability": dict(part), "mri_discriminability": dict(part, auc=0.99)}


def test_realism_numbers_tables_and_comparisons():
    result = _fake_realism_result()
    numbers = cohort.realism_numbers(result)
    empty = cohort.realism_numbers(None)
    assert set(numbers) == set(empty)  # the prose's glue names exist even without the real data
    assert numbers["realism_transfer_kappa"] == 0.41 and numbers["realism_dess_auc"] == 0.99
    assert np.isnan(empty["realism_transfer_kappa"]) and np.isnan(empty["realism_radiograph_auc_ci_high"])
    values = cohort.published()["realism_targets"]
    assert numbers["realism_transfer_kappa_target"] == values["transfer_kappa_min"]
    table = cohort.realism_table(result)
    assert list(table["value"]) == [0.41, 0.9, 0.99] and table["95 % CI"].str.contains("subjects").all()
    rows = cohort.realism_comparisons(result, "synthetic smoke")
    assert [r.reproduced for r in rows] == [0.41, 0.9, 0.99]
    assert rows[0].published == cohort.published_values("kl_real_radiographs")["test"]["quadratic_kappa"]
    assert rows[1].published is None and "[" not in "".join(r.quantity for r in rows)
    assert "held-out synthetic" not in table["what"].iloc[0]  # no history, no internal kappa


def test_realism_table_says_how_well_the_grader_graded_held_out_synthetic_knees():
    result = _fake_realism_result()
    result["transfer"]["history"] = pd.DataFrame({"kl_kappa": [0.12, 0.47, 0.65, 0.61]})
    what = cohort.realism_table(result)["what"].iloc[0]
    assert "held-out synthetic subjects, the epoch it kept: 0.65" in what


def test_realism_table_numbers_and_comparisons_carry_the_real_trained_ceiling():
    result = _fake_realism_result()
    result["real_reference"] = {"kappa": 0.62, "ci_low": 0.55, "ci_high": 0.69, "unit": "subjects",
                                "n_train_crops": 1015, "n_train_subjects": 540}
    table = cohort.realism_table(result)
    assert list(table["value"]) == [0.41, 0.62, 0.9, 0.99]
    assert "1,015 real train crops of 540 subjects" in table["what"].iloc[1]
    numbers = cohort.realism_numbers(result)
    assert (numbers["realism_reference_kappa"], numbers["realism_reference_kappa_ci_high"]) == (0.62, 0.69)
    assert np.isnan(cohort.realism_numbers(None)["realism_reference_kappa"])
    rows = cohort.realism_comparisons(result, "synthetic smoke")
    assert [r.reproduced for r in rows] == [0.41, 0.62, 0.9, 0.99] and rows[1].published is None


def test_realism_table_numbers_and_comparisons_carry_the_real_to_synthetic_grading():
    result = _fake_realism_result()
    expected = pd.Series([1.8, 1.9, 2.1, 2.7, 3.4], index=pd.Index(range(5), name="planted KL"))
    result["real_reference"] = {"kappa": 0.62, "ci_low": 0.55, "ci_high": 0.69, "unit": "subjects",
                                "n_train_crops": 1015, "n_train_subjects": 540,
                                "real_to_synthetic": {"kappa": 0.2, "ci_low": 0.14, "ci_high": 0.26,
                                                      "unit": "subjects", "n_crops": 1196, "n_subjects": 299,
                                                      "expected_grade": expected}}
    table = cohort.realism_table(result)
    assert list(table["value"]) == [0.41, 0.62, 0.2, 0.9, 0.99]
    assert "1,196 synthetic crops of 299 subjects" in table["what"].iloc[2]
    numbers = cohort.realism_numbers(result)
    assert set(numbers) == set(cohort.realism_numbers(None))
    assert (numbers["realism_real_to_synthetic_kappa"], numbers["realism_real_to_synthetic_kappa_ci_low"]) == (0.2, 0.14)
    assert (numbers["realism_real_to_synthetic_expected_kl0"], numbers["realism_real_to_synthetic_expected_kl4"]) == (
        1.8, 3.4)
    assert np.isnan(cohort.realism_numbers(None)["realism_real_to_synthetic_expected_kl0"])
    rows = cohort.realism_comparisons(result, "synthetic smoke")
    assert [r.reproduced for r in rows] == [0.41, 0.62, 0.2, 0.9, 0.99] and rows[2].published is None
    assert "synthetic smoke" in rows[2].data
