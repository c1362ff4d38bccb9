"""The authors' per-knee regression data of Morales et al. 2021 (paper 001, Table 3), ready to fit.

Paper 001, Methods (last paragraph of "Grad-CAM interpretation"): two logistic
regressions of chronic knee pain per bone, both with age, BMI, sex and the two
clinical compartment averages of cartilage thickness, the second also with the
DL-guided (Grad-CAM-weighted) average; Table 3 prints them. The authors released the
per-knee variables (``$KNEELIB_DATA/deep_pain_regression``, see its ``SOURCE.md``):
``femurlogisticvariables.csv``, ``tibialogisticvariables.csv``,
``patellalogisticvariables.csv``. They are read by the one reader of those files,
:func:`kneelib.data.inventory.load_deep_pain_tables` (which also puts the columns in one
order, Age, BMI, Sex, LF, MF, DLROI, Outcome, although the femur file stores MF before
LF); this module checks the values and applies the labelling choices a reproduction of
Table 3 has to make, each one explicit and parameterised:

Sex coding (:data:`PUBLISHED_SEX_CODING`)
    The files code sex 1/2 (most likely OAI's 1 = male, 2 = female). Refitting shows that
    the printed femur Sex coefficient and intercept correspond to sex entered as
    ``2 - Sex`` (file code 1 -> 1, 2 -> 0), whereas the printed tibia and patella ones
    correspond to the file's code entered as is (their intercepts 0.496, 0.81, 1.21,
    1.215 and negative Sex signs are reproduced only that way). The SOURCE.md states the
    ``2 - Sex`` caveat; on these data it holds for the femur only. The coding changes the
    Sex sign and the intercept and nothing else (fitted probabilities, every other
    coefficient, ROC and likelihood-ratio test are invariant).
Femur compartments (``swap_femur_compartments``)
    The printed femur "LF thickness" / "MF thickness" rows correspond to the file's
    ``MF`` / ``LF`` columns, i.e. to the femur file's 4th and 5th columns taken in the
    tibia/patella order (LF, MF) by position. With the swap (the default) the columns
    named LF/MF here carry the values the paper labels LF/MF.
Zero thickness
    A few tibia/patella rows hold a thickness of exactly 0 (likely failed segmentations);
    the authors kept them and so does this reader (``drop_zero_thickness=False``).

Rows of the three files are not declared linkable (SOURCE.md); each bone is fitted on
its own table (2,149 femur, 2,141 tibia, 2,131 patella knees; Table 3 prints n = 2151).
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from kneelib.config import data_root
from kneelib.data.errors import TableFormatError
from kneelib.data.inventory import DEEP_PAIN_BONES, load_deep_pain_tables

__all__ = [
    "DEEP_PAIN_DIR", "DEEP_PAIN_COLUMNS", "SEX_CODINGS", "PUBLISHED_SEX_CODING",
    "deep_pain_file", "load_table3_data", "code_sex",
]

#: Folder of the data set under the data root.
DEEP_PAIN_DIR = "deep_pain_regression"
#: Column order of every table returned here.
DEEP_PAIN_COLUMNS = ("Age", "BMI", "Sex", "LF", "MF", "DLROI", "Outcome")
#: Sex codings: name -> mapping of the file's codes 1/2 to the value entered in the model.
SEX_CODINGS = {
    "file": {1: 1, 2: 2},      # the file's code as is
    "2 - Sex": {1: 1, 2: 0},   # 2 - Sex
    "Sex - 1": {1: 0, 2: 1},   # Sex - 1 (0/1 with code 2 as 1)
}
#: The coding per bone that reproduces Table 3's printed Sex signs and intercepts.
PUBLISHED_SEX_CODING = {"femur": "2 - Sex", "tibia": "file", "patella": "file"}


def deep_pain_file(bone: str, dataset_dir: str | Path) -> Path:
    """Path of one bone's per-knee CSV (``<bone>logisticvariables.csv``)."""
    return Path(dataset_dir) / f"{bone}logisticvariables.csv"


