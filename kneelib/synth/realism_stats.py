"""Image statistics that compare synthetic MR slices and radiograph crops with real ones.

A reader of rendered images, not part of generation (listed in
``kneelib.synth.cohort._READER_MODULES``). Issue 10, section 3 ("Image realism"):
the synthetic renderers (:mod:`kneelib.synth.mri`, :mod:`kneelib.synth.radiograph`)
are tuned so that these numbers of a synthetic image come close to those of the real
scans in ``$KNEELIB_DATA`` (the pyKNEEr DESS and T1rho, the pymskt 8-echo MSME, the
Chen KL radiograph crops). The statistics are scale-free, so scanners, bit depths and
display windows of different sources compare:

MR (:func:`mr_slice_stats`, one 2-D slice and named tissue masks):

- ``noise_sigma_rel``: Gaussian noise SD by the median absolute response of Immerkaer's
  Laplacian-difference mask (Immerkaer J., CVIU 1996;64:300-2; the median makes it
  robust to edges) inside the (eroded) reference tissue, a flat region, relative to
  that tissue's median; ``snr_<tissue>`` = tissue median / noise SD;
- ``contrast_<tissue>``: tissue median relative to the reference tissue (muscle);
- ``texture_<tissue>``: SD of the high-pass image (minus a 2 mm Gaussian) inside the
  tissue over ``noise_sigma``: 1 for flat tissue plus noise, larger for textured
  tissue (trabecular marrow);
- ``bias_<tissue>``: ratio of the 90th to the 10th percentile of the image smoothed at
  8 mm inside the tissue (smooth coil sensitivity and tissue heterogeneity; 1 = flat).

Radiograph crops (:func:`radiograph_crop_stats`, a crop clipped to [0, 1] as paper 004
does): grey-level percentiles, the high-frequency energy fraction of the power spectrum
(beyond half the Nyquist frequency: noise and trabecular texture), the noise SD from
Immerkaer's mask, and edge sharpness as the 90th percentile of the gradient magnitude
per pixel relative to the grey range.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["noise_sigma", "mr_slice_stats", "radiograph_crop_stats", "REAL_MR_ROIS", "real_mr_slice",
           "compare_stats"]

_IMMERKAER = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float64)

#: Documented boxes ``(row0, row1, col0, col1)`` of tissues in the real series' slices used
#: for the comparison (chosen by looking at the slices; rows/cols of ``array[:, :, k].T``).
#: ``pymskt`` MSME slice 10 (0.625 mm pixels): femoral and tibial condyle marrow, medial
#: gastrocnemius, posterior subcutaneous fat. ``pykneer`` DESS slice 50 (0.3125 mm):
#: femoral condyle marrow, posterior muscle.
REAL_MR_ROIS = {
    "mese": {"slice": 10, "rois": {"marrow": [(72, 104, 88, 120), (176, 208, 80, 128)],
                                   "muscle": [(128, 160, 180, 200)], "fat": [(78, 100, 204, 214)]}},
    "dess": {"slice": 50, "rois": {"marrow": [(200, 280, 120, 240)], "muscle": [(380, 440, 400, 470)]}},
}


def noise_sigma(image: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Noise SD of a 2-D image by the median of Immerkaer's mask response.

    For Gaussian noise of SD ``s`` the mask response has SD ``6 s``; the median of its
    absolute value (``0.6745`` SD for a Gaussian) ignores the few pixels on edges.
    """
    image = np.asarray(image, np.float64)
    if image.ndim != 2 or min(image.shape) < 3:
        raise ValueError(f"noise_sigma needs a 2-D image of at least 3 x 3 pixels, got shape {image.shape}")
    response = np.abs(ndimage.convolve(image, _IMMERKAER, mode="reflect"))[1:-1, 1:-1]
    if mask is not None:
        response = response[np.asarray(mask, bool)[1:-1, 1:-1]]
    return float(np.median(response) / (0.6745 * 6.0))


