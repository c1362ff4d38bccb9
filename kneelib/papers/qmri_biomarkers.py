"""qMRI biomarkers: bone and cartilage segmentation, thickness, bone shape, T2 and spherical maps (papers 001 + 003).

Composes the stage modules for the chapter ``notebooks/qmri_biomarkers.ipynb``; it holds no
algorithm of its own. It is one module of about 650 lines because it is the chapter's single
composition layer (imported as ``study``), in the page's order from cohort to real data;
splitting it would split one chapter across files:

1. cohort -- :func:`kneelib.data.qmri_cohort.qmri_knee_table` (Methods "Patient inclusion"),
   :func:`kneelib.data.qmri_cohort.segmentation_splits` and :func:`table4` (Table 4, with
   :func:`kneelib.stats.group_tests.split_independence`);
2. segmentation (supplement 003) -- :func:`train_segmenters` (MONAI networks of
   :mod:`kneelib.models.segmentation`, the loss family of
   :mod:`kneelib.train.segmentation_losses`, ensembles of :mod:`kneelib.train.segmentation`),
   :func:`segment_knee` and :func:`evaluate_segmentation` (DSC/MPTS with subject CIs and the
   3-SD QC rule of :mod:`kneelib.stats.segmentation`, Table S1, Fig. S2);
3. biomarkers -- :func:`kneelib.qmri.biomarkers.extract_knee_biomarkers` per knee (thickness,
   bone shape, T2 after :func:`kneelib.qmri.alignment.align_msme_to_dess`, projections,
   spherical maps), cached and run in parallel (:func:`knee_biomarkers`);
4. real data -- :func:`real_relaxation_map` (T2 of the pymskt MSME, T1rho of the pyKNEEr
   series) and the readers of :mod:`kneelib.data.qmri_cohort`;
5. figures -- :mod:`kneelib.figures.qmri`; :func:`comparisons` -- the paper-vs-reproduced rows.

Published values are read once from ``book/published.yml`` (``values: qmri_biomarkers:``).
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from kneelib.data.qmri_cohort import (DESS_SERIES, MSME_SERIES, DessVolumes, load_dess_volumes, qmri_knee_table,
                                      read_pymskt_segmentation, read_volume_slices, segmentation_splits)

__all__ = [
    "STUDY", "published", "cohort_root", "qmri_knee_table", "segmentation_splits", "table4",
    "load_dess_volumes", "DessVolumes", "SegmentationSettings", "train_segmenters", "segment_knee", "segment_knees",
    "evaluate_segmentation", "table_s1", "knee_biomarkers", "biomarker_inputs", "read_volume_slices",
    "read_pymskt_segmentation", "real_relaxation_map", "roi_statistics", "comparisons", "biomarker_summary",
    "segment_real_dess", "real_label_fractions", "validation_tables", "spherical_vs_surface", "strategy_images", "pymskt_biomarkers", "mese_regions", "femoral_cartilage_on_slab",
    "t1rho_cartilage_region", "region_mean_fits", "real_t1rho",
]

STUDY = "qmri_biomarkers"
TASKS = ("bone", "cartilage")


def published() -> dict:
    """The papers' values (``values: qmri_biomarkers:`` of ``book/published.yml``)."""
    from kneelib.report import published_values

    return published_values(STUDY)


def cohort_root(preset: str = "default", seed: int = 0, n_subjects: int | None = None,
                progress: bool = False) -> tuple[Path, str]:
    """A real OAI download when ``KNEELIB_DATA`` holds one, else the synthetic cohort: ``(root, label)``."""
    from kneelib.config import oai_root
    from kneelib.synth.cohort import generate_cohort

    real = oai_root()
    if real is not None:
        return real, "real OAI"
    return (generate_cohort(preset=preset, seed=seed, n_subjects=n_subjects, progress=progress),
            f"synthetic {preset}, seed {seed}")


def table4(splits: pd.DataFrame) -> pd.DataFrame:
    """Table 4 (segmentation rows) for our splits: volumes (subjects), age, KL, sex, and the two p-values."""
    from kneelib.stats.group_tests import split_independence

    rows = []
    for name in ("train", "valid", "test"):
        part = splits[splits["split"] == name]
        rows.append({"split": name, "volumes": len(part), "subjects": part["participant_id"].nunique(),
                     "age": f"{part['age'].mean():.1f} \u00b1 {part['age'].std(ddof=1):.2f}",
                     "KL": f"{part['kl_grade'].mean():.1f} \u00b1 {part['kl_grade'].std(ddof=1):.2f}",
                     "male/female": f"{(part['sex'] == 1).sum()}/{(part['sex'] == 2).sum()}"})
    table = pd.DataFrame(rows).set_index("split")
    try:
        with warnings.catch_warnings():  # statsmodels divides by n - 1 of a one-volume split (smoke)
            warnings.simplefilter("ignore", RuntimeWarning)
            table.attrs["p"] = split_independence(splits)
    except ValueError as error:  # too few volumes for a MANOVA
        table.attrs["p"] = {"chi_square_sex_p": float("nan"), "manova_age_bmi_p": float("nan"),
                            "note": str(error)}
    return table


