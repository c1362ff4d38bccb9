"""OAI clinical tables: pipe-delimited ASCII and SAS, and the tidy per-knee table.

The OAI distributes its clinical and X-ray reading data as pipe-delimited ASCII
files (``AllClinical00.txt``, ``Enrollees.txt``, ``kXR_SQ_BU00.txt``,
``kXR_QJSW_Duryea00.txt``, ...) and as SAS ``.sas7bdat`` files with the same
variables. This module reads either into a :class:`pandas.DataFrame` with
upper-case column names, decodes OAI value strings (``"1: Yes"`` -> 1, missing
codes such as ``".: Missing Form/Incomplete Workbook"`` -> NaN), and assembles
the variables the studies need (issue #3, Methods of papers 000-004) into one
tidy table with one row per knee and visit: ``ID``, ``SIDE`` (1 right, 2 left),
``VISIT`` (month) and one column per study variable named in
``oai_variables.yaml`` (:mod:`kneelib.data.variables`).

The writer counterpart is :func:`kneelib.synth.oai_writer.write_oai_table`.
"""
from __future__ import annotations

import codecs
import os
import re
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from kneelib.data.errors import (
    KneelibDataWarning,
    MissingTableError,
    MissingVariableError,
    TableFormatError,
)
from kneelib.data.oai_layout import SIDE_CODE, visit_code
from kneelib.data.variables import StudyVariable, load_variable_config

__all__ = [
    "read_oai_table",
    "read_clinical_table",
    "decode_oai_column",
    "find_table",
    "knee_table",
    "widespread_pain",
    "chronic_pain",
    "choose_reading_project",
    "TABLE_SEARCH_DEPTH",
]

#: OAI missing-value strings: "." alone, or ".<letter>: <reason>" with or without spaces
#: around the colon (".: Missing Form/Incomplete Workbook", ".A:Not Expected",
#: ". : Missing", ".B: Don't Know/Unknown/Uncertain", ...).
_MISSING_RE = re.compile(r"^\.[A-Za-z]?\s*(:.*)?$")
#: Categorical value "<code>:<label>", "<code>: <label>", "<code> : <label>" or "<code>:".
_CODED_RE = re.compile(r"^(-?\d+(?:\.\d+)?)\s*:(.*)$")
#: Columns always kept as text.
_TEXT_COLUMNS = {"ID", "VERSION", "READPRJ_TEXT"}
#: Columns kept in every read when the file has them (besides ID).
_ALWAYS_KEPT = ("SIDE", "VERSION", "READPRJ")
#: Folder levels below the OAI root searched by :func:`find_table`.
TABLE_SEARCH_DEPTH = 3
#: Folder names that belong to an OAI image tree and are never searched for tables:
#: an image release folder (``0.C.2``, ``1.E.1``) and the all-digit participant, date and
#: barcode folders below it.
_IMAGE_FOLDER_RE = re.compile(r"^\d+\.[A-Za-z]\.\d+$|^\d+$")


def decode_oai_column(values: pd.Series) -> pd.Series:
    """Decode one column of OAI text values.

    Missing codes (``"."``, ``".: Missing Form/Incomplete Workbook"``, ``".A: Not
    Expected"``, ``".A:Not Expected"``...) and empty cells become NaN; ``"1: Yes"``,
    ``"1:Yes"`` and ``"1 : Yes"`` become ``1``; the
    column becomes numeric when every remaining value is a number, else it stays
    text (with missing codes as ``None``).

    Parameters
    ----------
    values : pandas.Series of str

    Returns
    -------
    pandas.Series
    """
    text = values.astype("string").str.strip()
    missing = text.isna() | (text == "") | text.str.match(_MISSING_RE).fillna(False).astype(bool)
    coded = text.str.extract(_CODED_RE)[0]
    decoded = coded.where(coded.notna(), text).mask(missing)
    numeric = pd.to_numeric(decoded, errors="coerce")
    if numeric.notna().sum() == decoded.notna().sum():
        if numeric.notna().all() and np.all(np.mod(numeric.to_numpy(dtype=float), 1) == 0):
            return numeric.astype(np.int64)
        return numeric.astype(float)
    return decoded.astype(object).where(decoded.notna(), None)


