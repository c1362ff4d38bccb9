"""Knee pain from paired knee MRI with a convolutional Siamese network (paper 000, Chang et al. 2020).

The steps of the chapter ``notebooks/siamese_pain.ipynb``, each composing stage modules
(``kneelib.data``, ``preprocess``, ``models``, ``train``, ``explain``, ``stats``):

1. :func:`unilateral_pain_cohort` and :func:`table1` -- Methods "Data", Table 1;
2. :func:`preprocess_cohort` -- Methods "Image pre-processing" / "Image registration and
   quality check", Fig. 1 (centre slice, mirroring, rigid registration, 105 mm crop,
   resize, 11 + 1 + 11 slices, artefact QC), cached per knee;
3. :func:`model_factory` -- Methods "Deep learning architecture", Fig. 2;
4. :func:`cross_validated_auc` -- 10-fold cross-validation, Fig. 4A-C;
5. :func:`saliency_study` -- CAMs, the VGG16-CAM comparison and the lesion under the hot
   spot on the 15% test split, Fig. 3;
6. :func:`comparisons` -- the paper-vs-reproduced table saved with
   :func:`kneelib.report.save_metrics`.

The synthetic cohort knows where every lesion is, so the radiologist review of Fig. 3I
becomes a measurement against the planted masks.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = [
    "STUDY", "LESION_NAMES", "PAPER_AUC", "PAPER_SUBGROUP_AUC", "PAPER_LESIONS", "PAPER_TABLE1",
    "cohort_root", "unilateral_pain_cohort", "table1", "paper_fisher_check",
    "PreprocessConfig", "PreprocessedCohort", "preprocess_cohort", "center_slice_accuracy",
    "model_factory", "cross_validated_auc", "CrossValidatedModel", "SaliencyStudy", "saliency_study",
    "lesion_table", "pointing_table", "comparisons", "plot_cam_comparison",
]

STUDY = "siamese_pain"
#: Lesions of Fig. 3I in the paper's order (also the priority when masks overlap).
LESION_NAMES: tuple[str, ...] = ("effusion_synovitis", "bml", "hoffa_synovitis", "cartilage_loss",
                                 "meniscal_damage")
LESION_LABELS = {"effusion_synovitis": "Effusion/Synovitis", "bml": "Bone Marrow Lesion",
                 "hoffa_synovitis": "Hoffa Fat Pad", "cartilage_loss": "Cartilage Loss",
                 "meniscal_damage": "Meniscus Damage", "none": "No planted lesion"}
#: Abstract; Fig. 4A-B.
PAPER_AUC = {"Model A": 0.808, "Model B": 0.853}
#: Fig. 4C (row names as in :data:`kneelib.stats.roc.PAPER_SUBGROUPS`).
PAPER_SUBGROUP_AUC = {
    "Model A": {"Overall": 0.808, "KL grade of the painful knee = 0": 0.593,
                "KL grade of the painful knee >= 1": 0.866, "BMI >= 30": 0.853, "BMI < 30": 0.775,
                "Age >= 60": 0.819, "Age < 60": 0.791, "Male": 0.854, "Female": 0.766},
    "Model B": {"Overall": 0.853, "KL grade of the painful knee = 0": 0.582,
                "KL grade of the painful knee >= 1": 0.907, "BMI >= 30": 0.879, "BMI < 30": 0.832,
                "Age >= 60": 0.863, "Age < 60": 0.839, "Male": 0.891, "Female": 0.822},
}
#: Fig. 3I: subjects (of 107) by lesion in the hot spot, with correct / wrong predictions.
PAPER_LESIONS = {"effusion_synovitis": (95, 70, 25), "bml": (5, 5, 0), "hoffa_synovitis": (4, 3, 1),
                 "cartilage_loss": (2, 2, 0), "meniscal_damage": (1, 1, 0)}
#: Table 1b-c: (n, percent female, age mean, age SD, BMI mean, BMI SD) per painful side, printed p-values.
PAPER_TABLE1 = {
    "Model A": {"left": (734, 57.9, 60.13, 9.18, 28.97, 4.88), "right": (771, 55.9, 61.24, 8.98, 28.38, 4.53),
                "p": {"female": 0.700, "age": 0.018, "bmi": 0.015}},
    "Model B": {"left": (350, 59.4, 60.62, 9.39, 29.50, 4.96), "right": (360, 60.8, 61.21, 9.01, 28.94, 4.63),
                "p": {"female": 0.854, "age": 0.395, "bmi": 0.120}},
}
_IMAGE_SERIES = {"R": "SAG_IW_TSE_RIGHT", "L": "SAG_IW_TSE_LEFT"}
_PREPROCESS_VERSION = "1"


# ------------------------------------------------------------------------------------------
# 1. cohort (Methods "Data", Table 1)
# ------------------------------------------------------------------------------------------
def cohort_root(preset: str = "default", seed: int = 0, n_subjects: int | None = None,
                progress: bool = True) -> tuple[Path, str]:
    """The OAI root to read: a real download when ``KNEELIB_DATA`` holds one, else the synthetic cohort.

    Returns
    -------
    root : Path
    description : str
        ``"real OAI"`` or ``"synthetic <preset>, seed <seed>"``.
    """
    from kneelib.config import oai_root
    from kneelib.synth.cohort import generate_cohort

    real = oai_root()
    if real is not None:
        return real, "real OAI"
    root = generate_cohort(preset=preset, seed=seed, n_subjects=n_subjects, progress=progress)
    return root, f"synthetic {preset}, seed {seed}"


def unilateral_pain_cohort(root: str | Path, min_womac_difference: int = 3) -> pd.DataFrame:
    """Subjects with frequent pain in exactly one knee (Methods "Data"; Table 1a).

    Read with :func:`kneelib.data.knee_table` from the OAI baseline tables (P01KPNREV /
    P01KPNLEV frequent pain, V00WOMKPR / V00WOMKPL, V00XRKL, V00AGE, P01BMI, P02SEX).

    Parameters
    ----------
    root : path
        OAI root.
    min_womac_difference : int
        Model B keeps subjects whose knees differ by at least this in WOMAC pain (the
        paper: "difference greater than 2").

    Returns
    -------
    DataFrame
        One row per subject: ``participant_id``, ``label`` (0 left knee painful, 1 right),
        ``painful_side``, ``womac_left``, ``womac_right``, ``womac_difference``, ``age``,
        ``bmi``, ``sex`` (1 male, 2 female), ``kl_left``, ``kl_right``, ``kl_painful_knee``,
        ``model_b`` (bool). Subjects with a missing pain answer are left out.
    """
    from kneelib.data import knee_table

    knees = knee_table(root, ["frequent_pain", "womac_pain", "kl_grade", "age_years", "bmi_kg_m2", "sex"],
                       visits=(0,))
    wide = knees.pivot(index="ID", columns="SIDE")
    right, left = wide["frequent_pain"][1], wide["frequent_pain"][2]
    unilateral = ((right == 1) & (left == 0)) | ((right == 0) & (left == 1))
    wide = wide[unilateral.fillna(False)]
    label = (wide["frequent_pain"][1] == 1).astype(int)
    cohort = pd.DataFrame({
        "participant_id": wide.index.astype(str),
        "label": label.to_numpy(),
        "painful_side": np.where(label == 1, "R", "L"),
        "womac_left": wide["womac_pain"][2].to_numpy(float),
        "womac_right": wide["womac_pain"][1].to_numpy(float),
        "age": wide["age_years"][1].to_numpy(float),
        "bmi": wide["bmi_kg_m2"][1].to_numpy(float),
        "sex": wide["sex"][1].to_numpy(),
        "kl_left": wide["kl_grade"][2].to_numpy(float),
        "kl_right": wide["kl_grade"][1].to_numpy(float),
    })
    cohort["womac_difference"] = (cohort["womac_left"] - cohort["womac_right"]).abs()
    cohort["kl_painful_knee"] = np.where(cohort["label"] == 1, cohort["kl_right"], cohort["kl_left"])
    cohort["model_b"] = cohort["womac_difference"] >= min_womac_difference
    return cohort.sort_values("participant_id", kind="stable").reset_index(drop=True)


def table1(cohort: pd.DataFrame) -> pd.DataFrame:
    """Table 1b-d: subjects, percent female, age and BMI by painful side, with t-test / Fisher p-values."""
    from kneelib.stats.group_tests import table1_by_group

    return table1_by_group(cohort, "label", continuous=("age", "bmi"), sex="sex",
                           group_labels={0: "Left knee pain", 1: "Right knee pain"},
                           names={"age": "Age (years)", "bmi": "BMI"})


def paper_fisher_check() -> pd.DataFrame:
    """Fisher's exact test recomputed from the paper's own Table 1 counts and percentages.

    The printed p-values for percent female (0.700 Model A, 0.854 Model B) are checked
    against counts rebuilt as ``round(n * percent / 100)`` per side.
    """
    from scipy.stats import fisher_exact

    rows = []
    for model, values in PAPER_TABLE1.items():
        (n_left, pct_left, *_), (n_right, pct_right, *_) = values["left"], values["right"]
        female_left, female_right = round(n_left * pct_left / 100), round(n_right * pct_right / 100)
        table = [[female_left, n_left - female_left], [female_right, n_right - female_right]]
        rows.append({"model": model, "female left": f"{female_left}/{n_left}",
                     "female right": f"{female_right}/{n_right}",
                     "printed p": values["p"]["female"], "recomputed p": float(fisher_exact(table)[1])})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------
# 2. preprocessing (Methods "Image pre-processing", Fig. 1)
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PreprocessConfig:
    """Preprocessing settings (paper: 224 px, 11 each side, step 1, 105 mm, every slice registered).

    ``center_slice``: ``"auto"`` detects the PCL slice
    (:func:`kneelib.preprocess.center_slice.detect_pcl_center_slice`); ``"middle"`` takes the
    middle slice of the stack (for the ``smoke`` cohort, whose 2.5 mm pixels cannot resolve
    the PCL).
    """

    image_size: int = 64
    n_each_side: int = 3
    step: int = 3
    crop_mm: float = 105.0
    per_slice: bool = True
    iterations: int = 50
    shrink_factors: tuple[int, ...] = (4, 2)
    seed: int = 0
    center_slice: str = "auto"

    @property
    def n_slices(self) -> int:
        return 2 * self.n_each_side + 1


@dataclass
class PreprocessedCohort:
    """Both knees of every subject that passed QC, ready for the network.

    Attributes
    ----------
    images : ndarray, shape (n, 2, n_slices, H, W), float32
        Knee 0 = left, 1 = right; slices medial -> lateral.
    lesions : ndarray, shape (n, 2, n_slices, H, W), uint8
        Bit ``i`` set where lesion :data:`LESION_NAMES` ``[i]`` was planted (zeros on real data).
    cohort : DataFrame
        The rows of :func:`unilateral_pain_cohort` kept, in the order of ``images``.
    exclusions : DataFrame
        One row per excluded knee (participant_id, side, step, reason); the subject is dropped.
    knees : DataFrame
        One row per processed knee: detected and true centre slice, QC measures, planted artefact.
    """

    images: np.ndarray
    lesions: np.ndarray
    cohort: pd.DataFrame
    exclusions: pd.DataFrame
    knees: pd.DataFrame = field(default_factory=pd.DataFrame)

    def lesion_masks(self, subject: int, knee: int, slice_index: int) -> dict[str, np.ndarray]:
        """Boolean mask per lesion name on one preprocessed slice."""
        code = self.lesions[subject, knee, slice_index]
        return {name: (code & (1 << bit)) > 0 for bit, name in enumerate(LESION_NAMES)}


def _on_grid(nifti_array: np.ndarray, nifti_affine: np.ndarray, volume):
    """A ground-truth array in generator NIfTI axes on the voxel grid of ``volume`` (array layout)."""
    from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation, ornt_transform

    transform = ornt_transform(io_orientation(nifti_affine), io_orientation(volume.affine))
    data = apply_orientation(nifti_array, transform)
    affine = nifti_affine @ inv_ornt_aff(transform, nifti_array.shape)
    if data.shape != volume.shape[:3] or not np.allclose(affine, volume.affine, atol=1e-3):
        raise ValueError(f"ground truth {nifti_array.shape} is not on the grid of series "
                         f"{volume.metadata.get('folders')} {volume.shape[:3]}")
    return np.ascontiguousarray(data)


def _knee_truth(root: Path, truth_row: pd.Series, volume) -> tuple[int, np.ndarray]:
    """(true centre slice, lesion code volume), both in the slice order of :func:`sagittal_slices`."""
    from dataclasses import replace

    import nibabel as nib
    from kneelib.preprocess.registration import sagittal_slices

    label_path = root / truth_row["labels_path"]
    header = nib.load(label_path)
    shape, affine = header.shape, header.affine
    slice_number = np.broadcast_to(np.arange(shape[2], dtype=np.int16)[None, None, :], shape)
    code = np.zeros(shape, dtype=np.uint8)
    present = str(truth_row["lesion_masks"]) if isinstance(truth_row["lesion_masks"], str) else ""
    for bit, name in enumerate(LESION_NAMES):
        if name in present.split(";"):
            mask = np.asarray(nib.load(label_path.parent / f"lesion_{name}.nii.gz").dataobj) > 0
            code |= (mask.astype(np.uint8) << bit)
    ordered_number, _ = sagittal_slices(replace(volume, array=_on_grid(np.array(slice_number), affine, volume)))
    ordered_code, _ = sagittal_slices(replace(volume, array=_on_grid(code, affine, volume)))
    truth_index = int(truth_row["pcl_center_slice"])
    matches = np.flatnonzero(ordered_number[:, 0, 0] == truth_index)
    return (int(matches[0]) if len(matches) and truth_index >= 0 else -1), ordered_code


def _cache_key(folder: Path, truth_files: list[Path], config: PreprocessConfig, template_key: str) -> str:
    from kneelib.data.cache import series_cache_key

    digest = hashlib.sha256()
    digest.update(f"siamese-pain-knee-v{_PREPROCESS_VERSION}\n".encode())
    digest.update(series_cache_key(folder).encode())
    for path in truth_files:
        if path.is_file():
            stat = path.stat()
            digest.update(f"{path.resolve()} {stat.st_size} {stat.st_mtime_ns}\n".encode())
    digest.update(json.dumps(config.__dict__, sort_keys=True, default=list).encode())
    digest.update(template_key.encode())
    return digest.hexdigest()


def _save_npz_atomic(path: Path, **arrays) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)


def _load_knee(index, participant_id: str, side: str, qc):
    """(volume, folder) of one SAG IW TSE knee, or None with the reason recorded in ``qc``."""
    from kneelib.data.cohort import SeriesRequest, iter_series_volumes

    request = SeriesRequest(participant_id, 0, _IMAGE_SERIES[side])
    for _request, volume in iter_series_volumes(index, [request], qc=qc):
        return volume, index.find_series(participant_id, 0, _IMAGE_SERIES[side])
    return None


def _joint_centre_mm(slices: np.ndarray, spacing_mm, center_index: int) -> tuple[float, float]:
    """(row, column) mm of the template's joint centre: intensity-weighted centre of its centre slice.

    The paper picked its template and crop by eye; here the crop centre is the centroid of
    the brighter-than-median tissue of the template's centre slice (the knee fills the
    field of view, so this lies at the joint).
    """
    image = slices[center_index].astype(np.float64)
    weight = np.clip(image - np.median(image), 0, None)
    rows, cols = np.indices(image.shape)
    total = weight.sum() or 1.0
    return (float((rows * weight).sum() / total * spacing_mm[0]), float((cols * weight).sum() / total * spacing_mm[1]))


def preprocess_cohort(root: str | Path, cohort: pd.DataFrame, config: PreprocessConfig = PreprocessConfig(),
                      cache_dir: str | Path | None = None, progress: bool = True) -> PreprocessedCohort:
    """Centre slice, mirroring, rigid registration, crop, resize and QC of both knees of every subject.

    Paper 000, Methods "Image pre-processing" and Fig. 1: the centre slice (most complete
    PCL) is found automatically with
    :func:`kneelib.preprocess.center_slice.detect_pcl_center_slice` (the paper chose it by
    hand); left knees are mirrored by :func:`kneelib.preprocess.registration.sagittal_slices`;
    every kept slice is registered rigidly to the same slice offset of a template knee (the
    first subject's right knee) and resampled to a ``crop_mm`` square at ``image_size``
    (:func:`kneelib.preprocess.registration.preprocess_knee`), the planted lesion masks
    travelling along. Artefact QC (Methods "Image registration and quality check") is
    automatic: a knee is excluded when its series does not load (slice gaps, unreadable
    files: :class:`kneelib.data.cohort.QCLog`), no PCL is found, too few slices lie
    around the centre, more than 10% of a crop is empty (missing data), or its worst
    slice's registration metric or intensity contrast is a cohort outlier (median + 5
    MAD). A subject with an excluded knee is dropped.

    Each knee is cached as a content-addressed ``.npz`` under
    ``cache_root()/siamese_pain/knees`` (DICOM file stats, truth files, settings and the
    template; written to a temporary name and renamed), so a run resumes where it stopped.

    Parameters
    ----------
    root : path
        OAI root (real or synthetic; ground truth is used when ``root/ground_truth`` exists).
    cohort : DataFrame
        From :func:`unilateral_pain_cohort`.
    config : PreprocessConfig
    cache_dir : path or None
    progress : bool
        tqdm bar over subjects.

    Returns
    -------
    PreprocessedCohort
    """
    from tqdm.auto import tqdm

    from kneelib.config import cache_root
    from kneelib.data import read_image_index
    from kneelib.data.cohort import QCLog
    from kneelib.preprocess.center_slice import CenterSliceNotFoundError, detect_pcl_center_slice
    from kneelib.preprocess.registration import preprocess_knee, sagittal_slices

    if config.center_slice not in ("auto", "middle"):
        raise ValueError(f"center_slice must be 'auto' or 'middle', got {config.center_slice!r}")
    root = Path(root)
    index = read_image_index(root / "contents.csv") if (root / "contents.csv").is_file() else read_image_index(root)
    truth_path = root / "ground_truth" / "series.csv"
    truth = pd.read_csv(truth_path, dtype={"participant_id": str}) if truth_path.is_file() else None
    if truth is not None:
        truth = truth[(truth["series_key"] == "sag_iw_tse") & (truth["visit_month"] == 0)]
    cache = Path(cache_dir) if cache_dir is not None else cache_root() / STUDY / "knees"
    qc = QCLog()
    exclusions: list[dict] = []

    # template: the first subject whose right knee loads and shows a PCL
    template = None
    for participant_id in cohort["participant_id"]:
        loaded = _load_knee(index, participant_id, "R", QCLog())
        if loaded is None:
            continue
        slices, spacing = sagittal_slices(loaded[0])
        try:
            centre = ((len(slices) - 1) // 2 if config.center_slice == "middle"
                      else detect_pcl_center_slice(slices, spacing).index)
        except CenterSliceNotFoundError:
            continue
        template = dict(participant_id=participant_id, slices=slices, spacing=spacing, centre=centre,
                        centre_mm=_joint_centre_mm(slices, spacing, centre),
                        key=f"{participant_id}:{loaded[1]}:{centre}")
        break
    if template is None:
        raise ValueError(f"no knee in {root} could serve as registration template (no loadable SAG IW TSE with a PCL)")

    knee_rows, results = [], {}
    for participant_id in tqdm(cohort["participant_id"], desc="preprocess knees", unit="subject", disable=not progress):
        for side in ("L", "R"):
            row = {"participant_id": participant_id, "side": side}
            loaded = _load_knee(index, participant_id, side, qc)
            if loaded is None:
                exclusions.append({**row, "step": "load", "reason": qc.rows[-1]["reason"]})
                continue
            volume, folder = loaded
            truth_row = None
            if truth is not None:
                relative = Path(folder).resolve().relative_to(root.resolve()).as_posix()
                match = truth[truth["folder"] == relative]
                truth_row = match.iloc[0] if len(match) else None
            truth_files = [] if truth_row is None else [root / truth_row["labels_path"]]
            key = _cache_key(Path(folder), truth_files, config, template["key"])
            path = cache / key[:2] / f"{key}.npz"
            if path.is_file():
                with np.load(path) as stored:
                    entry = {k: stored[k] for k in stored.files}
            else:
                entry = _process_knee(volume, root, truth_row, config, template, detect_pcl_center_slice,
                                      CenterSliceNotFoundError, preprocess_knee, sagittal_slices)
                _save_npz_atomic(path, **entry)
            reason = str(entry["reason"])
            row.update(detected_center=int(entry["detected_center"]), true_center=int(entry["true_center"]),
                       n_slices_in_series=int(entry["n_slices_in_series"]),
                       planted_artefact=("" if truth_row is None or not isinstance(truth_row["artefact"], str)
                                         else truth_row["artefact"]))
            if reason:
                exclusions.append({**row, "step": "preprocess", "reason": reason})
            else:
                empty = float((entry["images"] <= 0).mean())
                row.update(empty_fraction=empty, worst_metric=float(entry["metric"].max()),
                           contrast=float(np.percentile(entry["images"], 99.9) / max(np.median(entry["images"]), 1e-6)))
                results[(participant_id, side)] = entry
            knee_rows.append(row)
    knees = pd.DataFrame(knee_rows)
    # artefact QC on the cohort's distribution of each measure (Fig. 1C)
    measured = knees.dropna(subset=["worst_metric"]) if "worst_metric" in knees else knees.iloc[:0]
    for column, limit_text in (("worst_metric", "registration metric"), ("contrast", "intensity contrast")):
        values = measured[column]
        median, mad = values.median(), (values - values.median()).abs().median() * 1.4826
        limit = median + 5 * max(mad, 1e-6)
        for _, bad in measured[values > limit].iterrows():
            exclusions.append({"participant_id": bad["participant_id"], "side": bad["side"], "step": "artefact QC",
                               "reason": f"{limit_text} {bad[column]:.3g} above median + 5 MAD ({limit:.3g})"})
    for _, bad in measured[measured["empty_fraction"] > 0.10].iterrows():
        exclusions.append({"participant_id": bad["participant_id"], "side": bad["side"], "step": "artefact QC",
                           "reason": f"{100 * bad['empty_fraction']:.0f}% of the crop empty (missing data)"})
    exclusions = pd.DataFrame(exclusions, columns=["participant_id", "side", "step", "reason"])
    knees["excluded"] = [((exclusions["participant_id"] == p) & (exclusions["side"] == s)).any()
                         for p, s in zip(knees["participant_id"], knees["side"])] if len(knees) else []
    dropped = set(exclusions["participant_id"])
    kept = cohort[~cohort["participant_id"].isin(dropped)].reset_index(drop=True)
    if len(kept) == 0:
        return PreprocessedCohort(np.zeros((0, 2, config.n_slices, config.image_size, config.image_size), np.float32),
                                  np.zeros((0, 2, config.n_slices, config.image_size, config.image_size), np.uint8),
                                  kept, exclusions, knees)
    images = np.stack([np.stack([results[(p, s)]["images"] for s in ("L", "R")]) for p in kept["participant_id"]])
    lesions = np.stack([np.stack([results[(p, s)]["lesions"] for s in ("L", "R")]) for p in kept["participant_id"]])
    return PreprocessedCohort(images.astype(np.float32), lesions.astype(np.uint8), kept, exclusions, knees)


def _process_knee(volume, root, truth_row, config, template, detect, not_found_error, preprocess_knee,
                  sagittal_slices) -> dict:
    slices, spacing = sagittal_slices(volume)
    entry = {"reason": "", "detected_center": -1, "true_center": -1, "n_slices_in_series": len(slices),
             "images": np.zeros(0, np.float32), "lesions": np.zeros(0, np.uint8), "metric": np.zeros(1)}
    code = None
    if truth_row is not None:
        entry["true_center"], code = _knee_truth(Path(root), truth_row, volume)
    if config.center_slice == "middle":
        centre = (len(slices) - 1) // 2
    elif config.center_slice == "auto":
        try:
            centre = detect(slices, spacing).index
        except not_found_error as error:
            entry["reason"] = f"centre slice not found: {error}"
            return entry
    else:
        raise ValueError(f"center_slice must be 'auto' or 'middle', got {config.center_slice!r}")
    entry["detected_center"] = centre
    try:
        result = preprocess_knee(slices, spacing, centre, template["slices"], template["spacing"],
                                 template["centre_mm"], template["centre"], n_each_side=config.n_each_side,
                                 step=config.step, crop_mm=config.crop_mm, output_size=config.image_size,
                                 per_slice=config.per_slice, iterations=config.iterations,
                                 shrink_factors=tuple(config.shrink_factors), seed=config.seed,
                                 label_volumes=None if code is None else {"lesions": code})
    except ValueError as error:  # too few slices around the centre
        entry["reason"] = str(error)
        return entry
    entry["images"] = result.images
    entry["lesions"] = (result.labels["lesions"].astype(np.uint8) if code is not None
                        else np.zeros(result.images.shape, np.uint8))
    entry["metric"] = result.qc["metric"].to_numpy(float)
    return entry


def center_slice_accuracy(knees: pd.DataFrame) -> pd.DataFrame:
    """Automatic centre slice vs the ground-truth PCL slice: exact, within 1, within 2 slices, and
    the same for always taking the middle slice of the stack (knees with a known truth)."""
    known = knees[(knees["true_center"] >= 0) & (knees["detected_center"] >= 0)]
    if known.empty:
        return pd.DataFrame(columns=["method", "n knees", "exact %", "within 1 %", "within 2 %"])
    middle = (known["n_slices_in_series"] - 1) // 2
    rows = []
    for name, guess in (("automatic PCL detection", known["detected_center"]), ("middle slice of the stack", middle)):
        error = (guess - known["true_center"]).abs()
        rows.append({"method": name, "n knees": len(known), "exact %": 100 * (error == 0).mean(),
                     "within 1 %": 100 * (error <= 1).mean(), "within 2 %": 100 * (error <= 2).mean()})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------
# 3-4. model and cross-validation (Fig. 2, Fig. 4)
# ------------------------------------------------------------------------------------------
def model_factory(n_slices: int, widths=None, architecture: str = "siamese"):
    """A callable returning a new network: the paper's Siamese net (Fig. 2) or the VGG16-CAM trunk (Fig. 3A)."""
    from kneelib.models.siamese import DEFAULT_WIDTHS, siamese_pain_net
    from kneelib.models.vgg_cam import siamese_vgg16_cam

    if architecture == "siamese":
        chosen = tuple(widths or DEFAULT_WIDTHS)
        return lambda: siamese_pain_net(n_slices=n_slices, widths=chosen)
    if architecture == "vgg16_cam":
        return lambda: siamese_vgg16_cam(n_slices=n_slices)
    raise ValueError(f"architecture must be 'siamese' or 'vgg16_cam', got {architecture!r}")


