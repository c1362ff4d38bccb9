"""Low-level writers of the OAI file formats, the exact counterpart of :mod:`kneelib.data`.

The synthetic cohort generator (:mod:`kneelib.synth.cohort`) calls these to lay a
cohort out as the OAI distributes it (issue #3, part 2), so that a chapter reads
the synthetic default and a real OAI download through the same code:

==========================  ============================================  ==========================================
writer                      writes                                        read back by
==========================  ============================================  ==========================================
:func:`write_oai_table`     pipe-delimited ASCII clinical table           :func:`kneelib.data.clinical.read_oai_table`
:func:`write_image_index`   the image index ``contents.csv``              :func:`kneelib.data.image_index.read_image_index`
:func:`write_dicom_series`  one MR series folder, files ``001``, ``002``  :func:`kneelib.data.dicom.read_dicom_series`
:func:`write_radiograph`    one bilateral PA knee radiograph (CR/DX)      :func:`kneelib.data.dicom.read_radiograph`
==========================  ============================================  ==========================================

Determinism
-----------
Same inputs -> byte-identical files: UIDs are derived from ``uid_seed`` and the
header (never random), dates and times come from the header (fixed defaults),
nothing records the wall clock, and table numbers are formatted by a fixed rule.

Speed
-----
A cohort of hundreds of subjects x ~10 series x ~40-160 slices is written with
these functions, so :func:`write_dicom_series` builds one template dataset per
series, encodes its constant elements once and re-encodes only the per-slice
elements (UIDs, position, pixels) of each file (:class:`_SeriesEncoder`); the bytes
are those ``pydicom.dcmwrite`` writes.

Compression
-----------
``compression="jpeg-ls"`` stores the pixels of every file losslessly as JPEG-LS
(transfer syntax 1.2.840.10008.1.2.4.80, encoded by CharLS through ``pyjpegls``,
deterministic), which the readers decode with the pinned pylibjpeg/pyjpegls plugins to
the same pixel values; ``"none"`` (default) writes Explicit VR Little Endian as the OAI
distributes it. The synthetic cohort uses JPEG-LS (about 2.4 times smaller, issue 15).

Geometry conventions
--------------------
DICOM patient coordinates are LPS (x to the patient's left, y posterior, z head).
``ImageOrientationPatient`` holds the row direction (the way the column index
grows) then the column direction (the way the row index grows);
``PixelSpacing`` is ``[row spacing, column spacing]`` (between rows, between
columns). :class:`SliceGeometry` holds these for a stack of slices and can be
built from an RAS voxel-to-world affine (nibabel convention, voxel axes
``(column, row, slice)``), which is what the reader returns.
"""
from __future__ import annotations

import csv
import io
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import pydicom
from pydicom.datadict import dictionary_VR, keyword_dict
from pydicom.charset import convert_encodings, default_encoding
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import correct_ambiguous_vr, write_data_element, write_file_meta_info
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless, generate_uid
from pydicom.valuerep import format_number_as_ds

from kneelib.data.oai_layout import IMAGE_INDEX_COLUMNS, MISSING_FORM

__all__ = [
    "SliceGeometry",
    "LPS_TO_RAS",
    "write_oai_table",
    "format_oai_value",
    "write_image_index",
    "write_dicom_series",
    "write_radiograph",
    "DICOM_COMPRESSIONS",
    "deterministic_uid",
    "MR_IMAGE_STORAGE",
    "CR_IMAGE_STORAGE",
    "DX_IMAGE_STORAGE",
]

#: SOP classes written here.
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation

#: Diagonal that turns LPS into RAS coordinates (and back: it is its own inverse).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

#: Root under which every kneelib UID lives (pydicom's registered root); UIDs are
#: ``<root><hash of the entropy sources>``, so the same sources give the same UID.
_UID_PREFIX = pydicom.uid.PYDICOM_ROOT_UID
_IMPLEMENTATION_CLASS_UID = generate_uid(prefix=_UID_PREFIX, entropy_srcs=["kneelib", "implementation"])
_IMPLEMENTATION_VERSION_NAME = "KNEELIB_0_1"


def deterministic_uid(*parts: Any) -> str:
    """A DICOM UID that depends only on ``parts`` (hash of their ``str``), never on chance.

    Parameters
    ----------
    *parts
        Anything with a stable ``str`` (seed, participant ID, series number, ...).

    Returns
    -------
    str
        A valid UID (at most 64 characters) under pydicom's root.
    """
    return generate_uid(prefix=_UID_PREFIX, entropy_srcs=[str(p) for p in parts])


