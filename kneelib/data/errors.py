"""Typed errors of the OAI data layer.

Every error names *what* was bad (a file, a folder, a variable) and *why*, so a
cohort loader can record the reason in its QC table (see
:func:`kneelib.data.cohort.load_series_for_cohort`) and a person reading a
traceback knows which file to look at.

All inherit from :class:`KneelibDataError`, itself a :class:`ValueError`, so
callers that only want "bad data, skip it" catch one class.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

__all__ = [
    "KneelibDataError",
    "DicomReadError",
    "SliceGapError",
    "MixedGeometryError",
    "UnknownSeriesError",
    "MissingVariableError",
    "TableFormatError",
    "LateralityError",
    "MissingTableError",
    "AmbiguousSeriesError",
    "RadiographReadError",
    "KneelibDataWarning",
    "exclusion_reason",
]


class KneelibDataError(ValueError):
    """Base class of every data-layer error.

    Attributes
    ----------
    path : pathlib.Path or None
        The file or folder concerned (``None`` when not about one file).
    reason : str
        Short, human-readable reason (also the end of the message).
    """

    def __init__(self, message: str, *, path: str | Path | Iterable[str | Path] | None = None, reason: str = ""):
        super().__init__(message)
        if path is not None and not isinstance(path, (str, Path)):
            path = next(iter([Path(p) for p in path]), None)  # several folders of one series: the first
        self.path = Path(path) if path is not None else None
        self.reason = reason or message


def _describe(where: str | Path | Iterable[str | Path]) -> str:
    """A folder, or several folders joined by commas, for a message."""
    if isinstance(where, (str, Path)):
        return str(where)
    return ", ".join(str(w) for w in where)


class DicomReadError(KneelibDataError):
    """A DICOM file cannot be turned into pixels: truncated, not DICOM, or no pixel data."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"cannot read DICOM file {path}: {reason}", path=path, reason=reason)


class SliceGapError(KneelibDataError):
    """Slice positions along the slice normal are not evenly spaced (a gap or a duplicate).

    Attributes
    ----------
    positions_mm : list of float
        Sorted slice positions projected on the slice normal (mm).
    """

    def __init__(self, folder: str | Path | Iterable[str | Path], positions_mm: Sequence[float], reason: str):
        self.positions_mm = [float(p) for p in positions_mm]
        shown = ", ".join(f"{p:.3f}" for p in self.positions_mm[:40])
        more = "" if len(self.positions_mm) <= 40 else f", ... ({len(self.positions_mm)} in all)"
        super().__init__(
            f"uneven slice spacing in {_describe(folder)}: {reason}; slice positions along the normal (mm): "
            f"[{shown}{more}]",
            path=folder,
            reason=reason,
        )


class MixedGeometryError(KneelibDataError):
    """Files of one series disagree on orientation, pixel spacing, matrix or frame of reference."""

    def __init__(self, folder: str | Path | Iterable[str | Path], reason: str):
        if isinstance(folder, (str, Path)):
            where, path = str(folder), folder
        else:
            folders = [str(f) for f in folder]
            where, path = ", ".join(folders), (folders[0] if folders else None)
        super().__init__(f"inconsistent geometry in {where}: {reason}", path=path, reason=reason)


class UnknownSeriesError(KneelibDataError, KeyError):
    """No series in the image index matches the request (participant, visit, description)."""

    def __init__(self, index_path: str | Path, reason: str):
        super().__init__(f"unknown series in image index {index_path}: {reason}",
                         path=index_path, reason=reason)

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return self.args[0]


class MissingVariableError(KneelibDataError, KeyError):
    """A requested variable is not a column of the clinical table.

    Attributes
    ----------
    variable : str
        The variable name as requested (upper case).
    """

    def __init__(self, variable: str, table_path: str | Path, reason: str = ""):
        self.variable = variable
        reason = reason or "no such column"
        super().__init__(f"variable {variable} missing from table {table_path}: {reason}",
                         path=table_path, reason=reason)

    def __str__(self) -> str:
        return self.args[0]


class TableFormatError(KneelibDataError):
    """A clinical table file cannot be parsed (wrong delimiter, ragged rows, no ID column...)."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"cannot parse OAI table {path}: {reason}", path=path, reason=reason)


class LateralityError(KneelibDataError):
    """The side of a knee series cannot be determined or contradicts what was asked."""

    def __init__(self, where: str | Path | Iterable[str | Path], reason: str):
        super().__init__(f"laterality of {_describe(where)}: {reason}", path=where, reason=reason)


class MissingTableError(KneelibDataError, FileNotFoundError):
    """No clinical table file of that name (``.txt`` or ``.sas7bdat``) under the OAI root."""

    def __init__(self, table: str, root: str | Path, reason: str = ""):
        self.table = table
        reason = reason or "no file <table>.txt or <table>.sas7bdat (case-insensitive) found"
        super().__init__(f"OAI table {table} not found under {root}: {reason}", path=root, reason=reason)

    def __str__(self) -> str:
        return self.args[0]


class AmbiguousSeriesError(KneelibDataError):
    """Several series in the image index match one request; the caller must choose."""

    def __init__(self, index_path: str | Path, reason: str):
        super().__init__(f"ambiguous series in image index {index_path}: {reason}",
                         path=index_path, reason=reason)


class RadiographReadError(KneelibDataError):
    """A radiograph file (DICOM or PNG/JPEG/TIFF) cannot be turned into a 2-D grey image."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"cannot read radiograph {path}: {reason}", path=path, reason=reason)


class KneelibDataWarning(UserWarning):
    """Data that could be read, but not as the OAI format promises (e.g. a non-UTF-8 table)."""


def exclusion_reason(error: Exception, root) -> str:
    """``"ErrorType: message"`` of a refused input for a QC or exclusion table: its first clause,
    with paths relative to the cohort ``root`` (a page shows no local paths), at most 160
    characters of message."""
    message = str(error).splitlines()[0].split(";")[0] if str(error) else ""
    for prefix in sorted({str(Path(root)), str(Path(root).resolve())}, key=len, reverse=True):
        message = message.replace(prefix + "/", "")
    return f"{type(error).__name__}: {message[:160]}"
