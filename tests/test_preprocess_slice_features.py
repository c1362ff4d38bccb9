"""N4 bias correction and the cached slice-feature pipeline of paper 002 on tiny seeded data."""
import numpy as np
import pytest

from kneelib.data.dicom import Volume
from kneelib.preprocess.bias_field import BiasFieldInputError, coefficient_of_variation, n4_bias_correct
from kneelib.preprocess.slice_features import (SliceFeatureConfig, SliceInputError, central_window, label_slices,
                                               prepare_slices, series_slices)


def _biased_phantom(seed=0):
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[0:16, 0:48, 0:48].astype(float)
    inside = ((y - 24) ** 2 + (x - 24) ** 2) < 20 ** 2
    truth = np.where(inside, 100.0, 5.0) + rng.normal(0, 1.0, inside.shape)
    bias = np.exp(0.4 * (x - 24) / 24)  # smooth multiplicative field
    return (truth * bias).astype(np.float32), inside


def test_n4_flattens_a_smooth_bias_field():
    volume, inside = _biased_phantom()
    result = n4_bias_correct(volume, shrink=2, iterations=(30, 30))
    assert result.corrected.shape == volume.shape and np.all(result.bias > 0)
    before = coefficient_of_variation(volume, inside)
    after = coefficient_of_variation(result.corrected, inside)
    assert after < 0.6 * before


@pytest.mark.parametrize("bad, message", [(np.zeros((4, 4)), "3-D"), (np.full((8, 8, 8), np.nan), "non-finite"),
                                          (-np.ones((8, 8, 8)), "negative"), (np.zeros((8, 8, 8)), "foreground")])
def test_n4_typed_errors(bad, message):
    with pytest.raises(BiasFieldInputError, match=message):
        n4_bias_correct(bad, shrink=1, iterations=(2,))


def test_cv_errors():
    with pytest.raises(BiasFieldInputError):
        coefficient_of_variation(np.ones((3, 3)), np.zeros((3, 3), bool))
    with pytest.raises(BiasFieldInputError):
        coefficient_of_variation(np.ones((3, 3)), np.ones((2, 2), bool))


def test_central_window():
    np.testing.assert_array_equal(central_window(35, 8), np.arange(13, 21))
    np.testing.assert_array_equal(central_window(5, 8), np.arange(5))
    np.testing.assert_array_equal(central_window(5, None), np.arange(5))
    with pytest.raises(SliceInputError):
        central_window(0, 4)


def test_config_rejects_bad_values():
    with pytest.raises(SliceInputError, match="unknown series"):
        SliceFeatureConfig(series="AX_T1")
    with pytest.raises(SliceInputError):
        SliceFeatureConfig(n_slices=0)
    with pytest.raises(SliceInputError):
        SliceFeatureConfig(image_size=8)
    with pytest.raises(SliceInputError):
        SliceFeatureConfig().description("X")


def _coronal_volume(side: str, marker_x: int):
    """A 20 x 10 x 24 (x, y, z) RAS volume with a bright column at x = marker_x and z >= 12."""
    array = np.full((20, 10, 24), 10, np.uint16)
    array[marker_x, :, 12:] = 1000
    affine = np.diag([1.0, 3.0, 1.0, 1.0])
    return Volume(array=array, affine=affine, laterality=side, series_description=f"COR_IW_TSE_{side}")


def test_series_slices_orientation_and_mirroring():
    right, _ = series_slices(_coronal_volume("R", 15), "COR_IW_TSE")
    left, spacing = series_slices(_coronal_volume("L", 4), "COR_IW_TSE")
    assert right.shape == (10, 24, 20) and spacing == (3.0, 1.0, 1.0)
    # superior (high z) first: the marker is in the top half of the rows
    assert right[0, :12, 15].mean() > 500 and right[0, 12:, 15].mean() < 50
    # a left knee at x=4 mirrored lands where the right knee's x=15 is
    np.testing.assert_array_equal(right, left)


def test_prepare_slices_and_labels_share_a_grid():
    volume = _coronal_volume("R", 15)
    config = SliceFeatureConfig(n_slices=4, image_size=32, n4_shrink=0)
    images, indices = prepare_slices(volume, config)
    assert images.shape == (4, 32, 32) and images.min() >= 0 and images.max() <= 1
    np.testing.assert_array_equal(indices, [3, 4, 5, 6])
    labels = np.transpose((volume.array > 500).astype(np.uint8), (2, 1, 0))  # (slices, rows, cols) DICOM order
    on_slices = label_slices(labels, volume, config)
    assert on_slices.shape == images.shape
    # the bright column (one pixel wide, blurred by the resize) lies under its label
    assert images[on_slices > 0].mean() > 4 * images[on_slices == 0].mean()
    assert on_slices[0, :12].sum() > 0 and on_slices[0, 20:].sum() == 0
    with pytest.raises(SliceInputError):
        label_slices(labels[:, :, :5], volume, config)


def test_exclusion_reason_names_the_error_without_local_paths(tmp_path):
    from kneelib.preprocess.slice_features import exclusion_reason

    root = tmp_path / "cohort"
    error = ValueError(f"uneven slice spacing in {root}/0.C.2/9000011/20050420/00011002: gap of 12 mm; more detail")
    reason = exclusion_reason(error, root)
    assert reason == "ValueError: uneven slice spacing in 0.C.2/9000011/20050420/00011002: gap of 12 mm"
    assert str(tmp_path) not in reason
