"""DICOM series -> volume with a correct affine, laterality and echo grouping.

A DICOM series folder holds one 2-D image per file. :func:`read_dicom_series`
turns one or several folders into a :class:`Volume`:

1. read every file (a truncated file or one without pixel data ->
   :class:`~kneelib.data.errors.DicomReadError` naming the file);
2. check that all files share orientation, pixel spacing, matrix, slice
   thickness and frame of reference
   (:class:`~kneelib.data.errors.MixedGeometryError` otherwise);
3. group files by echo (``EchoTime``, else ``EchoNumbers``): one group is a 3-D
   volume, several give a 4-D volume whose last axis is the echo -- a multi-echo
   MSME T2 series in one folder, or the pyKNEEr T1rho acquisition spread over four
   folders (``TSL01ms`` ... ``TSL60ms``) whose spin-lock time sits in ``EchoTime``;
4. order the slices of each echo by ``ImagePositionPatient`` projected on the
   slice normal (never by file name or ``InstanceNumber``) and require even
   spacing (:class:`~kneelib.data.errors.SliceGapError` on a gap or duplicate);
5. build the voxel-to-world affine.

Orientation: DICOM patient coordinates are LPS (+x toward the patient's left,
+y posterior, +z head); NIfTI/nibabel world coordinates are RAS (+x toward the
patient's right, +y anterior, +z head): x and y negated. With ``F_r``/``F_c`` the row/column direction cosines of
``ImageOrientationPatient``, ``dr``/``dc`` the ``PixelSpacing`` (between rows,
between columns), ``n = F_r x F_c`` the slice normal, ``ds`` the slice step and
``P_0`` the position of the first slice along ``n``, voxel ``(i column, j row,
k slice)`` lies at ``LPS = P_0 + i dc F_r + j dr F_c + k ds n``; the RAS affine is
``diag(-1, -1, 1, 1) @ A_LPS`` (:data:`LPS_TO_RAS`). Arrays are therefore stored
``(columns, rows, slices[, echoes])``, the axis order nibabel expects.

Laterality: the ``Laterality`` tag, else ``ImageLaterality``, else ``RIGHT``/``LEFT``
in the series or study description, else the side of the patient on which the
slab centre lies (LPS x < -20 mm: right; > +20 mm: left); ``Volume.laterality_source``
says which. Left/right mirroring to a common orientation is the pure function
:func:`to_common_orientation`.

Writer counterpart: :func:`kneelib.synth.oai_writer.write_dicom_series`. Radiographs are
read by :mod:`kneelib.data.radiograph` (re-exported here for old imports).

Length: about 660 lines, over the ~600 guideline, because the five steps above share
private helpers (``_Slice``, tolerances, ``_where``) that a split would have to expose;
the radiograph reader already moved out.
"""
from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

import nibabel as nib
import numpy as np
import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.errors import InvalidDicomError

from kneelib.data.errors import (
    DicomReadError,
    LateralityError,
    MixedGeometryError,
    SliceGapError,
)
# The one radiograph reader lives in kneelib.data.radiograph; re-exported here for old imports.
from kneelib.data.radiograph import Radiograph, read_radiograph  # noqa: F401

__all__ = [
    "Volume",
    "LPS_TO_RAS",
    "read_dicom_series",
    "list_dicom_files",
    "read_dicom_pixels",
    "group_series_folders",
    "to_common_orientation",
    "laterality_of",
]

#: Diagonal turning LPS into RAS coordinates (its own inverse).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

#: Tolerances: direction cosines, spacings (relative), positions (mm).
_COSINE_TOL = 1e-3
_SPACING_REL_TOL = 1e-3
_POSITION_TOL_MM = 0.02
#: Relative deviation of one slice step from the median step that counts as a gap.
_STEP_REL_TOL = 0.05
#: |LPS x| of the slab centre beyond which the side is inferred from position.
_POSITION_SIDE_MM = 20.0

_SIDE_WORD_RE = re.compile(r"(?:^|[^A-Z])(RIGHT|LEFT)(?:$|[^A-Z])", re.IGNORECASE)


