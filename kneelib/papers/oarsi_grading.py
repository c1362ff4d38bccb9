"""Paper 004 -- Tiulpin & Saarakkala (2020), automatic KL and OARSI grading of knee radiographs.

Notebook-facing layer of ``notebooks/oarsi_grading.ipynb`` (synthetic radiographs,
all 7 heads) and ``notebooks/kl_real_radiographs.ipynb`` (real OAI knee crops of
Chen et al. 2019, KL head only). Each function is one step of the paper, composed
from the stage modules:

- data: :mod:`kneelib.data.chen_kl` (real crops), subject-wise splits;
- preprocessing (*Data Pre-processing*): :mod:`kneelib.preprocess.radiograph`;
- model (*Network Architecture*): :mod:`kneelib.models.multitask`;
- training (*Training strategy*): :mod:`kneelib.train.multitask`;
- statistics (*Test-set Performance*, Table 3): :mod:`kneelib.stats.agreement`;
- attention maps: :mod:`kneelib.explain.gradcam`.

It also provides :func:`grade_kl_folder`, behind ``python -m kneelib grade-kl``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = [
    "REAL_STUDY",
    "PUBLISHED_KL",
    "KLCohort",
    "load_chen_kl_cohort",
    "cohort_summary",
    "prepare_images",
    "set_determinism",
    "train_kl_model",
    "evaluate_kl",
    "kl_comparisons",
    "model_path_for",
    "save_kl_model",
    "grade_kl_folder",
    "plot_history",
    "plot_confusion",
    "plot_metric_bars",
    "grad_cam_examples",
    # synthetic chapter
    "SYNTH_STUDY", "TASK_LABELS", "PUBLISHED_TABLE2", "PUBLISHED_TABLE3", "PUBLISHED_FIRST_VISIT_KAPPA",
    "load_synthetic_knees", "read_radiographs", "fit_localiser", "localisation_error_table",
    "osteophyte_region_masks", "PreparedKnees", "prepare_knees", "subject_folds", "BackboneRun",
    "cross_validate_backbone", "table2", "wide_table", "best_runs", "ensemble_probabilities", "table3",
    "plot_confusions", "binary_curves", "pointing_game_table", "plot_pointing_examples", "plot_localisation",
    "synthetic_comparisons",
]

#: Name of the real-data notebook (metrics file, model folder).
REAL_STUDY = "kl_real_radiographs"

#: KL-grade numbers published in paper 004 that the real-data chapter can be set beside.
#: quantity -> (value as a fraction, where it stands, what it was measured on)
PUBLISHED_KL: dict[str, tuple[float, str, str]] = {
    "quadratic_kappa": (0.82, "Table 3 / Results", "MOST test set, 11,743 knees, ensemble SE-ResNet-50 + SE-ResNeXt50"),
    "balanced_accuracy": (0.6668, "Table 3 / Results", "MOST test set, ensemble (66.68%)"),
    "f1_weighted": (0.65, "Table 3", "MOST test set, ensemble"),
    "mse": (0.68, "Table 3", "MOST test set, ensemble"),
    "quadratic_kappa_cv": (0.81, "Table 2", "OAI 5-fold out-of-fold, SE-ResNet-50 (transfer)"),
    "balanced_accuracy_cv": (0.6777, "Suppl. Table 1", "OAI 5-fold out-of-fold, SE-ResNet-50 (67.77%)"),
    "quadratic_kappa_scratch_cv": (0.78, "Table 2", "OAI 5-fold out-of-fold, SE-ResNet-50 from scratch"),
}


@dataclass
class KLCohort:
    """Tables of the real KL chapter: training, internal validation (model selection), reported val."""

    train: pd.DataFrame
    internal_val: pd.DataFrame
    val: pd.DataFrame
    qc: pd.DataFrame


def load_chen_kl_cohort(internal_fraction: float = 0.15, n_subjects: int | None = None,
                        seed: int = 0, root=None) -> KLCohort:
    """Chen KL crops split into train / internal validation (by subject) / untouched val.

    Parameters
    ----------
    internal_fraction : float
        Share of training subjects held out for epoch selection.
    n_subjects : int, optional
        Keep about this many training subjects (grade-stratified) before carving the
        internal split; ``None`` keeps all. The reported ``val`` split is never cut.
    seed : int
    root : path, optional
        The ``chen_kl_radiographs`` folder (default under ``$KNEELIB_DATA``).
    """
    from kneelib.data.chen_kl import carve_internal_validation, read_chen_kl, stratified_subject_subset

    table = read_chen_kl(root)
    train_all = table[table["split"] == "train"]
    val = table[table["split"] == "val"].reset_index(drop=True)
    if train_all.empty or val.empty:
        raise ValueError(f"Chen KL table needs 'train' and 'val' rows; splits found: "
                         f"{sorted(table['split'].unique())}")
    overlap = set(train_all["subject_id"]) & set(val["subject_id"])
    if overlap:
        raise ValueError(f"{len(overlap)} subject(s) in both train and val, e.g. {sorted(overlap)[:3]}")
    train_all = stratified_subject_subset(train_all, n_subjects, seed=seed)
    train, internal_val = carve_internal_validation(train_all, internal_fraction, seed=seed)
    return KLCohort(train, internal_val, val, table.attrs.get("qc", pd.DataFrame()))


def cohort_summary(cohort: KLCohort) -> pd.DataFrame:
    """Knees per KL grade and subjects per part of the split (the chapter's data table)."""
    rows = {}
    for name, part in (("train", cohort.train), ("internal validation", cohort.internal_val),
                       ("val (reported)", cohort.val)):
        counts = part["kl_grade"].value_counts().reindex(range(5), fill_value=0)
        rows[name] = {**{f"KL {g}": int(c) for g, c in counts.items()},
                      "knees": len(part), "subjects": part["subject_id"].nunique()}
    return pd.DataFrame(rows).T


def set_determinism(seed: int, threads: int | None = None) -> None:
    """Seed Python, numpy and torch (fastai ``set_seed(..., reproducible=True)``); fix CPU threads."""
    import torch
    from fastai.torch_core import set_seed

    if threads:
        torch.set_num_threads(int(threads))
    torch.set_flush_denormal(True)  # denormal floats slow some CPU kernels by orders of magnitude
    set_seed(seed, reproducible=True)


def prepare_images(table: pd.DataFrame, image_size: int, mirror_side: str | None = None,
                   progress: bool = True) -> np.ndarray:
    """Histogram-clipped knee images resized for a random ``image_size`` crop (uint8 stack).

    Paper 004 resizes to 310 px and crops 300 px; the same 310/300 ratio is kept.
    """
    from kneelib.preprocess.radiograph import prepare_image_stack
    from kneelib.train.multitask import resize_for_crop

    return prepare_image_stack(table["path"], resize_for_crop(image_size), sides=table["side"],
                               mirror_side=mirror_side, progress=progress)


def train_kl_model(train_images: np.ndarray, train_grades, internal_images: np.ndarray, internal_grades,
                   image_size: int, max_epochs: int, backbone: str = "efficientnet_lite0",
                   imagenet: bool = True, schedule: str = "transfer", batch_size: int = 32,
                   noise_std: float = 0.03, gamma_range=(0.7, 1.5)):
    """Train the KL head of the multi-task network with paper 004's schedule.

    Parameters
    ----------
    schedule : {"transfer", "scratch"}
        ``transfer``: heads only at 1e-2 for 2 epochs, all layers at 1e-3 for one,
        then 1e-4; ``scratch``: 1e-4 divided by 10 at 50% and 75% of the epochs.

    Returns
    -------
    model : MultiTaskNet
        With the weights of the epoch of best internal-validation kappa.
    history : DataFrame
        One row per epoch (phase, LR, losses, kappa, balanced accuracy).
    best_epoch : int
    """
    from kneelib.models.multitask import KL_ONLY, build_multitask_model
    from kneelib.train.multitask import (AugmentationSettings, RadiographDataset, build_learner,
                                         fit_phases, make_dataloaders, scratch_phases, transfer_phases)

    if schedule not in ("transfer", "scratch"):
        raise ValueError(f"schedule must be 'transfer' or 'scratch', got {schedule!r}")
    model = build_multitask_model(backbone, KL_ONLY, imagenet=imagenet)
    augmentation = AugmentationSettings(noise_std=noise_std, gamma_range=tuple(gamma_range))
    dls = make_dataloaders(
        RadiographDataset(train_images, np.asarray(train_grades), image_size, augment=True,
                          augmentation=augmentation),
        RadiographDataset(internal_images, np.asarray(internal_grades), image_size, augment=False),
        batch_size=batch_size)
    learn = build_learner(model, dls, monitor_task="kl")
    phases = transfer_phases(max_epochs) if schedule == "transfer" else scratch_phases(max_epochs)
    history = fit_phases(learn, phases, restore_best=True)
    model.eval()
    return model, history, learn.select_best.best_epoch


def evaluate_kl(y_true, kl_probabilities: np.ndarray, y_train, n_boot: int = 1000, seed: int = 0):
    """Agreement of predicted KL grades with the reference, beside majority-grade and chance.

    Returns
    -------
    dict
        ``predicted`` (grades), ``table`` (model, majority grade, chance x metrics with
        stratified bootstrap 95% CIs), ``confusion`` (counts), ``confusion_percent``,
        ``confusion_low``, ``confusion_high`` (per-cell 95% CI in row percent).
    """
    from kneelib.stats.agreement import (agreement_table, chance_predictions, confusion,
                                         confusion_with_ci, majority_grade_predictions)

    y_true = np.asarray(y_true).astype(int)
    predicted = np.asarray(kl_probabilities).argmax(axis=1)
    prior = np.bincount(np.asarray(y_train).astype(int), minlength=5)
    tables = [
        agreement_table(y_true, predicted, n_boot=n_boot, seed=seed, label="model"),
        agreement_table(y_true, majority_grade_predictions(y_train, len(y_true)), n_boot=n_boot,
                        seed=seed, label="majority grade"),
        agreement_table(y_true, chance_predictions(len(y_true), 5, seed=seed, prior=prior),
                        n_boot=n_boot, seed=seed, label="chance (training grade mix)"),
    ]
    percent, low, high = confusion_with_ci(y_true, predicted, 5, n_boot=n_boot, seed=seed)
    return {"predicted": predicted, "table": pd.concat(tables, ignore_index=True),
            "confusion": confusion(y_true, predicted, 5), "confusion_percent": percent,
            "confusion_low": low, "confusion_high": high}


def kl_comparisons(table: pd.DataFrame, data: str, model_description: str = "single model",
                   study: str = REAL_STUDY) -> list:
    """Paper-vs-reproduced rows for the KL head (:class:`kneelib.report.Comparison`).

    ``model_description`` says what was trained (e.g. ``"single efficientnet_lite0, ImageNet,
    128 px, 5 epochs"``); it goes into each row's note.
    """
    from kneelib.report import Comparison

    model_rows = table[table["model"] == "model"].set_index("metric")
    note_val = (f"val is class-balanced (paper: MOST natural mix); {model_description}, "
                "not the SE-ResNet/SE-ResNeXt ensemble")
    rows = []

    def add(quantity, published_key, metric, note):
        value, source, published_on = PUBLISHED_KL[published_key]
        est = model_rows.loc[metric]
        rows.append(Comparison(study=study, quantity=quantity, published=value,
                               reproduced=float(est["estimate"]), ci_low=float(est["ci_low"]),
                               ci_high=float(est["ci_high"]), source=source, data=data,
                               note=f"published on {published_on}; {note}"))

    add("KL quadratic kappa (test)", "quadratic_kappa", "quadratic_kappa", note_val)
    add("KL balanced accuracy (test)", "balanced_accuracy", "balanced_accuracy", note_val)
    add("KL F1, support-weighted (test)", "f1_weighted", "f1_weighted", note_val)
    add("KL mean squared error (test)", "mse", "mse", note_val)
    add("KL quadratic kappa (OAI cross-validation)", "quadratic_kappa_cv", "quadratic_kappa",
        "same population (OAI baseline) as the Chen crops; ours is a held-out split, not out-of-fold")
    add("KL balanced accuracy (OAI cross-validation)", "balanced_accuracy_cv", "balanced_accuracy",
        "same population (OAI baseline) as the Chen crops; ours is a held-out split, not out-of-fold")
    for metric, label in (("accuracy", "KL accuracy"), ("mae", "KL mean absolute error")):
        est = model_rows.loc[metric]
        rows.append(Comparison(study=study, quantity=label, published=None,
                               reproduced=float(est["estimate"]), ci_low=float(est["ci_low"]),
                               ci_high=float(est["ci_high"]), source="not reported", data=data,
                               note="asked for by the issue; the paper gives no value"))
    return rows


def model_path_for(backbone: str, image_size: int, max_epochs: int, seed: int,
                   n_subjects: int | None = None, study: str = REAL_STUDY) -> Path:
    """``<cache>/models/<study>/<backbone>_<size>px_<epochs>ep_<subjects>_seed<seed>.pt``."""
    from kneelib.config import cache_root

    subjects = "all" if n_subjects is None else f"{n_subjects}subj"
    return cache_root() / "models" / study / f"kl_{backbone}_{image_size}px_{max_epochs}ep_{subjects}_seed{seed}.pt"


def save_kl_model(model, path, image_size: int, mirror_side: str | None, extra: dict | None = None) -> Path:
    """Save the KL model with everything :func:`grade_kl_folder` needs to prepare images."""
    from kneelib.models.multitask import save_checkpoint
    from kneelib.train.multitask import resize_for_crop

    metadata = {"image_size": int(image_size), "resize_to": resize_for_crop(image_size),
                "mirror_side": mirror_side, "low_percentile": 5.0, "high_percentile": 99.0,
                "paper": "Tiulpin & Saarakkala 2020 (paper 004)", **(extra or {})}
    return save_checkpoint(model, path, metadata)


_SIDE_PATTERN = re.compile(r"(?:^|[^A-Za-z])([LR])$|\d([LR])$", re.IGNORECASE)


def _side_from_name(path: Path) -> str | None:
    match = _SIDE_PATTERN.search(path.stem)
    if not match:
        return None
    return (match.group(1) or match.group(2)).upper()


def _candidate_files(images_dir: Path) -> list[Path]:
    from kneelib.preprocess.radiograph import IMAGE_SUFFIXES

    files = []
    for path in sorted(images_dir.rglob("*")):
        if not path.is_file() or path.name.startswith("."):
            continue
        suffix = path.suffix.lower()
        if suffix in IMAGE_SUFFIXES or suffix in (".dcm", ".dicom", "") or suffix.isdigit():
            files.append(path)
    return files


def grade_kl_folder(model_path, images_dir, out_csv=None, batch_size: int = 32) -> pd.DataFrame:
    """Grade every knee image (PNG/JPEG/TIFF or DICOM) under a folder with a saved KL model.

    The images must be knee-joint crops like the training data (no localisation is
    run). Each is prepared exactly as in training (histogram clipping, resize, central
    crop, global contrast normalisation; mirroring when the model was trained with
    it and the file name ends in L/R). A file that cannot be read gives a row with
    its ``error`` and no grade, instead of stopping the run.

    Parameters
    ----------
    model_path : path
        A ``.pt`` file written by :func:`save_kl_model`.
    images_dir : path
        Folder searched recursively (``.png .jpg .jpeg .tif .tiff .bmp .dcm`` and
        extension-less files, tried as DICOM).
    out_csv : path, optional
        Where to write the table (parent folders are created).

    Returns
    -------
    DataFrame
        ``file`` (relative to ``images_dir``), ``kl_grade`` (nullable int),
        ``p_kl0`` ... ``p_kl4``, ``side``, ``error`` (empty when graded).

    Raises
    ------
    FileNotFoundError
        If the model file or the folder does not exist.
    ValueError
        If the model has no KL head.
    """
    import torch

    from kneelib.models.multitask import load_checkpoint
    from kneelib.preprocess.radiograph import RadiographReadError, prepare_knee_image, read_knee_image
    from kneelib.train.multitask import predict_probabilities

    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise FileNotFoundError(f"image folder not found: {images_dir}")
    model, metadata = load_checkpoint(model_path)
    if "kl" not in model.tasks:
        raise ValueError(f"{model_path} has no KL head (heads: {list(model.tasks)})")
    image_size = int(metadata.get("image_size", 224))
    resize_to = int(metadata.get("resize_to", image_size))
    mirror_side = metadata.get("mirror_side")
    n_grades = model.task_classes["kl"]

    rows, stack, stack_rows = [], [], []
    for path in _candidate_files(images_dir):
        side = _side_from_name(path)
        row = {"file": str(path.relative_to(images_dir)), "kl_grade": pd.NA,
               **{f"p_kl{g}": np.nan for g in range(n_grades)},
               "side": side or "unknown", "error": ""}
        try:
            image = prepare_knee_image(read_knee_image(path), resize_to,
                                       side=side if mirror_side else None, mirror_side=mirror_side,
                                       low_percentile=float(metadata.get("low_percentile", 5.0)),
                                       high_percentile=float(metadata.get("high_percentile", 99.0)))
        except (RadiographReadError, OSError, ValueError, MemoryError) as err:
            row["error"] = f"{type(err).__name__}: {err}"
        else:
            if image.shape[0] < image_size:
                row["error"] = f"prepared image {image.shape} smaller than the model input {image_size}"
            else:
                stack.append(np.round(image * 255).astype(np.uint8))
                stack_rows.append(len(rows))
        rows.append(row)
    if stack:
        with torch.no_grad():
            probabilities = predict_probabilities(model, np.stack(stack), image_size,
                                                  batch_size=batch_size)["kl"]
        for row_index, p in zip(stack_rows, probabilities):
            rows[row_index]["kl_grade"] = int(np.argmax(p))
            for g in range(n_grades):
                rows[row_index][f"p_kl{g}"] = float(p[g])
    table = pd.DataFrame(rows, columns=["file", "kl_grade", *[f"p_kl{g}" for g in range(n_grades)],
                                        "side", "error"])
    table["kl_grade"] = table["kl_grade"].astype("Int64")
    if out_csv is not None:
        out_csv = Path(out_csv)
        out_csv.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(out_csv, index=False)
    return table


# --- figures of the chapter -------------------------------------------------------------

def plot_history(history: pd.DataFrame, best_epoch: int | None = None):
    """Training curves: losses and internal-validation kappa/balanced accuracy per epoch."""
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax_loss.plot(history["epoch"], history["train_loss"], "o-", label="train loss")
    ax_loss.plot(history["epoch"], history["valid_loss"], "s-", label="internal-val loss")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("cross-entropy")
    ax_loss.legend()
    for column, label in (("kl_kappa", "quadratic kappa"), ("kl_bacc", "balanced accuracy")):
        ax_metric.plot(history["epoch"], history[column], "o-", label=label)
    if best_epoch is not None:
        ax_metric.axvline(best_epoch, color="grey", ls="--", label=f"selected epoch {best_epoch}")
    for epoch, phase, lr in zip(history["epoch"], history["phase"], history["lr"]):
        ax_metric.annotate(f"{lr:g}", (epoch, 0.02), ha="center", fontsize=7, color="grey")
    for ax in (ax_loss, ax_metric):
        ax.set_xticks(list(history["epoch"]))
    ax_metric.set_ylim(0, 1)
    ax_metric.set_xlabel("epoch (grey: learning rate)")
    ax_metric.set_title("internal validation (model selection)")
    ax_metric.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return fig


def plot_confusion(percent: np.ndarray, low: np.ndarray | None = None, high: np.ndarray | None = None,
                   counts: np.ndarray | None = None, title: str = "KL confusion matrix (row %)"):
    """Heat map of a row-percent confusion matrix, with counts and 95% CIs in the cells."""
    import matplotlib.pyplot as plt

    n = percent.shape[0]
    fig, ax = plt.subplots(figsize=(5.6, 4.8))
    image = ax.imshow(np.nan_to_num(percent), cmap="Blues", vmin=0, vmax=100)
    for i in range(n):
        for j in range(n):
            if np.isnan(percent[i, j]):
                continue
            text = f"{percent[i, j]:.0f}%"
            if counts is not None:
                text += f"\n(n={counts[i, j]})"
            if low is not None and high is not None:
                text += f"\n[{low[i, j]:.0f}-{high[i, j]:.0f}]"
            ax.text(j, i, text, ha="center", va="center", fontsize=7,
                    color="white" if percent[i, j] > 55 else "black")
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xlabel("predicted KL grade")
    ax.set_ylabel("reference KL grade")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.046, label="% of reference grade")
    fig.tight_layout()
    return fig