def _table_encoding(path: Path) -> str:
    """``"utf-8"`` when the file decodes as UTF-8, else ``"latin-1"`` with a warning.

    The OAI ASCII tables are plain ASCII, but free-text columns of some releases carry
    Windows/Latin-1 accented letters. Latin-1 maps every byte to a character, so such
    a table is still read (the odd letters may be wrong); a file with NUL bytes is not
    text at all and raises :class:`TableFormatError`.
    """
    decoder = codecs.getincrementaldecoder("utf-8")()
    position = 0
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            nul = block.find(b"\0")
            if nul >= 0:
                raise TableFormatError(path, f"binary content (NUL byte at offset {position + nul}); "
                                             "not a text table")
            try:
                decoder.decode(block)
            except UnicodeDecodeError as error:
                warnings.warn(f"OAI table {path} is not UTF-8 (undecodable byte near offset "
                              f"{position + max(error.start, 0)}); decoded as Latin-1",
                              KneelibDataWarning, stacklevel=3)
                return "latin-1"
            position += len(block)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        warnings.warn(f"OAI table {path} is not UTF-8 (truncated character at its end); decoded as Latin-1",
                      KneelibDataWarning, stacklevel=3)
        return "latin-1"
    return "utf-8"


def _read_header(path: Path, encoding: str) -> list[str]:
    with open(path, "r", encoding=encoding, newline="") as handle:
        first = handle.readline()
    if "|" not in first:
        raise TableFormatError(path, "header row has no '|' separator; not an OAI ASCII table")
    return [name.strip() for name in first.rstrip("\r\n").split("|")]