# --------------------------------------------------------------------------------------
# Clinical tables
# --------------------------------------------------------------------------------------

def format_oai_value(value: Any, labels: Mapping[int, str] | None = None) -> str:
    """Format one cell as OAI ASCII tables do.

    Parameters
    ----------
    value
        ``None``/NaN/``pd.NA`` -> ``".: Missing Form/Incomplete Workbook"``; bool -> 0/1;
        integral numbers -> ``"61"``; other floats -> shortest round-trip repr
        (``"28.3"``); strings unchanged (must not hold ``|`` or a line break).
    labels : mapping of int to str, optional
        Value labels of a categorical variable: value ``1`` with ``{1: "Yes"}`` is
        written ``"1: Yes"``, as in the OAI files.

    Returns
    -------
    str
    """
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return MISSING_FORM
    if isinstance(value, (bool, np.bool_)):
        value = int(value)
    if isinstance(value, (int, np.integer)):
        text = str(int(value))
        code = int(value)
    elif isinstance(value, (float, np.floating)):
        number = float(value)
        if not math.isfinite(number):
            raise ValueError(f"cannot write non-finite number {value!r} to an OAI table")
        code = int(number) if number.is_integer() else None
        text = str(code) if code is not None else repr(number)
    else:
        text = str(value)
        if "|" in text or "\n" in text or "\r" in text:
            raise ValueError(f"OAI table value {text!r} holds a '|' or a line break")
        return text
    if labels is not None and code is not None and code in labels:
        return f"{code}: {labels[code]}"
    return text


def write_oai_table(
    table: pd.DataFrame,
    path: str | Path,
    *,
    value_labels: Mapping[str, Mapping[int, str]] | None = None,
) -> Path:
    """Write a clinical table as OAI pipe-delimited ASCII (``AllClinical00.txt`` style).

    The file is a header row of variable names then one row per record, cells
    separated by ``|``, lines ended by ``\\n``, in the frame's row and column order
    (sort it first for a canonical file). Cells are formatted by
    :func:`format_oai_value`. Read back with :func:`kneelib.data.clinical.read_oai_table`.

    Parameters
    ----------
    table : pandas.DataFrame
        Columns are OAI variable names (``ID``, ``SIDE``, ``V00AGE``, ...); write them
        in upper case as OAI does. ``ID`` should be a string column (seven digits).
    path : str or Path
        Output file; its folder is created.
    value_labels : mapping, optional
        Per variable, value labels written as ``"code: label"`` (``{"P02SEX": {1: "Male",
        2: "Female"}}``).

    Returns
    -------
    Path
        The written file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    value_labels = {k.upper(): v for k, v in (value_labels or {}).items()}
    columns = [str(c) for c in table.columns]
    for name in columns:
        if "|" in name or not name:
            raise ValueError(f"bad OAI variable name {name!r} for {path}")
    lines = ["|".join(columns)]
    label_per_column = [value_labels.get(c.upper()) for c in columns]
    for row in table.itertuples(index=False, name=None):
        lines.append("|".join(format_oai_value(v, lab) for v, lab in zip(row, label_per_column)))
    path.write_bytes(("\n".join(lines) + "\n").encode("utf-8"))
    return path


# --------------------------------------------------------------------------------------
# Image index
# --------------------------------------------------------------------------------------

def write_image_index(rows: Iterable[Mapping[str, Any]] | pd.DataFrame, path: str | Path) -> Path:
    """Write the OAI image index ``contents.csv``.

    Parameters
    ----------
    rows : iterable of mappings or DataFrame
        One entry per series with the keys ``Folder`` (path of the series folder
        relative to the index, ``/``-separated, e.g. ``"0.C.2/9000001/20050101/10000001"``),
        ``ParticipantID``, ``StudyDate`` (``YYYYMMDD``), ``Barcode``,
        ``StudyDescription`` (``"OAI^MR^ENROLLMENT^RIGHT"``), ``SeriesDescription``
        (``"SAG_IW_TSE_RIGHT"``). Written in the given order, every field quoted.
    path : str or Path
        Output file (usually ``<cohort root>/contents.csv``).

    Returns
    -------
    Path
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    records = rows.to_dict("records") if isinstance(rows, pd.DataFrame) else list(rows)
    buffer = io.StringIO()
    writer = csv.writer(buffer, quoting=csv.QUOTE_ALL, lineterminator="\n")
    writer.writerow(IMAGE_INDEX_COLUMNS)
    for number, record in enumerate(records):
        missing = [c for c in IMAGE_INDEX_COLUMNS if c not in record]
        if missing:
            raise ValueError(f"image index row {number} for {path} lacks {missing}")
        writer.writerow([str(record[c]) for c in IMAGE_INDEX_COLUMNS])
    path.write_bytes(buffer.getvalue().encode("utf-8"))
    return path