def plot_metric_bars(table: pd.DataFrame, metrics=("quadratic_kappa", "balanced_accuracy", "accuracy")):
    """Model vs majority grade vs chance, with 95% bootstrap CIs as error bars."""
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(table["model"]))
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 3.4))
    for ax, metric in zip(np.atleast_1d(axes), metrics):
        part = table[table["metric"] == metric].set_index("model").reindex(models)
        errors = np.vstack([part["estimate"] - part["ci_low"], part["ci_high"] - part["estimate"]])
        ax.bar(range(len(models)), part["estimate"], yerr=np.nan_to_num(errors), capsize=4,
               color=["tab:blue", "tab:grey", "tab:orange"][:len(models)])
        ax.set_xticks(range(len(models)))
        ax.set_xticklabels([m.replace(" (", "\n(") for m in models], fontsize=8)
        ax.set_title(metric.replace("_", " "))
        ax.axhline(0, color="black", lw=0.6)
    fig.tight_layout()
    return fig


def grad_cam_examples(model, images: np.ndarray, grades, image_size: int, per_grade: int = 1, seed: int = 0):
    """Grad-CAM of the KL head for ``per_grade`` validation knees of every grade (a figure).

    Titles give the reference and the predicted grade.
    """
    import torch

    from kneelib.explain.gradcam import grad_cam, plot_grad_cams
    from kneelib.train.multitask import RadiographDataset

    grades = np.asarray(grades).astype(int)
    rng = np.random.default_rng(seed)
    chosen = []
    for grade in range(5):
        candidates = np.flatnonzero(grades == grade)
        if len(candidates):
            chosen.extend(rng.choice(candidates, size=min(per_grade, len(candidates)), replace=False))
    dataset = RadiographDataset(images[chosen], grades[chosen], image_size, augment=False)
    batch = torch.stack([dataset.image_tensor(i) for i in range(len(dataset))])
    cams, predicted = grad_cam(model, batch, "kl")
    titles = [f"KL {grades[i]} -> predicted {p}" for i, p in zip(chosen, predicted)]
    return plot_grad_cams(batch[:, 0].numpy(), cams, titles=titles, ncols=min(5, len(chosen)))


