"""Read what the generator planted: the ground truth of a synthetic cohort.

:func:`kneelib.synth.cohort.generate_cohort` writes, next to the OAI-format images and
tables, a folder ``ground_truth/`` (issue #3):

- ``knees.csv``: one row per knee and visit with the structures and labels the causal
  model drew (:func:`truth_knee_table` reduces it to the lesion columns);
- ``series.csv``: one row per written series with its tissue-label and lesion-mask
  NIfTI files and any planted scan artefact (:func:`series_truth_table`,
  :func:`load_series_with_truth`);
- ``radiograph_landmarks.csv``: joint centre and plateau margins on each bilateral
  radiograph (:func:`radiograph_landmarks`, :func:`synthetic_knee_crops`);
- ``effect_sizes.csv``: the effect sizes of :class:`kneelib.synth.causal.EffectSizes`
  the cohort was drawn with (:func:`effect_sizes_by_block`).

:func:`causal_model_knee_table` gives the same per-knee columns for a large sample of
the causal model drawn without images.

This module only *reads*; it is left out of the generator's cache hash
(``kneelib.synth.cohort._READER_MODULES``), so editing it keeps cached cohorts valid.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from kneelib.data.errors import KneelibDataError
from kneelib.data.oai_layout import SERIES_DESCRIPTIONS

__all__ = [
    "MissingGroundTruthError",
    "LESION_COLUMNS",
    "lesions_from_knee_records",
    "truth_knee_table",
    "series_truth_table",
    "radiograph_landmarks",
    "effect_sizes_by_block",
    "choose_showcase_participant",
    "on_volume_grid",
    "load_series_with_truth",
    "showcase_slice",
    "causal_model_knee_table",
    "synthetic_knee_crops",
    "knee_image_liability",
    "image_liability_ceiling_auc",
    "PROGRESSION_DRIVER_COLUMNS",
    "progression_drivers",
]

#: Lesion columns of the ground-truth per-knee table (:func:`truth_knee_table`).
LESION_COLUMNS = ("effusion_grade", "hoffa_synovitis_grade", "bml_count", "meniscal_damage",
                  "cartilage_loss_max", "artefact")

#: Description of the bilateral radiograph in the OAI image index.
RADIOGRAPH_DESCRIPTION = SERIES_DESCRIPTIONS["xr_pa_knee"]


class MissingGroundTruthError(KneelibDataError, FileNotFoundError):
    """A file of a cohort's ``ground_truth/`` folder is missing (not a generated cohort?)."""

    def __init__(self, path: str | Path, what: str):
        reason = f"{what} not found (is this a cohort written by kneelib.synth.cohort.generate_cohort?)"
        super().__init__(f"{path}: {reason}", path=path, reason=reason)

    def __str__(self) -> str:
        return self.args[0]


def _truth_file(cohort_root: str | Path, name: str, what: str) -> Path:
    path = Path(cohort_root) / "ground_truth" / name
    if not path.is_file():
        raise MissingGroundTruthError(path, what)
    return path


# --------------------------------------------------------------------------- per-knee truth
def lesions_from_knee_records(knees: pd.DataFrame) -> pd.DataFrame:
    """``ID``, ``SIDE``, ``VISIT`` and :data:`LESION_COLUMNS` from ground-truth knee records.

    ``knees`` has the columns of ``ground_truth/knees.csv`` (equally those of
    :func:`kneelib.synth.causal.specs_to_frames`).
    """
    loss_columns = [c for c in knees.columns if c.startswith("cartilage_loss_fraction_")]
    sites = knees["bml_sites"].fillna("").astype(str)
    return pd.DataFrame({
        "ID": knees["participant_id"].astype(str).to_numpy(),
        "SIDE": knees["side"].map({"R": 1, "L": 2}).to_numpy(),
        "VISIT": knees["visit_month"].astype(int).to_numpy(),
        "effusion_grade": knees["effusion_grade"].to_numpy(),
        "hoffa_synovitis_grade": knees["hoffa_synovitis_grade"].to_numpy(),
        "bml_count": [len([s for s in v.split(";") if s]) for v in sites],
        "meniscal_damage": knees[["meniscal_damage_medial", "meniscal_damage_lateral"]].max(axis=1).to_numpy(),
        "cartilage_loss_max": knees[loss_columns].max(axis=1).to_numpy(),
        "artefact": knees["artefact"].fillna("").astype(str).to_numpy(),
    })