def mr_slice_stats(image: np.ndarray, masks: dict[str, np.ndarray], pixel_mm: float,
                   reference: str = "muscle", target_pixel_mm: float | None = None) -> dict[str, float]:
    """Scale-free statistics of one MR slice in named tissue masks (module docstring).

    Parameters
    ----------
    image : ndarray, (rows, cols)
    masks : dict of str -> bool ndarray (rows, cols)
        Tissues to measure; must include ``reference``.
    pixel_mm : float
        In-plane pixel size (sets the 2 mm high-pass and 8 mm bias smoothing).
    reference : str
        Tissue that the contrasts are relative to.
    target_pixel_mm : float, optional
        Measure as if acquired with this (larger) pixel: the slice is averaged down
        first (Gaussian anti-aliasing, then linear resampling; masks nearest), so that a
        fine real scan and a coarser synthetic rendering compare per pixel.

    Returns
    -------
    dict of str -> float
    """
    image = np.asarray(image, np.float64)
    if target_pixel_mm is not None and target_pixel_mm > pixel_mm * 1.05:
        image, masks = _downsample(image, masks, target_pixel_mm / pixel_mm)
        pixel_mm = target_pixel_mm
    if reference not in masks:
        raise ValueError(f"mr_slice_stats: the reference tissue {reference!r} has no mask (got {sorted(masks)})")
    flat = ndimage.binary_erosion(np.asarray(masks[reference], bool), iterations=1)
    sigma = max(noise_sigma(image, flat if flat.sum() >= 10 else None), 1e-9)
    high = image - ndimage.gaussian_filter(image, 2.0 / pixel_mm)
    smooth = ndimage.gaussian_filter(image, 8.0 / pixel_mm)
    ref = float(np.median(image[masks[reference]]))
    out = {"noise_sigma_rel": sigma / max(ref, 1e-9)}
    for name, mask in masks.items():
        mask = np.asarray(mask, bool)
        if mask.sum() < 10:
            continue
        median = float(np.median(image[mask]))
        out[f"snr_{name}"] = median / sigma
        out[f"contrast_{name}"] = median / max(ref, 1e-9)
        out[f"texture_{name}"] = float(high[mask].std() / sigma)
        low, upper = np.percentile(smooth[mask], [10, 90])
        out[f"bias_{name}"] = float(upper / max(low, 1e-9))
    return out


def _downsample(image, masks, factor):
    """Average an image down by ``factor`` (masks: nearest, kept only where fully inside)."""
    smooth = ndimage.gaussian_filter(image, 0.425 * factor)
    zoomed = ndimage.zoom(smooth, 1.0 / factor, order=1, grid_mode=True, mode="nearest")
    erode = int(factor // 2)             # (iterations=0 would erode until nothing is left)
    shrunk = {name: ndimage.zoom((ndimage.binary_erosion(m, iterations=erode) if erode else m).astype(np.uint8),
                                 1.0 / factor, order=0, grid_mode=True, mode="nearest").astype(bool)
              for name, m in masks.items()}
    return zoomed, shrunk


def _boxes(shape, boxes) -> np.ndarray:
    mask = np.zeros(shape, bool)
    for r0, r1, c0, c1 in boxes:
        mask[r0:r1, c0:c1] = True
    return mask


def real_mr_slice(name: str, array: np.ndarray, echo: int = 0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The documented slice of a real series and its ROI masks (:data:`REAL_MR_ROIS`).

    ``array`` is :attr:`kneelib.data.dicom.Volume.array` of the series (``(cols, rows,
    slices[, echoes])``).
    """
    entry = REAL_MR_ROIS[name]
    volume = array[..., echo] if array.ndim == 4 else array
    image = np.asarray(volume[:, :, entry["slice"]], np.float64).T
    return image, {tissue: _boxes(image.shape, boxes) for tissue, boxes in entry["rois"].items()}


def radiograph_crop_stats(crop: np.ndarray) -> dict[str, float]:
    """Scale-free statistics of a knee radiograph crop (module docstring).

    The crop is clipped to its 5th-99th percentiles and scaled to [0, 1] first
    (:func:`kneelib.preprocess.radiograph.clip_histogram`, the network input of paper 004).
    """
    from kneelib.preprocess.radiograph import clip_histogram

    image = clip_histogram(np.asarray(crop, np.float32)).astype(np.float64)
    spectrum = np.abs(np.fft.fftshift(np.fft.fft2(image - image.mean()))) ** 2
    rows, cols = image.shape
    fy = (np.arange(rows) - rows // 2) / rows
    fx = (np.arange(cols) - cols // 2) / cols
    radius = np.hypot(*np.meshgrid(fy, fx, indexing="ij"))
    gradient = np.hypot(*np.gradient(ndimage.gaussian_filter(image, 0.7)))
    out = {f"grey_p{p}": float(v) for p, v in zip((10, 25, 50, 75, 90), np.percentile(image, [10, 25, 50, 75, 90]))}
    out["high_freq_fraction"] = float(spectrum[radius > 0.25].sum() / max(spectrum.sum(), 1e-12))
    out["noise_sigma"] = noise_sigma(image)
    out["edge_p90"] = float(np.percentile(gradient, 90))
    out["edge_p99"] = float(np.percentile(gradient, 99))
    return out


def compare_stats(synthetic: list[dict[str, float]], real: list[dict[str, float]]):
    """Median of each statistic over synthetic and real images side by side, with their ratio.

    Returns
    -------
    pandas.DataFrame
        Index: statistic; columns ``synthetic``, ``real``, ``ratio`` (synthetic / real).
    """
    import pandas as pd

    syn, rea = pd.DataFrame(synthetic).median(), pd.DataFrame(real).median()
    table = pd.DataFrame({"synthetic": syn, "real": rea}).dropna(how="all")
    table["ratio"] = table["synthetic"] / table["real"].where(table["real"] != 0)
    return table