@dataclass
class CrossValidatedModel:
    """Out-of-fold results of one model (A or B)."""

    name: str
    cohort: pd.DataFrame
    result: object  # kneelib.train.siamese.CrossValidationResult
    auc: object  # kneelib.stats.roc.AucResult
    per_fold: pd.DataFrame
    subgroups: pd.DataFrame
    subjects: np.ndarray | None = None  # rows of the PreprocessedCohort, in ``cohort`` order


def cross_validated_auc(name: str, data: PreprocessedCohort, subjects: np.ndarray, n_folds: int, config,
                        widths=None, seed: int = 0, show_progress: bool = True,
                        keep_models: bool = False) -> CrossValidatedModel:
    """Subject-level stratified k-fold CV (strata: side x sex x age >= 60 x BMI >= 30), pooled and per-fold AUC.

    Paper 000, Methods: 10-fold cross-validation stratified on the risk factors; AUC of the
    pooled out-of-fold ROC (Fig. 4A-B) and by subgroup (Fig. 4C).
    """
    from kneelib.stats.roc import auc_with_ci, per_fold_auc, subgroup_auc_table
    from kneelib.train.siamese import cross_validate
    from kneelib.train.splits import make_strata, stratified_kfold

    subjects = np.asarray(subjects, dtype=int)
    cohort = data.cohort.iloc[subjects].reset_index(drop=True)
    labels = cohort["label"].to_numpy()
    strata = make_strata(labels, sex=cohort["sex"], age=cohort["age"], bmi=cohort["bmi"], min_count=n_folds)
    fold = stratified_kfold(labels, n_folds, strata=strata, seed=seed)
    images = data.images[subjects]
    result = cross_validate(images, labels, fold, model_factory(images.shape[2], widths), config, strata=strata,
                            show_progress=show_progress, keep_models=keep_models)
    return CrossValidatedModel(name, cohort, result, auc_with_ci(labels, result.probability),
                               per_fold_auc(labels, result.probability, fold),
                               subgroup_auc_table(labels, result.probability, cohort), subjects)