def truth_knee_table(cohort_root: str | Path) -> pd.DataFrame:
    """Lesions planted per knee and visit, from ``ground_truth/knees.csv``.

    Returns
    -------
    pandas.DataFrame
        ``ID``, ``SIDE`` (1 right, 2 left), ``VISIT`` and :data:`LESION_COLUMNS` (MOAKS-like
        effusion- and Hoffa-synovitis grades, number of BMLs, largest meniscal damage grade,
        largest focal cartilage loss fraction, planted scan artefact).

    Raises
    ------
    MissingGroundTruthError
        No ``ground_truth/knees.csv``.
    """
    path = _truth_file(cohort_root, "knees.csv", "ground-truth knee table")
    return lesions_from_knee_records(pd.read_csv(path, dtype={"participant_id": str, "artefact": str}))


def series_truth_table(cohort_root: str | Path) -> pd.DataFrame:
    """``ground_truth/series.csv``: label and lesion-mask files and artefact of each series."""
    path = _truth_file(cohort_root, "series.csv", "ground-truth series table")
    return pd.read_csv(path, dtype={"participant_id": str, "artefact": str, "lesion_masks": str})


def radiograph_landmarks(cohort_root: str | Path) -> pd.DataFrame:
    """``ground_truth/radiograph_landmarks.csv``: landmarks (pixel row/column) per radiograph and side."""
    path = _truth_file(cohort_root, "radiograph_landmarks.csv", "radiograph landmarks")
    return pd.read_csv(path, dtype={"participant_id": str})


#: Effect-size blocks by parameter-name prefix, checked in order (first match wins).
_EFFECT_BLOCKS = (
    ("12-month progression", ("rapid_", "slow_", "jsw_measurement", "severity_per_mm_loss")),
    ("demographics", ("age_", "female_", "bmi_", "race_", "widespread_")),
    ("latent OA severity", ("severity_", "medial_share")),
    ("pain", ("pain_", "frequent_pain", "any_pain", "womac_")),
    ("structure", ("jsw_", "jsn_", "osteophyte_", "doubtful_", "sclerosis_", "cartilage_", "meniscal_",
                   "effusion_", "hoffa_", "bml_")),
    ("scans", ("artefact_", "flexion_", "rotation_", "offset_")),
)


def effect_sizes_by_block(cohort_root: str | Path) -> pd.DataFrame:
    """The effect sizes the cohort was generated with, grouped by block of the causal graph.

    Read from ``<cohort_root>/ground_truth/effect_sizes.csv`` (written by the generator
    from :class:`kneelib.synth.causal.EffectSizes`).

    Returns
    -------
    pandas.DataFrame
        Index (block, parameter); columns value, meaning.

    Raises
    ------
    MissingGroundTruthError
        The cohort carries no ``effect_sizes.csv``.
    """
    path = _truth_file(cohort_root, "effect_sizes.csv", "effect-size table")
    table = pd.read_csv(path, dtype={"value": str})

    def block(name: str) -> str:
        for label, prefixes in _EFFECT_BLOCKS:
            if name.startswith(prefixes):
                return label
        return "other"

    table.insert(0, "block", [block(p) for p in table["parameter"]])
    order = {label: i for i, (label, _) in enumerate(_EFFECT_BLOCKS)}
    table["_order"] = table["block"].map(order).fillna(len(order))
    table = table.sort_values(["_order"], kind="stable").drop(columns="_order")
    return table.set_index(["block", "parameter"])


