"""Knee radiograph preprocessing: reading, intensity normalisation and geometry.

Paper 004 (Tiulpin & Saarakkala 2020), *Data Pre-processing*: after localisation each
knee is cropped (140 x 140 mm), rotated so that the tibial plateau is horizontal, one
side is mirrored so that all knees share one orientation, *histogram clipping and
global contrast normalisation* are applied "as proposed in" Tiulpin et al. 2018, and
the crop is resized to 310 x 310 pixels (0.45 mm) with bilinear interpolation.

Reading is not done here: :func:`kneelib.data.radiograph.read_radiograph` (re-exported
pixel-only as :func:`read_knee_image`) is the one radiograph reader; this module only
transforms pixels.

Histogram clipping follows Tiulpin et al. 2018 (DeepKnee): intensities are clipped
to their 5th and 99th percentiles and rescaled to [0, 1]. Global contrast
normalisation subtracts the image mean and divides by its standard deviation.
"""
from __future__ import annotations

import numpy as np

# Reading lives in kneelib.data.radiograph (one reader for DICOM and image files); these
# names are re-exported so that ``from kneelib.preprocess.radiograph import read_knee_image``
# keeps working.
from kneelib.data.errors import RadiographReadError
from kneelib.data.radiograph import IMAGE_SUFFIXES, read_knee_image

__all__ = [
    "RadiographReadError",
    "IMAGE_SUFFIXES",
    "read_knee_image",
    "clip_histogram",
    "global_contrast_normalise",
    "rotate",
    "mirror",
    "standardise_side",
    "crop_centre",
    "crop_around",
    "crop_mm",
    "resize",
    "prepare_knee_image",
    "prepare_image_stack",
]


def clip_histogram(image: np.ndarray, low_percentile: float = 5.0,
                   high_percentile: float = 99.0) -> np.ndarray:
    """Clip intensities to two percentiles and rescale to [0, 1] (Tiulpin et al. 2018).

    A constant image maps to zeros.
    """
    image = np.asarray(image, dtype=np.float32)
    if not 0 <= low_percentile < high_percentile <= 100:
        raise ValueError(f"need 0 <= low_percentile < high_percentile <= 100, "
                         f"got {low_percentile}, {high_percentile}")
    low, high = np.percentile(image, [low_percentile, high_percentile])
    if high <= low:
        return np.zeros_like(image)
    return ((np.clip(image, low, high) - low) / (high - low)).astype(np.float32)


def global_contrast_normalise(image, eps: float = 1e-6):
    """Subtract the mean and divide by the standard deviation of each image.

    Works on numpy arrays ``(H, W)`` and on torch tensors ``(..., H, W)`` (per image
    over the last two axes).
    """
    try:
        import torch

        if isinstance(image, torch.Tensor):
            mean = image.mean(dim=(-2, -1), keepdim=True)
            std = image.std(dim=(-2, -1), keepdim=True, unbiased=False)
            return (image - mean) / (std + eps)
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass
    image = np.asarray(image, dtype=np.float32)
    return ((image - image.mean()) / (image.std() + eps)).astype(np.float32)


def rotate(image: np.ndarray, angle_deg: float, order: int = 1) -> np.ndarray:
    """Rotate counter-clockwise by ``angle_deg`` about the centre, keeping the shape.

    Used to bring the tibial plateau to the horizontal (the angle is minus the
    plateau's inclination). Corners are filled with the nearest edge value.
    """
    from scipy import ndimage

    return ndimage.rotate(np.asarray(image, dtype=np.float32), angle_deg, reshape=False,
                          order=order, mode="nearest")


def mirror(image: np.ndarray) -> np.ndarray:
    """Flip left-right."""
    return np.ascontiguousarray(np.asarray(image)[:, ::-1])


def standardise_side(image: np.ndarray, side: str, reference_side: str = "R") -> np.ndarray:
    """Mirror a knee of the other side so that every knee has ``reference_side``'s orientation.

    Raises
    ------
    ValueError
        If ``side`` is not ``"L"`` or ``"R"``.
    """
    side = str(side).upper()
    if side not in ("L", "R"):
        raise ValueError(f"side must be 'L' or 'R', got {side!r}")
    return mirror(image) if side != reference_side.upper() else np.asarray(image)