# ------------------------------------------------------------------------------------------
# 5. saliency (Fig. 3)
# ------------------------------------------------------------------------------------------
def _train_val_test_split(labels: np.ndarray, strata, seed: int):
    """The paper's stratified 70:15:15 subject split; for cohorts too small for its 20 strata-folds
    (the ``smoke`` run) a per-class shuffled 70:15:15 split that keeps each class in every part."""
    from kneelib.train.splits import TrainValTestSplit, stratified_train_val_test_split

    try:
        return stratified_train_val_test_split(labels, (0.70, 0.15, 0.15), strata=strata, seed=seed)
    except ValueError:
        rng = np.random.default_rng(seed)
        parts: list[list[int]] = [[], [], []]
        for value in np.unique(labels):
            members = rng.permutation(np.flatnonzero(labels == value))
            n_test = max(1, int(round(0.15 * len(members))))
            n_val = max(1, int(round(0.15 * len(members)))) if len(members) > 2 else 0
            parts[2] += members[:n_test].tolist()
            parts[1] += members[n_test:n_test + n_val].tolist()
            parts[0] += members[n_test + n_val:].tolist()
        return TrainValTestSplit(*(np.sort(np.asarray(p, dtype=int)) for p in parts))


@dataclass
class SaliencyStudy:
    """CAMs of the test part of a 70:15:15 split, for the Siamese and the VGG16-CAM model.

    Attributes
    ----------
    test : ndarray of int
        Subjects (rows of the :class:`PreprocessedCohort`) in the test part.
    probability : dict of str to ndarray
        P(right knee painful) per model on ``test``.
    cams : dict of str to ndarray, shape (n_test, 2, n_slices, h, w)
        Maps explaining the knee with confirmed pain (the label), as in Fig. 3I.
    top_slice : dict of str to ndarray of int
        Slice with the highest mean CAM on the painful knee.
    hits : DataFrame
        One row per test subject and model: label, prediction correct, lesion under the hot
        spot (``none`` if none), pointing hit (hot spot in any planted lesion), lesion area
        fraction of that slice (chance of a random point) and a random-map hit.
    """

    test: np.ndarray
    probability: dict
    cams: dict
    top_slice: dict
    hits: pd.DataFrame
    validation_auc: dict = field(default_factory=dict)