def code_sex(sex: pd.Series, coding: str, *, path: str | Path) -> pd.Series:
    """Sex as entered in the regression under one of :data:`SEX_CODINGS`.

    Parameters
    ----------
    sex : pandas.Series
        The file's codes (1 or 2).
    coding : str
        A key of :data:`SEX_CODINGS`.
    path : path
        The file the codes come from, named in errors.

    Raises
    ------
    ValueError
        Unknown ``coding``.
    kneelib.data.TableFormatError
        A code other than 1 or 2.
    """
    if coding not in SEX_CODINGS:
        raise ValueError(f"unknown sex coding {coding!r}; choose one of {sorted(SEX_CODINGS)}")
    bad = ~sex.isin([1, 2])
    if bad.any():
        raise TableFormatError(path, f"column Sex holds codes other than 1/2 "
                                     f"(e.g. {sex[bad].iloc[0]!r} in row {int(np.flatnonzero(bad)[0]) + 1})")
    return sex.map(SEX_CODINGS[coding]).astype(int)


def _check_values(table: pd.DataFrame, path: Path) -> None:
    """Numeric, complete columns and a 0/1 outcome, else a :class:`TableFormatError` naming ``path``."""
    for column in DEEP_PAIN_COLUMNS:
        values = pd.to_numeric(table[column], errors="coerce")
        if values.isna().any():
            row = int(np.flatnonzero(values.isna().to_numpy())[0])
            raise TableFormatError(path, f"column {column} has a missing or non-numeric value "
                                         f"({table[column].iloc[row]!r} in data row {row + 1})")
    if not table["Outcome"].isin([0, 1]).all():
        raise TableFormatError(path, "column Outcome holds values other than 0/1")
    if len(table) == 0:
        raise TableFormatError(path, "no rows")


def load_table3_data(root: str | Path | None = None, *,
                     sex_coding: str | Mapping[str, str] = "published",
                     swap_femur_compartments: bool = True,
                     drop_zero_thickness: bool = False) -> dict[str, pd.DataFrame]:
    """Per-bone tables for the regressions of Morales et al. 2021, Table 3.

    Parameters
    ----------
    root : path, optional
        Data root holding ``deep_pain_regression/``; default
        :func:`kneelib.config.data_root` (``$KNEELIB_DATA``). A path that already ends in
        ``deep_pain_regression`` is used as the data-set folder.
    sex_coding : str or mapping, default "published"
        ``"published"`` (:data:`PUBLISHED_SEX_CODING`: femur ``2 - Sex``, tibia and
        patella the file's code), one key of :data:`SEX_CODINGS` for every bone, or a
        mapping bone -> key.
    swap_femur_compartments : bool, default True
        Exchange the femur LF and MF values so that they carry the paper's labels (see
        the module docstring).
    drop_zero_thickness : bool, default False
        Drop rows with a thickness of exactly 0 (the authors kept them).

    Returns
    -------
    dict of str to pandas.DataFrame
        Keyed by bone (femur, tibia, patella); columns :data:`DEEP_PAIN_COLUMNS`, Sex
        already coded, Outcome 0/1 int. ``table.attrs`` records the source file, the
        sex coding and whether the compartments were swapped.

    Raises
    ------
    kneelib.data.inventory.MissingDatasetFileError
        A bone's CSV is missing.
    kneelib.data.TableFormatError
        A CSV lacks a column, has a missing/non-numeric value, a Sex code other than
        1/2 or an Outcome other than 0/1 (the message names the file).
    """
    base = Path(root) if root is not None else data_root()
    dataset_dir = base if base.name == DEEP_PAIN_DIR else base / DEEP_PAIN_DIR
    if isinstance(sex_coding, str):
        codings = dict(PUBLISHED_SEX_CODING) if sex_coding == "published" \
            else {bone: sex_coding for bone in DEEP_PAIN_BONES}
    else:
        codings = {**PUBLISHED_SEX_CODING, **dict(sex_coding)}
    raw = load_deep_pain_tables(dataset_dir)
    tables = {}
    for bone in DEEP_PAIN_BONES:
        path = deep_pain_file(bone, dataset_dir)
        table = raw[bone].copy()
        _check_values(table, path)
        table = table.apply(pd.to_numeric)
        table["Sex"] = code_sex(table["Sex"], codings[bone], path=path)
        table["Outcome"] = table["Outcome"].astype(int)
        swapped = bool(swap_femur_compartments and bone == "femur")
        if swapped:
            table[["LF", "MF"]] = table[["MF", "LF"]].to_numpy()
        if drop_zero_thickness:
            table = table[(table[["LF", "MF", "DLROI"]] != 0).all(axis=1)].reset_index(drop=True)
        table = table[list(DEEP_PAIN_COLUMNS)]
        table.attrs.update({"source": path.name, "sex_coding": codings[bone],
                            "compartments_swapped": swapped})
        tables[bone] = table
    return tables