# =======================================================================================
# Synthetic chapter (notebooks/oarsi_grading.ipynb): localisation, 7 heads, CV, MOST role
# =======================================================================================

#: Name of the synthetic-radiograph notebook (metrics file, figures).
SYNTH_STUDY = "oarsi_grading"

#: Head -> column label of the paper's tables (FO/TO: femoral/tibial osteophytes; L/M: compartment).
TASK_LABELS: dict[str, str] = {
    "kl": "KL", "osteophyte_fl": "FO L", "osteophyte_fm": "FO M", "osteophyte_tl": "TO L",
    "osteophyte_tm": "TO M", "jsn_lateral": "JSN L", "jsn_medial": "JSN M",
}

#: Table 2 of paper 004 (out-of-fold quadratic kappa, OAI 5-fold CV), rows we set beside ours.
PUBLISHED_TABLE2: dict[str, dict[str, float]] = {
    "Resnet-18 (transfer)": {"kl": 0.81, "osteophyte_fl": 0.71, "osteophyte_fm": 0.78, "osteophyte_tl": 0.80,
                             "osteophyte_tm": 0.76, "jsn_lateral": 0.91, "jsn_medial": 0.87},
    "SE-Resnet-50 (transfer)": {"kl": 0.81, "osteophyte_fl": 0.71, "osteophyte_fm": 0.79, "osteophyte_tl": 0.81,
                                "osteophyte_tm": 0.78, "jsn_lateral": 0.91, "jsn_medial": 0.87},
    "SE-Resnet-50 (scratch)": {"kl": 0.78, "osteophyte_fl": 0.66, "osteophyte_fm": 0.73, "osteophyte_tl": 0.76,
                               "osteophyte_tm": 0.70, "jsn_lateral": 0.91, "jsn_medial": 0.87},
    "Ensemble": {"kl": 0.82, "osteophyte_fl": 0.73, "osteophyte_fm": 0.80, "osteophyte_tl": 0.83,
                 "osteophyte_tm": 0.79, "jsn_lateral": 0.92, "jsn_medial": 0.88},
}

