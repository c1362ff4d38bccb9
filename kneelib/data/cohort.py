"""Cohort-level loading: iterate participants and series, exclude bad data, keep a QC table.

A chapter asks for, say, every baseline ``SAG_IW_TSE_LEFT``/``RIGHT`` of a list of
participants. Some series are missing from the index, some files are truncated,
some have a gap in their slices (the synthetic cohort plants such defects; the
real OAI has them too). :func:`iter_series_volumes` yields the good volumes one at
a time (memory independent of cohort size) and records every exclusion -- who,
which side, visit and series, and why -- in a :class:`QCLog`, then carries on.
Only data errors (:class:`~kneelib.data.errors.KneelibDataError`) and missing files
are recorded; a programming error still stops the run.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import pandas as pd

from kneelib.data.dicom import Volume
from kneelib.data.errors import KneelibDataError
from kneelib.data.image_index import ImageIndex, side_of_description

__all__ = ["SeriesRequest", "QCLog", "iter_series_volumes", "QC_COLUMNS"]

#: Columns of the QC exclusion table.
QC_COLUMNS = ("participant_id", "side", "visit_month", "series", "reason", "error_type", "path")


@dataclass(frozen=True)
class SeriesRequest:
    """One series wanted for one participant at one visit."""

    participant_id: str
    visit_month: int
    series_description: str

    @property
    def side(self) -> str:
        """``"R"``, ``"L"`` or ``""`` (bilateral / unknown), from the description."""
        code = side_of_description(self.series_description)
        return {1.0: "R", 2.0: "L"}.get(code, "")


@dataclass
class QCLog:
    """Exclusions recorded while loading a cohort.

    Use :meth:`record` for each exclusion and :meth:`to_frame` for the table shown
    in a chapter's "Data" section.
    """

    rows: list[dict] = field(default_factory=list)

    def record(self, request: SeriesRequest, reason: str, error_type: str = "", path: str | Path = "") -> None:
        """Add one exclusion."""
        self.rows.append({
            "participant_id": request.participant_id,
            "side": request.side,
            "visit_month": int(request.visit_month),
            "series": request.series_description,
            "reason": reason,
            "error_type": error_type,
            "path": str(path) if path else "",
        })

    def to_frame(self) -> pd.DataFrame:
        """The QC table with columns :data:`QC_COLUMNS`."""
        return pd.DataFrame(self.rows, columns=list(QC_COLUMNS))

    def __len__(self) -> int:
        return len(self.rows)


def iter_series_volumes(
    index: ImageIndex,
    requests: Iterable[SeriesRequest],
    *,
    qc: QCLog,
    loader: Callable[..., Volume] | None = None,
    progress: bool = False,
) -> Iterator[tuple[SeriesRequest, Volume]]:
    """Yield ``(request, volume)`` for every request that loads; record the others in ``qc``.

    Parameters
    ----------
    index : ImageIndex
        The cohort's image index (:func:`kneelib.data.image_index.read_image_index`).
    requests : iterable of SeriesRequest
        What to load, e.g. ``[SeriesRequest(pid, 0, "SAG_IW_TSE_RIGHT") for pid in ids]``.
    qc : QCLog
        Receives one row per excluded request (unknown series, unreadable file,
        slice gap, mixed geometry, missing folder...).
    loader : callable, optional
        ``loader(folder) -> Volume``; default
        :func:`kneelib.data.cache.load_series_cached`.
    progress : bool
        Show a tqdm progress bar.

    Yields
    ------
    (SeriesRequest, Volume)
    """
    if loader is None:
        from kneelib.data.cache import load_series_cached
        loader = load_series_cached
    requests = list(requests)
    iterator: Iterable[SeriesRequest] = requests
    if progress:
        from tqdm.auto import tqdm
        iterator = tqdm(requests, desc="series", unit="series")
    for request in iterator:
        folder: Path | str = ""
        try:
            folder = index.find_series(request.participant_id, request.visit_month, request.series_description)
            volume = loader(folder)
        except KneelibDataError as error:
            qc.record(request, str(error), type(error).__name__, error.path or folder)
            continue
        except FileNotFoundError as error:
            qc.record(request, str(error), type(error).__name__, folder)
            continue
        yield request, volume


def requests_for(participants: Sequence[str], visits: Sequence[int], series: Sequence[str]) -> list[SeriesRequest]:
    """All combinations of participants x visits x series descriptions, in that order."""
    return [SeriesRequest(str(p), int(v), s) for p in participants for v in visits for s in series]


__all__.append("requests_for")