# --------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SliceGeometry:
    """Where each slice of an MR series lies in DICOM patient space (LPS, mm).

    Attributes
    ----------
    image_orientation_patient : tuple of 6 float
        Row direction cosines then column direction cosines (LPS).
    image_positions_patient : tuple of (x, y, z)
        Position of the first pixel (row 0, column 0) of every slice, in the order
        of ``pixel_array``'s slice axis. Leave a slice out to plant a gap.
    pixel_spacing_mm : (float, float)
        DICOM ``PixelSpacing``: spacing between rows, then between columns.
    slice_thickness_mm : float
        Nominal thickness (may differ from the spacing: overlapping slices).
    spacing_between_slices_mm : float or None
        Written as ``SpacingBetweenSlices`` when given.
    """

    image_orientation_patient: tuple[float, float, float, float, float, float]
    image_positions_patient: tuple[tuple[float, float, float], ...]
    pixel_spacing_mm: tuple[float, float]
    slice_thickness_mm: float
    spacing_between_slices_mm: float | None = None

    @property
    def n_slices(self) -> int:
        return len(self.image_positions_patient)

    @classmethod
    def from_affine(
        cls,
        affine_ras: np.ndarray,
        n_slices: int,
        *,
        slice_thickness_mm: float | None = None,
        skip_slices: Sequence[int] = (),
    ) -> "SliceGeometry":
        """Geometry of a stack whose RAS voxel-to-world affine is known.

        Parameters
        ----------
        affine_ras : (4, 4) array
            Maps voxel indices ``(column i, row j, slice k)`` to RAS mm (nibabel
            convention, what :class:`kneelib.data.dicom.Volume` holds). Columns 0
            and 1 must be orthogonal.
        n_slices : int
            Number of slices ``k = 0 .. n_slices-1``.
        slice_thickness_mm : float, optional
            Defaults to the slice spacing (the norm of the third column).
        skip_slices : sequence of int
            Slice indices to leave out (plants a gap for QC tests); the pixel array
            then has ``n_slices - len(skip_slices)`` slices.
        """
        affine_lps = LPS_TO_RAS @ np.asarray(affine_ras, dtype=float)
        col_step, row_step, slice_step = affine_lps[:3, 0], affine_lps[:3, 1], affine_lps[:3, 2]
        column_spacing, row_spacing = float(np.linalg.norm(col_step)), float(np.linalg.norm(row_step))
        slice_spacing = float(np.linalg.norm(slice_step))
        if min(column_spacing, row_spacing, slice_spacing) <= 0:
            raise ValueError(f"degenerate affine {affine_ras!r}")
        row_cosine, column_cosine = col_step / column_spacing, row_step / row_spacing
        if abs(float(row_cosine @ column_cosine)) > 1e-6:
            raise ValueError("affine columns 0 and 1 are not orthogonal; DICOM pixels are rectangular")
        skipped = set(int(s) for s in skip_slices)
        positions = tuple(
            tuple(float(v) for v in affine_lps[:3, 3] + k * slice_step)
            for k in range(n_slices) if k not in skipped
        )
        return cls(
            image_orientation_patient=tuple(float(v) for v in (*row_cosine, *column_cosine)),
            image_positions_patient=positions,
            pixel_spacing_mm=(row_spacing, column_spacing),
            slice_thickness_mm=float(slice_thickness_mm if slice_thickness_mm is not None else slice_spacing),
            spacing_between_slices_mm=slice_spacing,
        )


# --------------------------------------------------------------------------------------
# DICOM helpers
# --------------------------------------------------------------------------------------

def _ds(value: float) -> str:
    """Decimal string of at most 16 characters (DICOM DS)."""
    number = float(value)
    if number == 0.0:
        return "0"
    return format_number_as_ds(number)


