"""Checks of saliency maps against planted ground truth.

Where the papers had a radiologist read the saliency maps (paper 000 Fig. 3I;
paper 004 shows Grad-CAM examples), the synthetic cohort knows where every lesion
is, so the maps can be scored.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["hot_spot", "pointing_hit", "pointing_game", "lesion_under_hot_spot", "mask_on_grid",
           "cell_pointing_hit"]


def _upsample(saliency: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    saliency = np.asarray(saliency, dtype=np.float64)
    if saliency.shape == tuple(shape):
        return saliency
    zoom = [s / t for s, t in zip(shape, saliency.shape)]
    return ndimage.zoom(saliency, zoom, order=1)


def hot_spot(saliency: np.ndarray, shape: tuple[int, ...] | None = None) -> tuple[int, ...]:
    """Index of the saliency maximum, after bilinear upsampling to ``shape``."""
    sal = _upsample(saliency, shape) if shape is not None else np.asarray(saliency)
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(sal)), sal.shape))


def pointing_hit(saliency: np.ndarray, mask: np.ndarray, tolerance_px: int = 0) -> bool:
    """Pointing game for one map: is the hot spot inside ``mask`` (dilated by ``tolerance_px``)?

    Parameters
    ----------
    saliency : ndarray
        Saliency map at any resolution (e.g. 28x28 CAM); upsampled to ``mask.shape``.
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

    A coarse map (Grad-CAM of a small input can be 2 x 2) cannot point finer than its
    cells: upsampled by :func:`hot_spot` its peak sits at the image corner of the hottest
    cell, which misses a small region inside that cell. Chance for this test is the share of cells that
    overlap the mask (:func:`mask_on_grid`).
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
    for name, mask in lesion_masks.items():
        if np.any(mask) and pointing_hit(saliency, mask, tolerance_px):
            return name
    return "none"
