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