def _check_pixels(pixel_array: np.ndarray, what: str) -> np.ndarray:
    array = np.asarray(pixel_array)
    if array.dtype != np.uint16:
        if not np.issubdtype(array.dtype, np.integer):
            raise TypeError(f"{what}: pixel array must be uint16 (got {array.dtype})")
        if array.size and (array.min() < 0 or array.max() > 65535):
            raise ValueError(f"{what}: pixel values outside 0..65535 cannot be written as uint16")
        array = array.astype(np.uint16)
    return array


_FIXED_DEFAULTS: dict[str, Any] = {
    "SpecificCharacterSet": "ISO_IR 100",
    "StudyDate": "20050101",
    "StudyTime": "120000",
    "PatientName": "",
    "PatientID": "",
    "PatientBirthDate": "",
    "PatientSex": "",
    "AccessionNumber": "",
    "ReferringPhysicianName": "",
    "StudyID": "1",
    "SeriesNumber": 1,
    "BodyPartExamined": "KNEE",
    "InstitutionName": "",
}

_MR_DEFAULTS: dict[str, Any] = {
    "Modality": "MR",
    "Manufacturer": "SIEMENS",
    "ManufacturerModelName": "Trio",
    "MagneticFieldStrength": 3.0,
    "ImageType": ["ORIGINAL", "PRIMARY", "M", "ND"],
    "PatientPosition": "FFS",
    "ImagedNucleus": "1H",
    "MRAcquisitionType": "2D",
}

# Elements the writer owns; a header may not set them (they come from geometry/pixels/UIDs).
_WRITER_OWNED = {
    "SOPInstanceUID", "SOPClassUID", "InstanceNumber", "ImagePositionPatient",
    "ImageOrientationPatient", "PixelSpacing", "SliceThickness", "SliceLocation", "Rows",
    "Columns", "PixelData", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
    "SamplesPerPixel", "PhotometricInterpretation", "EchoNumbers",
}


#: Elements :func:`write_dicom_series` changes from one file of a series to the next.
_PER_FILE_ELEMENTS = ("ImagePositionPatient", "SliceLocation", "InstanceNumber", "SOPInstanceUID",
                      "EchoTime", "EchoNumbers", "PixelData")


def _set_element(ds: Dataset, keyword: str, value: Any, where: str) -> None:
    if keyword not in keyword_dict:
        raise ValueError(f"{where}: {keyword!r} is not a DICOM keyword")
    vr = dictionary_VR(keyword_dict[keyword])
    if vr == "DS":
        if isinstance(value, (list, tuple, np.ndarray)):
            value = [_ds(v) for v in value]
        else:
            value = _ds(value)
    elif vr == "IS":
        value = [int(v) for v in value] if isinstance(value, (list, tuple, np.ndarray)) else int(value)
    setattr(ds, keyword, value)


#: Pixel storage of the writers: compression name -> transfer syntax.
DICOM_COMPRESSIONS = {"none": ExplicitVRLittleEndian, "jpeg-ls": JPEGLSLossless}

#: The DICOM sequence delimitation item that ends encapsulated pixel data.
_SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"


def _transfer_syntax(compression: str, where: str) -> str:
    if compression not in DICOM_COMPRESSIONS:
        raise ValueError(f"{where}: compression must be one of {sorted(DICOM_COMPRESSIONS)}, got {compression!r}")
    return DICOM_COMPRESSIONS[compression]


def _encapsulated_jpeg_ls(frame: np.ndarray) -> bytes:
    """One uint16 frame as encapsulated JPEG-LS lossless pixel data (empty offset table, one fragment)."""
    from pydicom.encaps import encapsulate
    from pydicom.pixels import get_encoder

    rows, columns = frame.shape
    encoded = get_encoder(JPEGLSLossless).encode(
        np.ascontiguousarray(frame, dtype=np.uint16), encoding_plugin="pyjpegls", rows=rows, columns=columns,
        samples_per_pixel=1, bits_allocated=16, bits_stored=16, pixel_representation=0,
        photometric_interpretation="MONOCHROME2", number_of_frames=1)
    return encapsulate([bytes(encoded)])


def _file_meta(sop_class_uid: str, transfer_syntax: str = ExplicitVRLittleEndian) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = "1.2"  # replaced per file
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = _IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = _IMPLEMENTATION_VERSION_NAME
    return meta


