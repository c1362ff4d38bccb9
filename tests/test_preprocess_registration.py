import numpy as np
import pytest
from scipy import ndimage

from kneelib.preprocess.registration import (order_slices_medial_to_lateral, preprocess_knee, register_slice,
                                             resample_square, sagittal_slices, select_slices)


def knee_like_image(size=96, seed=0):
    """Smooth blobs standing in for femur, tibia and patella on a sagittal slice."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:size, :size].astype(float)
    image = np.zeros((size, size))
    for r, c, rr, rc, value in [(30, 50, 18, 22, 1.0), (70, 48, 16, 24, 0.8), (40, 18, 10, 6, 0.6),
                                (52, 60, 4, 12, 0.3)]:
        image[((rows - r) / rr) ** 2 + ((cols - c) / rc) ** 2 <= 1] = value
    return ndimage.gaussian_filter(image, 1.5) + rng.normal(0, 0.02, image.shape)


def moved(image, angle_deg, shift_rc):
    rotated = ndimage.rotate(image, angle_deg, reshape=False, order=1)
    return ndimage.shift(rotated, shift_rc, order=1)


def corr(a, b):
    return np.corrcoef(a.ravel(), b.ravel())[0, 1]


def test_rigid_registration_undoes_a_rotation_and_shift():
    template = knee_like_image()
    moving = moved(template, 8.0, (4.0, -5.0))
    spacing = (1.0, 1.0)
    result = register_slice(moving, template, spacing, seed=0)
    aligned = resample_square(moving, spacing, result.transform, (47.5, 47.5), crop_mm=96, output_size=96)
    reference = resample_square(template, spacing, None, (47.5, 47.5), crop_mm=96, output_size=96)
    np.testing.assert_allclose(reference, template, atol=1e-4)  # identity crop of the full field
    inner = (slice(10, 86), slice(10, 86))
    assert corr(aligned[inner], template[inner]) > 0.97 > corr(moving[inner], template[inner])
    assert abs(abs(result.angle_deg) - 8.0) < 1.5
    again = register_slice(moving, template, spacing, seed=0)
    assert again.angle_deg == result.angle_deg  # same seed, same transform


def test_crop_is_the_requested_physical_square():
    image = np.zeros((200, 100), dtype=np.float32)  # 0.5 mm rows, 1 mm columns: a 100 mm square
    image[80:120, 40:60] = 1.0  # 20 mm x 20 mm block centred at row 99.5, col 49.5 (mm: 49.75, 49.5)
    crop = resample_square(image, (0.5, 1.0), None, center_mm=(49.75, 49.5), crop_mm=40, output_size=40)
    assert crop.shape == (40, 40)
    block = crop > 0.5
    assert block.sum() == pytest.approx(400, rel=0.1)  # 20 x 20 one-mm pixels
    rows, cols = np.nonzero(block)
    assert abs(rows.mean() - 19.5) < 1 and abs(cols.mean() - 19.5) < 1


def test_ordering_mirrors_so_indices_mean_the_same_side():
    stack = np.arange(5)[:, None, None] * np.ones((5, 2, 2))
    x = np.array([-20.0, -10.0, 0.0, 10.0, 20.0])  # LPS: +x = patient's left
    right, order_r = order_slices_medial_to_lateral(stack, x, "R")
    left, order_l = order_slices_medial_to_lateral(stack, x, "L")
    # right knee: lateral = patient's right = -x, so the last slice is the most negative x
    assert x[order_r][-1] == -20 and x[order_l][-1] == 20
    np.testing.assert_array_equal(right[:, 0, 0], left[::-1, 0, 0])
    with pytest.raises(ValueError, match="side"):
        order_slices_medial_to_lateral(stack, x, "X")
    np.testing.assert_array_equal(select_slices(37, 18, 3, step=3), [9, 12, 15, 18, 21, 24, 27])
    with pytest.raises(ValueError, match="too few slices"):
        select_slices(37, 5, 11)


def test_sagittal_slices_of_a_volume_run_medial_to_lateral_in_both_knees():
    from kneelib.data.dicom import Volume

    data = np.zeros((4, 6, 8), dtype=np.float32)  # (x, y, z) in RAS
    data[:, 5, 7] = np.arange(4)  # most anterior, most superior voxel holds the x index
    affine = np.diag([3.0, 0.5, 0.4, 1.0])
    right = sagittal_slices(Volume(data, affine, laterality="R"))
    left = sagittal_slices(Volume(data, affine, laterality="L"))
    assert right[0].shape == (4, 8, 6) and right[1] == (0.4, 0.5)
    np.testing.assert_array_equal(right[0][:, 0, 0], [0, 1, 2, 3])  # superior-anterior corner first
    np.testing.assert_array_equal(left[0][:, 0, 0], [3, 2, 1, 0])  # left knee mirrored


def test_preprocess_knee_gives_aligned_slices_and_qc():
    template = np.stack([knee_like_image(seed=s) for s in range(7)])
    moving = np.stack([moved(t, -6.0, (3.0, 2.0)) for t in template])
    lesion = np.zeros(moving.shape, dtype=np.uint8)
    lesion[:, 60:70, 40:56] = 7  # a labelled region on the moving grid
    result = preprocess_knee(moving, (1.0, 1.0), 3, template, (1.0, 1.0), (47.5, 47.5), 3,
                             n_each_side=1, output_size=32, crop_mm=80, iterations=60,
                             label_volumes={"bml": lesion})
    assert result.images.shape == (3, 32, 32) and result.images.dtype == np.float32
    np.testing.assert_array_equal(result.slice_indices, [2, 3, 4])
    assert list(result.qc["offset"]) == [-1, 0, 1]
    reference = np.stack([resample_square(t, (1.0, 1.0), None, (47.5, 47.5), 80, 32) for t in template[2:5]])
    assert corr(result.images, reference) > 0.95
    bml = result.labels["bml"]
    assert bml.shape == (3, 32, 32) and set(np.unique(bml)) == {0, 7}  # nearest neighbour keeps codes
    with pytest.raises(ValueError, match="label volume"):
        preprocess_knee(moving, (1.0, 1.0), 3, template, (1.0, 1.0), (47.5, 47.5), 3, n_each_side=1,
                        label_volumes={"bad": lesion[:2]})
    shared = preprocess_knee(moving, (1.0, 1.0), 3, template, (1.0, 1.0), (47.5, 47.5), 3,
                             n_each_side=1, output_size=32, crop_mm=80, per_slice=False, iterations=60)
    assert shared.qc["angle_deg"].nunique() == 1


def test_labels_follow_the_registration_not_the_identity():
    """Issue 9, item 13: a lesion planted in the template frame and moved like the image must come
    back onto the template's lesion; carrying labels with an identity transform fails (negative control)."""
    template = np.stack([knee_like_image(seed=s) for s in range(7)])
    angle, shift = -10.0, (6.0, 5.0)
    moving = np.stack([moved(t, angle, shift) for t in template])
    lesion_template = np.zeros(template.shape, dtype=np.uint8)
    lesion_template[:, 60:72, 36:56] = 7
    lesion_moving = np.stack([ndimage.shift(ndimage.rotate(lesion, angle, reshape=False, order=0), shift, order=0)
                              for lesion in lesion_template])
    result = preprocess_knee(moving, (1.0, 1.0), 3, template, (1.0, 1.0), (47.5, 47.5), 3, n_each_side=1,
                             output_size=32, crop_mm=80, iterations=60, label_volumes={"bml": lesion_moving})

    def crop(stack):
        return np.stack([resample_square(s.astype(np.float32), (1.0, 1.0), None, (47.5, 47.5), 80, 32, nearest=True)
                         for s in stack[2:5]]) == 7

    def dice(a, b):
        return 2 * (a & b).sum() / (a.sum() + b.sum())

    expected = crop(lesion_template)
    assert dice(result.labels["bml"] == 7, expected) > 0.85
    assert dice(crop(lesion_moving), expected) < 0.7  # what an identity transform would give
