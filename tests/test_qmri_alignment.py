"""MSME -> DESS alignment through the patient coordinates (paper 001, "Relaxometry")."""
from __future__ import annotations

import numpy as np
import pytest

from kneelib.data.dicom import Volume
from kneelib.qmri import QmriInputError
from kneelib.qmri.alignment import align_msme_to_dess, resample_to_grid, volume_to_sitk


def _rotation(axis, degrees):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    a = np.deg2rad(degrees)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k


def _affine(rotation, spacing, origin):
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


def _world(affine, shape):
    index = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).reshape(-1, 3)
    return (index @ affine[:3, :3].T + affine[:3, 3]).reshape(*shape, 3)


def _field(world):
    """A linear function of the RAS position (linear interpolation reproduces it exactly)."""
    return 100.0 + 2.0 * world[..., 0] - 1.5 * world[..., 1] + 0.5 * world[..., 2]


@pytest.fixture()
def pair():
    # reference: a sagittal-like DESS grid, rotated a little, 0.7 x 0.5 x 0.8 mm
    ref_affine = _affine(_rotation([0.3, 1, 0.2], 17), [0.7, 0.5, 0.8], [-10.0, 5.0, 3.0])
    reference = Volume(array=np.zeros((20, 22, 18), np.float32), affine=ref_affine)
    # moving: another orientation, coarser slices, offset; covers the reference with a margin
    mov_affine = _affine(_rotation([1, -0.4, 0.5], -25), [0.6, 0.6, 2.0], [-30.0, -15.0, -20.0])
    shape = (80, 80, 26)
    world = _world(mov_affine, shape)
    echoes = np.stack([_field(world) * np.exp(-te / 40.0) for te in (10.0, 20.0, 30.0)], axis=-1).astype(np.float32)
    moving = Volume(array=echoes, affine=mov_affine, echo_times_ms=(10.0, 20.0, 30.0))
    return reference, moving


def test_linear_resampling_reproduces_a_linear_field_in_patient_coordinates(pair):
    reference, moving = pair
    aligned = align_msme_to_dess(moving, reference)
    truth = _field(_world(reference.affine, reference.shape))
    assert aligned.echoes.shape == reference.shape + (3,)
    inside = aligned.covered
    assert inside.mean() > 0.5
    for e, te in enumerate((10.0, 20.0, 30.0)):
        err = np.abs(aligned.echoes[..., e][inside] - truth[inside] * np.exp(-te / 40.0))
        assert err.max() < 1e-2, err.max()


def test_known_offset_moves_a_label_by_that_offset():
    spacing = np.array([0.5, 0.5, 0.5])
    ref = Volume(array=np.zeros((40, 40, 40), np.uint8), affine=_affine(np.eye(3), spacing, [0, 0, 0]))
    labels = np.zeros((40, 40, 40), np.uint8)
    labels[10:20, 12:18, 15:25] = 7
    # the moving series starts 2 mm further in +x (RAS) than the reference: voxel i of it is
    # voxel i + 4 of the reference
    moving = Volume(array=labels, affine=_affine(np.eye(3), spacing, [2.0, 0, 0]))
    out = resample_to_grid(moving, ref, interpolation="nearest")
    assert out.dtype == np.uint8
    assert set(np.unique(out)) == {0, 7}
    expected = np.zeros_like(labels)
    expected[14:24, 12:18, 15:25] = 7
    np.testing.assert_array_equal(out, expected)


def test_sitk_geometry_is_lps(pair):
    reference, _ = pair
    image = volume_to_sitk(reference)
    # ITK point of voxel (1, 2, 3) equals the RAS affine's point with x and y negated
    ras = reference.affine @ np.array([1, 2, 3, 1.0])
    np.testing.assert_allclose(image.TransformIndexToPhysicalPoint((1, 2, 3)), ras[:3] * [-1, -1, 1], atol=1e-6)


def test_bad_inputs_are_typed(pair):
    reference, moving = pair
    with pytest.raises(QmriInputError, match="interpolation"):
        resample_to_grid(moving, reference, interpolation="cubic")
    with pytest.raises(QmriInputError, match="4-D"):
        align_msme_to_dess(reference, reference)
    sheared = Volume(array=np.zeros((4, 4, 4)), affine=np.array([[1, 0.5, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0],
                                                                 [0, 0, 0, 1.0]]))
    with pytest.raises(QmriInputError, match="orthogonal"):
        volume_to_sitk(sheared)
    other = Volume(array=moving.array, affine=moving.affine, echo_times_ms=moving.echo_times_ms,
                   metadata={"FrameOfReferenceUID": "1.2"})
    ref2 = Volume(array=reference.array, affine=reference.affine, metadata={"FrameOfReferenceUID": "1.3"})
    with pytest.raises(QmriInputError, match="frames of reference"):
        align_msme_to_dess(other, ref2)