# --------------------------------------------------------------------------- series with their labels
def choose_showcase_participant(cohort_root: str | Path, visit_month: int = 0) -> str:
    """The participant whose right-knee SAG IW TSE shows the most lesion kinds, no artefact.

    Ties go to the lowest ID. Used to pick the subject of the sequence figures.

    Raises
    ------
    KneelibDataError
        No participant without a planted artefact at that visit.
    """
    series = series_truth_table(cohort_root)
    series = series[series["visit_month"] == visit_month]
    flawed = set(series.loc[series["artefact"].fillna("") != "", "participant_id"])
    sag = series[(series["series_description"] == "SAG_IW_TSE_RIGHT") & ~series["participant_id"].isin(flawed)]
    if sag.empty:
        raise KneelibDataError(f"{Path(cohort_root) / 'ground_truth' / 'series.csv'}: no participant without a "
                               f"planted artefact at month {visit_month}", path=cohort_root,
                               reason="every participant carries an artefact")
    kinds = sag["lesion_masks"].fillna("").map(lambda s: len([m for m in s.split(";") if m and m != "foreign_object"]))
    ranked = sag.assign(kinds=kinds.to_numpy()).sort_values(["kinds", "participant_id"], ascending=[False, True])
    return str(ranked["participant_id"].iloc[0])


def on_volume_grid(path: str | Path, volume) -> np.ndarray:
    """A ground-truth NIfTI on the voxel grid of ``volume``, as ``(slices, rows, columns)``.

    The generator writes labels in its own slice order, which can run opposite to the
    order :func:`kneelib.data.read_dicom_series` sorts slices in (ascending along the
    normal); the axes are permuted/flipped to the volume's orientation and the affines
    then compared.

    Raises
    ------
    KneelibDataError
        The labels do not lie on the volume's grid (shape or affine differ after reorienting).
    """
    import nibabel as nib
    from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation, ornt_transform

    image = nib.load(path)
    transform = ornt_transform(io_orientation(image.affine), io_orientation(volume.affine))
    data = apply_orientation(np.asarray(image.dataobj), transform)
    affine = image.affine @ inv_ornt_aff(transform, image.shape)
    if data.shape != volume.shape[:3] or not np.allclose(affine, volume.affine, atol=1e-3):
        raise KneelibDataError(f"{path}: labels {image.shape} are not on the grid of the series "
                               f"{volume.metadata.get('folders')} {volume.shape[:3]}", path=path,
                               reason="label grid differs from the DICOM grid")
    return np.ascontiguousarray(np.transpose(data, (2, 1, 0)))


def load_series_with_truth(cohort_root: str | Path, index, truth: pd.DataFrame, participant_id: str,
                           visit_month: int, description: str):
    """``(volume, labels (slices, rows, cols), lesion masks dict)`` of one series.

    Parameters
    ----------
    cohort_root : path
    index : kneelib.data.ImageIndex
        :func:`kneelib.data.read_image_index` of the cohort.
    truth : pandas.DataFrame
        :func:`series_truth_table` of the cohort.
    participant_id, visit_month, description
        The series.

    Raises
    ------
    KneelibDataError
        No ground truth for the series, or its labels are not on the DICOM grid.
    """
    from kneelib.data import read_dicom_series

    cohort_root = Path(cohort_root)
    folder = index.find_series(participant_id, visit_month, description)
    volume = read_dicom_series(folder)
    relative = folder.relative_to(index.root).as_posix()
    row = truth[truth["folder"] == relative]
    if row.empty:
        table = cohort_root / "ground_truth" / "series.csv"
        raise KneelibDataError(f"{table}: no ground truth for series {relative}", path=table,
                               reason=f"series {relative} not listed")
    row = row.iloc[0]
    label_path = cohort_root / row["labels_path"]
    labels = on_volume_grid(label_path, volume)
    masks = {}
    for name in str(row["lesion_masks"] if isinstance(row["lesion_masks"], str) else "").split(";"):
        if name:
            masks[name] = on_volume_grid(label_path.parent / f"lesion_{name}.nii.gz", volume) > 0
    return volume, labels, masks


