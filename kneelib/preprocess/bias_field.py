"""N4 bias-field correction and the coefficient of variation it should lower (paper 002, 2.3.4).

Schiratti et al. 2021, section 2.3.4: "the N4 bias field correction method [24] was applied
to reconstructed images", followed by an intensity ("color") normalisation. N4 (Tustison et
al. 2010) is SimpleITK's ``N4BiasFieldCorrectionImageFilter``; it is fitted on a shrunken copy
of the volume inside a foreground mask (Otsu threshold) and the log bias field is then
evaluated on the full grid, so the cost depends on the shrink factor, not on the resolution.

A homogeneous tissue should look homogeneous after correction: :func:`coefficient_of_variation`
inside a region drawn on such a tissue is the check the chapter shows on the real DESS.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["BiasFieldInputError", "N4Result", "n4_bias_correct", "coefficient_of_variation"]


class BiasFieldInputError(ValueError):
    """The volume cannot be bias-corrected (wrong shape, non-finite values, no foreground)."""


@dataclass(frozen=True)
class N4Result:
    """A corrected volume and the multiplicative bias field (``corrected = volume / bias``)."""

    corrected: np.ndarray
    bias: np.ndarray


def n4_bias_correct(volume, shrink: int = 4, iterations: tuple[int, ...] = (20, 20, 10),
                    mask=None, spacing=(1.0, 1.0, 1.0), threads: int = 1) -> N4Result:
    """N4 bias-field correction of a 3-D volume (paper 002, 2.3.4; Tustison et al. 2010).

    Parameters
    ----------
    volume : array-like, shape (z, y, x)
        Intensities (any non-negative scale).
    shrink : int
        Shrink factor of the fitting grid (1 = full resolution; each axis is shrunk by at
        most its own length).
    iterations : tuple of int
        Maximum iterations per fitting level (one entry per level).
    mask : array-like of bool, optional
        Foreground the field is fitted on; default an Otsu threshold of the shrunken volume.
    spacing : tuple of float
        Voxel size (z, y, x) in mm; the B-spline field is laid out in physical space.
    threads : int
        ITK threads (SimpleITK's default, every core, is three times slower than one
        thread on a shared two-core machine for volumes of this size).

    Returns
    -------
    N4Result
        ``corrected`` (float32, same shape) and ``bias`` (float32, positive).

    Raises
    ------
    BiasFieldInputError
        For a volume that is not 3-D, holds non-finite or negative values, or has no
        foreground voxel.
    """
    import SimpleITK as sitk

    array = np.asarray(volume, dtype=np.float32)
    if array.ndim != 3:
        raise BiasFieldInputError(f"N4 needs a 3-D volume, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise BiasFieldInputError("volume holds non-finite values")
    if array.min() < 0:
        raise BiasFieldInputError(f"volume holds negative intensities (min {array.min():g}); N4 fits a log field")
    if int(shrink) < 1 or not iterations:
        raise BiasFieldInputError(f"shrink must be >= 1 and iterations non-empty, got {shrink}, {iterations}")
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(s) for s in spacing[::-1]))
    factors = [int(max(1, min(int(shrink), n // 4 if n >= 8 else 1))) for n in array.shape[::-1]]
    small = sitk.Shrink(image, factors)
    if mask is None:
        small_mask = sitk.OtsuThreshold(small, 0, 1, 200)
    else:
        mask = np.asarray(mask, dtype=np.uint8)
        if mask.shape != array.shape:
            raise BiasFieldInputError(f"mask {mask.shape} differs from volume {array.shape}")
        full_mask = sitk.GetImageFromArray(mask)
        full_mask.CopyInformation(image)
        small_mask = sitk.Shrink(full_mask, factors)
    if not sitk.GetArrayViewFromImage(small_mask).any():
        raise BiasFieldInputError("no foreground voxel to fit the bias field on")
    corrector = sitk.N4BiasFieldCorrectionImageFilter()
    corrector.SetMaximumNumberOfIterations([int(i) for i in iterations])
    corrector.SetNumberOfThreads(int(threads))
    corrector.Execute(small, small_mask)
    log_bias = sitk.GetArrayFromImage(corrector.GetLogBiasFieldAsImage(image)).astype(np.float32)
    bias = np.exp(log_bias)
    return N4Result(corrected=(array / bias).astype(np.float32), bias=bias.astype(np.float32))


def coefficient_of_variation(values, region) -> float:
    """Standard deviation over mean of ``values`` inside ``region`` (lower = flatter).

    Raises
    ------
    BiasFieldInputError
        When the region is empty, its shape differs, or its mean is not positive.
    """
    values = np.asarray(values, dtype=float)
    region = np.asarray(region, dtype=bool)
    if region.shape != values.shape:
        raise BiasFieldInputError(f"region {region.shape} differs from image {values.shape}")
    inside = values[region]
    if inside.size < 2:
        raise BiasFieldInputError("region holds fewer than two voxels")
    mean = float(inside.mean())
    if mean <= 0:
        raise BiasFieldInputError(f"mean inside the region is {mean:g}; CV undefined")
    return float(inside.std(ddof=1) / mean)
