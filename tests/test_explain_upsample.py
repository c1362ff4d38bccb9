"""One upsampler for CAM, Grad-CAM and the pointing game (issue 9, item 3)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from kneelib.explain import saliency_on_image, upsample_saliency
from kneelib.explain.cam import upsample_cam
from kneelib.explain.gradcam import upsample_cams
from kneelib.explain.pointing import hot_spot, pointing_hit


def _random_maps(n, seed=0):
    """Smooth random maps on assorted feature grids, with assorted image grids."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        h, w = rng.integers(2, 9, 2)
        image_shape = tuple(int(s) for s in rng.integers(16, 80, 2))
        yield ndimage.gaussian_filter(rng.random((h, w)), 0.7).astype(np.float32), image_shape


def test_upsampler_is_torch_bilinear_with_half_pixel_centres():
    rng = np.random.default_rng(1)
    for (h, w), out in [((2, 2), (64, 64)), ((28, 28), (112, 112)), ((7, 5), (30, 17)), ((4, 4), (3, 5))]:
        maps = rng.random((3, h, w))
        expected = F.interpolate(torch.from_numpy(maps)[:, None], size=out, mode="bilinear",
                                 align_corners=False)[:, 0].numpy()
        np.testing.assert_allclose(upsample_saliency(maps, out), expected, atol=1e-12)
    assert upsample_saliency(np.ones((2, 2), np.float32), 8).dtype == np.float32
    with pytest.raises(ValueError, match="2 dimensions"):
        upsample_saliency(np.ones(4), (8, 8))


def test_cam_gradcam_and_pointing_upsample_alike():
    for saliency, shape in _random_maps(20):
        drawn = upsample_saliency(saliency, shape)
        np.testing.assert_array_equal(upsample_cam(saliency, shape), drawn)
        np.testing.assert_array_equal(upsample_cams(saliency[None], shape)[0], drawn)


def test_scored_hot_spot_is_a_maximum_of_the_drawn_map():
    # before: the pointing game zoomed with aligned corners (scipy) while figures drew
    # torch's half-pixel map; on these maps 104 of 200 scored points were not the drawn peak
    not_drawn_peak = []
    for saliency, shape in _random_maps(200):
        drawn = upsample_cam(saliency, shape)  # what plot_cam_comparison / plot_grad_cams show
        spot = hot_spot(saliency, shape)
        if drawn[spot] != drawn.max():
            not_drawn_peak.append((saliency.shape, shape, spot))
    assert not_drawn_peak == []
    for saliency, shape in _random_maps(20):
        on_image = saliency_on_image(saliency, shape)
        assert on_image.hot_spot == hot_spot(saliency, shape)
        np.testing.assert_array_equal(on_image.map, upsample_saliency(saliency, shape))


def test_two_equally_hot_cells_the_drawn_peak_wins():
    # cells 1 and 3 of each row are equally hot; the drawn map reaches 1 only at the
    # border cell (constant beyond its centre), the interior one peaks at 0.875
    saliency = np.tile([0.0, 1.0, 0.0, 1.0], (4, 1))
    drawn = upsample_cam(saliency, (16, 16))
    row, col = hot_spot(saliency, (16, 16))
    assert drawn[row, col] == drawn.max() == 1.0
    assert col >= 14  # the old aligned-corner zoom scored column 5, where the figure shows 0.875


def test_coarse_map_points_at_the_centre_of_its_hottest_cell():
    # the oarsi case: a 2 x 2 Grad-CAM of a 64-pixel input; hottest cell = lower left,
    # covering rows 32-63 and columns 0-31, centre (47.5, 15.5)
    saliency = np.array([[0.2, 0.1], [1.0, 0.3]])
    on_image = saliency_on_image(saliency, (64, 64))
    assert on_image.hot_spot == (48, 15)  # the old zoom put it in the image corner (63, 0)
    assert on_image.map[on_image.hot_spot] == on_image.map.max()
    centre_box = np.zeros((64, 64), bool)
    centre_box[40:56, 8:24] = True  # a lesion in the middle of the hottest cell
    assert pointing_hit(saliency, centre_box)
    corner_box = np.zeros((64, 64), bool)
    corner_box[56:, :8] = True  # a lesion in the cell's outer corner is not what the map points at
    assert not pointing_hit(saliency, corner_box)


def test_interior_peak_sits_at_its_cell_centre():
    peak = np.zeros((4, 4))
    peak[1, 2] = 1.0  # cell centre on a 16-pixel grid: (5.5, 9.5)
    row, col = hot_spot(peak, (16, 16))
    assert row in (5, 6) and col in (9, 10)
    assert hot_spot(peak) == (1, 2)  # no shape: the map's own grid