#: Table 3 of paper 004 (MOST test set, ensemble): head -> F1, MSE, balanced accuracy (fraction), kappa.
PUBLISHED_TABLE3: dict[str, dict[str, float]] = {
    "osteophyte_fl": {"f1_weighted": 0.81, "mse": 0.33, "balanced_accuracy": 0.6358, "quadratic_kappa": 0.79},
    "osteophyte_tl": {"f1_weighted": 0.83, "mse": 0.22, "balanced_accuracy": 0.6885, "quadratic_kappa": 0.84},
    "jsn_lateral": {"f1_weighted": 0.96, "mse": 0.04, "balanced_accuracy": 0.7855, "quadratic_kappa": 0.94},
    "osteophyte_fm": {"f1_weighted": 0.81, "mse": 0.41, "balanced_accuracy": 0.6549, "quadratic_kappa": 0.84},
    "osteophyte_tm": {"f1_weighted": 0.77, "mse": 0.26, "balanced_accuracy": 0.7202, "quadratic_kappa": 0.83},
    "jsn_medial": {"f1_weighted": 0.82, "mse": 0.20, "balanced_accuracy": 0.8066, "quadratic_kappa": 0.90},
    "kl": {"f1_weighted": 0.65, "mse": 0.68, "balanced_accuracy": 0.6668, "quadratic_kappa": 0.82},
}

#: Results / Discussion of paper 004: MOST first follow-up only, quadratic kappa per head.
PUBLISHED_FIRST_VISIT_KAPPA: dict[str, float] = {
    "kl": 0.83, "osteophyte_fl": 0.79, "osteophyte_tl": 0.84, "jsn_lateral": 0.94,
    "osteophyte_fm": 0.86, "osteophyte_tm": 0.83, "jsn_medial": 0.91,
}

#: Landmarks of ``radiograph_landmarks.csv`` carried into each knee crop.
_ALL_LANDMARKS = ("joint_centre", "plateau_lateral", "plateau_medial", "plateau_margin_lateral",
                  "plateau_margin_medial", "condyle_lowest_lateral", "condyle_lowest_medial")
_XR_SERIES = "Bilateral PA Fixed Flexion Knee"