@dataclass(frozen=True)
class SegmentationSettings:
    """Grid, networks and training of the segmentation stage (supplement 003 at a CPU budget).

    ``grid_mm`` per task: the voxel size the network sees (``None``: the DESS grid).
    ``keep_components``: keep each class's anatomical number of connected components
    (:func:`kneelib.train.segmentation.keep_anatomical_components`); the supplement has no
    such step.
    """

    grid_mm: dict = field(default_factory=lambda: {"bone": 2.0, "cartilage": None})
    losses: tuple = ("mixed", "dice")
    architecture: str = "unet"
    n_steps: int = 300
    patch_size: tuple = (48, 48, 48)
    batch_size: int = 2
    learning_rate: dict = field(default_factory=lambda: {"bone": 3e-3, "cartilage": 3e-3})
    validate_every: int = 50
    patience: int = 4
    seed: int = 0
    keep_components: bool = True


def _task_volumes(volumes: DessVolumes, task: str, settings: SegmentationSettings):
    from kneelib.models.segmentation import network_targets
    from kneelib.train.segmentation import resample_to_spacing

    target = settings.grid_mm.get(task)
    images, labels, spacing = [], [], volumes.spacing_mm
    for image, tissue in zip(volumes.images, volumes.tissue_labels):
        if target is not None:
            image, spacing = resample_to_spacing(image, volumes.spacing_mm, target)
            tissue, _ = resample_to_spacing(tissue, volumes.spacing_mm, target, order=0)
        images.append(image)
        labels.append(network_targets(tissue, task))
    return images, labels, tuple(spacing)


def train_segmenters(train: DessVolumes, valid: DessVolumes, settings: SegmentationSettings,
                     show_progress: bool = False) -> dict:
    """One ensemble per task (bones; cartilage and menisci), one member per loss (supplement 003).

    Returns ``{task: list of TrainedSegmenter}``; the members' ``seconds`` give the training time.
    """
    from kneelib.train.segmentation import SegmentationTrainConfig, train_ensemble

    ensembles = {}
    for task in TASKS:
        images, labels, spacing = _task_volumes(train, task, settings)
        v_images, v_labels, _ = _task_volumes(valid, task, settings)
        config = SegmentationTrainConfig(n_steps=settings.n_steps, patch_size=tuple(settings.patch_size),
                                         batch_size=settings.batch_size,
                                         learning_rate=settings.learning_rate[task],
                                         validate_every=settings.validate_every, patience=settings.patience,
                                         seed=settings.seed)
        ensembles[task] = train_ensemble(task, images, labels, spacing, losses=settings.losses,
                                         architecture=settings.architecture, config=config,
                                         valid_images=v_images or None, valid_labels=v_labels or None,
                                         show_progress=show_progress)
    return ensembles


def segment_knee(ensembles: dict, image: np.ndarray, spacing_mm: Sequence[float],
                 settings: SegmentationSettings) -> dict:
    """Class labels of both networks on the grid of ``image`` (``(slices, rows, columns)``).

    Each network runs on its own grid (``settings.grid_mm``); its labels come back to the
    image grid by nearest-neighbour resizing. With ``settings.keep_components`` each class
    then keeps its anatomical number of connected components, and each cartilage only the
    components on its segmented bone (:func:`kneelib.train.segmentation.keep_anatomical_components`).
    Returns ``{"bone": ..., "cartilage": ...}``.
    """
    from kneelib.models.segmentation import BONE_CLASSES, CARTILAGE_BONE, network_classes
    from kneelib.train.segmentation import (keep_anatomical_components, predict_volume, resample_to_spacing,
                                            resize_to_shape)

    out = {}
    for task in TASKS:
        target = settings.grid_mm.get(task)
        resampled = image if target is None else resample_to_spacing(image, spacing_mm, target)[0]
        labels, _ = predict_volume(ensembles[task], resampled)
        out[task] = labels if labels.shape == image.shape else resize_to_shape(labels, image.shape, order=0)
    if settings.keep_components:
        out["bone"] = keep_anatomical_components(out["bone"], BONE_CLASSES)
        hosts = {cartilage: out["bone"] == BONE_CLASSES.index(bone) for cartilage, bone in CARTILAGE_BONE.items()}
        out["cartilage"] = keep_anatomical_components(out["cartilage"], network_classes("cartilage"), hosts=hosts)
    return out


def _segment_task(image: np.ndarray, ensembles: dict, spacing_mm: Sequence[float],
                  settings: SegmentationSettings) -> tuple[dict, float]:
    """:func:`segment_knee` of one volume on one thread (a :func:`kneelib.executor.map_tasks` task)."""
    from kneelib.executor import single_threaded

    start = time.perf_counter()
    with single_threaded():
        labels = segment_knee(ensembles, image, spacing_mm, settings)
    return labels, time.perf_counter() - start