def showcase_slice(labels: np.ndarray, masks: dict) -> int:
    """A slice through the joint that shows the most lesion voxels.

    Candidates are the slices with at least half the cartilage voxels of the richest
    cartilage slice (so that an edge slice with a lone osteophyte is not chosen); among
    them the one with the most lesion voxels, or the most cartilage when no lesion shows.
    """
    n = len(labels)
    cartilage = ((labels >= 5) & (labels <= 8)).reshape(n, -1).sum(axis=1)
    candidates = cartilage >= 0.5 * cartilage.max() if cartilage.max() > 0 else np.ones(n, bool)
    lesion = np.zeros(n)
    for name, mask in masks.items():
        if name != "foreign_object":
            lesion += mask.reshape(n, -1).sum(axis=1)
    score = np.where(candidates, lesion if lesion[candidates].max() > 0 else cartilage, -1)
    return int(np.argmax(score))


#: Baseline variables the causal model draws 12-month rapid medial JSW loss from
#: (:func:`kneelib.synth.causal._progress`; BMI comes from the clinical tables).
PROGRESSION_DRIVER_COLUMNS = ("oa_severity", "meniscal_damage_medial", "effusion_grade")


def progression_drivers(cohort_root: str | Path) -> pd.DataFrame:
    """Planted baseline drivers of 12-month JSN progression per knee (paper 002's task).

    Returns
    -------
    pandas.DataFrame
        ``participant_id``, ``side`` (``"R"``/``"L"``) and :data:`PROGRESSION_DRIVER_COLUMNS`
        (latent OA severity, medial meniscal damage grade, effusion-synovitis grade) at baseline.

    Raises
    ------
    MissingGroundTruthError
        No ``ground_truth/knees.csv`` (e.g. a real OAI root).
    """
    path = _truth_file(cohort_root, "knees.csv", "ground-truth knee table")
    knees = pd.read_csv(path, dtype={"participant_id": str, "artefact": str})
    base = knees[knees["visit_month"] == 0]
    return base[["participant_id", "side", *PROGRESSION_DRIVER_COLUMNS]].reset_index(drop=True)