@dataclass(frozen=True)
class Volume:
    """An image volume with its geometry and acquisition metadata.

    Attributes
    ----------
    array : ndarray
        ``(columns, rows, slices)`` or ``(columns, rows, slices, echoes)``; the
        DICOM stored values with ``RescaleSlope``/``RescaleIntercept`` applied when
        present (then float32), else the stored integer type.
    affine : (4, 4) ndarray
        Voxel ``(i, j, k)`` -> RAS mm (nibabel convention).
    echo_times_ms : tuple of float
        One per echo (per 4th-axis index); for T1rho the spin-lock times. Empty
        when the files carry no ``EchoTime``.
    laterality : str or None
        ``"R"`` or ``"L"`` (the true side, also after mirroring).
    laterality_source : str
        ``"tag"``, ``"description"``, ``"position"``, ``"given"`` or ``"unknown"``.
    series_description : str
    mirrored : bool
        True when :func:`to_common_orientation` mirrored a left knee (the world
        coordinates of the affine are then mirrored in x).
    metadata : dict
        ``PatientID``, ``StudyDate``, ``SeriesInstanceUIDs``, ``FrameOfReferenceUID``,
        ``RepetitionTime``, ``FlipAngle``, ``MagneticFieldStrength``, ``Manufacturer``,
        ``folders``, ``n_files``, ``slice_thickness_mm``.
    """

    array: np.ndarray
    affine: np.ndarray
    echo_times_ms: tuple[float, ...] = ()
    laterality: str | None = None
    laterality_source: str = "unknown"
    series_description: str = ""
    mirrored: bool = False
    metadata: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        """Voxel size along the three spatial axes (mm)."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    @property
    def n_echoes(self) -> int:
        return 1 if self.array.ndim == 3 else int(self.array.shape[3])

    def slices(self, echo: int | None = None) -> np.ndarray:
        """Pixels as the DICOM files hold them: ``(slices, rows, columns)``.

        For a 4-D volume pick ``echo`` (index along the echo axis).
        """
        data = self.array
        if data.ndim == 4:
            if echo is None:
                raise ValueError("4-D volume: choose an echo index")
            data = data[..., echo]
        return np.transpose(data, (2, 1, 0))

    def to_nifti(self) -> nib.Nifti1Image:
        """A NIfTI-1 image (qform and sform = the RAS affine, scanner-anatomical)."""
        image = nib.Nifti1Image(self.array, self.affine)
        image.set_qform(self.affine, code=1)
        image.set_sform(self.affine, code=1)
        return image


# --------------------------------------------------------------------------------------
# File reading
# --------------------------------------------------------------------------------------

def list_dicom_files(folder: str | Path) -> list[Path]:
    """Regular, non-hidden files of a series folder (``DICOMDIR`` excluded), sorted by name.

    Raises
    ------
    FileNotFoundError
        If the folder does not exist.
    DicomReadError
        If it holds no file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"DICOM series folder {folder} does not exist")
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and not p.name.startswith(".") and p.name.upper() != "DICOMDIR")
    if not files:
        raise DicomReadError(folder, "folder holds no files")
    return files


#: Numeric elements the readers use; each value must parse as a finite number.
_NUMERIC_KEYWORDS = (
    "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "ImagerPixelSpacing",
    "EstimatedRadiographicMagnificationFactor", "SliceThickness", "SpacingBetweenSlices", "EchoTime",
    "EchoNumbers", "RepetitionTime", "FlipAngle", "MagneticFieldStrength", "RescaleSlope", "RescaleIntercept",
    "WindowCenter", "WindowWidth",
)


_NUMERIC_TAGS = tuple((keyword, tag_for_keyword(keyword)) for keyword in _NUMERIC_KEYWORDS)
_TAG_OF = dict(_NUMERIC_TAGS)


