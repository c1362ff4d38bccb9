"""Conventions of the OAI distribution shared by the readers and the synthetic writers.

Keeping them in one module guarantees that :mod:`kneelib.synth.oai_writer` writes
exactly what :mod:`kneelib.data` reads.

Visits
------
OAI names a visit by a two-digit code: ``V00`` baseline (enrolment), ``V01``
12 months, ``V02`` 18 months, ``V03`` 24 months, ... Variables carry the code as a
prefix (``V00WOMKPR``, ``V01MCMJSW``); screening-visit variables use ``P01``/``P02``.
Image folders start with the visit number (``0.C.2/...`` baseline MRI, ``1.C.2/...``
12-month MRI, ``0.E.1/...`` baseline radiographs) and the image index's
``StudyDescription`` names the visit in words (``OAI^MR^ENROLLMENT^RIGHT``,
``OAI^MR^12 MONTH^LEFT``).

Missing values
--------------
OAI ASCII tables encode missing values as strings that start with a dot, e.g.
``".: Missing Form/Incomplete Workbook"`` or ``".A: Not Expected"``; categorical
values are written ``"<code>: <label>"`` (``"1: Yes"``).
"""
from __future__ import annotations

__all__ = [
    "VISIT_CODE_BY_MONTH",
    "MONTH_BY_VISIT_CODE",
    "visit_code",
    "visit_prefix",
    "visit_month_from_code",
    "study_visit_words",
    "MISSING_FORM",
    "NOT_EXPECTED",
    "IMAGE_INDEX_COLUMNS",
    "SIDE_CODE",
    "SIDE_LETTER",
    "SERIES_DESCRIPTIONS",
]

#: OAI visit number (the ``NN`` in ``VNN`` and the folder prefix) by month.
VISIT_CODE_BY_MONTH: dict[int, int] = {
    0: 0, 12: 1, 18: 2, 24: 3, 30: 4, 36: 5, 48: 6, 60: 7, 72: 8, 84: 9, 96: 10, 108: 11,
}
MONTH_BY_VISIT_CODE: dict[int, int] = {code: month for month, code in VISIT_CODE_BY_MONTH.items()}

#: Missing-value strings of the OAI ASCII tables (the reader treats any value that
#: starts with ``"."`` followed by an optional letter and ``":"`` as missing).
MISSING_FORM = ".: Missing Form/Incomplete Workbook"
NOT_EXPECTED = ".A: Not Expected"

#: Columns of the OAI image index ``contents.csv`` in file order.
IMAGE_INDEX_COLUMNS: tuple[str, ...] = (
    "Folder", "ParticipantID", "StudyDate", "Barcode", "StudyDescription", "SeriesDescription",
)

#: OAI ``SIDE`` coding of per-knee tables.
SIDE_CODE: dict[str, int] = {"R": 1, "L": 2}
SIDE_LETTER: dict[int, str] = {1: "R", 2: "L"}

#: Series descriptions of the OAI knee protocol (Peterfy et al. 2008) by key.
#: ``{side}`` is ``RIGHT`` or ``LEFT``.
SERIES_DESCRIPTIONS: dict[str, str] = {
    "sag_iw_tse": "SAG_IW_TSE_{side}",
    "cor_iw_tse": "COR_IW_TSE_{side}",
    "sag_dess": "SAG_3D_DESS_{side}",
    "sag_t2_map": "SAG_T2_MAP_RIGHT",
    "xr_pa_knee": "Bilateral PA Fixed Flexion Knee",
}


def visit_code(visit_month: int) -> int:
    """OAI visit number of a visit month (0 -> 0, 12 -> 1, 24 -> 3, ...).

    Raises
    ------
    ValueError
        If the month is not an OAI visit.
    """
    try:
        return VISIT_CODE_BY_MONTH[int(visit_month)]
    except KeyError:
        raise ValueError(f"{visit_month} is not an OAI visit month; "
                         f"known: {sorted(VISIT_CODE_BY_MONTH)}") from None


def visit_prefix(visit_month: int) -> str:
    """Variable prefix of a visit: ``visit_prefix(0) == "V00"``, ``visit_prefix(12) == "V01"``."""
    return f"V{visit_code(visit_month):02d}"


def visit_month_from_code(code: int) -> int:
    """Visit month of an OAI visit number (inverse of :func:`visit_code`)."""
    try:
        return MONTH_BY_VISIT_CODE[int(code)]
    except KeyError:
        raise ValueError(f"{code} is not an OAI visit number; known: {sorted(MONTH_BY_VISIT_CODE)}") from None


def study_visit_words(visit_month: int) -> str:
    """Visit as written in an OAI ``StudyDescription``: ``ENROLLMENT`` or ``12 MONTH``."""
    visit_code(visit_month)  # validates
    return "ENROLLMENT" if int(visit_month) == 0 else f"{int(visit_month)} MONTH"