def load_synthetic_knees(root, visits=(0, 12)) -> pd.DataFrame:
    """One row per knee image of a synthetic OAI-format cohort, with grades and landmarks.

    Grades come from the clinical table ``kXR_SQ_BU{VV}`` through
    :func:`kneelib.data.knee_table` (missing grades coded -1, as the training code
    expects); the radiograph folder from the image index (``contents.csv``); the landmark
    ground truth from ``ground_truth/radiograph_landmarks.csv``. Knees without a
    radiograph are dropped and listed in ``attrs["qc"]``.

    Returns
    -------
    DataFrame
        ``participant_id``, ``visit_month``, ``side``, ``path`` (series folder),
        ``pixel_spacing_mm``, one column per head of :data:`TASK_LABELS`, and
        ``<landmark>_row/_col`` in radiograph pixels.
    """
    from kneelib.data import knee_table, read_image_index
    from kneelib.data.errors import KneelibDataError
    from kneelib.preprocess.knee_localisation import landmark_table_to_points

    root = Path(root)
    landmark_file = root / "ground_truth" / "radiograph_landmarks.csv"
    if not landmark_file.is_file():
        raise FileNotFoundError(f"no landmark ground truth at {landmark_file} (is {root} a synthetic cohort?)")
    variables = ["kl_grade" if task == "kl" else task for task in TASK_LABELS]
    grades = knee_table(root, variables, visits=tuple(visits))
    grades = grades.rename(columns={"ID": "participant_id", "VISIT": "visit_month"})
    grades["kl"] = grades["kl_grade"]
    grades["side"] = grades.pop("SIDE").map({1: "R", 2: "L"})
    grades["participant_id"] = grades["participant_id"].astype(str)
    for task in [*TASK_LABELS, "kl_grade"]:
        grades[task] = pd.to_numeric(grades[task], errors="coerce").fillna(-1).astype(int)
    points = landmark_table_to_points(pd.read_csv(landmark_file), names=_ALL_LANDMARKS)
    points["participant_id"] = points["participant_id"].astype(str)
    index = read_image_index(root / "contents.csv")
    paths, qc = [], []
    for row in grades.itertuples():
        try:
            paths.append(str(index.find_series(row.participant_id, int(row.visit_month), _XR_SERIES)))
        except KneelibDataError as err:
            paths.append(None)
            qc.append({"participant_id": row.participant_id, "visit_month": row.visit_month, "side": row.side,
                       "reason": str(err)})
    grades["path"] = paths
    knees = grades.merge(points.drop(columns="folder"), on=["participant_id", "visit_month", "side"],
                         how="left")
    no_landmarks = knees["joint_centre_row"].isna() & knees["path"].notna()
    for row in knees[no_landmarks].itertuples():
        qc.append({"participant_id": row.participant_id, "visit_month": row.visit_month, "side": row.side,
                   "reason": "no landmark ground truth"})
    knees = knees[knees["path"].notna() & ~no_landmarks].reset_index(drop=True)
    knees.attrs["qc"] = pd.DataFrame(qc, columns=["participant_id", "visit_month", "side", "reason"])
    return knees


def read_radiographs(knees: pd.DataFrame, progress: bool = True) -> dict[str, tuple[np.ndarray, float]]:
    """Series folder -> (pixels as float32, pixel spacing mm), each bilateral image read once."""
    from tqdm.auto import tqdm

    from kneelib.data import read_radiograph

    images = {}
    for path in tqdm(sorted(set(knees["path"])), desc="reading radiographs", disable=not progress):
        radiograph = read_radiograph(path)
        row_mm, col_mm = radiograph.pixel_spacing_mm
        if abs(row_mm - col_mm) > 1e-6:
            raise ValueError(f"{path}: non-square pixels {radiograph.pixel_spacing_mm} are not supported")
        images[path] = (radiograph.pixels.astype(np.float32), float(row_mm))
    return images


def _points(knees: pd.DataFrame, names) -> np.ndarray:
    return np.stack([knees[[f"{n}_row", f"{n}_col"]].to_numpy(float) for n in names], axis=1)


def fit_localiser(knees: pd.DataFrame, radiographs: dict, n_epochs: int = 30, seed: int = 0,
                  progress: bool = True):
    """Train the knee localiser (:mod:`kneelib.preprocess.knee_localisation`) on these knees."""
    from kneelib.preprocess.knee_localisation import LOCALISER_LANDMARKS, train_knee_localiser

    return train_knee_localiser([radiographs[p][0] for p in knees["path"]],
                                [radiographs[p][1] for p in knees["path"]], knees["side"].tolist(),
                                _points(knees, LOCALISER_LANDMARKS), n_epochs=n_epochs, seed=seed,
                                progress=progress)


def localisation_error_table(localiser, knees: pd.DataFrame, radiographs: dict) -> pd.DataFrame:
    """Per-knee localisation errors (mm, degrees) on held-out knees; see ``localisation_errors_mm``."""
    from kneelib.preprocess.knee_localisation import localisation_errors_mm

    errors = localisation_errors_mm(localiser, [radiographs[p][0] for p in knees["path"]],
                                    [radiographs[p][1] for p in knees["path"]], knees["side"].tolist(),
                                    _points(knees, localiser.names))
    return pd.concat([knees[["participant_id", "visit_month", "side"]].reset_index(drop=True), errors], axis=1)


def osteophyte_region_masks(margins_rc: dict[str, np.ndarray], out_size: int, size_mm: float = 140.0,
                            reach_mm: float = 12.0, half_width_mm: float = 10.0) -> dict[str, np.ndarray]:
    """Approximate osteophyte sites in a knee crop, from the plateau-margin landmarks.

    The synthetic cohort stores no lesion masks for the radiograph, so each OARSI site
    is approximated by a box at the joint margin: the tibial site from ``reach_mm``
    below to 2 mm above the tibial plateau margin, the femoral site from ``reach_mm``
    above to 2 mm below it (the femoral condyle margin sits just above the tibial
    one), ``half_width_mm`` either side of the margin column. The planted osteophytes
    are marginal lips at these places (femoral pointing to the joint line, tibial upwards).

    Parameters
    ----------
    margins_rc : dict
        ``"lateral"`` / ``"medial"`` -> (row, col) of the plateau margin in crop pixels.
    """
    px = out_size / size_mm
    rows, cols = np.mgrid[0:out_size, 0:out_size]
    masks = {}
    for compartment, letter in (("lateral", "l"), ("medial", "m")):
        r, c = np.asarray(margins_rc[compartment], dtype=float)
        in_cols = np.abs(cols - c) <= half_width_mm * px
        masks[f"osteophyte_f{letter}"] = in_cols & (rows >= r - reach_mm * px) & (rows <= r + 2 * px)
        masks[f"osteophyte_t{letter}"] = in_cols & (rows >= r - 2 * px) & (rows <= r + reach_mm * px)
    return masks


@dataclass
class PreparedKnees:
    """Knee crops of one cohort and what the chapter needs beside them.

    Attributes
    ----------
    images : ndarray, (n, S, S) uint8
        Histogram-clipped crops (S = ``resize_for_crop(image_size)``).
    targets : ndarray, (n, 7) int
        Grades per head (-1 missing), columns in :data:`TASK_LABELS` order.
    knees : DataFrame
        The cohort rows, plus ``angle_deg`` and ``centre_row/col`` used for the crop.
    masks : dict
        Head -> boolean (n, S, S) approximate osteophyte sites (:func:`osteophyte_region_masks`).
    """

    images: np.ndarray
    targets: np.ndarray
    knees: pd.DataFrame
    masks: dict


