import numpy as np
import pytest

from kneelib.explain.pointing import (cell_pointing_hit, hot_spot, lesion_under_hot_spot, mask_on_grid,
                                      pointing_game, pointing_hit)


def _blob_map(size, centre):
    yy, xx = np.mgrid[:size, :size]
    return np.exp(-((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) / 4.0)


def test_hot_spot_upsamples_to_image_grid():
    cam = _blob_map(28, (7, 21))
    y, x = hot_spot(cam, (112, 112))
    assert abs(y - 7 * 4) <= 4 and abs(x - 21 * 4) <= 4


def test_pointing_hit_and_game():
    mask = np.zeros((112, 112), bool)
    mask[20:40, 75:95] = True
    on_target = _blob_map(28, (7, 21))
    off_target = _blob_map(28, (21, 5))
    assert pointing_hit(on_target, mask)
    assert not pointing_hit(off_target, mask)
    assert pointing_game([on_target, off_target], [mask, mask]) == 0.5
    # tolerance dilates the mask until the far hot spot is inside
    assert pointing_hit(off_target, mask, tolerance_px=110)


def test_lesion_under_hot_spot_names_first_matching_mask():
    effusion = np.zeros((56, 56), bool)
    effusion[0:20, 30:56] = True
    bml = np.zeros((56, 56), bool)
    bml[40:56, 0:10] = True
    cam = _blob_map(28, (4, 21))
    assert lesion_under_hot_spot(cam, {"bml": bml, "effusion_synovitis": effusion}) == "effusion_synovitis"
    assert lesion_under_hot_spot(_blob_map(28, (14, 14)), {"bml": bml}) == "none"


def test_pointing_game_needs_a_mask():
    with pytest.raises(ValueError, match="non-empty"):
        pointing_game([np.ones((4, 4))], [np.zeros((4, 4), bool)])


def test_mask_on_grid_pools_any_pixel_and_handles_uneven_splits():
    mask = np.zeros((7, 9), dtype=bool)
    mask[6, 8] = True  # bottom-right pixel only
    cells = mask_on_grid(mask, (2, 3))
    assert cells.shape == (2, 3) and cells.sum() == 1 and cells[1, 2]
    with pytest.raises(ValueError, match="finer"):
        mask_on_grid(mask, (8, 3))


def test_cell_pointing_hit_judges_a_coarse_map_by_its_hottest_cell():
    mask = np.zeros((64, 64), dtype=bool)
    mask[28:36, 10:18] = True  # a small box near the joint line, left half
    left_hot = np.array([[0.2, 0.1], [1.0, 0.3]])   # hottest cell: lower left, overlaps the box
    right_hot = np.array([[0.2, 0.1], [0.3, 1.0]])  # hottest cell: lower right, does not
    assert cell_pointing_hit(left_hot, mask) and not cell_pointing_hit(right_hot, mask)
    # upsampled, the 2 x 2 peak sits at its cell's centre (48, 15), away from the box at the
    # cell's upper edge: a coarse map cannot point finer than its cells
    assert hot_spot(left_hot, mask.shape) == (48, 15)
    assert not pointing_hit(left_hot, mask)
