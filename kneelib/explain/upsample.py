"""The one upsampler of saliency maps, and the hot spot that figures draw and games score.

CAM (paper 000, Fig. 3) and Grad-CAM (paper 004's attention maps) live on the grid of
the last convolutional features, e.g. 28 x 28 for a 224-pixel input or 2 x 2 for a
64-pixel input to ResNet-18. Figures overlay them on the image and the pointing game
(:mod:`kneelib.explain.pointing`) scores their maximum against planted lesions; both
must see the *same* image-grid map, so every module upsamples with
:func:`upsample_saliency` and takes the hot spot from :func:`saliency_on_image`.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["upsample_saliency", "SaliencyOnImage", "saliency_on_image"]


def _axis_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lower/upper source index and the upper weight of each output index (half-pixel rule)."""
    source = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    source = np.clip(source, 0.0, n_in - 1)
    lower = np.floor(source).astype(np.intp)
    upper = np.minimum(lower + 1, n_in - 1)
    return lower, upper, source - lower


def upsample_saliency(saliency, out_shape) -> np.ndarray:
    """Bilinear resampling of saliency maps ``(..., h, w)`` to the image grid ``out_shape``.

    Convention: half-pixel centres (PyTorch's ``align_corners=False``, OpenCV's and
    scikit-image's ``resize``). Cell ``k`` of an ``n``-cell axis covers image pixels
    ``[k, k + 1) * N / n`` and its value sits at that span's centre,
    ``(k + 0.5) * N / n - 0.5`` in pixel coordinates; between centres the map is
    interpolated linearly, beyond the outermost centres it is held constant.

    Why this convention: a feature cell of a strided convolutional network summarises
    the block of pixels it was pooled from, so its value belongs at the centre of that
    block. The alternative ``align_corners=True`` (``scipy.ndimage.zoom``'s default)
    pins the outermost cells to the outermost *pixels*: the whole map shifts outwards by
    up to half a cell, and the peak of a coarse map (2 x 2 Grad-CAM of a 64-pixel input)
    lands in an image corner instead of in the middle of its cell. With the half-pixel
    rule the maximum of a map whose hottest cell is inside the grid sits at that cell's
    centre; for a hottest cell on the border it is a plateau from the cell's centre to
    the image edge (the constant extension), which :func:`saliency_on_image` resolves.

    Parameters
    ----------
    saliency : array-like, shape (..., h, w)
        Maps on the feature grid; leading axes (batch, slices) are kept.
    out_shape : int or tuple of int
        Image grid ``(H, W)``; an int means a square grid.

    Returns
    -------
    ndarray, shape (..., H, W)
        ``float64`` (``float32`` input stays ``float32``). Identical to
        ``torch.nn.functional.interpolate(..., mode="bilinear", align_corners=False)``
        up to rounding.
    """
    saliency = np.asarray(saliency)
    if saliency.ndim < 2:
        raise ValueError(f"saliency must have at least 2 dimensions (..., h, w); got shape {saliency.shape}")
    out_shape = (int(out_shape), int(out_shape)) if np.isscalar(out_shape) else tuple(int(s) for s in out_shape)
    if len(out_shape) != 2 or min(out_shape) < 1:
        raise ValueError(f"out_shape must be a positive (H, W); got {out_shape}")
    if min(saliency.shape[-2:]) < 1:
        raise ValueError(f"saliency map is empty: shape {saliency.shape}")
    dtype = np.float32 if saliency.dtype == np.float32 else np.float64
    values = saliency.astype(np.float64)
    if values.shape[-2:] == out_shape:
        return values.astype(dtype)
    row_lo, row_hi, row_w = _axis_weights(values.shape[-2], out_shape[0])
    col_lo, col_hi, col_w = _axis_weights(values.shape[-1], out_shape[1])
    rows = values[..., row_lo, :] * (1.0 - row_w)[:, None] + values[..., row_hi, :] * row_w[:, None]
    out = rows[..., col_lo] * (1.0 - col_w) + rows[..., col_hi] * col_w
    return out.astype(dtype)


class SaliencyOnImage(NamedTuple):
    """A map on the image grid and the pixel that the pointing game scores.

    Attributes
    ----------
    map : ndarray, shape (H, W)
        :func:`upsample_saliency` of the map (``float32`` for ``float32`` maps, as
        :func:`kneelib.explain.cam.upsample_cam` draws them): draw this one.
    hot_spot : tuple of int
        ``(row, col)`` of a maximum of ``map``: mark this one.
    """

    map: np.ndarray
    hot_spot: tuple[int, int]


def saliency_on_image(saliency, out_shape=None) -> SaliencyOnImage:
    """Upsample one map and pick its hot spot, for figures and the pointing game alike.

    The hot spot is a pixel where the upsampled map reaches its maximum
    (``map[hot_spot] == map.max()``). Where several pixels share that maximum -- the
    plateau between a border cell's centre and the image edge, or a map that is flat
    -- it is the one nearest the centre of the hottest feature cell (the first one in
    row-major order when cells tie), so that a coarse map points at the middle of its
    hottest cell rather than at an image corner.

    Parameters
    ----------
    saliency : array-like, shape (h, w)
    out_shape : tuple of int, optional
        Image grid; ``None`` keeps the map's own grid.

    Returns
    -------
    SaliencyOnImage
    """
    saliency = np.asarray(saliency)
    if saliency.ndim != 2:
        raise ValueError(f"saliency_on_image takes one 2-D map; got shape {saliency.shape}")
    if not np.all(np.isfinite(saliency)):
        raise ValueError("saliency map has NaN or infinite values: it has no hot spot")
    image_map = upsample_saliency(saliency, saliency.shape if out_shape is None else out_shape)
    peak_rows, peak_cols = np.nonzero(image_map == image_map.max())
    cell = np.unravel_index(int(np.argmax(saliency)), saliency.shape)
    centre = [(c + 0.5) * n_out / n_in - 0.5
              for c, n_in, n_out in zip(cell, saliency.shape, image_map.shape)]
    nearest = int(np.argmin((peak_rows - centre[0]) ** 2 + (peak_cols - centre[1]) ** 2))
    return SaliencyOnImage(image_map, (int(peak_rows[nearest]), int(peak_cols[nearest])))