def _numbers_of(dataset: pydicom.Dataset, keyword: str) -> list[float] | None:
    """The numbers of a numeric element (``None`` when absent or empty); raises on a non-number.

    A decimal or integer string (VR DS/IS) still in its raw bytes is parsed directly, without
    converting the element: pydicom's conversion builds a validated ``DSfloat`` per value and
    was about a fifth of the time to read a small series. Anything else (binary VRs, an element
    already converted, implicit-VR files whose raw elements carry no VR) takes pydicom's value.
    """
    tag = _TAG_OF[keyword]
    if tag not in dataset:
        return None
    element = dataset.get_item(tag)
    if isinstance(element, RawDataElement) and element.VR in ("DS", "IS") and isinstance(element.value, bytes):
        text = element.value.decode("ascii").strip(" \x00")
        return [float(part) for part in text.split("\\")] if text else None
    value = dataset.get(keyword)
    if value is None or value == "":
        return None
    values = list(value) if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else [value]
    return [float(v) for v in values]


def _check_numbers(dataset: pydicom.Dataset, path: Path) -> None:
    """Raise :class:`DicomReadError` when a numeric element the readers use is not numbers."""
    for keyword in _NUMERIC_KEYWORDS:
        try:
            numbers = _numbers_of(dataset, keyword)
        except Exception as error:  # a corrupt raw value: ValueError, TypeError, UnicodeDecodeError...
            raise DicomReadError(path, f"{keyword} is not a number ({type(error).__name__}: {error})") from error
        if numbers is not None and not np.all(np.isfinite(numbers)):
            raise DicomReadError(path, f"{keyword} {numbers} is not finite")


def read_dicom_pixels(path: str | Path) -> tuple[pydicom.Dataset, np.ndarray]:
    """Read one DICOM file and decode its pixel data (stored values, no LUT applied).

    Compressed transfer syntaxes are decoded by the plugins pinned in
    ``requirements.txt`` (pylibjpeg + libjpeg/openjpeg/rle, pyjpegls).

    Raises
    ------
    DicomReadError
        Not DICOM, truncated header or pixel data, no ``PixelData``, a malformed
        image description (rows, columns, bits), or pixel data that cannot be
        decoded (names the transfer syntax and pydicom's reason).
    """
    path = Path(path)
    try:
        dataset = pydicom.dcmread(path)
    except InvalidDicomError as error:
        raise DicomReadError(path, f"not a DICOM file ({error})") from error
    except Exception as error:  # EOF, struct errors: a truncated header
        raise DicomReadError(path, f"truncated or corrupt header ({type(error).__name__}: {error})") from error
    if "PixelData" not in dataset:
        raise DicomReadError(path, "no pixel data (PixelData element missing)")
    _check_numbers(dataset, path)
    transfer = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
    try:
        rows, columns = int(dataset.get("Rows", 0)), int(dataset.get("Columns", 0))
        bits = int(dataset.get("BitsAllocated", 16))
        samples = int(dataset.get("SamplesPerPixel", 1))
        frames = int(dataset.get("NumberOfFrames", 1) or 1)
        compressed = bool(transfer is not None and transfer.is_compressed)
        found = len(dataset.PixelData) if dataset.get("PixelData") is not None else 0
    except Exception as error:  # a corrupt element value (wrong VR, bad number, truncated value)
        raise DicomReadError(path, f"corrupt image description ({type(error).__name__}: {error})") from error
    if rows <= 0 or columns <= 0 or bits not in (1, 8, 16, 32, 64) or samples not in (1, 3) or frames < 1:
        raise DicomReadError(path, f"malformed image description: Rows {rows}, Columns {columns}, "
                                   f"BitsAllocated {bits}, SamplesPerPixel {samples}, NumberOfFrames {frames}")
    expected = (rows * columns * samples * frames * bits + 7) // 8
    if not compressed and found < expected:
        raise DicomReadError(path, f"truncated pixel data: {found} bytes, {rows}x{columns}x{bits} bits "
                                   f"needs {expected}")
    try:
        if transfer in _JPEG_LS_SYNTAXES and _pyjpegls_available():
            # CharLS (pyjpegls) decodes JPEG-LS about 3.5 times faster than libjpeg, pydicom's first choice
            dataset.pixel_array_options(decoding_plugin="pyjpegls")
        pixels = dataset.pixel_array
    except Exception as error:  # no decoder for the transfer syntax, corrupt codestream, ...
        name = getattr(transfer, "name", str(transfer)) if transfer is not None else "unknown transfer syntax"
        raise DicomReadError(path, f"pixel data ({name}) cannot be decoded "
                                   f"({type(error).__name__}: {error})") from error
    return dataset, pixels