def segment_knees(ensembles: dict, images: Sequence[np.ndarray], spacing_mm: Sequence[float],
                  settings: SegmentationSettings, n_jobs: int | None = None, scheduler=None,
                  progress: bool = False) -> tuple[list[dict], float]:
    """:func:`segment_knee` of every volume, one volume per task (issue 15, part 3).

    Each volume runs on one thread wherever it runs (this process, joblib processes, or the
    workers of a dask.distributed cluster: ``scheduler`` or ``$KNEELIB_DASK_SCHEDULER``), so the
    labels do not depend on the number of workers. Returns the label dicts in the order of
    ``images`` and the mean seconds one worker spent per volume.
    """
    import functools

    from kneelib.executor import map_tasks

    outcomes = map_tasks(functools.partial(_segment_task, ensembles=ensembles, spacing_mm=tuple(spacing_mm),
                                           settings=settings), list(images), n_jobs=n_jobs, scheduler=scheduler,
                         progress=progress, desc="segmentation", unit="volume")
    seconds = float(np.mean([s for _, s in outcomes])) if outcomes else 0.0
    return [labels for labels, _ in outcomes], seconds


def evaluate_segmentation(ensembles: dict, test: DessVolumes, train: DessVolumes,
                          settings: SegmentationSettings, n_boot: int = 1000, seed: int = 0,
                          n_jobs: int | None = None, scheduler=None):
    """Per-volume DSC/MPTS on the DESS grid against the truth, Table S1 rows, and the 3-SD QC rule.

    The test volumes are segmented by :func:`segment_knees` (``n_jobs`` local processes, or
    the dask cluster of ``scheduler``).

    Returns
    -------
    per_volume : DataFrame
        ``subject_id``, ``visit_month``, ``task``, ``structure``, ``dsc``, ``mpts_mm``, volumes.
    table : DataFrame
        :func:`kneelib.stats.segmentation.structure_table` over every test volume (CIs resample
        subjects), as Table S1 scores the whole test set.
    qc : DataFrame
        :func:`kneelib.stats.segmentation.volume_qc` per task and volume (excluded, reason): the
        paper's inclusion rule, which keeps a knee out of the biomarker extraction, not out of
        Table S1.
    predictions : list of dict
        :func:`segment_knee` output per test volume.
    seconds_per_volume : float
        Inference time of both ensembles per volume (one worker, one thread).
    """
    from kneelib.models.segmentation import network_classes, network_targets
    from kneelib.stats.segmentation import (segmentation_metrics, segmented_volumes_ml, structure_table,
                                            volume_qc)

    rows, qc_parts = [], []
    predictions, seconds = segment_knees(ensembles, test.images, test.spacing_mm, settings, n_jobs=n_jobs,
                                         scheduler=scheduler)
    for task in TASKS:
        names = network_classes(task)
        reference = pd.DataFrame([segmented_volumes_ml(network_targets(t, task), train.spacing_mm, names)
                                  for t in train.tissue_labels])
        segmented = pd.DataFrame([segmented_volumes_ml(p[task], test.spacing_mm, names) for p in predictions])
        qc = volume_qc(segmented, reference)
        qc.insert(0, "task", task)
        qc.insert(0, "subject_id", test.knees["participant_id"].to_numpy())
        qc_parts.append(qc)
        for k, (prediction, truth) in enumerate(zip(predictions, test.tissue_labels)):
            metrics = segmentation_metrics(prediction[task], network_targets(truth, task), test.spacing_mm, names)
            metrics.insert(0, "task", task)
            metrics.insert(0, "excluded", bool(qc["excluded"].iloc[k]))
            metrics.insert(0, "visit_month", int(test.knees["visit_month"].iloc[k]))
            metrics.insert(0, "subject_id", str(test.knees["participant_id"].iloc[k]))
            rows.append(metrics)
    per_volume = pd.concat(rows, ignore_index=True)
    table = structure_table(per_volume, n_boot=n_boot, seed=seed)
    return per_volume, table, pd.concat(qc_parts, ignore_index=True), predictions, seconds


def qc_sentence(qc: pd.DataFrame, limit_sd: float = 3.0) -> str:
    """One sentence on the 3-SD volume rule's outcome: how many segmented test knees pass, and for
    the others which structures lie beyond the limit and on which side (for the page's prose)."""
    per_knee = qc.groupby("subject_id").excluded.any()
    n, n_passed = int(per_knee.size), int((~per_knee).sum())
    sentence = f"{n_passed} of {n} segmented test knees pass the {limit_sd:g}-SD volume rule"
    parts = []
    for column in sorted(c for c in qc.columns if c.startswith("z_")):
        z = qc[column].dropna()
        beyond = z[z.abs() > limit_sd]
        if beyond.empty:
            continue
        above = int((beyond > 0).sum())
        side = "all above" if above == len(beyond) else "all below" if above == 0 else f"{above} above"
        parts.append(f"{column[2:].replace('_', ' ')} in {len(beyond)} ({side})")
    if parts:
        sentence += "; volumes beyond it: " + ", ".join(parts)
    sentence += "."
    if n and n_passed == 0:
        sentence += " No segmentation goes on to the biomarkers: the tables below rest on the ground-truth labels."
    return sentence