def _study_level_uids(header: Mapping[str, Any]) -> tuple[str, str]:
    """Study and frame-of-reference UIDs shared by every series of one knee session."""
    key = (header.get("PatientID", ""), header.get("StudyDate", ""), header.get("StudyDescription", ""))
    study_uid = header.get("StudyInstanceUID") or deterministic_uid("study", *key)
    frame_uid = header.get("FrameOfReferenceUID") or deterministic_uid("frame", *key)
    return str(study_uid), str(frame_uid)


def _write_file(ds: Dataset, path: Path) -> None:
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(path, enforce_file_format=True)


def _new_buffer() -> DicomBytesIO:
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    return buffer


_GROUP_LENGTH_TAG = Tag("FileMetaInformationGroupLength")
_MEDIA_INSTANCE_UID_TAG = Tag("MediaStorageSOPInstanceUID")

#: Value representations with a 4-byte length field in Explicit VR Little Endian (PS3.5 7.1.2).
_LONG_LENGTH_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT"}


def _explicit_le(tag: int, vr: str, value: bytes) -> bytes:
    """One data element in Explicit VR Little Endian; ``value`` already padded to even length."""
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr.encode("ascii")
    if vr in _LONG_LENGTH_VRS:
        return head + struct.pack("<HI", 0, len(value)) + value
    return head + struct.pack("<H", len(value)) + value


def _text_value(text: str, vr: str) -> bytes:
    """A string value padded as PS3.5 6.2 asks: UI with NUL, other text VRs with a space."""
    value = text.encode("ascii")
    if len(value) % 2:
        value += b"\x00" if vr == "UI" else b" "
    return value


class _SeriesEncoder:
    """Encode the files of one series, re-encoding only the elements that vary per file.

    ``pydicom``'s :func:`~pydicom.filewriter.dcmwrite` re-encodes and re-validates every
    element of every file; a series of 160 slices repeats ~60 identical elements 160
    times, which made DICOM writing half of the cohort generation time. This encoder
    encodes the template's constant elements once with pydicom (Explicit VR Little
    Endian, the template's character set) and the per-file ones (UIDs, numbers,
    decimal strings, pixel data: :data:`_PER_FILE_ELEMENTS`) directly, and writes them
    in ascending tag order after the 128-byte preamble, ``DICM`` and the file meta
    group: the bytes ``dcmwrite(..., enforce_file_format=True)`` writes, which
    ``tests/test_data_dicom.py`` checks file by file.
    """

    def __init__(self, template: Dataset, varying: Iterable[str]):
        self.encapsulated = template.file_meta.TransferSyntaxUID.is_compressed
        correct_ambiguous_vr(template, True)
        self.varying = {keyword: (Tag(keyword), template[keyword].VR) for keyword in varying
                        if keyword in template}
        encodings = convert_encodings(template.get("SpecificCharacterSet", default_encoding))
        varying_tags = {tag for tag, _ in self.varying.values()}
        self.constant = [(tag, self._encode(template[tag], encodings)) for tag in sorted(template.keys())
                         if tag not in varying_tags]
        write_file_meta_info(_new_buffer(), template.file_meta, enforce_standard=True)  # completes the group
        meta = template.file_meta
        encoded = {tag: self._encode(meta[tag], encodings) for tag in meta.keys()
                   if tag not in (_GROUP_LENGTH_TAG, _MEDIA_INSTANCE_UID_TAG)}
        # the file meta group: its elements before and after the per-file instance UID
        self.meta_head = b"".join(encoded[tag] for tag in sorted(encoded) if tag < _MEDIA_INSTANCE_UID_TAG)
        self.meta_tail = b"".join(encoded[tag] for tag in sorted(encoded) if tag > _MEDIA_INSTANCE_UID_TAG)

    @staticmethod
    def _encode(element, encodings) -> bytes:
        buffer = _new_buffer()
        write_data_element(buffer, element, encodings)
        return buffer.getvalue()

    def write(self, path: Path, values: Mapping[str, str | bytes]) -> None:
        """Write one file whose per-file elements hold ``values``.

        ``values`` maps each per-file keyword to its value as written: the text of a
        string VR (multiple values joined by ``\\``) or the bytes of ``PixelData``.
        """
        varying = []
        for keyword, (tag, vr) in self.varying.items():
            value = values[keyword]
            if keyword == "PixelData" and self.encapsulated:  # OB of undefined length, then the delimiter
                varying.append((tag, struct.pack("<HH", tag.group, tag.element) + b"OB\x00\x00\xff\xff\xff\xff"
                                + value + _SEQUENCE_DELIMITER))
                continue
            varying.append((tag, _explicit_le(tag, vr, value if isinstance(value, bytes) else _text_value(value, vr))))
        uid = _explicit_le(_MEDIA_INSTANCE_UID_TAG, "UI", _text_value(values["SOPInstanceUID"], "UI"))
        meta_bytes = self.meta_head + uid + self.meta_tail
        group_length = _explicit_le(_GROUP_LENGTH_TAG, "UL", struct.pack("<I", len(meta_bytes)))
        elements = sorted(self.constant + varying, key=lambda item: item[0])
        with open(path, "wb") as handle:
            handle.write(b"\x00" * 128 + b"DICM" + group_length + meta_bytes)
            handle.write(b"".join(encoded for _, encoded in elements))


