"""Checks of saliency maps against planted ground truth.

Where the papers had a radiologist read the saliency maps (paper 000 Fig. 3I;
paper 004 shows Grad-CAM examples), the synthetic cohort knows where every lesion
is, so the maps can be scored.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["hot_spot", "pointing_hit", "pointing_game", "lesion_under_hot_spot"]


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