def table_s1(table: pd.DataFrame) -> pd.DataFrame:
    """Our DSC (%) and MPTS (mm) with 95% CIs beside supplement 003's Table S1."""
    paper = published()["table_s1"]
    if "structure" in table.columns:
        table = table.set_index("structure")
    rows = []
    for name, values in paper["structures"].items():
        ours = table.loc[name] if name in table.index else None
        row = {"structure": name, "paper DSC %": values["dsc_percent"], "paper MPTS mm": values["mpts_mm"]}
        if ours is not None:
            row.update({"DSC %": 100 * ours["dsc"],
                        "DSC 95% CI": f"[{100 * ours['dsc_low']:.1f}, {100 * ours['dsc_high']:.1f}]",
                        "MPTS mm": ours["mpts_mm"], "MPTS 95% CI": f"[{ours['mpts_low']:.2f}, {ours['mpts_high']:.2f}]",
                        "test volumes": int(ours["n_volumes"]), "subjects": int(ours["n_subjects"])})
        rows.append(row)
    return pd.DataFrame(rows).set_index("structure")


def _extract_or_reason(knee: dict, cache_dir: str):
    from kneelib.data.errors import KneelibDataError
    from kneelib.qmri.biomarkers import cached_knee_biomarkers

    try:
        return cached_knee_biomarkers(cache_dir=cache_dir, **knee)
    except KneelibDataError as error:  # QmriInputError: a bone missing from a failed segmentation, ...
        return str(error).split("\n")[0]


def knee_biomarkers(knees: Sequence[dict], n_jobs: int = 1, cache_dir: str | Path | None = None,
                    scheduler=None) -> tuple[list, list]:
    """:func:`kneelib.qmri.biomarkers.cached_knee_biomarkers` per knee, in parallel
    (:func:`kneelib.executor.map_tasks`: joblib, or the dask cluster of ``scheduler`` /
    ``$KNEELIB_DASK_SCHEDULER``).

    Returns ``(results, failures)``: a knee whose extraction raises a data error (e.g. a bone the
    segmentation missed) is left out and its reason listed.
    """
    import functools

    from kneelib.config import cache_root
    from kneelib.executor import map_tasks

    cache_dir = str(cache_dir if cache_dir is not None else cache_root() / "qmri_biomarkers")
    outputs = map_tasks(functools.partial(_extract_or_reason, cache_dir=cache_dir), [dict(k) for k in knees],
                        n_jobs=n_jobs, scheduler=scheduler, progress=False, desc="qMRI biomarkers", unit="knee")
    return [o for o in outputs if not isinstance(o, str)], [o for o in outputs if isinstance(o, str)]


def biomarker_summary(results: Sequence, names: Sequence[str]) -> pd.DataFrame:
    """Per knee and bone: mean/median cartilage thickness per slice, T2 layers, surface vertices."""
    rows = []
    for name, knee in zip(names, results):
        for bone, values in knee.bones.items():
            row = {"knee": name, "bone": bone, **{k: v for k, v in values.summary.items() if k != "n_cartilage_voxels"},
                   "vertices": len(values.vertices), "articular vertices": int(np.sum(values.articular))}
            rows.append(row)
    return pd.DataFrame(rows).set_index(["knee", "bone"]) if rows else pd.DataFrame()


def biomarker_inputs(root: str | Path, test: DessVolumes, rows: Sequence[int], predictions: Sequence[dict] | None = None,
                     align: bool = True) -> list[dict]:
    """Keyword arguments of :func:`kneelib.qmri.biomarkers.extract_knee_biomarkers` for test knees ``rows``.

    Labels on the DESS grid in :class:`kneelib.data.dicom.Volume` axis order with the DESS affine:
    the ground-truth tissue labels (``predictions`` None, ``codes="tissue"``) or the segmentation
    (the pair of bone and cartilage classes, ``codes="network"``); the MSME echoes aligned onto
    the DESS through the patient coordinates (:func:`kneelib.qmri.alignment.align_msme_to_dess`).
    """
    from kneelib.data import read_dicom_series, read_image_index
    from kneelib.qmri.alignment import align_msme_to_dess

    index = read_image_index(root)
    knees = []
    for k in rows:
        knee = test.knees.iloc[k]
        dess = read_dicom_series(index.find_series(knee["participant_id"], int(knee["visit_month"]), DESS_SERIES))
        as_volume = lambda a: np.ascontiguousarray(np.transpose(a, (2, 1, 0)))
        if predictions is None:
            inputs = {"labels": as_volume(test.tissue_labels[k]), "codes": "tissue"}
        else:
            inputs = {"labels": tuple(as_volume(predictions[k][task]) for task in TASKS), "codes": "network"}
        inputs.update(spacing_mm=tuple(dess.spacing_mm), affine=dess.affine)
        if align:
            msme = read_dicom_series(index.find_series(knee["participant_id"], int(knee["visit_month"]), MSME_SERIES))
            aligned = align_msme_to_dess(msme, dess)
            inputs.update(echoes=aligned.echoes, echo_times_ms=aligned.echo_times_ms, echo_valid=aligned.covered)
        knees.append(inputs)
    return knees