def prepare_knees(knees: pd.DataFrame, radiographs: dict, localiser, image_size: int,
                  mirror_side: str = "L", size_mm: float = 140.0, low_percentile: float = 5.0,
                  high_percentile: float = 99.0, progress: bool = True) -> PreparedKnees:
    """Localise, crop 140 mm, level the plateau, mirror, clip the histogram, resize (paper 004).

    The crop is resampled straight to ``resize_for_crop(image_size)`` pixels (310 for
    the paper's 300 px network input); global contrast normalisation happens per
    image at the network input (:class:`kneelib.train.multitask.RadiographDataset`).
    """
    from tqdm.auto import tqdm

    from kneelib.preprocess.knee_localisation import crop_points, knee_crop, plateau_angle_deg
    from kneelib.preprocess.radiograph import clip_histogram
    from kneelib.train.multitask import resize_for_crop

    out_size = resize_for_crop(image_size)
    images = np.zeros((len(knees), out_size, out_size), dtype=np.uint8)
    masks = {task: np.zeros((len(knees), out_size, out_size), dtype=bool)
             for task in TASK_LABELS if task.startswith("osteophyte")}
    centres, angles = [], []
    for i, row in enumerate(tqdm(list(knees.itertuples(index=False)), desc="knee crops", disable=not progress)):
        pixels, spacing = radiographs[row.path]
        found = localiser.predict(pixels, spacing, sides=(row.side,))[row.side]
        angle = plateau_angle_deg(found["plateau_lateral"], found["plateau_medial"], row.side)
        geometry = dict(centre_rc=found["joint_centre"], angle_deg=angle, side=row.side,
                        pixel_spacing_mm=spacing, size_mm=size_mm, out_size=out_size, mirror_side=mirror_side)
        crop = clip_histogram(knee_crop(pixels, **geometry), low_percentile, high_percentile)
        images[i] = np.round(crop * 255).astype(np.uint8)
        margins = crop_points([[getattr(row, f"plateau_margin_{c}_row"), getattr(row, f"plateau_margin_{c}_col")]
                               for c in ("lateral", "medial")], **geometry)
        for task, mask in osteophyte_region_masks({"lateral": margins[0], "medial": margins[1]},
                                                  out_size, size_mm).items():
            masks[task][i] = mask
        centres.append(found["joint_centre"])
        angles.append(angle)
    knees = knees.reset_index(drop=True).copy()
    knees["centre_row"], knees["centre_col"] = np.array(centres).reshape(-1, 2).T
    knees["angle_deg"] = angles
    return PreparedKnees(images, knees[list(TASK_LABELS)].to_numpy(int), knees, masks)


def subject_folds(knees: pd.DataFrame, n_folds: int = 5, seed: int = 0) -> np.ndarray:
    """Subject-wise folds stratified by KL grade (paper 004: 5-fold, subject-wise, stratified)."""
    from kneelib.train.splits import stratified_kfold

    return stratified_kfold(knees["kl_grade"].to_numpy(), n_splits=n_folds,
                            groups=knees["participant_id"].to_numpy(), seed=seed)


@dataclass
class BackboneRun:
    """Cross-validation of one backbone: out-of-fold probabilities and the fold snapshots."""

    name: str
    backbone: str
    schedule: str
    imagenet: bool
    oof: dict
    snapshots: list
    history: pd.DataFrame
    seconds: float


def cross_validate_backbone(prepared: PreparedKnees, folds: np.ndarray, backbone: str, schedule: str,
                            imagenet: bool, image_size: int, max_epochs: int, batch_size: int = 32,
                            noise_std: float = 0.03, gamma_range=(0.7, 1.5), seed: int = 0,
                            scratch_lr: float = 1e-4) -> BackboneRun:
    """Train one model per fold on the other folds (7 heads); predict the held-out fold.

    Every fold trains a fixed number of epochs with the paper's schedule (transfer:
    heads at 1e-2 for 2 epochs, all layers at 1e-3 then 1e-4; scratch: ``scratch_lr``
    (paper: 1e-4) /10 at 50% and 75%); the held-out fold is only predicted, never used for
    selection, so the out-of-fold metrics are unbiased. The last-epoch weights are the
    fold's snapshot.
    """
    import time

    from kneelib.models.multitask import build_multitask_model
    from kneelib.train.multitask import (AugmentationSettings, RadiographDataset, build_learner, fit_phases,
                                         make_dataloaders, predict_probabilities, scratch_phases,
                                         transfer_phases)

    if schedule not in ("transfer", "scratch"):
        raise ValueError(f"schedule must be 'transfer' or 'scratch', got {schedule!r}")
    start = time.perf_counter()
    augmentation = AugmentationSettings(noise_std=noise_std, gamma_range=tuple(gamma_range))
    oof = {task: np.full((len(folds), n), np.nan) for task, n in
           zip(TASK_LABELS, (5, 4, 4, 4, 4, 4, 4))}
    snapshots, histories = [], []
    for fold in np.unique(folds):
        set_determinism(seed + int(fold))
        train, held_out = folds != fold, folds == fold
        model = build_multitask_model(backbone, imagenet=imagenet)
        dls = make_dataloaders(
            RadiographDataset(prepared.images[train], prepared.targets[train], image_size, augment=True,
                              augmentation=augmentation),
            RadiographDataset(prepared.images[held_out], prepared.targets[held_out], image_size, augment=False),
            batch_size=batch_size)
        learn = build_learner(model, dls, monitor_task="kl")
        phases = transfer_phases(max_epochs) if schedule == "transfer" else scratch_phases(max_epochs, scratch_lr)
        history = fit_phases(learn, phases, restore_best=False)
        histories.append(history.assign(fold=int(fold)))
        model.eval()
        for task, p in predict_probabilities(model, prepared.images[held_out], image_size).items():
            oof[task][held_out] = p
        snapshots.append(model)
    name = f"{backbone} ({schedule}{', ImageNet' if imagenet else ''})"
    return BackboneRun(name, backbone, schedule, imagenet, oof, snapshots, pd.concat(histories, ignore_index=True),
                       time.perf_counter() - start)


def _metric_rows(targets: np.ndarray, probabilities: dict, model: str, n_boot: int, seed: int,
                 metrics=("quadratic_kappa", "balanced_accuracy", "f1_weighted", "mse")) -> pd.DataFrame:
    from kneelib.stats.agreement import agreement_table

    frames = []
    for index, task in enumerate(TASK_LABELS):
        known = targets[:, index] >= 0
        if known.sum() < 2:
            continue
        predicted = probabilities[task][known].argmax(axis=1)
        table = agreement_table(targets[known, index], predicted, metrics=list(metrics), n_boot=n_boot, seed=seed)
        frames.append(table.assign(task=task, model=model, n=int(known.sum())))
    return pd.concat(frames, ignore_index=True)


def table2(prepared: PreparedKnees, runs: list, n_boot: int = 200, seed: int = 0) -> pd.DataFrame:
    """Out-of-fold kappa and balanced accuracy per head and backbone (Table 2 / Suppl. Table 1)."""
    return pd.concat([_metric_rows(prepared.targets, run.oof, run.name, n_boot, seed,
                                   metrics=("quadratic_kappa", "balanced_accuracy")) for run in runs],
                     ignore_index=True)