# --------------------------------------------------------------------------------------
# MR series
# --------------------------------------------------------------------------------------

def write_dicom_series(
    folder: str | Path,
    pixel_array: np.ndarray,
    geometry: SliceGeometry,
    header: Mapping[str, Any],
    uid_seed: int | str,
    compression: str = "none",
) -> list[Path]:
    """Write one MR series as OAI does: a folder of DICOM files named ``001``, ``002``, ...

    Parameters
    ----------
    folder : str or Path
        Series folder (created). Existing files ``001``... are overwritten.
    pixel_array : ndarray of uint16
        ``(n_slices, rows, cols)`` for a single-echo series or
        ``(n_echoes, n_slices, rows, cols)`` for a multi-echo series (OAI
        ``SAG_T2_MAP_RIGHT``: 7 echoes). ``pixel_array[..., s, r, c]`` is the pixel
        in row ``r``, column ``c`` of the slice at ``geometry.image_positions_patient[s]``.
    geometry : SliceGeometry
        Orientation, per-slice positions and spacing (see :meth:`SliceGeometry.from_affine`).
    header : mapping
        DICOM keywords and values for every file of the series, e.g.
        ``SeriesDescription`` (``"SAG_IW_TSE_RIGHT"``), ``Laterality`` (``"R"``/``"L"``),
        ``EchoTime`` (ms; a list with one value per echo for a multi-echo array),
        ``RepetitionTime``, ``FlipAngle``, ``PatientID``, ``StudyDate``,
        ``StudyDescription``, ``SeriesNumber``, ``ScanningSequence``, ``SequenceName``,
        ``MRAcquisitionType``, ``StudyInstanceUID`` / ``FrameOfReferenceUID`` (else
        derived from PatientID, StudyDate and StudyDescription, so all series of
        one knee session share them). Defaults: Manufacturer ``SIEMENS``,
        ManufacturerModelName ``Trio``, MagneticFieldStrength 3.0,
        BodyPartExamined ``KNEE``, PatientPosition ``FFS``, StudyDate ``20050101``,
        StudyTime ``120000``. Geometry, pixel and instance elements are owned by
        the writer and may not appear here.
    uid_seed : int or str
        Seed of the series and instance UIDs: the same seed and inputs give
        byte-identical files.
    compression : {"none", "jpeg-ls"}
        Pixel storage (:data:`DICOM_COMPRESSIONS`): uncompressed as the OAI, or lossless JPEG-LS.

    Returns
    -------
    list of Path
        The files written, in instance order. With echoes, files are ordered slice
        by slice and, within a slice, echo by echo (``InstanceNumber`` likewise).

    Raises
    ------
    ValueError, TypeError
        On a pixel array whose shape disagrees with the geometry or the echo times,
        non-uint16 pixels, or an unknown / writer-owned header keyword.
    """
    folder = Path(folder)
    array = _check_pixels(pixel_array, str(folder))
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4:
        raise ValueError(f"{folder}: pixel array must be 3-D or 4-D, got shape {array.shape}")
    n_echoes, n_slices, n_rows, n_cols = array.shape
    if n_slices != geometry.n_slices:
        raise ValueError(f"{folder}: {n_slices} slices of pixels but {geometry.n_slices} positions")
    owned = _WRITER_OWNED.intersection(header)
    if owned:
        raise ValueError(f"{folder}: header may not set {sorted(owned)} (the writer derives them)")

    echo_times = header.get("EchoTime")
    if echo_times is None:
        echo_times_list: list[float | None] = [None] * n_echoes
    elif isinstance(echo_times, (list, tuple, np.ndarray)):
        echo_times_list = [float(t) for t in echo_times]
    else:
        echo_times_list = [float(echo_times)] * n_echoes if n_echoes == 1 else []
    if len(echo_times_list) != n_echoes:
        raise ValueError(f"{folder}: {n_echoes} echoes in the pixel array but EchoTime={echo_times!r}")

    values = {**_FIXED_DEFAULTS, **_MR_DEFAULTS, **{k: v for k, v in header.items() if k != "EchoTime"}}
    if not values.get("PatientName"):
        values["PatientName"] = values.get("PatientID", "")
    values.setdefault("SeriesDate", values["StudyDate"])
    values.setdefault("SeriesTime", values["StudyTime"])
    values.setdefault("AcquisitionDate", values["StudyDate"])
    values.setdefault("ContentDate", values["StudyDate"])
    values.setdefault("ContentTime", values["StudyTime"])
    study_uid, frame_uid = _study_level_uids(values)
    values["StudyInstanceUID"], values["FrameOfReferenceUID"] = study_uid, frame_uid
    series_uid = str(values.pop("SeriesInstanceUID", None) or deterministic_uid(
        "series", uid_seed, values.get("PatientID", ""), values["StudyDate"],
        values["SeriesNumber"], values.get("SeriesDescription", "")))

    transfer_syntax = _transfer_syntax(compression, str(folder))
    template = Dataset()
    template.file_meta = _file_meta(MR_IMAGE_STORAGE, transfer_syntax)
    template.SOPClassUID = MR_IMAGE_STORAGE
    for keyword, value in values.items():
        _set_element(template, keyword, value, str(folder))
    template.SeriesInstanceUID = series_uid
    template.PositionReferenceIndicator = ""
    template.ImageOrientationPatient = [_ds(v) for v in geometry.image_orientation_patient]
    template.PixelSpacing = [_ds(v) for v in geometry.pixel_spacing_mm]
    template.SliceThickness = _ds(geometry.slice_thickness_mm)
    if geometry.spacing_between_slices_mm is not None:
        template.SpacingBetweenSlices = _ds(geometry.spacing_between_slices_mm)
    template.SamplesPerPixel = 1
    template.PhotometricInterpretation = "MONOCHROME2"
    template.Rows, template.Columns = n_rows, n_cols
    template.BitsAllocated, template.BitsStored, template.HighBit = 16, 16, 15
    template.PixelRepresentation = 0
    if n_echoes > 1:
        template.EchoTrainLength = n_echoes

    orientation = np.asarray(geometry.image_orientation_patient, dtype=float)
    normal = np.cross(orientation[:3], orientation[3:])
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    instance = 0
    encoder = None
    for slice_index in range(n_slices):
        position = np.asarray(geometry.image_positions_patient[slice_index], dtype=float)
        for echo_index in range(n_echoes):
            instance += 1
            values = {
                "ImagePositionPatient": "\\".join(_ds(v) for v in position),
                "SliceLocation": _ds(float(position @ normal)),
                "InstanceNumber": str(instance),
                "SOPInstanceUID": deterministic_uid(series_uid, instance),
                "EchoNumbers": str(echo_index + 1),
                "PixelData": (_encapsulated_jpeg_ls(array[echo_index, slice_index]) if compression == "jpeg-ls"
                              else np.ascontiguousarray(array[echo_index, slice_index], dtype="<u2").tobytes()),
            }
            if echo_times_list[echo_index] is not None:
                values["EchoTime"] = _ds(echo_times_list[echo_index])
            if encoder is None:  # the first file sets the template's elements, pydicom checks them
                for keyword, value in values.items():  # a multi-valued string becomes a list
                    setattr(template, keyword, value.split("\\") if isinstance(value, str) and "\\" in value
                            else value)
                if compression != "none":
                    template["PixelData"].VR = "OB"
                encoder = _SeriesEncoder(template, _PER_FILE_ELEMENTS)
            path = folder / f"{instance:03d}"
            encoder.write(path, values)
            written.append(path)
    return written