def validation_tables(root: str | Path, knees: pd.DataFrame, inputs: Sequence[dict]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Thickness and T2 errors against the synthetic truth (:mod:`kneelib.qmri.validation`), per knee.

    ``inputs`` from :func:`biomarker_inputs` (same order as ``knees``). The T2 map is the
    three-parameter fit of the aligned echoes in the cartilage the labels give.
    """
    from kneelib.qmri.biomarkers import structure_masks
    from kneelib.qmri.relaxometry import fit_t2_monoexponential
    from kneelib.qmri.validation import (elevation_from_truth, known_thickness_from_truth, t2_errors,
                                         thickness_errors)

    truth = pd.read_csv(Path(root) / "ground_truth" / "knees.csv", dtype={"participant_id": str})
    truth = truth[truth["side"] == "R"].set_index(["participant_id", "visit_month"])
    thickness, t2 = [], []
    for (_, knee), args in zip(knees.iterrows(), inputs):
        row = truth.loc[(str(knee["participant_id"]), int(knee["visit_month"]))].to_dict()
        name = f"{knee['participant_id']}/{int(knee['visit_month'])}"
        common = dict(codes=args["codes"], affine=args["affine"], knee=name)
        thickness.append(thickness_errors(args["labels"], args["spacing_mm"], known_thickness_from_truth(row),
                                          **common))
        if "echoes" in args:
            masks = structure_masks(args["labels"], args["codes"])
            cartilage = (masks["femoral_cartilage"] | masks["tibial_cartilage"] | masks["patellar_cartilage"])
            fit = fit_t2_monoexponential(args["echoes"], args["echo_times_ms"], mask=cartilage & args["echo_valid"],
                                         t2_range_ms=(1.0, 200.0))
            t2_map = np.where(fit.converged, fit.t2_ms, np.nan)
            t2.append(t2_errors(t2_map, args["labels"], args["spacing_mm"], elevation_from_truth(row),
                                codes=args["codes"], valid=args["echo_valid"], knee=name))
    return (pd.concat(thickness, ignore_index=True) if thickness else pd.DataFrame(),
            pd.concat(t2, ignore_index=True) if t2 else pd.DataFrame())


def spherical_vs_surface(results: Sequence, names: Sequence[str], n_boot: int = 1000, seed: int = 0):
    """Supplement 003, Fig. S3: spherical-map averages against the original surface averages.

    Per knee and bone, the mean of the 224 x 224 map of thickness and total T2 against the mean
    over the articular vertices; :func:`kneelib.stats.bland_altman.bland_altman` (k = 2, the
    supplement's lines) per bone and biomarker, its bias CI resampling knees' subjects.
    Returns ``(pairs, summary)``.
    """
    from kneelib.stats.bland_altman import bland_altman

    pairs = []
    for name, knee in zip(names, results):
        for bone, values in knee.bones.items():
            for biomarker in ("thickness", "t2_total"):
                surface = np.asarray(values.vertex_values.get(biomarker, []), float)
                image = values.maps.get(biomarker)
                if image is None or not np.isfinite(surface).any() or not np.isfinite(image).any():
                    continue
                pairs.append({"knee": name, "subject_id": name.split("/")[0], "bone": bone, "biomarker": biomarker,
                              "surface_mean": float(np.nanmean(surface)), "spherical_mean": float(np.nanmean(image))})
    pairs = pd.DataFrame(pairs, columns=["knee", "subject_id", "bone", "biomarker", "surface_mean", "spherical_mean"])
    rows = []
    for (bone, biomarker), part in pairs.groupby(["bone", "biomarker"], sort=False):
        if len(part) < 2:
            continue
        result = bland_altman(part["spherical_mean"], part["surface_mean"], groups=part["subject_id"], k=2.0,
                              n_boot=n_boot, seed=seed)
        rows.append({"bone": bone, "biomarker": biomarker, "knees": result.n, "bias": result.mean_difference,
                     "bias_low": result.bias_ci.ci_low, "bias_high": result.bias_ci.ci_high,
                     "lower_limit": result.lower_limit, "upper_limit": result.upper_limit})
    return pairs, pd.DataFrame(rows)


def strategy_images(results: Sequence, bone: str = "femur") -> dict:
    """The six Fig. 4 input images of the first knee, group-normalised over all ``results`` (:mod:`kneelib.qmri.inputs`)."""
    from kneelib.qmri.inputs import group_ranges
    from kneelib.qmri.inputs import strategy_images as _strategy_images

    ranges = group_ranges([knee.bones[bone].maps for knee in results])
    return _strategy_images(results[0].bones[bone].maps, ranges)


def segment_real_dess(ensembles: dict, image: np.ndarray, spacing_mm: Sequence[float],
                      training_spacing_mm: Sequence[float], settings: SegmentationSettings):
    """A real DESS resampled to the training grid and both ensembles' labels on it: ``(image, labels)``."""
    from kneelib.train.segmentation import resample_to_spacing

    resampled, _ = resample_to_spacing(image, spacing_mm, tuple(training_spacing_mm))
    return resampled, segment_knee(ensembles, resampled, training_spacing_mm, settings)


def real_label_fractions(labels: dict, spacing_mm: Sequence[float]) -> pd.DataFrame:
    """Volume (mL) of every class either network gave a real scan (a first check of the transfer)."""
    from kneelib.models.segmentation import network_classes
    from kneelib.stats.segmentation import segmented_volumes_ml

    rows = {}
    for task, volume in labels.items():
        for name, ml in segmented_volumes_ml(volume, spacing_mm, network_classes(task)).items():
            rows[name] = {"network": task, "volume mL": ml}
    return pd.DataFrame(rows).T.astype({"volume mL": float})


def pymskt_biomarkers(path: str | Path, stride: int = 1, cache_dir: str | Path | None = None):
    """Biomarkers of the real pymskt segmentation (OAI DESS geometry), without T2 (no MSME there).

    ``stride`` > 1 keeps every ``stride``-th voxel per axis (a coarser, faster grid for ``smoke``).
    """
    import SimpleITK as sitk

    from kneelib.config import cache_root
    from kneelib.qmri.biomarkers import cached_knee_biomarkers

    image = sitk.ReadImage(str(path))
    labels = np.transpose(sitk.GetArrayFromImage(image), (2, 1, 0))[::stride, ::stride, ::stride]
    spacing = np.asarray(image.GetSpacing(), float) * stride
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    affine = np.eye(4)
    affine[:3, :3] = lps_to_ras @ np.asarray(image.GetDirection()).reshape(3, 3) @ np.diag(spacing)
    affine[:3, 3] = lps_to_ras @ np.asarray(image.GetOrigin())
    cache_dir = cache_dir if cache_dir is not None else cache_root() / "qmri_biomarkers"
    return cached_knee_biomarkers(np.ascontiguousarray(labels), tuple(spacing), codes="pymskt", affine=affine,
                                  cache_dir=cache_dir)


def mese_regions(shape: Sequence[int]) -> dict:
    """Rectangular regions on the central slice of the real pymskt MSME (fractions of the matrix).

    Drawn on the figure so a reader can judge them: posterior calf muscle, femoral and tibial marrow.
    """
    boxes = {"calf muscle": (0.66, 0.78, 0.76, 0.87), "femoral marrow": (0.17, 0.30, 0.42, 0.54),
             "tibial marrow": (0.72, 0.85, 0.38, 0.50)}
    rows, cols = shape[-2:]
    out = {}
    for name, (r0, r1, c0, c1) in boxes.items():
        mask = np.zeros((rows, cols), bool)
        mask[int(r0 * rows):int(r1 * rows), int(c0 * cols):int(c1 * cols)] = True
        out[name] = mask
    return out


#: Slices of the real pyKNEEr T1rho slab on which the femoral cartilage region is drawn.
T1RHO_DRAWN_SLICES = (8, 9, 10)


def t1rho_cartilage_region(shape: Sequence[int], slices: Sequence[int] = T1RHO_DRAWN_SLICES,
                           radius_px: float = 3.0) -> np.ndarray:
    """A femoral-cartilage region drawn by hand on the real pyKNEEr T1rho slab (boolean volume).

    The pyKNEEr exam has no labels, and the cartilage network trained on synthetic DESS does not
    transfer to it (see the chapter). The region is the band within ``radius_px`` pixels of a
    line along the middle of the bright posterior femoral cartilage crescent of slices 8-10
    (read off the first spin-lock image, 512 x 512 matrix, 0.3125 mm pixels); the line's points
    are fractions of the matrix. It is drawn on the figure so a reader can judge it, like the
    small femoral cartilage regions of the data's SOURCE.md check fit.
    """
    line_rc = np.array([(250, 165), (270, 172), (290, 186), (300, 196)], float) / 512.0
    n_slices, rows, cols = shape[-3:]
    points = line_rc * np.array([rows, cols])
    rr, cc = np.mgrid[:rows, :cols].astype(float)
    distance = np.full((rows, cols), np.inf)
    for a, b in zip(points[:-1], points[1:]):
        ab = b - a
        t = np.clip(((rr - a[0]) * ab[0] + (cc - a[1]) * ab[1]) / float(ab @ ab), 0.0, 1.0)
        distance = np.minimum(distance, np.hypot(rr - a[0] - t * ab[0], cc - a[1] - t * ab[1]))
    region = np.zeros((n_slices, rows, cols), bool)
    region[[s for s in slices if 0 <= s < n_slices]] = distance <= radius_px
    return region


def femoral_cartilage_on_slab(cartilage_labels: np.ndarray, dess_shape: Sequence[int], slab_folder, dess_folder) -> np.ndarray:
    """The femoral-cartilage class on a real slab series (pyKNEEr T1rho) through the DICOM coordinates.

    ``cartilage_labels`` lie on a resampled DESS grid; they are resized to the DESS grid
    ``dess_shape`` ``(slices, rows, columns)`` and carried onto the slab's grid
    (:func:`kneelib.qmri.alignment.resample_to_grid`, nearest neighbour). Returns a boolean mask
    ``(slices, rows, columns)`` of the slab.
    """
    from kneelib.data import read_dicom_series
    from kneelib.qmri.alignment import resample_to_grid
    from kneelib.train.segmentation import resize_to_shape

    femoral = resize_to_shape((cartilage_labels == 1).astype(np.uint8), tuple(dess_shape), order=0)
    dess, slab = read_dicom_series(dess_folder), read_dicom_series(slab_folder)
    on_slab = resample_to_grid(dess, slab, interpolation="nearest", array=np.transpose(femoral, (2, 1, 0)))
    return np.transpose(np.asarray(on_slab) > 0, (2, 1, 0))


def real_relaxation_map(signal: np.ndarray, times_ms: Sequence[float], mask: np.ndarray | None = None,
                        t_range_ms: tuple[float, float] = (1.0, 300.0), shown_slices: Sequence[int] | None = None,
                        regions: np.ndarray | None = None) -> np.ndarray:
    """Relaxation-time map (ms) of a real multi-echo (T2) or spin-lock (T1rho) series.

    The three-parameter mono-exponential of paper 001 (:func:`kneelib.qmri.relaxometry.fit_t2_monoexponential`)
    on every voxel of ``mask`` (default: voxels whose first echo exceeds 10% of its 99th percentile);
    NaN elsewhere and where the fit did not converge. ``shown_slices`` (indices along axis 0) and
    ``regions`` (a boolean volume) restrict the fit to the slices a figure shows plus the voxels a
    table reads, instead of the whole series.
    """
    from kneelib.qmri.relaxometry import fit_t2_monoexponential

    signal = np.asarray(signal, dtype=np.float32)
    if mask is None:
        first = signal[..., 0]
        mask = first > 0.1 * np.percentile(first, 99)
    if shown_slices is not None or regions is not None:
        keep = np.zeros(mask.shape, bool)
        if shown_slices is not None:
            keep[list(shown_slices)] = True
        if regions is not None:
            keep |= np.asarray(regions, bool)
        mask = mask & keep
    fit = fit_t2_monoexponential(signal, times_ms, mask=mask, t2_range_ms=t_range_ms)
    return np.where(mask & fit.converged, fit.t2_ms, np.nan).astype(np.float32)


def roi_statistics(values: np.ndarray, rois: dict) -> pd.DataFrame:
    """Median and IQR of a map inside named boolean masks (regions drawn on the figure)."""
    rows = []
    for name, mask in rois.items():
        inside = values[mask & np.isfinite(values)]
        q = np.percentile(inside, [25, 50, 75]) if inside.size else [np.nan] * 3
        rows.append({"region": name, "voxels": int(inside.size), "median ms": q[1], "q25 ms": q[0], "q75 ms": q[2]})
    return pd.DataFrame(rows).set_index("region")


def real_t1rho(pykneer_root, cartilage_labels: np.ndarray, dess_shape: Sequence[int]) -> dict:
    """T1rho of femoral cartilage on the real pyKNEEr slab: the drawn region and the network's mask.

    Reads the four spin-lock series (``cubequant_T1rho/TSL*``), carries the network's femoral
    cartilage from the real DESS onto the slab (:func:`femoral_cartilage_on_slab`), fits the
    three-parameter model per voxel on the shown slice and both regions
    (:func:`real_relaxation_map`), and tabulates per-voxel medians beside the fits of each
    region's mean signal (:func:`region_mean_fits`).

    Returns
    -------
    dict
        ``signal`` (slices, rows, columns, times), ``spacing_mm``, ``spin_lock_ms``, ``rois``
        (name -> boolean volume), ``map_ms``, ``table`` and ``slab`` (the shown slice: the
        middle of the drawn region).
    """
    folders = sorted((Path(pykneer_root) / "cubequant_T1rho").glob("TSL*"))
    signal, spacing_mm, spin_lock_ms = read_volume_slices(folders)
    rois = {"femoral cartilage (drawn)": t1rho_cartilage_region(signal.shape[:3]),
            "femoral cartilage (model)": femoral_cartilage_on_slab(cartilage_labels, dess_shape, folders[0],
                                                                   Path(pykneer_root) / "DESS_echo1")}
    slab = T1RHO_DRAWN_SLICES[len(T1RHO_DRAWN_SLICES) // 2]
    map_ms = real_relaxation_map(signal, spin_lock_ms, t_range_ms=(1.0, 400.0), shown_slices=[slab],
                                 regions=rois["femoral cartilage (drawn)"] | rois["femoral cartilage (model)"])
    table = roi_statistics(map_ms, rois).join(region_mean_fits(signal, spin_lock_ms, rois).drop(columns="voxels"))
    return {"signal": signal, "spacing_mm": spacing_mm, "spin_lock_ms": spin_lock_ms, "rois": rois,
            "map_ms": map_ms, "table": table, "slab": slab}


def region_mean_fits(signal: np.ndarray, times_ms: Sequence[float], rois: dict,
                     t_range_ms: tuple[float, float] = (1.0, 400.0)) -> pd.DataFrame:
    """Relaxation time (ms) of each region's mean signal: the three-parameter fit and the two-parameter one.

    A region's voxels are averaged per echo (spin-lock time) first, then fitted once: the
    three-parameter ``S0 exp(-t/T) + C`` of paper 001 (:func:`kneelib.qmri.relaxometry.fit_t2_monoexponential`)
    and the two-parameter ``S0 exp(-t/T)`` (:func:`kneelib.qmri.relaxometry.log_linear_t2`). With
    four times, as the pyKNEEr T1rho series has, the offset ``C`` of the first is poorly determined.
    A fit that does not converge to a time inside ``t_range_ms`` is NaN (blank), not its runaway value.
    """
    from kneelib.qmri.relaxometry import fit_t2_monoexponential, log_linear_t2

    signal = np.asarray(signal)
    rows = []
    for name, mask in rois.items():
        mean = signal[np.asarray(mask, bool)].astype(np.float64).mean(axis=0)
        three = fit_t2_monoexponential(mean[None, None, None, :].astype(np.float32), times_ms, t2_range_ms=t_range_ms)
        _, two = log_linear_t2(mean[None, :], times_ms)
        three_ms = float(np.ravel(three.t2_ms)[0]) if bool(np.ravel(three.converged)[0]) else np.nan
        two_ms = float(np.ravel(two)[0])
        rows.append({"region": name, "voxels": int(np.count_nonzero(mask)),
                     "3-parameter fit of the mean signal, ms": three_ms,
                     "2-parameter fit of the mean signal, ms":
                         two_ms if t_range_ms[0] <= two_ms <= t_range_ms[1] else np.nan})
    return pd.DataFrame(rows).set_index("region")


def comparisons(s1: pd.DataFrame, splits_p: dict, real: dict, data_label: str, n_test: int) -> list:
    """The :class:`kneelib.report.Comparison` rows of the chapter (published values from :func:`published`)."""
    from kneelib.report import Comparison

    paper = published()
    rows = []
    for name, row in s1.iterrows():
        dsc = row.get("DSC %")
        low, high = (float(x) for x in row["DSC 95% CI"].strip("[]").split(",")) if "DSC 95% CI" in row and \
            isinstance(row["DSC 95% CI"], str) else (None, None)
        rows.append(Comparison(STUDY, f"DSC (%), {name}", float(row["paper DSC %"]),
                               None if dsc is None or pd.isna(dsc) else float(dsc), low, high,
                               "Supplement 003, Table S1", f"{data_label}, test n={n_test}",
                               "bootstrap 95% CI over subjects; synthetic DESS at a reduced grid"))
        mpts = row.get("MPTS mm")
        low, high = (float(x) for x in row["MPTS 95% CI"].strip("[]").split(",")) if isinstance(
            row.get("MPTS 95% CI"), str) else (None, None)
        rows.append(Comparison(STUDY, f"MPTS (mm), {name}", float(row["paper MPTS mm"]),
                               None if mpts is None or pd.isna(mpts) else float(mpts), low, high,
                               "Supplement 003, Table S1", f"{data_label}, test n={n_test}",
                               "bootstrap 95% CI over subjects"))
    table4 = paper["table4"]["bone"]
    rows.append(Comparison(STUDY, "Table 4 split independence, sex (chi-square p)", table4["chi_square_sex_p"],
                           splits_p.get("chi_square_sex_p"), source="Table 4 (bone segmentation row)",
                           data=data_label, note="our subject-level splits"))
    rows.append(Comparison(STUDY, "Table 4 split independence, age and BMI (MANOVA p)", table4["manova_age_bmi_p"],
                           splits_p.get("manova_age_bmi_p"), source="Table 4 (bone segmentation row)",
                           data=data_label, note="our subject-level splits"))
    reference = paper["real_data_reference"]
    for key, quantity in (("femoral_thickness_mm", "Femoral cartilage thickness (mm), real OAI-geometry knee"),
                          ("t1rho_femoral_ms", "T1rho of femoral cartilage (ms), real pyKNEEr series")):
        value = real.get(key)
        rows.append(Comparison(STUDY, quantity, reference[key]["value"],
                               None if value is None or not np.isfinite(value) else float(value),
                               source=reference[key]["source"], data="real public data",
                               note=reference[key].get("note", "")))
    return rows