#: JPEG-LS transfer syntaxes (lossless, near-lossless), e.g. the synthetic cohort's storage.
_JPEG_LS_SYNTAXES = ("1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81")


def _pyjpegls_available() -> bool:
    from pydicom.pixels import get_decoder

    return "pyjpegls" in get_decoder("1.2.840.10008.1.2.4.80").available_plugins


def _floats(dataset: pydicom.Dataset, keyword: str, path: Path, count: int) -> np.ndarray:
    numbers = _numbers_of(dataset, keyword)  # checked to parse by _check_numbers
    if numbers is None or len(numbers) != count:
        raise DicomReadError(path, f"{keyword} missing or malformed ({numbers!r}); cannot place the slice")
    return np.asarray(numbers, dtype=float)


@dataclass
class _Slice:
    path: Path
    dataset: pydicom.Dataset
    pixels: np.ndarray
    position: np.ndarray
    orientation: np.ndarray
    spacing: np.ndarray

    @property
    def echo_key(self) -> tuple[float | None, int | None]:
        te = self.dataset.get("EchoTime")
        en = self.dataset.get("EchoNumbers")
        return (None if te in (None, "") else round(float(te), 4),
                None if en in (None, "") else int(en if not isinstance(en, (list, tuple)) else en[0]))


def _load_slices(folders: Sequence[Path]) -> list[_Slice]:
    slices = []
    for folder in folders:
        for path in list_dicom_files(folder):
            dataset, pixels = read_dicom_pixels(path)
            if pixels.ndim != 2:
                raise DicomReadError(path, f"expected one 2-D frame, got pixel array of shape {pixels.shape}")
            slices.append(_Slice(
                path=path, dataset=dataset, pixels=pixels,
                position=_floats(dataset, "ImagePositionPatient", path, 3),
                orientation=_floats(dataset, "ImageOrientationPatient", path, 6),
                spacing=_floats(dataset, "PixelSpacing", path, 2),
            ))
    return slices


# --------------------------------------------------------------------------------------
# Consistency checks
# --------------------------------------------------------------------------------------

def _where(folders: Sequence[Path]) -> str | Path | list[Path]:
    return folders[0] if len(folders) == 1 else list(folders)


def _check_consistent(slices: list[_Slice], folders: Sequence[Path]) -> None:
    first = slices[0]
    where = _where(folders)
    for other in slices[1:]:
        if np.max(np.abs(other.orientation - first.orientation)) > _COSINE_TOL:
            raise MixedGeometryError(where, (
                f"mixed orientation: {first.path.name} has ImageOrientationPatient "
                f"{np.round(first.orientation, 4).tolist()}, {other.path} has "
                f"{np.round(other.orientation, 4).tolist()}"))
        if np.max(np.abs(other.spacing - first.spacing)) > _SPACING_REL_TOL * float(np.max(first.spacing)):
            raise MixedGeometryError(where, (
                f"mixed pixel spacing: {first.path.name} has PixelSpacing {first.spacing.tolist()} mm, "
                f"{other.path} has {other.spacing.tolist()} mm"))
        if other.pixels.shape != first.pixels.shape:
            raise MixedGeometryError(where, (
                f"mixed matrix: {first.path.name} is {first.pixels.shape}, {other.path} is {other.pixels.shape}"))
        t0, t1 = first.dataset.get("SliceThickness"), other.dataset.get("SliceThickness")
        if t0 not in (None, "") and t1 not in (None, "") and abs(float(t0) - float(t1)) > _SPACING_REL_TOL * float(t0):
            raise MixedGeometryError(where, (
                f"mixed slice thickness: {first.path.name} has {float(t0)} mm, {other.path} has {float(t1)} mm"))
    frames = {s.dataset.get("FrameOfReferenceUID", "") for s in slices}
    if len(frames) > 1:
        raise MixedGeometryError(where, f"mixed frame of reference: FrameOfReferenceUID values {sorted(frames)}")
    row_cosine, column_cosine = first.orientation[:3], first.orientation[3:]
    if abs(np.linalg.norm(row_cosine) - 1) > 1e-2 or abs(np.linalg.norm(column_cosine) - 1) > 1e-2 \
            or abs(float(row_cosine @ column_cosine)) > 1e-2:
        raise MixedGeometryError(where, (
            f"ImageOrientationPatient {first.orientation.tolist()} of {first.path} is not two orthonormal vectors"))