def crop_centre(image: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Central ``size`` crop (``size`` <= image shape)."""
    height, width = (size, size) if np.isscalar(size) else size
    if height > image.shape[0] or width > image.shape[1]:
        raise ValueError(f"crop {height}x{width} larger than image {image.shape}")
    top = (image.shape[0] - height) // 2
    left = (image.shape[1] - width) // 2
    return image[top:top + height, left:left + width]


def crop_around(image: np.ndarray, centre_rc: tuple[float, float], size_px: int | tuple[int, int],
                fill: float | None = None) -> np.ndarray:
    """Crop ``size_px`` around a centre (row, col), padding outside the image.

    ``fill`` defaults to the image minimum (air on a radiograph).
    """
    height, width = (size_px, size_px) if np.isscalar(size_px) else size_px
    image = np.asarray(image)
    fill = float(image.min()) if fill is None else fill
    top = int(round(centre_rc[0] - height / 2))
    left = int(round(centre_rc[1] - width / 2))
    out = np.full((height, width), fill, dtype=image.dtype)
    src_top, src_left = max(top, 0), max(left, 0)
    src_bottom, src_right = min(top + height, image.shape[0]), min(left + width, image.shape[1])
    if src_bottom > src_top and src_right > src_left:
        out[src_top - top:src_bottom - top, src_left - left:src_right - left] = \
            image[src_top:src_bottom, src_left:src_right]
    return out


def crop_mm(image: np.ndarray, centre_rc: tuple[float, float], size_mm: float = 140.0,
            pixel_spacing_mm: float = 0.14) -> np.ndarray:
    """Square crop of ``size_mm`` millimetres around a knee centre (paper 004: 140 mm)."""
    if pixel_spacing_mm <= 0:
        raise ValueError(f"pixel_spacing_mm must be positive, got {pixel_spacing_mm}")
    return crop_around(image, centre_rc, int(round(size_mm / pixel_spacing_mm)))


def resize(image: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Bilinear resize to ``size`` (paper 004: 310 x 310), anti-aliased when shrinking."""
    from skimage.transform import resize as sk_resize

    shape = (size, size) if np.isscalar(size) else tuple(size)
    image = np.asarray(image, dtype=np.float32)
    if image.shape == shape:
        return image
    shrinking = shape[0] < image.shape[0] or shape[1] < image.shape[1]
    return sk_resize(image, shape, order=1, mode="edge", anti_aliasing=shrinking,
                     preserve_range=True).astype(np.float32)


def prepare_knee_image(image: np.ndarray, size: int, side: str | None = None,
                       mirror_side: str | None = "L", low_percentile: float = 5.0,
                       high_percentile: float = 99.0) -> np.ndarray:
    """Knee crop -> mirrored, histogram-clipped, resized image in [0, 1] (float32).

    Global contrast normalisation is left to the model input step (after
    augmentation, whose gamma correction needs the [0, 1] range).

    Parameters
    ----------
    image : ndarray
        A knee crop, any grey-level range.
    size : int
        Output side length in pixels.
    side : {"L", "R"}, optional
        Side of the knee; with ``mirror_side`` equal to it the image is flipped.
    mirror_side : {"L", "R"} or None
        Which side to mirror (``None``: never).
    """
    if side is not None and mirror_side is not None:
        image = standardise_side(image, side, reference_side="R" if mirror_side.upper() == "L" else "L")
    image = clip_histogram(image, low_percentile, high_percentile)
    return np.clip(resize(image, size), 0.0, 1.0)


def prepare_image_stack(paths, size: int, sides=None, mirror_side: str | None = "L",
                        progress: bool = True) -> np.ndarray:
    """Read and :func:`prepare_knee_image` many files into one ``uint8`` array ``(n, size, size)``.

    Storing 8 bits keeps a few thousand knees in memory; divide by 255 for [0, 1].

    Raises
    ------
    RadiographReadError, FileNotFoundError
        From :func:`read_knee_image`, naming the file.
    """
    from tqdm.auto import tqdm

    paths = list(paths)
    sides = [None] * len(paths) if sides is None else list(sides)
    if len(sides) != len(paths):
        raise ValueError(f"{len(paths)} paths but {len(sides)} sides")
    stack = np.empty((len(paths), size, size), dtype=np.uint8)
    for i, (path, side) in enumerate(tqdm(list(zip(paths, sides)), desc="preparing knee images",
                                          disable=not progress)):
        image = prepare_knee_image(read_knee_image(path), size, side=side, mirror_side=mirror_side)
        stack[i] = np.round(image * 255.0).astype(np.uint8)
    return stack
