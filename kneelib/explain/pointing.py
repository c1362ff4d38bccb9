"""Checks of saliency maps against planted ground truth.

Where the papers had a radiologist read the saliency maps (paper 000 Fig. 3I;
paper 004 shows Grad-CAM examples), the synthetic cohort knows where every lesion
is, so the maps can be scored.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from kneelib.explain.upsample import saliency_on_image

__all__ = ["hot_spot", "pointing_hit", "pointing_game", "lesion_under_hot_spot", "mask_on_grid",
           "cell_pointing_hit"]


def hot_spot(saliency: np.ndarray, shape: tuple[int, ...] | None = None) -> tuple[int, ...]:
    """``(row, col)`` of the saliency maximum on the image grid ``shape`` (default: the map's own).

    The map is upsampled by :func:`kneelib.explain.upsample.upsample_saliency` (the
    resampling figures draw) and the hot spot is that of
    :func:`kneelib.explain.upsample.saliency_on_image`: a maximum of the drawn map,
    among tied pixels the one nearest the centre of the hottest feature cell.
    """
    return saliency_on_image(saliency, shape).hot_spot


def pointing_hit(saliency: np.ndarray, mask: np.ndarray, tolerance_px: int = 0) -> bool:
    """Pointing game for one map: is the hot spot inside ``mask`` (dilated by ``tolerance_px``)?

    Parameters
    ----------
    saliency : ndarray
        Saliency map at any resolution (e.g. 28x28 CAM); upsampled to ``mask.shape``
        as figures draw it (:func:`kneelib.explain.upsample.saliency_on_image`).
    mask : ndarray of bool
        Ground-truth region on the image grid.
    tolerance_px : int
        Dilation of the mask in image pixels (the 15-pixel tolerance of Zhang et al.
        2018 is common for natural images).
    """
    mask = np.asarray(mask, dtype=bool)
    if tolerance_px > 0:
        mask = ndimage.binary_dilation(mask, iterations=tolerance_px)
    return bool(mask[hot_spot(saliency, mask.shape)])


def mask_on_grid(mask: np.ndarray, grid_shape: tuple[int, int]) -> np.ndarray:
    """A 2-D image mask pooled onto a coarse grid: a cell is True if any of its pixels is.

    Cell boundaries split the image as evenly as possible (``numpy.array_split``), so
    the image size need not be a multiple of the grid.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2 or len(grid_shape) != 2:
        raise ValueError(f"mask_on_grid needs a 2-D mask and a 2-D grid, got {mask.shape} and {grid_shape}")
    if grid_shape[0] > mask.shape[0] or grid_shape[1] > mask.shape[1]:
        raise ValueError(f"grid {grid_shape} is finer than the mask {mask.shape}")
    row_starts = [part[0] for part in np.array_split(np.arange(mask.shape[0]), grid_shape[0])]
    col_starts = [part[0] for part in np.array_split(np.arange(mask.shape[1]), grid_shape[1])]
    return np.logical_or.reduceat(np.logical_or.reduceat(mask, row_starts, axis=0), col_starts, axis=1)


def cell_pointing_hit(saliency: np.ndarray, mask: np.ndarray) -> bool:
    """Pointing game at the map's own resolution: does the hottest cell overlap ``mask``?

    A coarse map cannot point finer than its cells. Upsampled (:func:`hot_spot`), a
    2 x 2 Grad-CAM of a 64-pixel input points at the centre of its hottest cell, one of
    only four possible points, so a small region elsewhere in that cell is missed and
    the share of the image covered by the region is not the chance level of a hit.
    This test asks only what such a map can answer -- which cell -- and its chance is
    the share of cells that overlap the mask (:func:`mask_on_grid`). For fine maps
    (e.g. 28 x 28 CAMs) :func:`pointing_hit` is the test.
    """
    saliency = np.asarray(saliency)
    cells = mask_on_grid(mask, saliency.shape)
    return bool(cells[hot_spot(saliency)])


def pointing_game(saliencies, masks, tolerance_px: int = 0) -> float:
    """Fraction of maps whose hot spot lies in their mask; maps with empty masks are skipped."""
    hits = [pointing_hit(s, m, tolerance_px) for s, m in zip(saliencies, masks) if np.any(m)]
    if not hits:
        raise ValueError("pointing game needs at least one non-empty ground-truth mask")
    return float(np.mean(hits))


def lesion_under_hot_spot(saliency: np.ndarray, lesion_masks: dict[str, np.ndarray],
                          tolerance_px: int = 0) -> str:
    """Name of the first lesion whose mask holds the hot spot, or ``"none"``.

    ``lesion_masks`` maps lesion names to masks on one image grid; the order of the
    dict is the priority when masks overlap.
    """
    masks = {name: np.asarray(mask, dtype=bool) for name, mask in lesion_masks.items()}
    shapes = {mask.shape for mask in masks.values()}
    if len(shapes) > 1:
        raise ValueError(f"lesion masks must share one image grid; got shapes {sorted(shapes)}")
    if not masks:
        return "none"
    spot = hot_spot(saliency, shapes.pop())  # one hot spot for all lesions
    for name, mask in masks.items():
        if tolerance_px > 0 and mask.any():
            mask = ndimage.binary_dilation(mask, iterations=tolerance_px)
        if mask[spot]:
            return name
    return "none"
