"""The data chapter (``notebooks/cohort.ipynb``): what the book runs on.

For now the chapter shows the public *real* data under ``KNEELIB_DATA``:

- ``chen_kl_radiographs``: OAI knee radiograph crops with KL grades (Chen et al. 2019),
  the real-data counterpart of the radiograph grading study (Tiulpin & Saarakkala 2020);
- ``pykneer_knee_mri``: one real knee exam, sagittal 3D DESS and a four-spin-lock T1rho
  series (pyKNEEr demo data), the kind of MRI the MRI studies start from (OAI protocol,
  Peterfy et al. 2008);
- ``deep_pain_regression``: the per-knee table behind Table 3 of Morales et al. 2021.

The DICOM reading here is deliberately minimal (one folder -> one volume, slices
ordered along the slice normal). ``kneelib.data`` will replace it with the full OAI
readers, and this chapter will also show the synthetic cohort.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from kneelib.config import data_root
from kneelib.report import Comparison

__all__ = [
    "REAL_DATASETS",
    "resolve_root",
    "DicomVolume",
    "dataset_inventory",
    "missing_dataset_message",
    "kl_label_counts",
    "sample_kl_images",
    "plot_kl_montage",
    "read_dicom_folder",
    "read_t1rho_series",
    "plot_dess_and_t1rho",
    "load_deep_pain_tables",
    "deep_pain_summary",
    "deep_pain_model_selection",
    "plot_thickness_by_pain",
    "cohort_comparisons",
]

#: Public real data sets the book shows, with what each one is.
REAL_DATASETS = {
    "chen_kl_radiographs": "OAI knee radiograph crops with KL grades (Chen et al. 2019, CC BY 4.0)",
    "pykneer_knee_mri": "one real knee MRI exam: 3D DESS and T1rho (pyKNEEr demo data, GPL-3.0)",
    "deep_pain_regression": "per-knee data behind Table 3 of Morales et al. 2021 (MIT)",
}

#: Bones of the per-knee regression tables of Morales et al. 2021, Table 3.
DEEP_PAIN_BONES = ("femur", "tibia", "patella")

#: Knees in the cartilage-thickness regression of Morales et al. 2021, Table 3 ("n = 2151").
MORALES_TABLE3_N_KNEES = 2151


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
        One row per data set: name, present (bool), path, description.
    """
    base = resolve_root(root)
    rows = [{"dataset": name, "present": (base / name).is_dir(), "path": str(base / name),
             "description": text} for name, text in REAL_DATASETS.items()]
    return pd.DataFrame(rows)


def missing_dataset_message(name: str, root: str | Path | None = None) -> str:
    """A Markdown note for a chapter section whose data set is absent."""
    path = resolve_root(root) / name
    return (f"**Data set `{name}` not found** at `{path}`. This section is skipped. "
            f"Set `KNEELIB_DATA` to the folder that holds `{name}/` "
            f"(CI uses `../shared/data`) and run the chapter again.")


# --------------------------------------------------------------------------- radiographs
def kl_label_counts(dataset_dir: str | Path) -> pd.DataFrame:
    """Images per split and KL grade in ``chen_kl_radiographs/labels.csv``.

    Returns
    -------
    pandas.DataFrame
        Rows: split (plus ``total``); columns: KL 0-4 and ``all``.

    Raises
    ------
    FileNotFoundError
        ``labels.csv`` is missing.
    ValueError
        The table lacks the ``split`` or ``kl_grade`` column.
    """
    labels_path = Path(dataset_dir) / "labels.csv"
    if not labels_path.is_file():
        raise FileNotFoundError(f"KL label table not found: {labels_path}")
    labels = pd.read_csv(labels_path)
    missing = {"split", "kl_grade", "relpath"} - set(labels.columns)
    if missing:
        raise ValueError(f"{labels_path} lacks columns {sorted(missing)}")
    counts = pd.crosstab(labels["split"], labels["kl_grade"], margins=True, margins_name="all")
    counts.columns = [f"KL {c}" if c != "all" else "all" for c in counts.columns]
    counts.index = [i if i != "all" else "total" for i in counts.index]
    counts.index.name = "split"
    return counts


def sample_kl_images(dataset_dir: str | Path, per_grade: int, split: str = "train",
                     seed: int = 0) -> pd.DataFrame:
    """A seeded random sample of ``per_grade`` images of each KL grade from one split."""
    labels = pd.read_csv(Path(dataset_dir) / "labels.csv")
    part = labels[labels["split"] == split]
    if part.empty:
        raise ValueError(f"split '{split}' not in {Path(dataset_dir) / 'labels.csv'}; "
                         f"splits: {sorted(labels['split'].unique())}")
    rng = np.random.default_rng(seed)
    picks = []
    for grade, group in part.groupby("kl_grade"):
        take = min(per_grade, len(group))
        picks.append(group.iloc[np.sort(rng.choice(len(group), size=take, replace=False))])
    return pd.concat(picks, ignore_index=True)


