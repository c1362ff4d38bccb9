"""Readers on the real pyKNEEr exam (GE 3 T): sagittal DESS and the four-folder T1rho series.

Skipped only when ``$KNEELIB_DATA/pykneer_knee_mri`` is absent.
"""
from __future__ import annotations

import numpy as np
import pytest

from kneelib import config
from kneelib.data.dicom import LPS_TO_RAS, group_series_folders, read_dicom_series, to_common_orientation

pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def exam():
    path = config.data_root() / "pykneer_knee_mri"
    if not path.is_dir():
        pytest.skip(f"real exam not found at {path} (set KNEELIB_DATA)")
    return path


@pytest.fixture(scope="module")
def dess(exam):
    return read_dicom_series(exam / "DESS_echo1")


def test_real_dess_geometry_and_side(dess):
    assert dess.shape == (512, 512, 80)
    assert dess.spacing_mm == pytest.approx((0.3125, 0.3125, 1.5))
    assert dess.echo_times_ms == (7.48,)
    # Laterality tag and descriptions are empty; the slab lies on the patient's right (LPS x -105..+13 mm).
    assert (dess.laterality, dess.laterality_source) == ("R", "position")
    # Sagittal: slice axis along RAS x.
    assert np.argmax(np.abs(dess.affine[:3, 2])) == 0


def test_real_dess_matches_simpleitk(exam, dess):
    """Independent check of slice order and affine against SimpleITK/GDCM (LPS)."""
    sitk = pytest.importorskip("SimpleITK")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(exam / "DESS_echo1")))
    image = reader.Execute()
    direction = np.array(image.GetDirection()).reshape(3, 3)
    affine_lps = np.eye(4)
    affine_lps[:3, :3] = direction * np.array(image.GetSpacing())
    affine_lps[:3, 3] = image.GetOrigin()
    reference = np.transpose(sitk.GetArrayFromImage(image), (2, 1, 0))
    ours_lps = LPS_TO_RAS @ dess.affine
    if np.dot(ours_lps[:3, 2], affine_lps[:3, 2]) < 0:  # GDCM may stack the other way round
        reference = reference[:, :, ::-1]
        flip = np.eye(4)
        flip[2, 2], flip[2, 3] = -1, reference.shape[2] - 1
        affine_lps = affine_lps @ flip
    np.testing.assert_allclose(ours_lps, affine_lps, atol=1e-3)
    np.testing.assert_array_equal(dess.array.astype(np.float64), reference.astype(np.float64))


def test_real_t1rho_four_folders_one_4d_volume(exam, dess):
    folders = sorted((exam / "cubequant_T1rho").iterdir())
    groups = group_series_folders(folders)
    assert len(groups) == 1
    (frame_uid, description), grouped = next(iter(groups.items()))
    assert description == "cubequant T1rho" and len(grouped) == 4
    assert frame_uid == dess.metadata["FrameOfReferenceUID"]
    t1rho = read_dicom_series(grouped)
    assert t1rho.shape == (512, 512, 12, 4)
    assert t1rho.echo_times_ms == (1.0, 10.0, 30.0, 60.0)  # spin-lock times stored in EchoTime
    assert t1rho.spacing_mm == pytest.approx((0.3125, 0.3125, 1.5))  # 3 mm slices at 1.5 mm spacing
    # Voxel-aligned with the DESS grid in-plane, slab at x = -38.7 .. -55.2 mm (LPS).
    np.testing.assert_allclose(t1rho.affine[:3, :3], dess.affine[:3, :3], atol=1e-6)
    lps_x = (LPS_TO_RAS @ t1rho.affine)[0, 3] + np.array([0, 11]) * (LPS_TO_RAS @ t1rho.affine)[0, 2]
    assert sorted(lps_x) == pytest.approx([-55.1652, -38.6652], abs=1e-3)
    # Signal decays with spin-lock time in the slab (mean over the bright voxels of TSL 1 ms).
    bright = t1rho.array[..., 0] > np.percentile(t1rho.array[..., 0], 90)
    means = [float(t1rho.array[..., e][bright].mean()) for e in range(4)]
    assert means == sorted(means, reverse=True)


def test_real_dess_common_orientation(dess):
    common = to_common_orientation(dess)
    assert not common.mirrored and common.shape == (80, 512, 512)
    assert np.all(np.diag(common.affine)[:3] > 0)
