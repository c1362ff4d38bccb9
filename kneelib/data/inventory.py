"""Inventory of the public real data under ``KNEELIB_DATA`` and readers of its tables.

The book shows four public data sets beside the synthetic cohort (:data:`REAL_DATASETS`):

- ``chen_kl_radiographs``: OAI knee radiograph crops with KL grades (Chen et al. 2019):
  :func:`kl_label_counts`, :func:`sample_kl_images`;
- ``pykneer_knee_mri``: one real knee exam (3D DESS and T1rho), read with
  :func:`kneelib.data.read_dicom_series`; :func:`series_acquisition_row` describes a series;
- ``deep_pain_regression``: the per-knee table behind Table 3 of Morales et al. 2021:
  :func:`load_deep_pain_tables`, :func:`deep_pain_summary`, :func:`deep_pain_model_selection`;
- ``pymskt_knee_mri``: a real 8-echo MSME T2 series and a real knee segmentation at OAI DESS
  geometry, the source of the synthetic knee's template (:mod:`kneelib.synth.derive_template`).

A data set that is absent is reported (:func:`dataset_inventory`,
:func:`missing_dataset_message`), never a crash of the chapter. Locations are written
relative to the data root (``$KNEELIB_DATA/<name>``), so a built page does not show the
builder's folders.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from kneelib.config import data_root
from kneelib.data.errors import KneelibDataError, TableFormatError

__all__ = [
    "REAL_DATASETS", "DEEP_PAIN_BONES", "MissingDatasetFileError", "resolve_root", "dataset_inventory",
    "missing_dataset_message", "kl_label_counts", "sample_kl_images", "series_acquisition_row",
    "load_deep_pain_tables", "deep_pain_summary", "deep_pain_model_selection",
]

#: Public real data sets the book shows, with what each one is.
REAL_DATASETS = {
    "chen_kl_radiographs": "OAI knee radiograph crops with KL grades (Chen et al. 2019, CC BY 4.0)",
    "pykneer_knee_mri": "one real knee MRI exam: 3D DESS and T1rho (pyKNEEr demo data, GPL-3.0)",
    "deep_pain_regression": "per-knee data behind Table 3 of Morales et al. 2021 (MIT)",
    "pymskt_knee_mri": ("a real 8-echo MSME T2 series and a real knee segmentation at OAI DESS geometry, "
                        "the synthetic knee's template (pymskt test data, MIT)"),
}

#: Bones of the per-knee regression tables of Morales et al. 2021, Table 3.
DEEP_PAIN_BONES = ("femur", "tibia", "patella")


class MissingDatasetFileError(KneelibDataError, FileNotFoundError):
    """A file a public data set should hold is missing."""

    def __init__(self, path: str | Path, what: str):
        super().__init__(f"{what} not found: {path}", path=path, reason=f"{what} missing")

    def __str__(self) -> str:
        return self.args[0]


def resolve_root(root: str | Path | None = None) -> Path:
    """The data root: ``root`` when given, else ``$KNEELIB_DATA`` (:func:`kneelib.config.data_root`)."""
    return Path(root).expanduser().resolve() if root else data_root()


def dataset_inventory(root: str | Path | None = None) -> pd.DataFrame:
    """Which public real data sets are present under the data root.

    Parameters
    ----------
    root : path, optional
        Data root (default ``$KNEELIB_DATA``).

    Returns
    -------
    pandas.DataFrame
        One row per data set: name, present (bool), location (``$KNEELIB_DATA/<name>``),
        description.
    """
    base = resolve_root(root)
    rows = [{"dataset": name, "present": (base / name).is_dir(), "location": f"$KNEELIB_DATA/{name}",
             "description": text} for name, text in REAL_DATASETS.items()]
    return pd.DataFrame(rows)


def missing_dataset_message(name: str, root: str | Path | None = None) -> str:
    """A Markdown note for a chapter section whose data set is absent (no local path in it)."""
    where = "the data root given" if root else "`$KNEELIB_DATA`"
    return (f"**Data set `{name}` not found** under {where}. This section is skipped. "
            f"Set `KNEELIB_DATA` to the folder that holds `{name}/` "
            f"(CI uses `../shared/data`) and run the chapter again.")


def _read_labels(dataset_dir: str | Path) -> tuple[Path, pd.DataFrame]:
    labels_path = Path(dataset_dir) / "labels.csv"
    if not labels_path.is_file():
        raise MissingDatasetFileError(labels_path, "KL label table")
    labels = pd.read_csv(labels_path)
    missing = {"split", "kl_grade", "relpath"} - set(labels.columns)
    if missing:
        raise TableFormatError(labels_path, f"lacks columns {sorted(missing)}")
    return labels_path, labels


# --------------------------------------------------------------------------- radiographs
def kl_label_counts(dataset_dir: str | Path) -> pd.DataFrame:
    """Images per split and KL grade in ``chen_kl_radiographs/labels.csv``.

    Returns
    -------
    pandas.DataFrame
        Rows: split (plus ``total``); columns: KL 0-4 and ``all``.

    Raises
    ------
    MissingDatasetFileError
        ``labels.csv`` is missing.
    kneelib.data.TableFormatError
        The table lacks the ``split``, ``kl_grade`` or ``relpath`` column.
    """
    _, labels = _read_labels(dataset_dir)
    counts = pd.crosstab(labels["split"], labels["kl_grade"], margins=True, margins_name="all")
    counts.columns = [f"KL {c}" if c != "all" else "all" for c in counts.columns]
    counts.index = [i if i != "all" else "total" for i in counts.index]
    counts.index.name = "split"
    return counts


def sample_kl_images(dataset_dir: str | Path, per_grade: int, split: str = "train",
                     seed: int = 0) -> pd.DataFrame:
    """A seeded random sample of ``per_grade`` images of each KL grade from one split.

    Raises
    ------
    KneelibDataError
        ``split`` is not in the table.
    """
    labels_path, labels = _read_labels(dataset_dir)
    part = labels[labels["split"] == split]
    if part.empty:
        raise KneelibDataError(f"split '{split}' not in {labels_path}; splits: {sorted(labels['split'].unique())}",
                               path=labels_path, reason=f"no split {split!r}")
    rng = np.random.default_rng(seed)
    picks = []
    for _, group in part.groupby("kl_grade"):
        take = min(per_grade, len(group))
        picks.append(group.iloc[np.sort(rng.choice(len(group), size=take, replace=False))])
    return pd.concat(picks, ignore_index=True)


# --------------------------------------------------------------------------- MRI series
def series_acquisition_row(name: str, volume) -> dict:
    """One row of an acquisition table for a :class:`kneelib.data.Volume`.

    Slices, matrix, voxel size, echo (or spin-lock) times, TR, flip angle, field
    strength, scanner and laterality (with where it was read from).
    """
    meta = volume.metadata
    cols, rows, slices = volume.shape[:3]
    spacing = volume.spacing_mm
    return {
        "series": name, "description": volume.series_description, "slices": slices,
        "matrix": f"{rows}x{cols}", "voxel mm": f"{spacing[1]:.3g}x{spacing[0]:.3g}x{spacing[2]:.3g}",
        "echo times ms": ", ".join(f"{t:g}" for t in volume.echo_times_ms),
        "TR ms": meta.get("RepetitionTime"), "flip deg": meta.get("FlipAngle"),
        "field T": meta.get("MagneticFieldStrength"),
        "scanner": f"{meta.get('Manufacturer', '')} {meta.get('ManufacturerModelName', '')}".strip(),
        "laterality": f"{volume.laterality} ({volume.laterality_source})",
    }


# --------------------------------------------------------------------------- regression tables
def load_deep_pain_tables(dataset_dir: str | Path) -> dict[str, pd.DataFrame]:
    """The per-knee tables of Morales et al. 2021 (Table 3), keyed by bone.

    Columns are returned in one order (Age, BMI, Sex, LF, MF, DLROI, Outcome) although
    the femur file stores MF before LF.

    Raises
    ------
    MissingDatasetFileError
        A bone's CSV is missing.
    kneelib.data.TableFormatError
        A CSV lacks one of the expected columns.
    """
    columns = ["Age", "BMI", "Sex", "LF", "MF", "DLROI", "Outcome"]
    tables = {}
    for bone in DEEP_PAIN_BONES:
        path = Path(dataset_dir) / f"{bone}logisticvariables.csv"
        if not path.is_file():
            raise MissingDatasetFileError(path, "per-knee table")
        table = pd.read_csv(path)
        missing = set(columns) - set(table.columns)
        if missing:
            raise TableFormatError(path, f"lacks columns {sorted(missing)}")
        tables[bone] = table[columns]
    return tables


def deep_pain_summary(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Per-bone description of the regression tables: knees, pain share, demographics, thickness."""
    rows = []
    for bone, table in tables.items():
        rows.append({
            "bone": bone,
            "knees": len(table),
            "chronic pain (%)": round(100 * table["Outcome"].mean(), 1),
            "age, mean (SD)": f"{table['Age'].mean():.1f} ({table['Age'].std():.1f})",
            "BMI, mean (SD)": f"{table['BMI'].mean():.1f} ({table['BMI'].std():.1f})",
            "Sex code 2 (%)": round(100 * (table["Sex"] == 2).mean(), 1),
            "LF mm, mean": round(table["LF"].mean(), 3),
            "MF mm, mean": round(table["MF"].mean(), 3),
            "DLROI mm, mean": round(table["DLROI"].mean(), 3),
            "rows with a zero thickness": int((table[["LF", "MF", "DLROI"]] == 0).any(axis=1).sum()),
        })
    return pd.DataFrame(rows).set_index("bone")


def deep_pain_model_selection(dataset_dir: str | Path) -> pd.DataFrame:
    """Test AUC of the selected chronic-pain model per bone and initialisation.

    From ``painoptimization.csv`` (Morales et al. 2021, Supplementary Fig. S4): for
    each bone and pretraining, the configuration with the highest selection score
    TPN = TPR + TNR + AUC, and its AUC.

    Raises
    ------
    MissingDatasetFileError
        ``painoptimization.csv`` is missing.
    """
    path = Path(dataset_dir) / "painoptimization.csv"
    if not path.is_file():
        raise MissingDatasetFileError(path, "model-optimisation table")
    table = pd.read_csv(path)
    missing = {"Bone", "Pretraining", "TPN", "AUC"} - set(table.columns)
    if missing:
        raise TableFormatError(path, f"lacks columns {sorted(missing)}")
    best = table.loc[table.groupby(["Bone", "Pretraining"])["TPN"].idxmax()]
    return best.pivot(index="Bone", columns="Pretraining", values="AUC")
