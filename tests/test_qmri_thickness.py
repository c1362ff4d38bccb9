"""kneelib.qmri.thickness: per-slice skeleton thickness (paper 001 "Morphometry") and thickness along normals."""
from __future__ import annotations

import numpy as np
import pytest

from kneelib.qmri import QmriInputError
from kneelib.qmri.thickness import thickness_along_normals, thickness_per_slice

#: anisotropic voxels (mm) of the phantoms: axis 0 and 1 in-plane, axis 2 the sagittal slice axis
SPACING = (0.3, 0.36, 0.7)


def _slab(n_voxels: int):
    """Bone (rows 0-9) under a cartilage slab ``n_voxels`` thick along axis 0; background around."""
    bone = np.zeros((30, 40, 8), dtype=bool)
    bone[:10, 3:-3, 1:-1] = True
    cartilage = np.zeros_like(bone)
    cartilage[10:10 + n_voxels, 3:-3, 1:-1] = True
    return cartilage, bone, n_voxels * SPACING[0]


def _shell(inner_mm: float = 8.0, thickness_mm: float = 2.0):
    """A half cylindrical shell (axis along the slice axis) of known thickness on a cylindrical bone.

    The normal of the surface lies in the slice plane, so the in-plane (2-D) thickness equals
    the 3-D thickness; voxels belong to a structure when their centre does.
    """
    nx, ny, nz = int(24 / SPACING[0]), int(24 / SPACING[1]), 10
    x = (np.arange(nx) - nx / 2 + 0.5) * SPACING[0]
    y = (np.arange(ny) - ny / 2 + 0.5) * SPACING[1]
    xx, yy = np.meshgrid(x, y, indexing="ij")
    radius = np.hypot(xx, yy)
    bone = np.repeat((radius < inner_mm)[..., None], nz, axis=2)
    cartilage = np.repeat(((radius >= inner_mm) & (radius < inner_mm + thickness_mm) & (yy > 0))[..., None], nz, axis=2)
    bone[..., [0, -1]] = cartilage[..., [0, -1]] = False  # empty end slices
    return cartilage, bone, thickness_mm


@pytest.mark.parametrize("n_voxels", [6, 7])
def test_skeleton_thickness_of_a_slab(n_voxels):
    cartilage, _, true_mm = _slab(n_voxels)
    pixel = SPACING[0]  # along the thickness
    plain = thickness_per_slice(cartilage, SPACING, slice_axis=2)
    assert np.isnan(plain.mean_mm[[0, -1]]).all() and (plain.n_skeleton[1:-1] > 0).all()
    median = np.nanmedian(plain.median_mm)
    # the paper's definition: between the thickness and one pixel more (skeleton on the middle pixel)
    assert true_mm - 1e-9 <= median <= true_mm + pixel + 1e-9
    corrected = thickness_per_slice(cartilage, SPACING, slice_axis=2, edge_correction=True)
    assert abs(np.nanmedian(corrected.median_mm) - true_mm) <= pixel / 2 + 1e-9
    assert np.isfinite(plain.thickness_map_mm).sum() == plain.n_skeleton.sum() == plain.values_mm.size


@pytest.mark.parametrize("n_voxels", [6, 7])
def test_normal_thickness_of_a_slab(n_voxels):
    cartilage, bone, true_mm = _slab(n_voxels)
    result = thickness_along_normals(cartilage, bone, SPACING)
    assert len(result.voxels) == cartilage[10].sum()  # one start per bone-side voxel
    # away from the slab's ends (where the normal tilts and the ray leaves through the side)
    i, j = result.voxels[:, 1], result.voxels[:, 2]
    interior = (i >= 6) & (i < 34) & (j >= 3) & (j < 5)
    np.testing.assert_allclose(np.abs(result.normals[interior, 0]), 1.0, atol=0.01)  # within 8 degrees
    np.testing.assert_allclose(result.thickness_mm[interior], true_mm, atol=0.02)
    assert abs(np.median(result.thickness_mm) - true_mm) < 0.02  # all voxels, ends included
    per_slice = result.per_slice(cartilage.shape[2])
    assert np.isnan(per_slice[[0, -1]]).all()
    np.testing.assert_allclose(per_slice[2:-2], true_mm, atol=0.1)


@pytest.mark.parametrize("thickness_mm", [1.2, 2.0])
def test_both_methods_on_a_curved_shell(thickness_mm):
    """Anisotropic voxels (0.3 x 0.36 x 0.7 mm), curved cartilage: both methods within their bounds."""
    cartilage, bone, true_mm = _shell(thickness_mm=thickness_mm)
    pixel = max(SPACING[:2])
    plain = thickness_per_slice(cartilage, SPACING, slice_axis=2)
    assert true_mm - 0.05 <= np.nanmedian(plain.median_mm) <= true_mm + pixel
    corrected = thickness_per_slice(cartilage, SPACING, slice_axis=2, edge_correction=True)
    assert abs(np.nanmedian(corrected.median_mm) - true_mm) <= pixel / 2
    normals = thickness_along_normals(cartilage, bone, SPACING)
    assert not np.isnan(normals.thickness_mm).any()
    inner = (normals.voxels[:, 2] >= 2) & (normals.voxels[:, 2] <= 7)  # not the two end slices of the shell
    assert abs(np.median(normals.thickness_mm[inner]) - true_mm) < 0.05
    assert np.percentile(np.abs(normals.thickness_mm[inner] - true_mm), 80) < 0.2
    # the two methods agree per slice within a pixel (inner slices)
    per_slice = normals.per_slice(cartilage.shape[2])
    assert np.isfinite(per_slice[1:-1]).all() and np.isfinite(corrected.median_mm[1:-1]).all()
    assert np.max(np.abs(per_slice[2:-2] - corrected.median_mm[2:-2])) < pixel


def test_slice_axis_is_respected():
    cartilage, _, true_mm = _slab(7)
    moved = np.moveaxis(cartilage, 2, 0)
    spacing = (SPACING[2], SPACING[0], SPACING[1])
    a = thickness_per_slice(cartilage, SPACING, slice_axis=2)
    b = thickness_per_slice(moved, spacing, slice_axis=0)
    np.testing.assert_allclose(a.median_mm, b.median_mm, equal_nan=True)


def test_bad_input_raises_typed_error():
    cartilage, bone, _ = _slab(6)
    with pytest.raises(QmriInputError, match="3-D mask"):
        thickness_per_slice(cartilage[0], SPACING)
    with pytest.raises(QmriInputError, match="spacing_mm"):
        thickness_per_slice(cartilage, (0.3, 0.3))
    with pytest.raises(QmriInputError, match="spacing_mm"):
        thickness_per_slice(cartilage, (0.3, 0.0, 0.7))
    with pytest.raises(QmriInputError, match="slice_axis"):
        thickness_per_slice(cartilage, SPACING, slice_axis=3)
    with pytest.raises(QmriInputError, match="differs"):
        thickness_along_normals(cartilage, bone[:, :, :4], SPACING)
    with pytest.raises(QmriInputError, match="overlap"):
        thickness_along_normals(cartilage | bone, bone, SPACING)
    with pytest.raises(QmriInputError, match="touches the bone"):
        thickness_along_normals(cartilage, np.zeros_like(bone), SPACING)