# --------------------------------------------------------------------------- the causal model without images
def causal_model_knee_table(n_subjects: int, seed: int = 0, variant: str = "oai") -> pd.DataFrame:
    """Per-knee reader columns and derived labels for a large sample of the causal model, no images.

    Draws ``n_subjects`` participants with :func:`kneelib.synth.causal.sample_cohort_specs`
    (about 1 ms each) and maps the specs to the names the OAI tables are read into
    (:func:`kneelib.data.knee_table`), with the same conventions as the writer: age as
    whole years, the baseline frequent-pain item copied to the 12-month row (it is a
    baseline-only OAI variable), the *measured* medial JSW. The derived labels are
    those of :func:`kneelib.data.labels.add_derived_labels`; the lesion columns those of
    :func:`truth_knee_table`.
    """
    from kneelib.data.labels import add_derived_labels
    from kneelib.synth.causal import sample_cohort_specs, specs_to_frames

    subjects, knees = specs_to_frames(*sample_cohort_specs(n_subjects, seed, variant))
    subjects = subjects.assign(ID=subjects["participant_id"].astype(str)).set_index("ID")
    frame = pd.DataFrame({
        "ID": knees["participant_id"].astype(str),
        "SIDE": knees["side"].map({"R": 1, "L": 2}),
        "VISIT": knees["visit_month"].astype(int),
        "womac_pain": knees["womac_pain"].astype(float),
        "knee_pain_any_12m": knees["any_pain_past_12m"].astype(float),
        "knee_pain_months_12m": knees["pain_months_past_12m"].astype(float),
        "kl_grade": knees["kl_grade"], "jsn_medial": knees["jsn_grade_medial"],
        "jsn_lateral": knees["jsn_grade_lateral"], "min_medial_jsw_mm": knees["jsw_medial_measured_mm"],
    })
    baseline_pain = knees[knees["visit_month"] == 0].assign(ID=lambda d: d["participant_id"].astype(str),
                                                             SIDE=lambda d: d["side"].map({"R": 1, "L": 2}))
    baseline_pain = baseline_pain.set_index(["ID", "SIDE"])["frequent_pain"].astype(float)
    frame["frequent_pain"] = baseline_pain.reindex(pd.MultiIndex.from_frame(frame[["ID", "SIDE"]])).to_numpy()
    for column in ("age_years", "bmi_kg_m2", "sex", "race", "widespread_pain"):
        frame[column] = subjects[column].reindex(frame["ID"]).to_numpy()
    frame["age_years"] = np.floor(frame["age_years"].astype(float))
    frame["widespread_pain"] = frame["widespread_pain"].astype(float)
    frame = frame.sort_values(["ID", "SIDE", "VISIT"], kind="stable").reset_index(drop=True)
    frame = add_derived_labels(frame)
    return frame.merge(lesions_from_knee_records(knees), on=["ID", "SIDE", "VISIT"], how="left")


# --------------------------------------------------------------------------- radiograph crops
def synthetic_knee_crops(cohort_root: str | Path, knees: pd.DataFrame, visit_month: int = 0,
                         width_per_plateau: float | None = None) -> pd.DataFrame:
    """Knee-joint crops of the synthetic bilateral radiographs, like the Chen et al. crops.

    Each knee is cropped square around its ground-truth ``joint_centre``, framed on the
    knee like the real crops: the side is ``width_per_plateau`` times the horizontal
    distance between the outer plateau margins (the crop is not rotated).

    Parameters
    ----------
    cohort_root : path
    knees : pandas.DataFrame
        Per-knee table with ``ID``, ``SIDE``, ``VISIT``, ``kl_grade`` (the KL grade read
        back from ``kXR_SQ_BU``).
    visit_month : int
    width_per_plateau : float, optional
        None: :data:`kneelib.preprocess.knee_crops.CHEN_WIDTH_PER_PLATEAU`.

    Returns
    -------
    pandas.DataFrame
        participant_id, side, kl_grade, crop (2-D array).
    """
    from kneelib.data import read_image_index, read_radiograph
    from kneelib.preprocess.knee_crops import CHEN_WIDTH_PER_PLATEAU
    from kneelib.preprocess.radiograph import crop_around

    if width_per_plateau is None:
        width_per_plateau = CHEN_WIDTH_PER_PLATEAU

    root = Path(cohort_root)
    index = read_image_index(root)
    marks = radiograph_landmarks(root)
    rows = []
    films = index.table[(index.table["SeriesDescription"] == RADIOGRAPH_DESCRIPTION)
                        & (index.table["VISIT"] == float(visit_month))]
    for film_row in films.itertuples():
        film = read_radiograph(film_row.path)
        here = marks[marks["folder"] == film_row.Folder]
        for side, code in (("R", 1), ("L", 2)):
            points = here[here["side"] == side].set_index("landmark")
            if not {"joint_centre", "plateau_margin_medial", "plateau_margin_lateral"} <= set(points.index):
                continue
            width = abs(points.loc["plateau_margin_lateral", "col_px"] - points.loc["plateau_margin_medial", "col_px"])
            size = max(8, int(round(width_per_plateau * width)))
            centre = (points.loc["joint_centre", "row_px"], points.loc["joint_centre", "col_px"])
            grade = knees[(knees["ID"] == film_row.ParticipantID) & (knees["SIDE"] == code)
                          & (knees["VISIT"] == visit_month)]["kl_grade"]
            rows.append({"participant_id": film_row.ParticipantID, "side": side,
                         "kl_grade": float(grade.iloc[0]) if len(grade) else np.nan,
                         "crop": crop_around(film.pixels, centre, size)})
    return pd.DataFrame(rows, columns=["participant_id", "side", "kl_grade", "crop"])