def wide_table(long: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Model x head table of ``estimate [ci_low, ci_high]`` for one metric (paper's layout)."""
    part = long[long["metric"] == metric]
    cells = part.assign(cell=[f"{e:.2f} [{lo:.2f}, {hi:.2f}]" for e, lo, hi in
                              zip(part["estimate"], part["ci_low"], part["ci_high"])])
    wide = cells.pivot(index="model", columns="task", values="cell")
    return wide.reindex(columns=[t for t in TASK_LABELS if t in wide.columns]).rename(columns=TASK_LABELS)


def best_runs(long_table2: pd.DataFrame, runs: list, n_best: int = 2) -> list:
    """The ``n_best`` backbones by mean out-of-fold kappa over heads (paper: the two best)."""
    kappa = long_table2[long_table2["metric"] == "quadratic_kappa"].groupby("model")["estimate"].mean()
    order = kappa.sort_values(ascending=False).index[:n_best]
    return [run for name in order for run in runs if run.name == name]


def ensemble_probabilities(runs: list, images: np.ndarray, image_size: int) -> dict:
    """Mean softmax of every fold snapshot of every run (paper: 2 backbones x 5 snapshots)."""
    from kneelib.train.multitask import predict_probabilities

    total, count = None, 0
    for run in runs:
        for model in run.snapshots:
            p = predict_probabilities(model, images, image_size)
            total = p if total is None else {t: total[t] + p[t] for t in total}
            count += 1
    return {task: value / count for task, value in total.items()}


def table3(prepared: PreparedKnees, probabilities: dict, n_boot: int = 200, seed: int = 0,
           model: str = "ensemble") -> pd.DataFrame:
    """F1 (support-weighted), MSE, balanced accuracy, quadratic kappa with stratified bootstrap CIs."""
    return _metric_rows(prepared.targets, probabilities, model, n_boot, seed)


def plot_confusions(prepared: PreparedKnees, probabilities: dict, title: str = ""):
    """Row-percent confusion matrix per head (Fig. 4), counts in the cells."""
    import matplotlib.pyplot as plt

    from kneelib.stats.agreement import confusion

    fig, axes = plt.subplots(2, 4, figsize=(15, 7.4))
    for ax, (index, task) in zip(axes.ravel(), enumerate(TASK_LABELS)):
        n = probabilities[task].shape[1]
        known = prepared.targets[:, index] >= 0
        counts = confusion(prepared.targets[known, index], probabilities[task][known].argmax(axis=1), n)
        totals = counts.sum(axis=1, keepdims=True)
        percent = np.divide(100.0 * counts, totals, out=np.full(counts.shape, np.nan), where=totals > 0)
        ax.imshow(np.nan_to_num(percent), cmap="Blues", vmin=0, vmax=100)
        for i in range(n):
            for j in range(n):
                if totals[i, 0]:
                    ax.text(j, i, f"{percent[i, j]:.0f}%\n{counts[i, j]}", ha="center", va="center", fontsize=7,
                            color="white" if percent[i, j] > 55 else "black")
        ax.set_xticks(range(n))
        ax.set_yticks(range(n))
        ax.set_xlabel("predicted grade")
        ax.set_ylabel("reference grade")
        ax.set_title(TASK_LABELS[task])
    axes.ravel()[-1].axis("off")
    fig.suptitle(title or "Confusion matrices (row %, counts)")
    fig.tight_layout()
    return fig


def binary_curves(prepared: PreparedKnees, probabilities: dict, n_boot: int = 200, seed: int = 0):
    """ROC and precision-recall of KL >= 2, osteophyte >= 1 and JSN >= 1 (Fig. 3) and their table.

    The score of "grade >= g" is the summed probability of grades g and above.
    Returns ``(figure, table)``; the table has AUC with its DeLong 95% CI and the
    average precision per curve.
    """
    import matplotlib.pyplot as plt
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_curve

    from kneelib.stats.roc import auc_with_ci

    groups = {"KL >= 2": [("kl", 2)],
              "osteophyte >= 1": [(t, 1) for t in ("osteophyte_fl", "osteophyte_fm", "osteophyte_tl", "osteophyte_tm")],
              "JSN >= 1": [("jsn_lateral", 1), ("jsn_medial", 1)]}
    fig, axes = plt.subplots(2, 3, figsize=(13, 8))
    rows = []
    for column, (group, members) in enumerate(groups.items()):
        ax_roc, ax_pr = axes[0, column], axes[1, column]
        for task, threshold in members:
            index = list(TASK_LABELS).index(task)
            known = prepared.targets[:, index] >= 0
            y = (prepared.targets[known, index] >= threshold).astype(int)
            score = probabilities[task][known][:, threshold:].sum(axis=1)
            label = TASK_LABELS[task]
            if y.min() == y.max():
                rows.append({"curve": group, "head": label, "positives": int(y.sum()), "n": len(y),
                             "auc": np.nan, "auc_ci_low": np.nan, "auc_ci_high": np.nan, "average_precision": np.nan})
                continue
            auc = auc_with_ci(y, score)
            ap = average_precision_score(y, score)
            fpr, tpr, _ = roc_curve(y, score)
            precision, recall, _ = precision_recall_curve(y, score)
            ax_roc.plot(fpr, tpr, label=f"{label}: AUC {auc.auc:.2f}")
            ax_pr.plot(recall, precision, label=f"{label}: AP {ap:.2f} (prev. {y.mean():.2f})")
            rows.append({"curve": group, "head": label, "positives": int(y.sum()), "n": len(y), "auc": auc.auc,
                         "auc_ci_low": auc.ci_low, "auc_ci_high": auc.ci_high, "average_precision": ap})
        ax_roc.plot([0, 1], [0, 1], color="grey", ls=":", lw=0.8)
        ax_roc.set(xlabel="false-positive rate", ylabel="true-positive rate", title=f"ROC, {group}")
        ax_pr.set(xlabel="recall", ylabel="precision", title=f"Precision-recall, {group}", ylim=(0, 1.02))
        for ax in (ax_roc, ax_pr):
            ax.legend(fontsize=8, loc="lower right" if ax is ax_roc else "lower left")
    fig.tight_layout()
    return fig, pd.DataFrame(rows)


def pointing_game_table(model, prepared: PreparedKnees, image_size: int, tolerance_px: int = 0) -> tuple:
    """Osteophyte pointing game: does each osteophyte head's Grad-CAM peak fall in its site?

    For knees with grade >= 1 at a site, the Grad-CAM of that site's head (predicted
    grade) is computed on the network input (central crop) and its maximum tested
    against the approximate site box (:func:`osteophyte_region_masks`). Chance is the
    mean share of the input covered by the box (a uniformly random hot spot). Because
    a small input gives a coarse map (2 x 2 for ResNet-18 at 64 px), the test is also
    made at the map's own resolution (:func:`kneelib.explain.pointing.cell_pointing_hit`:
    the hottest cell overlaps the box), with its own chance (share of cells overlapping).

    Returns
    -------
    table : DataFrame
        Per head: knees, hits, pointing accuracy, chance.
    examples : dict
        Head -> (inputs, cams, masks, titles) of up to 4 knees for :func:`plot_pointing_examples`.
    """
    import torch

    from kneelib.explain.gradcam import grad_cam
    from kneelib.explain.pointing import cell_pointing_hit, mask_on_grid, pointing_hit
    from kneelib.train.multitask import RadiographDataset

    size = prepared.images.shape[1]
    top = (size - image_size) // 2
    rows, examples = [], {}
    for task, masks in prepared.masks.items():
        index = list(TASK_LABELS).index(task)
        chosen = np.flatnonzero(prepared.targets[:, index] >= 1)
        if len(chosen) == 0:
            rows.append({"head": TASK_LABELS[task], "knees": 0, "hits": 0, "pointing_accuracy": np.nan,
                         "chance": np.nan, "map_cells": "", "cell_pointing_accuracy": np.nan,
                         "cell_chance": np.nan})
            continue
        dataset = RadiographDataset(prepared.images[chosen], prepared.targets[chosen], image_size, augment=False)
        batch = torch.stack([dataset.image_tensor(i) for i in range(len(dataset))])
        cams, predicted = grad_cam(model, batch, task)
        cropped = masks[chosen][:, top:top + image_size, top:top + image_size]
        hits = [pointing_hit(cam, mask, tolerance_px) for cam, mask in zip(cams, cropped)]
        cell_hits = [cell_pointing_hit(cam, mask) for cam, mask in zip(cams, cropped)]
        cell_chance = np.mean([mask_on_grid(mask, cams.shape[1:]).mean() for mask in cropped])
        rows.append({"head": TASK_LABELS[task], "knees": len(chosen), "hits": int(np.sum(hits)),
                     "pointing_accuracy": float(np.mean(hits)), "chance": float(cropped.mean()),
                     "map_cells": f"{cams.shape[1]}x{cams.shape[2]}",
                     "cell_pointing_accuracy": float(np.mean(cell_hits)), "cell_chance": float(cell_chance)})
        titles = [f"{TASK_LABELS[task]} {prepared.targets[k, index]} -> {p} ({'hit' if h else 'miss'})"
                  for k, p, h in zip(chosen, predicted, hits)]
        keep = slice(0, 4)
        examples[task] = (batch[keep, 0].numpy(), cams[keep], cropped[keep], titles[keep])
    return pd.DataFrame(rows), examples


def plot_pointing_examples(examples: dict):
    """Grad-CAM per osteophyte head on knees with that osteophyte; the site box in white."""
    import matplotlib.pyplot as plt

    from kneelib.explain.gradcam import upsample_cams
    from kneelib.explain.pointing import hot_spot

    n_cols = max((len(v[0]) for v in examples.values()), default=1)
    fig, axes = plt.subplots(max(1, len(examples)), n_cols, figsize=(2.7 * n_cols, 2.9 * max(1, len(examples))),
                             squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for row, (task, (inputs, cams, masks, titles)) in enumerate(examples.items()):
        up = upsample_cams(cams, inputs.shape[1:])
        for col in range(len(inputs)):
            ax = axes[row, col]
            ax.imshow(inputs[col], cmap="gray")
            ax.imshow(up[col], cmap="jet", alpha=0.4, vmin=0, vmax=1)
            ax.contour(masks[col], levels=[0.5], colors="white", linewidths=1)
            peak = hot_spot(cams[col], inputs.shape[1:])  # the point the pointing game scored
            ax.plot(peak[1], peak[0], "w+", ms=10, mew=2)
            ax.set_title(titles[col], fontsize=8)
    fig.tight_layout()
    return fig


def plot_localisation(prepared: PreparedKnees, radiographs: dict, n_examples: int = 4, seed: int = 0):
    """Bilateral images with the predicted knee centres, and the resulting knee crops."""
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(seed)
    paths = list(dict.fromkeys(prepared.knees["path"]))
    chosen = [paths[i] for i in sorted(rng.choice(len(paths), size=min(n_examples, len(paths)), replace=False))]
    fig, axes = plt.subplots(len(chosen), 3, figsize=(11, 2.6 * len(chosen)), squeeze=False,
                             gridspec_kw={"width_ratios": [2.2, 1, 1]})
    for row, path in zip(axes, chosen):
        pixels, spacing = radiographs[path]
        row[0].imshow(pixels, cmap="gray")
        for side, ax in zip(("R", "L"), row[1:]):
            hit = prepared.knees.index[(prepared.knees["path"] == path) & (prepared.knees["side"] == side)]
            if not len(hit):
                ax.axis("off")
                continue
            k = prepared.knees.loc[hit[0]]
            row[0].plot(k["joint_centre_col"], k["joint_centre_row"], "g+", ms=12, mew=2)
            row[0].plot(k["centre_col"], k["centre_row"], "rx", ms=9, mew=2)
            half = 70.0 / spacing
            row[0].add_patch(plt.Rectangle((k["centre_col"] - half, k["centre_row"] - half), 2 * half, 2 * half,
                                           fill=False, color="red", lw=1))
            ax.imshow(prepared.images[hit[0]], cmap="gray")
            ax.set_title(f"{side} knee, KL {k['kl_grade']}, rotated {k['angle_deg']:+.1f} deg"
                         + (", mirrored" if side == "L" else ""), fontsize=8)
            ax.axis("off")
        row[0].set_title("green +: true joint centre, red x: localiser, box: 140 mm crop", fontsize=8)
        row[0].axis("off")
    fig.tight_layout()
    return fig


def synthetic_comparisons(long_table2: pd.DataFrame, long_table3: pd.DataFrame, ensemble_name: str,
                          data_cv: str, data_test: str, first_visit: pd.DataFrame | None = None) -> list:
    """Paper-vs-reproduced rows: Table 2 (ensemble-role kappas), Table 3 (all metrics), first visit."""
    from kneelib.report import Comparison

    rows = []
    best_cv = long_table2[long_table2["metric"] == "quadratic_kappa"].sort_values("estimate", ascending=False)
    for task in TASK_LABELS:
        part = best_cv[best_cv["task"] == task]
        if len(part):
            top = part.iloc[0]
            rows.append(Comparison(SYNTH_STUDY, f"{TASK_LABELS[task]} kappa, out-of-fold (best backbone)",
                                   PUBLISHED_TABLE2["SE-Resnet-50 (transfer)"][task], float(top["estimate"]),
                                   float(top["ci_low"]), float(top["ci_high"]), "Table 2", data_cv,
                                   f"ours: {top['model']}; paper: SE-ResNet-50 with ImageNet weights"))
    for task, published in PUBLISHED_TABLE3.items():
        part = long_table3[long_table3["task"] == task].set_index("metric")
        for metric, value in published.items():
            if metric not in part.index:
                continue
            est = part.loc[metric]
            rows.append(Comparison(SYNTH_STUDY, f"{TASK_LABELS[task]} {metric.replace('_', ' ')} (test)", value,
                                   float(est["estimate"]), float(est["ci_low"]), float(est["ci_high"]),
                                   "Table 3", data_test, f"ours: {ensemble_name}"))
    if first_visit is not None:
        for task, value in PUBLISHED_FIRST_VISIT_KAPPA.items():
            part = first_visit[(first_visit["task"] == task) & (first_visit["metric"] == "quadratic_kappa")]
            if len(part):
                est = part.iloc[0]
                rows.append(Comparison(SYNTH_STUDY, f"{TASK_LABELS[task]} kappa (test, first visit only)", value,
                                       float(est["estimate"]), float(est["ci_low"]), float(est["ci_high"]),
                                       "Discussion", data_test + ", baseline visit", f"ours: {ensemble_name}"))
    return rows