def read_oai_table(path: str | Path, variables: Sequence[str] | None = None) -> pd.DataFrame:
    """Read one OAI clinical table (``.txt`` pipe-delimited ASCII or ``.sas7bdat``).

    Parameters
    ----------
    path : str or Path
        The table file.
    variables : sequence of str, optional
        Variables to keep (case-insensitive). ``ID`` and, when present, ``SIDE``,
        ``VERSION`` and ``READPRJ`` (reading project) are always kept. Default: every column.

    Returns
    -------
    pandas.DataFrame
        Upper-case column names; ``ID`` as text (seven digits); other columns
        decoded by :func:`decode_oai_column` (numeric where possible).

    Raises
    ------
    MissingVariableError
        If a requested variable is not a column of the file (names both).
    TableFormatError
        If the file cannot be parsed (no ``|`` header, ragged rows, no ``ID``,
        binary content).
    FileNotFoundError
        If the file does not exist.

    Warns
    -----
    KneelibDataWarning
        When the file is not UTF-8; it is then decoded as Latin-1 (every byte a
        character), naming the file and the first offending byte.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"OAI table {path} does not exist")
    if path.suffix.lower() == ".sas7bdat":
        return _read_sas_table(path, variables)
    encoding = _table_encoding(path)
    header = _read_header(path, encoding)
    upper = [name.upper() for name in header]
    if len(set(upper)) != len(upper):
        raise TableFormatError(path, "duplicate column names (case-insensitive)")
    usecols = _select_columns(upper, variables, path)
    # Columns by position, named from the header we parsed (pandas would compare raw
    # names, which may differ from the stripped ones by odd whitespace).
    positions = [upper.index(c) for c in usecols]
    try:
        frame = pd.read_csv(
            path, sep="|", dtype=str, keep_default_na=False, na_values=[], header=None, skiprows=1,
            names=list(range(len(header))), usecols=positions, engine="c", quoting=3, encoding=encoding,
        )
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as error:
        raise TableFormatError(path, f"rows do not match the header ({type(error).__name__}: {error})") from error
    frame.columns = [upper[i] for i in frame.columns]
    frame = frame[usecols]
    for column in frame.columns:
        if column in _TEXT_COLUMNS:
            frame[column] = frame[column].str.strip()
        else:
            frame[column] = decode_oai_column(frame[column])
    return frame.reset_index(drop=True)


def _select_columns(upper: list[str], variables: Sequence[str] | None, path: Path) -> list[str]:
    if "ID" not in upper:
        raise TableFormatError(path, "no ID column")
    if variables is None:
        return upper
    wanted = ["ID"] + [c for c in _ALWAYS_KEPT if c in upper]
    for name in variables:
        key = str(name).upper()
        if key not in upper:
            raise MissingVariableError(key, path)
        if key not in wanted:
            wanted.append(key)
    return wanted


def _read_sas_table(path: Path, variables: Sequence[str] | None) -> pd.DataFrame:
    import pyreadstat

    try:
        _, meta = pyreadstat.read_sas7bdat(str(path), metadataonly=True)
    except Exception as error:  # pyreadstat raises its own ReadstatError types
        raise TableFormatError(path, f"not a readable SAS file ({error})") from error
    names = list(meta.column_names)
    upper = [n.upper() for n in names]
    usecols = _select_columns(upper, variables, path)
    frame, _ = pyreadstat.read_sas7bdat(str(path), usecols=[names[upper.index(c)] for c in usecols])
    frame.columns = [c.upper() for c in frame.columns]
    frame = frame[usecols]
    for column in frame.columns:
        if frame[column].dtype == object:
            if column in _TEXT_COLUMNS:
                frame[column] = frame[column].astype(str).str.strip()
            else:
                frame[column] = decode_oai_column(frame[column])
    frame["ID"] = frame["ID"].map(lambda v: str(int(v)) if isinstance(v, (int, float, np.number)) else str(v).strip())
    return frame.reset_index(drop=True)


@lru_cache(maxsize=32)
def _table_files(root: str, max_depth: int = TABLE_SEARCH_DEPTH) -> dict[str, str]:
    """Map lower-case ``stem.suffix`` -> path for the table files of an OAI root.

    Searches ``root`` and its folders down to ``max_depth`` levels, in sorted order,
    never entering an image tree (:data:`_IMAGE_FOLDER_RE`: ``0.C.2``-style release
    folders and all-digit participant/date/barcode folders) or a hidden folder: a
    real download holds hundreds of thousands of DICOM files there and no table.
    """
    found: dict[str, str] = {}
    level = [Path(root)]
    for depth in range(max_depth + 1):
        below: list[Path] = []
        for folder in level:
            try:
                entries = sorted(os.scandir(folder), key=lambda e: e.name)
            except OSError:
                continue
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    if depth < max_depth and not _IMAGE_FOLDER_RE.match(entry.name):
                        below.append(Path(entry.path))
                elif Path(entry.name).suffix.lower() in (".txt", ".sas7bdat") and entry.is_file():
                    found.setdefault(entry.name.lower(), entry.path)
        level = below
    return found


def find_table(root: str | Path, table: str) -> Path:
    """Locate an OAI table file by stem, case-insensitively, in the clinical folders of ``root``.

    Searches ``root`` and its sub-folders down to :data:`TABLE_SEARCH_DEPTH` levels
    (the OAI releases put tables at most two levels down, e.g.
    ``X-Ray Image Assessments_ASCII/Semi-Quant Scoring_ASCII/kxr_sq_bu00.txt``),
    shallower files first, and never walks an image tree (``0.C.2/9000099/...``
    folders), which in a real download holds the DICOM files. ``.txt`` wins over
    ``.sas7bdat`` when both exist. The listing is cached per root; call
    ``find_table.cache_clear()`` after adding files.

    Raises
    ------
    MissingTableError
        If neither ``<table>.txt`` nor ``<table>.sas7bdat`` exists.
    """
    files = _table_files(str(Path(root).resolve()))
    for suffix in (".txt", ".sas7bdat"):
        hit = files.get(f"{table}{suffix}".lower())
        if hit:
            return Path(hit)
    raise MissingTableError(table, root)


find_table.cache_clear = _table_files.cache_clear  # type: ignore[attr-defined]


def read_clinical_table(root: str | Path, table: str, variables: Sequence[str] | None = None) -> pd.DataFrame:
    """Find ``table`` under the OAI ``root`` (see :func:`find_table`) and read it."""
    return read_oai_table(find_table(root, table), variables)


# --------------------------------------------------------------------------------------
# Tidy per-knee table
# --------------------------------------------------------------------------------------

def _per_subject(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    if frame["ID"].duplicated().any():
        dup = frame.loc[frame["ID"].duplicated(), "ID"].iloc[0]
        raise TableFormatError(path, f"participant {dup} appears on several rows of a per-subject table")
    return frame.set_index("ID")


def choose_reading_project(frame: pd.DataFrame, variable: str,
                           preference: Sequence[int] | None = None) -> int | None:
    """The one OAI reading project (``READPRJ``) whose readings of ``variable`` are used.

    OAI X-ray and MRI reading tables hold one row per knee *and reading project*
    (e.g. ``kXR_SQ_BU00``: the central readings of projects 15, 37, 42, ...), and the
    projects differ in which knees they read and, for a knee read twice, sometimes in
    the grade. Mixing projects knee by knee would give a variable two definitions, so
    one project is chosen per variable (and visit) by this rule:

    1. the projects in ``preference``, in that order: the first with at least one
       non-missing reading of ``variable`` is used;
    2. otherwise (no preference given, or none of the preferred projects read it) the
       project with the most non-missing readings of ``variable``; ties go to the
       smallest project code.

    Parameters
    ----------
    frame : pandas.DataFrame
        A per-knee table with a ``READPRJ`` column (as from :func:`read_oai_table`).
    variable : str
        The OAI variable (upper case).
    preference : sequence of int, optional
        Preferred projects, most preferred first.

    Returns
    -------
    int or None
        The project code; ``None`` when the table has no ``READPRJ`` column or no
        project read the variable.
    """
    if "READPRJ" not in frame.columns:
        return None
    read = frame.loc[frame[variable].notna() & frame["READPRJ"].notna(), "READPRJ"]
    if read.empty:
        return None
    counts = read.astype(int).value_counts()
    for project in preference or ():
        if int(project) in counts.index:
            return int(project)
    best = counts.max()
    return int(min(p for p, n in counts.items() if n == best))


def _per_knee(frame: pd.DataFrame, path: Path, variable: str,
              preference: Sequence[int] | None = None) -> tuple[pd.Series, int | None]:
    """One value of ``variable`` per knee, from one reading project (see :func:`choose_reading_project`)."""
    if "SIDE" not in frame.columns:
        raise MissingVariableError("SIDE", path, "per-knee table needs a SIDE column (1 right, 2 left)")
    frame = frame.dropna(subset=["SIDE"]).copy()
    frame["SIDE"] = frame["SIDE"].astype(int)
    project = choose_reading_project(frame, variable, preference)
    if project is not None:
        frame = frame[frame["READPRJ"].astype(float) == project]
    rows = frame.dropna(subset=[variable])
    twice = rows.duplicated(["ID", "SIDE"], keep=False)
    if twice.any():
        first = rows.loc[twice].iloc[0]
        which = "" if project is None else f" within reading project {project}"
        raise TableFormatError(path, f"knee ID {first['ID']} SIDE {first['SIDE']} has several non-missing "
                                     f"{variable} readings{which}; cannot choose one")
    return rows.set_index(["ID", "SIDE"])[variable], project


def knee_table(
    root: str | Path,
    variables: Iterable[str],
    visits: Sequence[int] = (0,),
    *,
    config: Mapping[str, StudyVariable] | None = None,
    reading_projects: Sequence[int] | Mapping[str, Sequence[int]] | None = None,
) -> pd.DataFrame:
    """One tidy row per knee and visit with the requested study variables.

    Parameters
    ----------
    root : str or Path
        OAI root (folder that holds the clinical tables, searched recursively).
    variables : iterable of str
        Study variable names from ``oai_variables.yaml`` (``"womac_pain"``,
        ``"kl_grade"``, ``"age_years"``, ...).
    visits : sequence of int
        Visit months (0 baseline, 12, ...). A variable whose OAI name has no visit
        template (``V00AGE``, ``P01KPNREV``) is a baseline value copied to every
        visit row; a templated one (``V{VV}WOMKPR``) is read per visit.
    config : mapping, optional
        Variable definitions (default :func:`kneelib.data.variables.load_variable_config`).
    reading_projects : sequence of int, or mapping of study variable -> sequence of int, optional
        Preferred OAI reading projects (``READPRJ``) for per-knee reading tables, most
        preferred first; a mapping sets them per study variable. Default: none, so
        each variable comes from the project with the most non-missing readings
        (:func:`choose_reading_project` states the rule).

    Returns
    -------
    pandas.DataFrame
        Columns ``ID`` (text), ``SIDE`` (1 right, 2 left), ``VISIT`` (month), then one
        column per requested variable in request order. Rows: every participant
        in the first subject-level table read (``Enrollees`` when requested, else
        the first table) x both sides x visits, sorted by ID, SIDE, VISIT. Knees
        absent from a per-knee table get NaN. When several reading projects grade
        the knees, each variable comes from ONE project (never a knee-by-knee mix);
        ``table.attrs["reading_project"]`` records it as
        ``{study variable: {visit month: READPRJ code or None}}`` (``None``: the
        table has no ``READPRJ`` column).

    Raises
    ------
    KeyError
        For a study variable not in the configuration.
    MissingTableError, MissingVariableError
        When a table file or a variable in it is missing (both named).
    """
    config = dict(config or load_variable_config())
    names = list(variables)
    for name in names:
        if name not in config:
            raise KeyError(f"unknown study variable {name!r}; known: {sorted(config)}")
    visits = [int(v) for v in visits]
    for v in visits:
        visit_code(v)

    # Gather the (table, oai variables) reads needed, grouped per table file.
    columns: dict[tuple[str, int], pd.Series] = {}
    ids: set[str] = set()
    cache: dict[tuple[str, tuple[str, ...]], tuple[pd.DataFrame, Path]] = {}
    chosen_projects: dict[str, dict[int, int | None]] = {}

    def load(table: str, oai_names: list[str]) -> tuple[pd.DataFrame, Path]:
        key = (table, tuple(oai_names))
        if key not in cache:
            path = find_table(root, table)
            cache[key] = (read_oai_table(path, oai_names), path)
        return cache[key]

    for name in names:
        spec = config[name]
        for visit in visits:
            table = spec.table_for(visit)
            if spec.level == "subject":
                oai_names = spec.variables_for(visit)
                frame, path = load(table, oai_names)
                per_subject = _per_subject(frame, path)
                ids.update(per_subject.index)
                if spec.combine == "any" and len(oai_names) > 1:
                    block = per_subject[oai_names].astype(float)
                    value = block.max(axis=1).where(block.notna().any(axis=1))
                else:
                    value = per_subject[oai_names[0]]
                for side in (1, 2):
                    columns[(name, visit, side)] = value  # type: ignore[index]
            elif spec.level == "knee_pair":
                right, left = spec.pair_for(visit)
                frame, path = load(table, [right, left])
                per_subject = _per_subject(frame, path)
                ids.update(per_subject.index)
                columns[(name, visit, SIDE_CODE["R"])] = per_subject[right]  # type: ignore[index]
                columns[(name, visit, SIDE_CODE["L"])] = per_subject[left]  # type: ignore[index]
            elif spec.level == "knee":
                oai_name = spec.variables_for(visit)[0]
                frame, path = load(table, [oai_name])
                if isinstance(reading_projects, Mapping):
                    preference = reading_projects.get(name)
                else:
                    preference = reading_projects
                per_knee, project = _per_knee(frame, path, oai_name, preference)
                chosen_projects.setdefault(name, {})[visit] = project
                ids.update(frame["ID"].dropna())  # every participant of the table, whichever project
                for side in (1, 2):
                    try:
                        value = per_knee.xs(side, level="SIDE")
                    except KeyError:
                        value = pd.Series(dtype=float)
                    columns[(name, visit, side)] = value  # type: ignore[index]
            else:  # pragma: no cover - validated by the config loader
                raise ValueError(f"unknown level {spec.level!r} for {name}")

    id_list = sorted(ids)
    rows = []
    for participant in id_list:
        for side in (1, 2):
            for visit in visits:
                rows.append((participant, side, visit))
    tidy = pd.DataFrame(rows, columns=["ID", "SIDE", "VISIT"])
    for name in names:
        values = np.empty(len(tidy), dtype=object)
        for i, (participant, side, visit) in enumerate(rows):
            series = columns[(name, visit, side)]  # type: ignore[index]
            values[i] = series.get(participant, np.nan) if len(series) else np.nan
        tidy[name] = values
        if tidy[name].dtype == object:
            converted = pd.to_numeric(tidy[name], errors="coerce")
            if converted.notna().sum() == tidy[name].notna().sum():
                tidy[name] = converted
    tidy.attrs["reading_project"] = chosen_projects
    return tidy


# --------------------------------------------------------------------------------------
# Derived study definitions that only combine OAI variables
# --------------------------------------------------------------------------------------

def widespread_pain(table: pd.DataFrame) -> pd.Series:
    """Widespread pain (papers 001/003, Methods "chronic pain labels").

    Pain concurrently above the waist, below the waist and axially; computed
    from the ``widespread_pain_above_waist``, ``..._below_waist`` and
    ``..._axial`` columns of :func:`knee_table`. NaN when any part is missing.
    The OAI names behind these columns are best guesses (see
    ``oai_variables.yaml``).
    """
    parts = ["widespread_pain_above_waist", "widespread_pain_below_waist", "widespread_pain_axial"]
    missing = [p for p in parts if p not in table.columns]
    if missing:
        raise KeyError(f"widespread_pain needs columns {missing}; request them from knee_table")
    block = table[parts].astype(float)
    result = (block > 0).all(axis=1).astype(float)
    return result.where(block.notna().all(axis=1))


def chronic_pain(table: pd.DataFrame, *, min_months: int = 7) -> pd.Series:
    """Chronic knee pain label per knee-visit (papers 001/003, Methods).

    1 when pain on more than half the days of a month for more than 6 of the past
    12 months (``knee_pain_months_12m >= min_months``), 0 when no knee pain at all
    in the past 12 months (``knee_pain_any_12m == 0``), NaN otherwise (neither case:
    excluded from the analysis). Widespread-pain exclusion is separate
    (:func:`widespread_pain`).
    """
    for column in ("knee_pain_months_12m", "knee_pain_any_12m"):
        if column not in table.columns:
            raise KeyError(f"chronic_pain needs column {column}; request it from knee_table")
    months = table["knee_pain_months_12m"].astype(float)
    any_pain = table["knee_pain_any_12m"].astype(float)
    label = pd.Series(np.nan, index=table.index)
    label[months >= min_months] = 1.0
    label[(any_pain == 0) & ~(months >= min_months)] = 0.0
    return label