def saliency_study(data: PreprocessedCohort, config, widths=None, seed: int = 0, show_progress: bool = True,
                   models=("siamese", "vgg16_cam")) -> SaliencyStudy:
    """Train each model on 70%, monitor on 15%, and score the CAMs of the 15% test part (Fig. 3).

    The radiologist review of Fig. 3I becomes: on the painful knee's top-CAM slice, which
    planted lesion (:data:`LESION_NAMES` order) holds the CAM maximum
    (:func:`kneelib.explain.pointing.lesion_under_hot_spot`); chance is the fraction of the
    slice covered by lesion masks (where a uniformly random hot spot would land) and a
    random 8 x 8 map on the same slice.
    """
    from kneelib.explain.cam import painful_knee_cams, siamese_cams, top_cam_slice
    from kneelib.stats.roc import auc_with_ci
    from kneelib.train.siamese import predict_probability, train_siamese
    from kneelib.train.splits import make_strata, stratified_train_val_test_split

    cohort = data.cohort
    labels = cohort["label"].to_numpy()
    strata = make_strata(labels, sex=cohort["sex"], age=cohort["age"], bmi=cohort["bmi"], min_count=3)
    split = _train_val_test_split(labels, strata, seed)
    rng = np.random.default_rng(seed)
    probability, cams, top, validation_auc, rows = {}, {}, {}, {}, []
    for architecture in models:
        learner = train_siamese(data.images, labels, split.train, model_factory(data.images.shape[2], widths,
                                                                                architecture),
                                config, valid_indices=split.val, show_progress=show_progress)
        standardization = learner.dls.standardization
        valid_probability = predict_probability(learner.model, data.images, split.val, standardization)
        if len(np.unique(labels[split.val])) == 2:
            validation_auc[architecture] = auc_with_ci(labels[split.val], valid_probability)
        maps = siamese_cams(learner.model, data.images[split.test], target_class=labels[split.test],
                            standardization=standardization)
        probability[architecture] = maps.probability_right
        cams[architecture] = maps.cams
        painful = painful_knee_cams(maps.cams, labels[split.test])
        top[architecture] = top_cam_slice(painful)
        rows += _hot_spot_rows(architecture, data, split.test, painful, top[architecture], maps.probability_right,
                               rng)
    return SaliencyStudy(split.test, probability, cams, top, pd.DataFrame(rows), validation_auc)