def _order_and_step(group: list[_Slice], folders: Sequence[Path], normal: np.ndarray,
                    row_cosine: np.ndarray, column_cosine: np.ndarray) -> tuple[list[_Slice], float]:
    """Sort one echo's slices along the normal; check collinearity and even spacing."""
    where = _where(folders)
    projections = np.array([s.position @ normal for s in group])
    order = np.argsort(projections, kind="stable")
    group = [group[i] for i in order]
    projections = projections[order]
    offsets = np.array([[(s.position - group[0].position) @ row_cosine,
                         (s.position - group[0].position) @ column_cosine] for s in group])
    if np.max(np.abs(offsets)) > max(_POSITION_TOL_MM, 0.05 * float(np.min(group[0].spacing))):
        worst = int(np.argmax(np.max(np.abs(offsets), axis=1)))
        raise MixedGeometryError(where, (
            f"slices shift in-plane: {group[worst].path} is offset by {np.round(offsets[worst], 3).tolist()} mm "
            f"(row, column) from {group[0].path.name}"))
    if len(group) == 1:
        thickness = group[0].dataset.get("SpacingBetweenSlices") or group[0].dataset.get("SliceThickness") or 1.0
        return group, float(thickness)
    steps = np.diff(projections)
    duplicate = np.where(steps < _POSITION_TOL_MM)[0]
    if duplicate.size:
        i = int(duplicate[0])
        raise SliceGapError(where, projections, (
            f"duplicate slice position {projections[i]:.3f} mm ({group[i].path.name} and {group[i + 1].path.name})"
            f"; several echoes or series mixed without EchoTime?"))
    step = float(np.median(steps))
    bad = np.where(np.abs(steps - step) > max(_POSITION_TOL_MM, _STEP_REL_TOL * step))[0]
    if bad.size:
        i = int(bad[0])
        kind = "gap" if steps[i] > step else "uneven step"
        raise SliceGapError(where, projections, (
            f"{kind} of {steps[i]:.3f} mm between positions {projections[i]:.3f} and {projections[i + 1]:.3f} "
            f"({group[i].path.name} -> {group[i + 1].path.name}); expected {step:.3f} mm"))
    return group, step


# --------------------------------------------------------------------------------------
# Laterality
# --------------------------------------------------------------------------------------

def laterality_of(datasets: Iterable[pydicom.Dataset], centre_lps: np.ndarray | None = None) -> tuple[str | None, str]:
    """Side of a knee series and how it was decided.

    Order: ``Laterality`` tag, ``ImageLaterality`` tag, ``RIGHT``/``LEFT`` in
    ``SeriesDescription`` or ``StudyDescription``, then the slab centre's LPS x
    (patient right is -x). Returns ``(side or None, source)``.

    Raises
    ------
    LateralityError
        When the files of one series name different sides.
    """
    datasets = list(datasets)
    for keyword in ("Laterality", "ImageLaterality"):
        sides = {str(d.get(keyword, "") or "").strip().upper() for d in datasets} - {""}
        sides &= {"R", "L"} | {s for s in sides if s not in ("B", "U")}
        sides -= {"B", "U"}
        if len(sides) > 1:
            raise LateralityError(datasets[0].get("SeriesDescription", "series"),
                                  f"files disagree on {keyword}: {sorted(sides)}")
        if sides:
            side = sides.pop()
            if side not in ("R", "L"):
                raise LateralityError(datasets[0].get("SeriesDescription", "series"),
                                      f"unexpected {keyword} value {side!r}")
            return side, "tag"
    for keyword in ("SeriesDescription", "StudyDescription"):
        words = set()
        for d in datasets:
            match = _SIDE_WORD_RE.search(str(d.get(keyword, "") or ""))
            if match:
                words.add(match.group(1).upper()[0])
        if len(words) > 1:
            raise LateralityError(datasets[0].get("SeriesDescription", "series"),
                                  f"files disagree on the side in {keyword}")
        if words:
            return words.pop(), "description"
    if centre_lps is not None and abs(float(centre_lps[0])) > _POSITION_SIDE_MM:
        return ("R" if centre_lps[0] < 0 else "L"), "position"
    return None, "unknown"


