"""The one radiograph reader: DICOM (CR/DX, any transfer syntax) and PNG/JPEG/TIFF images.

Every radiograph in kneelib is read by :func:`read_radiograph` (the pixel-only
:func:`read_knee_image` returns its pixels): the OAI knee radiographs (paper 004,
Tiulpin & Saarakkala 2020, *Data*: bilateral PA fixed-flexion radiographs), the
synthetic ones (:func:`kneelib.synth.oai_writer.write_radiograph`) and the Chen et al.
PNG crops. :mod:`kneelib.preprocess.radiograph` only transforms pixels.

DICOM pixels
------------
1. The pixel data are decoded by pydicom; compressed transfer syntaxes (JPEG
   lossless, JPEG-LS, JPEG 2000, RLE) use the decoders pinned in
   ``requirements.txt`` (``pylibjpeg`` with its ``-libjpeg``, ``-openjpeg`` and
   ``-rle`` plugins, and ``pyjpegls``). A file that cannot be decoded raises
   :class:`~kneelib.data.errors.RadiographReadError` naming the file, the transfer
   syntax and pydicom's reason.
2. The modality LUT (``RescaleSlope``/``RescaleIntercept`` or a Modality LUT
   Sequence) and the VOI LUT (VOI LUT Sequence, else ``WindowCenter``/``WindowWidth``)
   are applied with pydicom's own :func:`pydicom.pixels.apply_modality_lut` and
   :func:`pydicom.pixels.apply_voi_lut` (first VOI transform of the file).
3. ``MONOCHROME1`` images (minimum value displayed white) are inverted within their
   value range so that bone is bright, as in ``MONOCHROME2``.

Pixel spacing
-------------
Millimetre crops (paper 004: 140 mm around the knee) must be millimetres at the knee,
not at the detector. The X-ray source magnifies the knee onto the detector, so the
spacing is taken, in this order:

1. ``PixelSpacing``: spacing calibrated to the patient plane (``"PixelSpacing"``);
2. ``ImagerPixelSpacing / EstimatedRadiographicMagnificationFactor``: detector
   spacing corrected for the magnification the modality estimated
   (``"ImagerPixelSpacing/EstimatedRadiographicMagnificationFactor"``);
3. ``ImagerPixelSpacing`` alone: the detector plane, uncorrected (``"ImagerPixelSpacing"``).

:attr:`Radiograph.spacing_source` records which. Ordinary images carry no spacing
(``pixel_spacing_mm=None``, ``spacing_source="none"``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kneelib.data.errors import DicomReadError, RadiographReadError

__all__ = ["IMAGE_SUFFIXES", "Radiograph", "read_radiograph", "read_knee_image"]

#: File endings read as ordinary images; everything else is tried as DICOM.
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")

#: Smallest accepted image side (pixels).
_MIN_SIDE = 8


@dataclass(frozen=True)
class Radiograph:
    """A projection radiograph.

    Attributes
    ----------
    pixels : (rows, cols) ndarray
        Displayed values, bone bright: modality and VOI LUTs applied,
        ``MONOCHROME1`` inverted. The stored integer type when no LUT changed the
        values, else float.
    pixel_spacing_mm : (float, float) or None
        Row spacing, column spacing at the patient (see the module docstring for
        the order of preference); ``None`` for an ordinary image file.
    metadata : dict
        ``PatientID``, ``StudyDate``, ``StudyDescription``, ``SeriesDescription``,
        ``Modality``, ``ViewPosition``, ``ImageLaterality``, ``Laterality``,
        ``PatientOrientation``, ``path``,
        ``TransferSyntaxUID``, ``modality_lut`` (bool), ``voi_lut`` (``"sequence"``,
        ``"window"`` or ``"none"``), ``inverted`` (bool). Empty apart from ``path``
        for an ordinary image.
    spacing_source : str
        ``"PixelSpacing"``, ``"ImagerPixelSpacing/EstimatedRadiographicMagnificationFactor"``,
        ``"ImagerPixelSpacing"`` or ``"none"``.
    """

    pixels: np.ndarray
    pixel_spacing_mm: tuple[float, float] | None
    metadata: dict[str, Any] = field(default_factory=dict, compare=False)
    spacing_source: str = "none"


def _pair(value: Any, keyword: str, path: Path) -> tuple[float, float]:
    try:
        pair = tuple(float(v) for v in value)
    except (TypeError, ValueError) as error:
        raise RadiographReadError(path, f"{keyword} {value!r} is not two numbers") from error
    if len(pair) != 2 or not all(np.isfinite(pair)) or min(pair) <= 0:
        raise RadiographReadError(path, f"{keyword} {value!r} is not two positive numbers")
    return pair  # type: ignore[return-value]


def _spacing(dataset, path: Path, required: bool) -> tuple[tuple[float, float] | None, str]:
    """Patient-plane pixel spacing and its source (module docstring, *Pixel spacing*)."""
    if dataset.get("PixelSpacing") not in (None, ""):
        return _pair(dataset.PixelSpacing, "PixelSpacing", path), "PixelSpacing"
    imager = dataset.get("ImagerPixelSpacing")
    if imager in (None, ""):
        if not required:
            return None, "none"
        raise RadiographReadError(path, "no PixelSpacing or ImagerPixelSpacing: physical size unknown")
    spacing = _pair(imager, "ImagerPixelSpacing", path)
    factor = dataset.get("EstimatedRadiographicMagnificationFactor")
    if factor not in (None, ""):
        try:
            factor = float(factor)
        except (TypeError, ValueError) as error:
            raise RadiographReadError(path, f"EstimatedRadiographicMagnificationFactor {factor!r} "
                                            "is not a number") from error
        if not np.isfinite(factor) or factor <= 0:
            raise RadiographReadError(path, f"EstimatedRadiographicMagnificationFactor {factor} is not positive")
        return (spacing[0] / factor, spacing[1] / factor), \
            "ImagerPixelSpacing/EstimatedRadiographicMagnificationFactor"
    return spacing, "ImagerPixelSpacing"


def _read_image_file(path: Path) -> Radiograph:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            if image.mode not in ("L", "I", "I;16", "F"):
                image = image.convert("L")
            pixels = np.asarray(image)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise RadiographReadError(path, f"not a readable image ({type(error).__name__}: {error})") from error
    return Radiograph(pixels=pixels, pixel_spacing_mm=None, metadata={"path": str(path)}, spacing_source="none")


def _read_dicom_file(path: Path, voi_lut: bool, require_spacing: bool) -> Radiograph:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    from kneelib.data.dicom import read_dicom_pixels

    try:
        dataset, pixels = read_dicom_pixels(path)
    except DicomReadError as error:
        raise RadiographReadError(path, error.reason) from error
    if pixels.ndim != 2:
        raise RadiographReadError(path, f"expected a single-frame grey image, got pixel array of shape {pixels.shape}")
    try:
        spacing, source = _spacing(dataset, path, require_spacing)
    except RadiographReadError:
        raise
    except Exception as error:  # a corrupt element value
        raise RadiographReadError(path, f"pixel spacing unreadable ({type(error).__name__}: {error})") from error
    try:
        has_modality_lut = "ModalityLUTSequence" in dataset or (
            float(dataset.get("RescaleSlope", 1) or 1), float(dataset.get("RescaleIntercept", 0) or 0)) != (1.0, 0.0)
        if has_modality_lut:
            pixels = apply_modality_lut(pixels, dataset)
        voi = "sequence" if "VOILUTSequence" in dataset else (
            "window" if dataset.get("WindowCenter") not in (None, "") and dataset.get("WindowWidth") not in (None, "")
            else "none")
        if voi_lut and voi != "none":
            pixels = apply_voi_lut(pixels, dataset, index=0)
        else:
            voi = "none"
    except Exception as error:  # malformed LUT elements: pydicom raises ValueError, KeyError, IndexError...
        raise RadiographReadError(path, f"modality/VOI LUT cannot be applied ({type(error).__name__}: {error})") \
            from error
    inverted = str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper() == "MONOCHROME1"
    if inverted:
        pixels = pixels.min() + pixels.max() - pixels
    transfer = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
    metadata: dict[str, Any] = {k: str(dataset.get(k, "")) for k in (
        "PatientID", "StudyDate", "StudyDescription", "SeriesDescription", "Modality", "ViewPosition",
        "ImageLaterality", "Laterality")}
    metadata["PatientOrientation"] = [str(v) for v in (dataset.get("PatientOrientation") or [])]
    metadata.update(path=str(path), TransferSyntaxUID=str(transfer or ""), modality_lut=bool(has_modality_lut),
                    voi_lut=voi, inverted=inverted)
    return Radiograph(pixels=pixels, pixel_spacing_mm=spacing, metadata=metadata, spacing_source=source)


def read_radiograph(path: str | Path, *, voi_lut: bool = True, require_spacing: bool = True) -> Radiograph:
    """Read a projection radiograph: a DICOM file (CR/DX, one frame) or a PNG/JPEG/TIFF image.

    Parameters
    ----------
    path : str or Path
        The file; a folder means its first DICOM file (an OAI series folder
        holding ``001``). Files ending in :data:`IMAGE_SUFFIXES` are read as
        ordinary images, everything else as DICOM.
    voi_lut : bool
        Apply the file's VOI LUT or window (default). ``False`` keeps the
        modality values (e.g. to apply one's own windowing).
    require_spacing : bool
        A DICOM file without any pixel spacing raises (default); ``False`` returns
        it with ``pixel_spacing_mm=None``.

    Returns
    -------
    Radiograph
        See the module docstring for the LUTs, the ``MONOCHROME1`` inversion and
        the choice of pixel spacing.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    RadiographReadError
        Unreadable, truncated or undecodable file (compressed without a decoder),
        no pixel data, not a 2-D grey image, no pixel spacing (DICOM), NaN/infinite
        pixels: the message names the file and the reason.
    """
    path = Path(path)
    if path.is_dir():
        from kneelib.data.dicom import list_dicom_files

        try:
            path = list_dicom_files(path)[0]
        except DicomReadError as error:
            raise RadiographReadError(path, error.reason) from error
    if not path.is_file():
        raise FileNotFoundError(f"radiograph file not found: {path}")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        radiograph = _read_image_file(path)
    else:
        radiograph = _read_dicom_file(path, voi_lut, require_spacing)
    pixels = radiograph.pixels
    if pixels.ndim != 2 or min(pixels.shape) < _MIN_SIDE:
        raise RadiographReadError(path, f"expected a 2-D grey image of at least {_MIN_SIDE} pixels a side, "
                                        f"got shape {pixels.shape}")
    if pixels.dtype.kind == "f" and not np.all(np.isfinite(pixels)):
        raise RadiographReadError(path, "pixel data contain NaN or infinity")
    return radiograph


def read_knee_image(path: str | Path, *, voi_lut: bool = True) -> np.ndarray:
    """The pixels of :func:`read_radiograph` as a 2-D float32 array (bone bright).

    Pixel spacing is not needed here (a DICOM file without it is read).

    Raises
    ------
    FileNotFoundError, RadiographReadError
        As :func:`read_radiograph`.
    """
    return np.asarray(read_radiograph(path, voi_lut=voi_lut, require_spacing=False).pixels, dtype=np.float32)