def _hot_spot_rows(model: str, data: PreprocessedCohort, subjects: np.ndarray, painful_cams: np.ndarray,
                   top_slice: np.ndarray, probability_right: np.ndarray, rng: np.random.Generator) -> list:
    """One row per subject: the planted lesion under the CAM maximum of the painful knee's top slice."""
    from kneelib.explain.pointing import lesion_under_hot_spot, pointing_hit

    labels = data.cohort["label"].to_numpy()
    rows = []
    for i, subject in enumerate(subjects):
        knee, s = int(labels[subject]), int(top_slice[i])
        masks = data.lesion_masks(subject, knee, s)
        union = np.logical_or.reduce(list(masks.values()))
        random_map = rng.random(painful_cams.shape[-2:])
        rows.append({
            "model": model, "participant_id": data.cohort["participant_id"].iloc[subject],
            "label": knee, "probability_right": float(probability_right[i]),
            "correct": bool((probability_right[i] >= 0.5) == bool(knee)), "top_slice": s,
            "lesion": lesion_under_hot_spot(painful_cams[i, s], masks),
            "hit": bool(union.any() and pointing_hit(painful_cams[i, s], union)),
            "lesion_area_fraction": float(union.mean()),
            "random_map_hit": bool(union.any() and pointing_hit(random_map, union)),
            "any_lesion_on_knee": bool(data.lesions[subject, knee].any()),
        })
    return rows


