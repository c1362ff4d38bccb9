"""The OAI image index ``contents.csv`` and lookup of series folders.

Each OAI image release ships ``contents.csv`` with one row per series:
``Folder`` (series folder relative to the file, e.g. ``0.C.2/9000099/20040909/10249506``),
``ParticipantID``, ``StudyDate``, ``Barcode``, ``StudyDescription``
(``OAI^MR^ENROLLMENT^RIGHT``) and ``SeriesDescription`` (``SAG_IW_TSE_RIGHT``).
:class:`ImageIndex` adds the visit month (from the folder's leading visit number,
else from the study description) and the side, and finds a series by
(participant, visit, series description).

Writer counterpart: :func:`kneelib.synth.oai_writer.write_image_index`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from kneelib.data.errors import AmbiguousSeriesError, TableFormatError, UnknownSeriesError
from kneelib.data.oai_layout import IMAGE_INDEX_COLUMNS, SIDE_CODE, visit_month_from_code

__all__ = ["ImageIndex", "read_image_index", "visit_month_of", "side_of_description"]

_FOLDER_VISIT_RE = re.compile(r"^(\d+)\.[A-Za-z]\.")
_WORDS_VISIT_RE = re.compile(r"\^(ENROLLMENT|BASELINE|(\d+)\s*MONTHS?)\b", re.IGNORECASE)
_SIDE_RE = re.compile(r"(?:^|[^A-Z])(RIGHT|LEFT)(?:$|[^A-Z])", re.IGNORECASE)


def visit_month_of(folder: str, study_description: str = "") -> float:
    """Visit month of one index row: from the folder prefix (``1.C.2/...`` -> 12), else
    from the study description (``OAI^MR^12 MONTH^LEFT`` -> 12); NaN when neither says."""
    match = _FOLDER_VISIT_RE.match(str(folder))
    if match:
        try:
            return float(visit_month_from_code(int(match.group(1))))
        except ValueError:
            pass
    match = _WORDS_VISIT_RE.search(str(study_description))
    if match:
        return 0.0 if match.group(2) is None else float(match.group(2))
    return float("nan")


def side_of_description(*descriptions: str) -> float:
    """OAI SIDE code (1 right, 2 left) named in a series or study description, else NaN.

    ``"Bilateral PA Fixed Flexion Knee"`` and other bilateral series give NaN.
    """
    for text in descriptions:
        match = _SIDE_RE.search(str(text))
        if match:
            return float(SIDE_CODE[match.group(1).upper()[0]])
    return float("nan")


@dataclass
class ImageIndex:
    """The parsed image index of one OAI root.

    Attributes
    ----------
    path : Path
        The ``contents.csv`` file; series folders are relative to its folder.
    table : pandas.DataFrame
        The index columns (text) plus ``VISIT`` (month, float, NaN if unknown),
        ``SIDE`` (1/2/NaN) and ``path`` (absolute series folder).
    """

    path: Path
    table: pd.DataFrame

    @property
    def root(self) -> Path:
        return self.path.parent

    def series_descriptions(self) -> list[str]:
        """Distinct series descriptions in the index, sorted."""
        return sorted(self.table["SeriesDescription"].unique())

    def find_all(self, participant_id: str, visit_month: int, series_description: str) -> pd.DataFrame:
        """All rows that match; series description compared case-insensitively."""
        table = self.table
        hit = (
            (table["ParticipantID"] == str(participant_id).strip())
            & (table["VISIT"] == float(visit_month))
            & (table["SeriesDescription"].str.upper() == str(series_description).strip().upper())
        )
        return table[hit]

    def find_series(self, participant_id: str, visit_month: int, series_description: str) -> Path:
        """Folder of one series.

        Parameters
        ----------
        participant_id : str
            OAI ID (``"9000099"``).
        visit_month : int
            0, 12, ...
        series_description : str
            ``"SAG_IW_TSE_RIGHT"``, ``"SAG_3D_DESS_LEFT"``, ``"SAG_T2_MAP_RIGHT"``,
            ``"Bilateral PA Fixed Flexion Knee"``, ...

        Returns
        -------
        Path
            Absolute series folder.

        Raises
        ------
        UnknownSeriesError
            No such series; the message lists what the participant has at that visit.
        AmbiguousSeriesError
            Several rows match (a repeated acquisition); use :meth:`find_all`.
        """
        rows = self.find_all(participant_id, visit_month, series_description)
        if len(rows) == 0:
            table = self.table
            same = table[(table["ParticipantID"] == str(participant_id)) & (table["VISIT"] == float(visit_month))]
            if len(same):
                have = f"that visit has {sorted(same['SeriesDescription'].unique())}"
            elif (table["ParticipantID"] == str(participant_id)).any():
                have = (f"participant has visits "
                        f"{sorted(table.loc[table['ParticipantID'] == str(participant_id), 'VISIT'].dropna().unique().tolist())}")
            else:
                have = "participant not in the index"
            raise UnknownSeriesError(
                self.path,
                f"no series {series_description!r} for participant {participant_id} at month {visit_month}; {have}",
            )
        if len(rows) > 1:
            raise AmbiguousSeriesError(
                self.path,
                f"{len(rows)} series {series_description!r} for participant {participant_id} at month "
                f"{visit_month}: folders {rows['Folder'].tolist()}",
            )
        return Path(rows["path"].iloc[0])


def read_image_index(path: str | Path) -> ImageIndex:
    """Read ``contents.csv`` (or the folder that holds it).

    Column names are matched case-insensitively; every value is read as text
    (IDs and barcodes keep leading zeros).

    Raises
    ------
    FileNotFoundError
        If there is no such file.
    TableFormatError
        If a required column is missing.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "contents.csv"
    if not path.is_file():
        raise FileNotFoundError(f"image index {path} does not exist")
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    rename = {}
    lower = {c.lower(): c for c in table.columns}
    for column in IMAGE_INDEX_COLUMNS:
        if column.lower() not in lower:
            raise TableFormatError(path, f"image index lacks column {column!r} (has {list(table.columns)})")
        rename[lower[column.lower()]] = column
    table = table.rename(columns=rename)[list(IMAGE_INDEX_COLUMNS)].copy()
    for column in IMAGE_INDEX_COLUMNS:
        table[column] = table[column].str.strip()
    table["VISIT"] = [visit_month_of(f, s) for f, s in zip(table["Folder"], table["StudyDescription"])]
    table["SIDE"] = [side_of_description(s, d) for s, d in zip(table["SeriesDescription"], table["StudyDescription"])]
    root = path.parent.resolve()
    table["path"] = [str(root.joinpath(*f.replace("\\", "/").split("/"))) for f in table["Folder"]]
    table["VISIT"] = table["VISIT"].astype(float)
    table["SIDE"] = table["SIDE"].astype(float)
    return ImageIndex(path=path.resolve(), table=table.reset_index(drop=True))