def plot_kl_montage(dataset_dir: str | Path, per_grade: int = 4, split: str = "train",
                    image_size: int = 224, seed: int = 0):
    """A montage of real radiograph crops: one column per KL grade 0-4.

    Parameters
    ----------
    dataset_dir : path
        ``$KNEELIB_DATA/chen_kl_radiographs``.
    per_grade : int
        Images per grade (rows).
    split : str
        ``train`` or ``val``.
    image_size : int
        Display size in pixels (crops are 224x224).
    seed : int
        Sampling seed.

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt
    from PIL import Image

    sample = sample_kl_images(dataset_dir, per_grade, split=split, seed=seed)
    grades = sorted(sample["kl_grade"].unique())
    fig, axes = plt.subplots(per_grade, len(grades), figsize=(2.0 * len(grades), 2.0 * per_grade),
                             squeeze=False)
    for col, grade in enumerate(grades):
        rows = sample[sample["kl_grade"] == grade].reset_index(drop=True)
        for row in range(per_grade):
            ax = axes[row, col]
            ax.set_axis_off()
            if row >= len(rows):
                continue
            image = Image.open(Path(dataset_dir) / rows.loc[row, "relpath"]).convert("L")
            if image.size != (image_size, image_size):
                image = image.resize((image_size, image_size), Image.BILINEAR)
            ax.imshow(np.asarray(image), cmap="gray", vmin=0, vmax=255)
            ax.text(3, 12, f"{rows.loc[row, 'oai_id']}{rows.loc[row, 'side']}", color="yellow",
                    fontsize=7)
        axes[0, col].set_title(f"KL {grade}")
    fig.suptitle(f"Real OAI knee radiograph crops by KL grade ({split} split, Chen et al. 2019)")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- MRI
@dataclass
class DicomVolume:
    """One DICOM series as a volume.

    Attributes
    ----------
    pixels : numpy.ndarray
        ``(n_slices, rows, columns)``, float32, rescaled values.
    slice_positions_mm : numpy.ndarray
        Position of each slice along the slice normal (ascending); slices are in this order.
    slice_coordinate_mm : numpy.ndarray
        Each slice's patient coordinate (DICOM LPS) on the axis closest to the normal.
    slice_axis : str
        That axis: ``"x"`` (sagittal), ``"y"`` (coronal) or ``"z"`` (axial).
    pixel_spacing_mm : tuple of float
        Row and column spacing.
    echo_time_ms : float
        The EchoTime tag (for the pyKNEEr T1rho series it holds the spin-lock time).
    description : str
        SeriesDescription.
    frame_of_reference : str
        FrameOfReferenceUID (series of one exam share it).
    """

    pixels: np.ndarray
    slice_positions_mm: np.ndarray
    slice_coordinate_mm: np.ndarray
    slice_axis: str
    pixel_spacing_mm: tuple[float, float]
    echo_time_ms: float
    description: str
    frame_of_reference: str


def read_dicom_folder(folder: str | Path, max_slices: int | None = None) -> DicomVolume:
    """Read the single-frame DICOM files of one folder into a volume.

    Slices are ordered by ImagePositionPatient projected on the slice normal (cross
    product of the two ImageOrientationPatient direction cosines).

    Parameters
    ----------
    folder : path
        Folder of ``*.dcm`` files of one series.
    max_slices : int, optional
        Keep only this many slices around the centre (speed for smoke runs).

    Raises
    ------
    FileNotFoundError
        No ``.dcm`` file in the folder.
    ValueError
        A file lacks pixel data or the geometry tags, or the files mix orientations
        or matrix sizes; the message names the file.
    """
    import pydicom

    folder = Path(folder)
    files = sorted(folder.glob("*.dcm"))
    if not files:
        raise FileNotFoundError(f"no .dcm files in {folder}")
    headers = []
    for path in files:
        header = pydicom.dcmread(path, stop_before_pixels=True)
        for tag in ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing",
                    "Rows", "Columns"):
            if tag not in header:
                raise ValueError(f"{path}: DICOM tag {tag} missing")
        headers.append((path, header))
    orientation = np.asarray(headers[0][1].ImageOrientationPatient, dtype=float)
    normal = np.cross(orientation[:3], orientation[3:])
    shape = (int(headers[0][1].Rows), int(headers[0][1].Columns))
    for path, header in headers:
        if not np.allclose(np.asarray(header.ImageOrientationPatient, dtype=float), orientation,
                           atol=1e-4):
            raise ValueError(f"{path}: orientation differs from {headers[0][0].name}")
        if (int(header.Rows), int(header.Columns)) != shape:
            raise ValueError(f"{path}: matrix {header.Rows}x{header.Columns} differs from {shape}")
    origins = np.array([np.asarray(h.ImagePositionPatient, dtype=float) for _, h in headers])
    positions = origins @ normal
    axis = int(np.argmax(np.abs(normal)))
    order = np.argsort(positions)
    if max_slices is not None and max_slices < len(order):
        start = (len(order) - max_slices) // 2
        order = order[start:start + max_slices]
    slices = []
    for index in order:
        path = headers[index][0]
        dataset = pydicom.dcmread(path)
        if "PixelData" not in dataset:
            raise ValueError(f"{path}: no pixel data")
        slope = float(getattr(dataset, "RescaleSlope", 1) or 1)
        intercept = float(getattr(dataset, "RescaleIntercept", 0) or 0)
        slices.append(dataset.pixel_array.astype(np.float32) * slope + intercept)
    first = headers[0][1]
    return DicomVolume(
        pixels=np.stack(slices),
        slice_positions_mm=positions[order],
        slice_coordinate_mm=origins[order, axis],
        slice_axis="xyz"[axis],
        pixel_spacing_mm=tuple(float(v) for v in first.PixelSpacing),
        echo_time_ms=float(getattr(first, "EchoTime", np.nan)),
        description=str(getattr(first, "SeriesDescription", "")),
        frame_of_reference=str(getattr(first, "FrameOfReferenceUID", "")),
    )


def read_t1rho_series(folder: str | Path, max_slices: int | None = None) -> dict[float, DicomVolume]:
    """The four spin-lock folders of the pyKNEEr T1rho series, keyed by spin-lock time (ms).

    The spin-lock time is stored in the EchoTime tag (see the data set's SOURCE.md).

    Raises
    ------
    FileNotFoundError
        No sub-folder with DICOM files.
    ValueError
        The folders do not share one frame of reference and slice positions.
    """
    folders = sorted(p for p in Path(folder).iterdir() if p.is_dir() and any(p.glob("*.dcm")))
    if not folders:
        raise FileNotFoundError(f"no spin-lock folders with DICOM files in {folder}")
    volumes = {}
    for sub in folders:
        volume = read_dicom_folder(sub, max_slices=max_slices)
        volumes[volume.echo_time_ms] = volume
    reference = next(iter(volumes.values()))
    for tsl, volume in volumes.items():
        if volume.frame_of_reference != reference.frame_of_reference:
            raise ValueError(f"{folder}: spin-lock {tsl} ms has another frame of reference")
        if not np.allclose(volume.slice_positions_mm, reference.slice_positions_mm, atol=1e-3):
            raise ValueError(f"{folder}: spin-lock {tsl} ms is not voxel-aligned with the others")
    return dict(sorted(volumes.items()))


def plot_dess_and_t1rho(dataset_dir: str | Path, max_slices: int | None = None):
    """The real DESS mid-sagittal slice and the T1rho slice at its four spin-lock times.

    The DESS panel also shows the slice nearest to the T1rho slab's centre, so the two
    series of the same exam can be compared at one position.

    Returns
    -------
    fig : matplotlib.figure.Figure
    info : pandas.DataFrame
        One row per series: slices read, matrix, pixel and slice spacing, TE/TSL, position.
    """
    import matplotlib.pyplot as plt

    dataset_dir = Path(dataset_dir)
    dess = read_dicom_folder(dataset_dir / "DESS_echo1", max_slices=max_slices)
    t1rho = read_t1rho_series(dataset_dir / "cubequant_T1rho", max_slices=max_slices)
    mid = len(dess.pixels) // 2
    first = next(iter(t1rho.values()))
    t1rho_mid = len(first.pixels) // 2
    t1rho_position = first.slice_positions_mm[t1rho_mid]
    t1rho_coordinate = first.slice_coordinate_mm[t1rho_mid]
    dess_match = int(np.argmin(np.abs(dess.slice_positions_mm - t1rho_position)))

    fig, axes = plt.subplots(1, 2 + len(t1rho), figsize=(3.0 * (2 + len(t1rho)), 3.4))

    def show(ax, image, title):
        low, high = np.percentile(image, [1, 99.5])
        ax.imshow(image, cmap="gray", vmin=low, vmax=high)
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()

    show(axes[0], dess.pixels[mid], f"DESS, mid slab\nx = {dess.slice_coordinate_mm[mid]:.1f} mm")
    show(axes[1], dess.pixels[dess_match],
         f"DESS at T1rho centre\nx = {dess.slice_coordinate_mm[dess_match]:.1f} mm")
    for ax, (tsl, volume) in zip(axes[2:], t1rho.items()):
        show(ax, volume.pixels[t1rho_mid], f"T1rho, TSL {tsl:g} ms\nx = {t1rho_coordinate:.1f} mm")
    fig.suptitle("One real knee exam (pyKNEEr demo data): sagittal 3D DESS and T1rho")
    fig.tight_layout()

    rows = [("DESS echo 1", dess)] + [(f"T1rho TSL {tsl:g} ms", v) for tsl, v in t1rho.items()]
    spacing = lambda v: float(np.median(np.diff(v.slice_positions_mm))) if len(v.pixels) > 1 else np.nan
    info = pd.DataFrame([{
        "series": name, "description": v.description, "slices read": len(v.pixels),
        "matrix": f"{v.pixels.shape[1]}x{v.pixels.shape[2]}",
        "pixel mm": f"{v.pixel_spacing_mm[0]:.4g}x{v.pixel_spacing_mm[1]:.4g}",
        "slice spacing mm": round(spacing(v), 3), "EchoTime tag ms": v.echo_time_ms,
        "slice axis": v.slice_axis,
        "range mm": f"{v.slice_coordinate_mm.max():.1f} to {v.slice_coordinate_mm.min():.1f}",
    } for name, v in rows])
    return fig, info


# --------------------------------------------------------------------------- regression tables
def load_deep_pain_tables(dataset_dir: str | Path) -> dict[str, pd.DataFrame]:
    """The per-knee tables of Morales et al. 2021 (Table 3), keyed by bone.

    Columns are returned in one order (Age, BMI, Sex, LF, MF, DLROI, Outcome) although
    the femur file stores MF before LF.

    Raises
    ------
    FileNotFoundError
        A bone's CSV is missing.
    ValueError
        A CSV lacks one of the expected columns.
    """
    columns = ["Age", "BMI", "Sex", "LF", "MF", "DLROI", "Outcome"]
    tables = {}
    for bone in DEEP_PAIN_BONES:
        path = Path(dataset_dir) / f"{bone}logisticvariables.csv"
        if not path.is_file():
            raise FileNotFoundError(f"per-knee table not found: {path}")
        table = pd.read_csv(path)
        missing = set(columns) - set(table.columns)
        if missing:
            raise ValueError(f"{path} lacks columns {sorted(missing)}")
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
    """
    path = Path(dataset_dir) / "painoptimization.csv"
    if not path.is_file():
        raise FileNotFoundError(f"model-optimisation table not found: {path}")
    table = pd.read_csv(path)
    best = table.loc[table.groupby(["Bone", "Pretraining"])["TPN"].idxmax()]
    return best.pivot(index="Bone", columns="Pretraining", values="AUC")


def plot_thickness_by_pain(tables: dict[str, pd.DataFrame]):
    """Distributions of the DL-guided thickness (DLROI) by chronic-pain outcome, per bone."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tables), figsize=(4 * len(tables), 3.2), squeeze=False)
    for ax, (bone, table) in zip(axes[0], tables.items()):
        values = table[table["DLROI"] > 0]
        groups = [values.loc[values["Outcome"] == k, "DLROI"] for k in (0, 1)]
        ax.hist(groups, bins=30, label=["no chronic pain", "chronic pain"], density=True,
                histtype="stepfilled", alpha=0.5)
        ax.set_title(bone)
        ax.set_xlabel("DL-guided cartilage thickness (mm)")
    axes[0, 0].set_ylabel("density")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle("Released per-knee data of Morales et al. 2021 (zero thickness rows left out)")
    fig.tight_layout()
    return fig


def cohort_comparisons(tables: dict[str, pd.DataFrame] | None) -> list[Comparison]:
    """Published vs found sizes of the released regression data (Morales et al. 2021, Table 3).

    The paper reports n = 2151 knees for the cartilage-thickness models of all bones;
    the reproduced value is the number of rows of each released table.
    """
    comparisons = []
    for bone in DEEP_PAIN_BONES:
        found = None if not tables or bone not in tables else len(tables[bone])
        comparisons.append(Comparison(
            study="cohort", quantity=f"knees in the chronic-pain thickness regression, {bone}",
            published=MORALES_TABLE3_N_KNEES, reproduced=found,
            source="Morales et al. 2021, Table 3 (n = 2151)",
            data="real: deep_pain_regression (released per-knee table)",
            note="rows of the released table; the paper gives one n for all bones"))
    return comparisons