def out_of_fold_hot_spots(data: PreprocessedCohort, model: CrossValidatedModel, seed: int = 0,
                          name: str = "siamese, out-of-fold") -> pd.DataFrame:
    """Score every subject's CAM with the cross-validation fold model that never saw the subject.

    The paper's review covered a 15% test split (n = 107 of 710); a small synthetic cohort
    leaves only a handful of subjects there, so the same scoring is also run out-of-fold over
    the whole cross-validated cohort (``cross_validated_auc(..., keep_models=True)``). No
    subject is explained by a model trained on it.
    """
    from kneelib.explain.cam import painful_knee_cams, siamese_cams, top_cam_slice

    if not model.result.models or model.subjects is None:
        raise ValueError(f"{model.name} was cross-validated without keep_models=True: no fold models to explain with")
    labels = data.cohort["label"].to_numpy()
    rng = np.random.default_rng(seed)
    rows = []
    for k, (network, standardization) in sorted(model.result.models.items()):
        subjects = model.subjects[model.result.fold == k]
        maps = siamese_cams(network, data.images[subjects], target_class=labels[subjects],
                            standardization=standardization)
        painful = painful_knee_cams(maps.cams, labels[subjects])
        rows += _hot_spot_rows(name, data, subjects, painful, top_cam_slice(painful), maps.probability_right, rng)
    return pd.DataFrame(rows)