# --------------------------------------------------------------------------------------
# Radiograph
# --------------------------------------------------------------------------------------

def write_radiograph(
    path: str | Path,
    pixel_array: np.ndarray,
    pixel_spacing_mm: float | tuple[float, float],
    header: Mapping[str, Any],
    uid_seed: int | str = 0,
    compression: str = "none",
) -> Path:
    """Write a bilateral PA fixed-flexion knee radiograph as one DICOM file.

    Parameters
    ----------
    path : str or Path
        Output file (OAI names it ``001`` inside the series folder).
    pixel_array : (rows, cols) ndarray of uint16
        Image as displayed: ``MONOCHROME2`` (bone bright), the participant's right
        knee on the image's left (PA view seen from the front, ``PatientOrientation``
        ``["L", "F"]``: columns grow toward the patient's left, rows toward the feet).
    pixel_spacing_mm : float or (float, float)
        Detector pixel spacing (written as ``ImagerPixelSpacing`` and ``PixelSpacing``;
        OAI radiographs are about 0.1-0.2 mm).
    header : mapping
        DICOM keywords, e.g. ``PatientID``, ``StudyDate``, ``StudyDescription``
        (``"OAI^XR^ENROLLMENT^..."``), ``SeriesDescription``
        (``"Bilateral PA Fixed Flexion Knee"``), ``Modality`` (``"CR"`` default or
        ``"DX"``), ``KVP``, ``ExposureInuAs``. Defaults: BodyPartExamined ``KNEE``,
        ViewPosition ``PA``, ImageLaterality ``B``.
    uid_seed : int or str
        Seed of the series and instance UIDs.
    compression : {"none", "jpeg-ls"}
        Pixel storage (:data:`DICOM_COMPRESSIONS`).

    Returns
    -------
    Path
    """
    path = Path(path)
    array = _check_pixels(pixel_array, str(path))
    if array.ndim != 2:
        raise ValueError(f"{path}: radiograph pixel array must be 2-D, got shape {array.shape}")
    if np.isscalar(pixel_spacing_mm):
        spacing = (float(pixel_spacing_mm), float(pixel_spacing_mm))
    else:
        spacing = tuple(float(v) for v in pixel_spacing_mm)  # type: ignore[assignment]
    owned = _WRITER_OWNED.intersection(header)
    if owned:
        raise ValueError(f"{path}: header may not set {sorted(owned)} (the writer derives them)")
    modality = str(header.get("Modality", "CR")).upper()
    if modality not in ("CR", "DX"):
        raise ValueError(f"{path}: radiograph Modality must be CR or DX, got {modality!r}")
    sop_class = CR_IMAGE_STORAGE if modality == "CR" else DX_IMAGE_STORAGE
    values = {
        **_FIXED_DEFAULTS,
        "Modality": modality,
        "SeriesDescription": "Bilateral PA Fixed Flexion Knee",
        "ViewPosition": "PA",
        "ImageLaterality": "B",
        "PatientOrientation": ["L", "F"],
        "ImageType": ["ORIGINAL", "PRIMARY"],
        **dict(header),
    }
    if not values.get("PatientName"):
        values["PatientName"] = values.get("PatientID", "")
    values.setdefault("SeriesDate", values["StudyDate"])
    values.setdefault("SeriesTime", values["StudyTime"])
    values.setdefault("ContentDate", values["StudyDate"])
    values.setdefault("ContentTime", values["StudyTime"])
    if modality == "DX":
        values.setdefault("PresentationIntentType", "FOR PRESENTATION")
    study_uid, _ = _study_level_uids(values)
    values["StudyInstanceUID"] = study_uid
    values.pop("FrameOfReferenceUID", None)
    series_uid = str(values.pop("SeriesInstanceUID", None) or deterministic_uid(
        "xr-series", uid_seed, values.get("PatientID", ""), values["StudyDate"], values["SeriesNumber"]))

    ds = Dataset()
    ds.file_meta = _file_meta(sop_class, _transfer_syntax(compression, str(path)))
    ds.SOPClassUID = sop_class
    for keyword, value in values.items():
        _set_element(ds, keyword, value, str(path))
    ds.SeriesInstanceUID = series_uid
    ds.InstanceNumber = 1
    ds.SOPInstanceUID = deterministic_uid(series_uid, 1)
    ds.ImagerPixelSpacing = [_ds(v) for v in spacing]
    ds.PixelSpacing = [_ds(v) for v in spacing]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = array.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 0
    if compression == "jpeg-ls":
        ds.PixelData = _encapsulated_jpeg_ls(array)
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    else:
        ds.PixelData = np.ascontiguousarray(array, dtype="<u2").tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_file(ds, path)
    return path