# --------------------------------------------------------------------------------------
# Public readers
# --------------------------------------------------------------------------------------

def read_dicom_series(
    folders: str | Path | Sequence[str | Path],
    *,
    laterality: str | None = None,
) -> Volume:
    """Read one DICOM series (one folder, or several folders of one acquisition).

    Parameters
    ----------
    folders : path or sequence of paths
        A series folder, or several folders that together form one multi-echo
        acquisition in one frame of reference (the pyKNEEr T1rho: ``TSL01ms``,
        ``TSL10ms``, ``TSL30ms``, ``TSL60ms``).
    laterality : {"R", "L"}, optional
        Side to use when the files do not say (``laterality_source="given"``); a
        contradiction with a ``Laterality`` tag raises.

    Returns
    -------
    Volume
        3-D for one echo, 4-D ``(columns, rows, slices, echoes)`` with echoes
        sorted by echo time otherwise.

    Raises
    ------
    DicomReadError
        Unreadable/truncated file, missing pixel data or geometry tags (names the file).
    MixedGeometryError
        Orientation, pixel spacing, matrix, slice thickness or frame of reference
        differ between files, slices shift in-plane, or echoes cover different
        slice positions.
    SliceGapError
        Uneven slice positions along the normal (gap or duplicate), with the positions.
    LateralityError
        Files disagree on the side, or the given side contradicts the tags.
    """
    if isinstance(folders, (str, Path)):
        folder_list = [Path(folders)]
    else:
        folder_list = [Path(f) for f in folders]
    if not folder_list:
        raise ValueError("read_dicom_series needs at least one folder")
    slices = _load_slices(folder_list)
    _check_consistent(slices, folder_list)

    first = slices[0]
    row_cosine, column_cosine = first.orientation[:3], first.orientation[3:]
    normal = np.cross(row_cosine, column_cosine)
    normal /= np.linalg.norm(normal)

    # Group by echo: EchoTime when it distinguishes files, else EchoNumbers.
    keys = [s.echo_key for s in slices]
    times = {k[0] for k in keys}
    numbers = {k[1] for k in keys}
    if len(times) > 1 and None not in times:
        groups: dict[Any, list[_Slice]] = defaultdict(list)
        for s, k in zip(slices, keys):
            groups[k[0]].append(s)
    elif len(numbers) > 1 and None not in numbers:
        groups = defaultdict(list)
        for s, k in zip(slices, keys):
            groups[k[1]].append(s)
    else:
        groups = {None: slices}
    echo_keys = sorted(groups, key=lambda k: (k is None, k if k is not None else 0))

    ordered: list[list[_Slice]] = []
    step = None
    reference_projection = None
    for key in echo_keys:
        group, group_step = _order_and_step(groups[key], folder_list, normal, row_cosine, column_cosine)
        projection = np.array([s.position @ normal for s in group])
        if reference_projection is None:
            reference_projection, step = projection, group_step
        elif len(projection) != len(reference_projection) or np.max(np.abs(projection - reference_projection)) > _POSITION_TOL_MM:
            raise MixedGeometryError(_where(folder_list), (
                f"echoes cover different slices: echo {echo_keys[0]} has {len(reference_projection)} slices at "
                f"{reference_projection[0]:.3f}..{reference_projection[-1]:.3f} mm, echo {key} has {len(projection)} at "
                f"{projection[0]:.3f}..{projection[-1]:.3f} mm"))
        ordered.append(group)

    # Pixels: (slices, rows, cols) per echo, rescaled when the files say so.
    slope_intercept = {(float(s.dataset.get("RescaleSlope", 1) or 1), float(s.dataset.get("RescaleIntercept", 0) or 0))
                       for s in slices}
    rescale = slope_intercept != {(1.0, 0.0)}
    stacks = []
    for group in ordered:
        if rescale:
            stacks.append(np.stack([s.pixels.astype(np.float32) * float(s.dataset.get("RescaleSlope", 1) or 1)
                                    + float(s.dataset.get("RescaleIntercept", 0) or 0) for s in group]))
        else:
            stacks.append(np.stack([s.pixels for s in group]))
    # (columns, rows, slices[, echoes]) as the reversed-axes view of the (echoes,) slices x rows x columns
    # stack: Fortran order, as NIfTI stores it and nibabel returns it (a cache hit and a fresh read have the
    # same layout), and no strided 3-D transpose copy (it took 0.8 of 1.8 s for the 512 x 512 x 80 real
    # DESS; benchmarks/bench_dicom_read.py).
    array = stacks[0].T if len(stacks) == 1 else np.stack(stacks).T

    row_spacing, column_spacing = float(first.spacing[0]), float(first.spacing[1])
    origin = ordered[0][0].position
    affine_lps = np.eye(4)
    affine_lps[:3, 0] = row_cosine * column_spacing
    affine_lps[:3, 1] = column_cosine * row_spacing
    affine_lps[:3, 2] = normal * float(step)
    affine_lps[:3, 3] = origin
    affine = LPS_TO_RAS @ affine_lps

    n_cols, n_rows, n_slices = array.shape[:3]
    centre_lps = affine_lps @ np.array([(n_cols - 1) / 2, (n_rows - 1) / 2, (n_slices - 1) / 2, 1.0])
    side, source = laterality_of([s.dataset for s in slices], centre_lps[:3])
    if laterality is not None:
        given = str(laterality).strip().upper()[:1]
        if given not in ("R", "L"):
            raise ValueError(f"laterality must be 'R' or 'L', got {laterality!r}")
        if source in ("tag", "description") and side != given:
            raise LateralityError(_where(folder_list) if len(folder_list) > 1 else folder_list[0],
                                  f"given side {given} contradicts the files ({side}, from {source})")
        if source not in ("tag", "description"):
            side, source = given, "given"

    echo_times: tuple[float, ...] = ()
    if all(k is not None for k in echo_keys) and groups is not None:
        echo_times = tuple(float(g[0].dataset.EchoTime) for g in ordered
                           if g[0].dataset.get("EchoTime") not in (None, ""))
        if len(echo_times) != len(ordered):
            echo_times = ()
    elif first.dataset.get("EchoTime") not in (None, ""):
        echo_times = (float(first.dataset.EchoTime),)

    def _value(keyword: str) -> Any:
        value = first.dataset.get(keyword)
        if value is None or value == "":
            return None
        try:
            return float(value)
        except (TypeError, ValueError):
            return str(value)

    metadata = {
        "PatientID": str(first.dataset.get("PatientID", "")),
        "StudyDate": str(first.dataset.get("StudyDate", "")),
        "StudyDescription": str(first.dataset.get("StudyDescription", "")),
        "SeriesInstanceUIDs": sorted({str(s.dataset.get("SeriesInstanceUID", "")) for s in slices}),
        "FrameOfReferenceUID": str(first.dataset.get("FrameOfReferenceUID", "")),
        "RepetitionTime": _value("RepetitionTime"),
        "FlipAngle": _value("FlipAngle"),
        "MagneticFieldStrength": _value("MagneticFieldStrength"),
        "Manufacturer": str(first.dataset.get("Manufacturer", "")),
        "ManufacturerModelName": str(first.dataset.get("ManufacturerModelName", "")),
        "slice_thickness_mm": _value("SliceThickness"),
        "folders": [str(f) for f in folder_list],
        "n_files": len(slices),
    }
    return Volume(
        array=array,
        affine=affine,
        echo_times_ms=echo_times,
        laterality=side,
        laterality_source=source,
        series_description=str(first.dataset.get("SeriesDescription", "")),
        metadata=metadata,
    )


def group_series_folders(folders: Iterable[str | Path]) -> dict[tuple[str, str], list[Path]]:
    """Group series folders that form one acquisition.

    Folders are grouped by ``(FrameOfReferenceUID, SeriesDescription)`` of their
    first file; the frame of reference alone is not enough because one exam's
    series usually share it (the pyKNEEr DESS and T1rho do). Pass a group to
    :func:`read_dicom_series` to get one (4-D) volume.

    Returns
    -------
    dict
        ``(frame_of_reference_uid, series_description) -> sorted folders``.
    """
    groups: dict[tuple[str, str], list[Path]] = defaultdict(list)
    for folder in folders:
        folder = Path(folder)
        first = list_dicom_files(folder)[0]
        try:
            header = pydicom.dcmread(first, stop_before_pixels=True)
        except Exception as error:
            raise DicomReadError(first, f"cannot read header ({type(error).__name__}: {error})") from error
        key = (str(header.get("FrameOfReferenceUID", "")), str(header.get("SeriesDescription", "")))
        groups[key].append(folder)
    return {k: sorted(v) for k, v in groups.items()}


# --------------------------------------------------------------------------------------
# Orientation
# --------------------------------------------------------------------------------------

def to_common_orientation(volume: Volume, side: str | int | None = None) -> Volume:
    """Reorient to RAS+ axes and mirror a left knee so that both sides look alike.

    A pure function: returns a new :class:`Volume`, the input is untouched.

    1. Axes are permuted/flipped to the closest RAS+ order (nibabel
       ``as_closest_canonical`` logic): array axis 0 grows toward the patient's
       right, axis 1 toward anterior, axis 2 toward superior. A sagittal series
       then has its slices on axis 0.
    2. A left knee is mirrored in x (array axis 0 flipped and world x negated,
       the affine staying RAS+), so that every knee looks like a right knee:
       lateral toward +x (high index on axis 0), medial toward -x.

    Parameters
    ----------
    volume : Volume
    side : {"R", "L", 1, 2}, optional
        Side of the knee; default ``volume.laterality``.

    Returns
    -------
    Volume
        ``mirrored=True`` for a left knee; ``laterality`` keeps the true side.

    Raises
    ------
    LateralityError
        When the side is neither given nor known.
    """
    if volume.mirrored:
        raise ValueError("volume is already in the common orientation (mirrored=True)")
    code = side if side is not None else volume.laterality
    if isinstance(code, (int, np.integer)):
        code = {1: "R", 2: "L"}.get(int(code))
    code = None if code is None else str(code).strip().upper()[:1]
    if code not in ("R", "L"):
        raise LateralityError(volume.series_description or "volume",
                              "side unknown; pass side='R' or 'L' to to_common_orientation")
    current = nib.orientations.io_orientation(volume.affine)
    target = nib.orientations.axcodes2ornt(("R", "A", "S"))
    transform = nib.orientations.ornt_transform(current, target)
    array = nib.orientations.apply_orientation(volume.array, transform)
    affine = volume.affine @ nib.orientations.inv_ornt_aff(transform, volume.array.shape[:3])
    mirrored = False
    if code == "L":
        n_x = array.shape[0]
        flip = np.eye(4)
        flip[0, 0], flip[0, 3] = -1.0, n_x - 1
        affine = np.diag([-1.0, 1.0, 1.0, 1.0]) @ affine @ flip
        array = array[::-1]
        mirrored = True
    return replace(volume, array=np.ascontiguousarray(array), affine=affine, laterality=code,
                   mirrored=mirrored, metadata={**volume.metadata, "common_orientation": "RAS+, left mirrored"})