# How well the images can tell the painful knee at best (paper 000, Chang et al. 2020).
# The causal model makes knee pain depend on findings an MRI shows and on what it does not;
# the right-minus-left difference of the image part is the best score an image-only model
# can give to "which knee hurts", the ceiling the Siamese network's AUC is measured against.

def knee_image_liability(knees: pd.DataFrame, effects=None) -> pd.Series:
    """:func:`kneelib.synth.causal.knee_pain_image_liability` of every row of ``ground_truth/knees.csv``.

    Parameters
    ----------
    knees : DataFrame
        Columns of ``ground_truth/knees.csv`` (``effusion_grade``, ``bml_sites`` as
        ``"FM:3;TM:1"``, ``hoffa_synovitis_grade``, ``cartilage_loss_fraction_*``,
        ``meniscal_damage_medial/lateral``, ``jsn_grade_medial/lateral``).
    effects : kneelib.synth.causal.EffectSizes, optional
        Default :data:`kneelib.synth.causal.DEFAULT_EFFECTS` (the generator's).

    Returns
    -------
    Series
    """
    from kneelib.synth.causal import DEFAULT_EFFECTS

    e = DEFAULT_EFFECTS if effects is None else effects
    sites = knees["bml_sites"].fillna("").astype(str)
    largest_bml = [max((int(s.split(":")[1]) for s in v.split(";") if ":" in s), default=0) for v in sites]
    loss = knees[[c for c in knees.columns if c.startswith("cartilage_loss_fraction_")]].max(axis=1)
    return (e.pain_effusion * knees["effusion_grade"] + e.pain_bml * np.asarray(largest_bml, float)
            + e.pain_hoffa * knees["hoffa_synovitis_grade"] + e.pain_cartilage_loss * loss
            + e.pain_meniscus * knees[["meniscal_damage_medial", "meniscal_damage_lateral"]].max(axis=1)
            + e.pain_jsn * knees[["jsn_grade_medial", "jsn_grade_lateral"]].max(axis=1))


def image_liability_ceiling_auc(cohort_root: str | Path, cohort: pd.DataFrame, visit_month: int = 0):
    """AUC of the right-minus-left image liability for the painful side of ``cohort``'s subjects.

    Parameters
    ----------
    cohort_root : path
        A synthetic cohort (with ``ground_truth/knees.csv``).
    cohort : DataFrame
        ``participant_id`` and ``label`` (1 = right knee painful).
    visit_month : int

    Returns
    -------
    kneelib.stats.roc.AucResult or None
        DeLong CI over subjects; ``None`` when the root has no ground truth (a real OAI
        download) or the subjects hold one class only.
    """
    from kneelib.stats.roc import auc_with_ci

    path = Path(cohort_root) / "ground_truth" / "knees.csv"
    if not path.is_file() or len(np.unique(cohort["label"])) < 2:
        return None
    knees = pd.read_csv(path, dtype={"participant_id": str, "artefact": str})
    knees = knees[knees["visit_month"] == visit_month]
    liability = knees.assign(liability=knee_image_liability(knees)).pivot(
        index="participant_id", columns="side", values="liability")
    ids = cohort["participant_id"].astype(str)
    difference = (liability["R"] - liability["L"]).reindex(ids).to_numpy(float)
    known = np.isfinite(difference)
    return auc_with_ci(cohort["label"].to_numpy()[known], difference[known], groups=ids.to_numpy()[known])