def lesion_table(hits: pd.DataFrame, model: str = "siamese") -> pd.DataFrame:
    """Fig. 3I: test subjects by the lesion under the hot spot, split by correct / wrong prediction,
    beside the paper's counts."""
    part = hits[hits["model"] == model]
    total = len(part)
    rows = []
    for name in (*LESION_NAMES, "none"):
        chosen = part[part["lesion"] == name]
        paper = PAPER_LESIONS.get(name)
        rows.append({"lesion": LESION_LABELS[name], "subjects": len(chosen),
                     "percent": 100 * len(chosen) / total if total else np.nan,
                     "pred. correct": int(chosen["correct"].sum()), "pred. wrong": int((~chosen["correct"]).sum()),
                     "paper subjects": "" if paper is None else paper[0],
                     "paper percent": "" if paper is None else round(100 * paper[0] / 107, 1)})
    return pd.DataFrame(rows)


def pointing_table(hits: pd.DataFrame, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Pointing game (hot spot inside any planted lesion) per model, with a bootstrap 95% CI,
    against the two chance levels, over test subjects whose top slice shows a lesion."""
    from kneelib.stats.bootstrap import bootstrap_ci

    rows = []
    for model, part in hits.groupby("model", sort=False):
        scored = part[part["lesion_area_fraction"] > 0]
        if scored.empty:
            rows.append({"model": model, "n scored": 0})
            continue
        hit = scored["hit"].to_numpy(float)
        ci = bootstrap_ci(lambda _, x: float(np.mean(x)), hit, hit, n_boot=n_boot, stratify=False, seed=seed)
        rows.append({"model": model, "n scored": len(scored), "pointing game": hit.mean(),
                     "ci_low": ci.ci_low, "ci_high": ci.ci_high,
                     "chance (lesion area fraction)": scored["lesion_area_fraction"].mean(),
                     "random 8x8 map": scored["random_map_hit"].mean(),
                     "correct predictions": scored.loc[scored["correct"], "hit"].mean(),
                     "wrong predictions": scored.loc[~scored["correct"], "hit"].mean()})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------
# 7. paper vs reproduced
# ------------------------------------------------------------------------------------------
def comparisons(models: dict, saliency: SaliencyStudy | None, pointing: pd.DataFrame | None,
                table1_by_model: dict, data_label: str, out_of_fold_hits: pd.DataFrame | None = None) -> list:
    """The :class:`kneelib.report.Comparison` rows of the chapter.

    ``pointing`` may hold test-split and out-of-fold rows (:func:`pointing_table` of both);
    ``out_of_fold_hits`` (:func:`out_of_fold_hot_spots`) adds the lesion-under-hot-spot
    percentages over the whole cross-validated cohort.
    """
    from kneelib.report import Comparison

    rows = []
    for name, model in models.items():
        n = len(model.cohort)
        rows.append(Comparison(STUDY, f"ROC AUC, {name} (pooled out-of-fold)", PAPER_AUC[name], model.auc.auc,
                               model.auc.ci_low, model.auc.ci_high, "Abstract; Fig. 4" + ("A" if name == "Model A" else "B"),
                               f"{data_label}, n={n}", "DeLong 95% CI"))
        for _, row in model.subgroups.iterrows():
            if row["subgroup"] == "Overall":
                continue
            rows.append(Comparison(STUDY, f"ROC AUC, {name}, {row['subgroup']}",
                                   PAPER_SUBGROUP_AUC[name].get(row["subgroup"]),
                                   None if pd.isna(row["auc"]) else float(row["auc"]),
                                   None if pd.isna(row["ci_low"]) else float(row["ci_low"]),
                                   None if pd.isna(row["ci_high"]) else float(row["ci_high"]),
                                   "Fig. 4C", f"{data_label}, n={int(row['n'])}"))
        values = table1_by_model[name].attrs["values"]
        paper = PAPER_TABLE1[name]
        rows.append(Comparison(STUDY, f"Table 1, {name}: percent female, left / right pain",
                               f"{paper['left'][1]} / {paper['right'][1]}",
                               f"{values['female_percent'][0]:.1f} / {values['female_percent'][1]:.1f}",
                               source="Table 1", data=f"{data_label}, n={n}"))
        rows.append(Comparison(STUDY, f"Table 1, {name}: age (years), left / right pain",
                               f"{paper['left'][2]} / {paper['right'][2]}",
                               f"{values['age'][0]:.2f} / {values['age'][1]:.2f}", source="Table 1",
                               data=f"{data_label}, n={n}"))
        rows.append(Comparison(STUDY, f"Table 1, {name}: BMI, left / right pain",
                               f"{paper['left'][4]} / {paper['right'][4]}",
                               f"{values['bmi'][0]:.2f} / {values['bmi'][1]:.2f}", source="Table 1",
                               data=f"{data_label}, n={n}"))
    lesion_sources = []
    if saliency is not None:
        lesion_sources.append(("Test subjects", "test", lesion_table(saliency.hits)))
    if out_of_fold_hits is not None and len(out_of_fold_hits):
        lesion_sources.append(("Subjects (out-of-fold)", "out-of-fold",
                               lesion_table(out_of_fold_hits, model=out_of_fold_hits["model"].iloc[0])))
    for who, where, table in lesion_sources:
        n_scored = int(table["subjects"].sum())
        for _, row in table.iterrows():
            key = next((k for k, v in LESION_LABELS.items() if v == row["lesion"]), None)
            paper = PAPER_LESIONS.get(key)
            rows.append(Comparison(STUDY, f"{who} with {row['lesion']} under the Siamese CAM hot spot (%)",
                                   None if paper is None else round(100 * paper[0] / 107, 1),
                                   float(row["percent"]), source="Fig. 3I",
                                   data=f"{data_label}, {where} n={n_scored}",
                                   note="planted masks instead of a radiologist review"))
    if pointing is not None:
        for _, row in pointing.iterrows():
            if not row.get("n scored"):
                continue
            rows.append(Comparison(STUDY, f"Pointing game, {row['model']} CAM (hot spot in a planted lesion)", None,
                                   float(row["pointing game"]), float(row["ci_low"]), float(row["ci_high"]),
                                   "(not in the paper)",
                                   f"{data_label}, {'out-of-fold' if 'out-of-fold' in row['model'] else 'test'} "
                                   f"n={int(row['n scored'])}",
                                   f"chance {row['chance (lesion area fraction)']:.3f} (lesion area), "
                                   f"random map {row['random 8x8 map']:.3f}"))
    return rows


def plot_cam_comparison(data: PreprocessedCohort, saliency: SaliencyStudy, n_show: int = 4):
    """Fig. 3A-B: the painful knee's top-CAM slice of test subjects with the VGG16-CAM and the
    Siamese map, and the planted lesions of the Siamese slice (colour per lesion, legend)."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    from kneelib.explain.cam import normalize_cam, upsample_cam

    colours = ["#00bcd4", "#ff9800", "#e91e63", "#8bc34a", "#9c27b0"]
    labels = data.cohort["label"].to_numpy()
    n_show = min(n_show, len(saliency.test))
    fig, axes = plt.subplots(3, n_show, figsize=(2.4 * n_show, 7.8), squeeze=False)
    size = data.images.shape[-1]
    for i in range(n_show):
        subject = saliency.test[i]
        knee = int(labels[subject])
        correct = (saliency.probability["siamese"][i] >= 0.5) == bool(knee)
        for row, architecture in enumerate(("vgg16_cam", "siamese")):
            s = int(saliency.top_slice[architecture][i])
            cam = normalize_cam(upsample_cam(saliency.cams[architecture][i, knee, s], size))
            axes[row, i].imshow(data.images[subject, knee, s], cmap="gray")
            axes[row, i].imshow(cam, cmap="jet", alpha=0.4)
            axes[row, i].set_title(f"{'VGG16-CAM' if row == 0 else 'Siamese'}, slice {s}", fontsize="small")
        s = int(saliency.top_slice["siamese"][i])
        code = data.lesions[subject, knee, s].astype(int)
        first = np.full(code.shape, -1)
        for bit in reversed(range(len(LESION_NAMES))):  # highest priority drawn last
            first[(code >> bit) & 1 == 1] = bit
        axes[2, i].imshow(data.images[subject, knee, s], cmap="gray")
        axes[2, i].imshow(np.ma.masked_less(first, 0), cmap=ListedColormap(colours), vmin=0,
                          vmax=len(colours) - 1, alpha=0.7, interpolation="nearest")
        axes[2, i].set_title(f"{data.cohort['participant_id'].iloc[subject]} "
                             f"({'LR'[knee]} knee, {'correct' if correct else 'wrong'})", fontsize="small")
    for ax in axes.flat:
        ax.set_axis_off()
    fig.legend([Patch(color=c) for c in colours], [LESION_LABELS[n] for n in LESION_NAMES], loc="lower center",
               ncol=3, fontsize="small", frameon=False)
    fig.suptitle("CAMs of the painful knee (top slice)\nand the planted lesions", fontsize="medium")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig
