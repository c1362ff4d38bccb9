"""Training of paper 004's grading networks: the KL model, subject-wise CV, fold-snapshot ensembles.

Tiulpin & Saarakkala (2020), *Training strategy*: subject-wise 5-fold cross-validation
stratified by KL grade; ImageNet transfer (heads only at 1e-2 for 2 epochs, all layers
at 1e-3 for one, then 1e-4) or training from scratch (1e-4, divided by 10 at 50% and
75% of the epochs); the test-set model is the mean softmax of the fold snapshots of
the two best backbones (*Test-set Performance*). The building blocks (model, data
loaders, schedules, fastai learner) are in :mod:`kneelib.models.multitask` and
:mod:`kneelib.train.multitask`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from kneelib.data.knee_radiographs import GRADE_TASKS, TASK_GRADES

# fastai's torch.jit FutureWarning is silenced once, in kneelib/train/__init__.py.

__all__ = ["set_determinism", "train_kl_model", "subject_folds", "BackboneRun", "cross_validate_backbone",
           "best_runs", "ensemble_out_of_fold", "ensemble_probabilities"]


def set_determinism(seed: int, threads: int | None = None) -> None:
    """Seed Python, numpy and torch (fastai ``set_seed(..., reproducible=True)``); fix CPU threads."""
    import torch
    from fastai.torch_core import set_seed

    if threads:
        torch.set_num_threads(int(threads))
    torch.set_flush_denormal(True)  # denormal floats slow some CPU kernels by orders of magnitude
    set_seed(seed, reproducible=True)


def _phases(schedule: str, max_epochs: int, scratch_lr: float = 1e-4, transfer_schedule: dict | None = None):
    from kneelib.train.multitask import scratch_phases, transfer_phases

    if schedule == "transfer":
        return transfer_phases(max_epochs, **(transfer_schedule or {}))
    if schedule == "scratch":
        return scratch_phases(max_epochs, scratch_lr)
    raise ValueError(f"schedule must be 'transfer' or 'scratch', got {schedule!r}")


def train_kl_model(train_images: np.ndarray, train_grades, internal_images: np.ndarray, internal_grades,
                   image_size: int, max_epochs: int, backbone: str = "efficientnet_lite0",
                   imagenet: bool = True, schedule: str = "transfer", batch_size: int = 32,
                   noise_std: float = 0.03, gamma_range=(0.7, 1.5), show_progress: bool = True,
                   transfer_schedule: dict | None = None):
    """Train the KL head of the multi-task network with paper 004's schedule.

    Parameters
    ----------
    train_images, internal_images : ndarray, (n, S, S) uint8
        Prepared crops (:func:`kneelib.preprocess.knee_crops.prepare_images`).
    train_grades, internal_grades : array-like of int
    image_size : int
        Network input (random crop in training, central crop otherwise).
    max_epochs : int
    backbone : str
    imagenet : bool
        Start from ImageNet weights.
    schedule : {"transfer", "scratch"}
        ``transfer``: heads only at 1e-2 for 2 epochs, all layers at 1e-3 for one,
        then 1e-4; ``scratch``: 1e-4 divided by 10 at 50% and 75% of the epochs.
    batch_size : int
    noise_std, gamma_range : augmentation (Gaussian noise, random gamma).
    show_progress : bool
        fastai's progress bars and per-epoch tables.
    transfer_schedule : dict, optional
        Keyword arguments of :func:`kneelib.train.multitask.transfer_phases` (``None``: the
        paper's transfer schedule).

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
                                         fit_phases, make_dataloaders)

    phases = _phases(schedule, max_epochs, transfer_schedule=transfer_schedule)
    model = build_multitask_model(backbone, KL_ONLY, imagenet=imagenet)
    augmentation = AugmentationSettings(noise_std=noise_std, gamma_range=tuple(gamma_range))
    dls = make_dataloaders(
        RadiographDataset(train_images, np.asarray(train_grades), image_size, augment=True,
                          augmentation=augmentation),
        RadiographDataset(internal_images, np.asarray(internal_grades), image_size, augment=False),
        batch_size=batch_size)
    learn = build_learner(model, dls, monitor_task="kl")
    history = fit_phases(learn, phases, restore_best=True, show_progress=show_progress)
    model.eval()
    return model, history, learn.select_best.best_epoch


def subject_folds(knees: pd.DataFrame, n_folds: int = 5, seed: int = 0) -> np.ndarray:
    """Subject-wise folds stratified by KL grade (paper 004: 5-fold, subject-wise, stratified).

    KL grades held by fewer than ``n_folds`` subjects are merged with their neighbour
    (:func:`kneelib.data.chen_kl.merge_sparse_grades`) so that every fold can get its
    share of each stratum (scikit-learn cannot stratify a class with fewer members than
    folds, and warns).
    """
    from kneelib.data.chen_kl import merge_sparse_grades
    from kneelib.train.splits import stratified_kfold

    subjects = knees["participant_id"].astype(str).to_numpy()
    strata = merge_sparse_grades(knees["kl_grade"].to_numpy(), subjects, n_folds)
    return stratified_kfold(knees["kl_grade"].to_numpy(), n_splits=n_folds, strata=strata, groups=subjects,
                            seed=seed)


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


def cross_validate_backbone(prepared, folds: np.ndarray, backbone: str, schedule: str,
                            imagenet: bool, image_size: int, max_epochs: int, batch_size: int = 32,
                            noise_std: float = 0.03, gamma_range=(0.7, 1.5), seed: int = 0,
                            scratch_lr: float = 1e-4, transfer_schedule: dict | None = None) -> BackboneRun:
    """Train one model per fold on the other folds (7 heads); predict the held-out fold.

    Every fold trains a fixed number of epochs with the paper's schedule (transfer:
    heads at 1e-2 for 2 epochs, all layers at 1e-3 then 1e-4, or ``transfer_schedule``,
    keyword arguments of :func:`kneelib.train.multitask.transfer_phases`; scratch: ``scratch_lr``
    (paper: 1e-4) /10 at 50% and 75%); the held-out fold is only predicted, never used for
    selection, so the out-of-fold metrics are unbiased. The last-epoch weights are the
    fold's snapshot.

    Parameters
    ----------
    prepared : PreparedKnees
        Crops and targets (:func:`kneelib.preprocess.knee_crops.prepare_knees`).
    folds : ndarray of int
        Fold of every row (:func:`subject_folds`).
    """
    from kneelib.models.multitask import build_multitask_model
    from kneelib.train.multitask import (AugmentationSettings, RadiographDataset, build_learner, fit_phases,
                                         make_dataloaders, predict_probabilities)

    phases = _phases(schedule, max_epochs, scratch_lr, transfer_schedule)
    start = time.perf_counter()
    augmentation = AugmentationSettings(noise_std=noise_std, gamma_range=tuple(gamma_range))
    oof = {task: np.full((len(folds), len(TASK_GRADES[task])), np.nan) for task in GRADE_TASKS}
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
        history = fit_phases(learn, phases, restore_best=False)
        histories.append(history.assign(fold=int(fold)))
        model.eval()
        for task, p in predict_probabilities(model, prepared.images[held_out], image_size).items():
            oof[task][held_out] = p
        snapshots.append(model)
    name = f"{backbone} ({schedule}{', ImageNet' if imagenet else ''})"
    return BackboneRun(name, backbone, schedule, imagenet, oof, snapshots, pd.concat(histories, ignore_index=True),
                       time.perf_counter() - start)


def best_runs(long_table2: pd.DataFrame, runs: list, n_best: int = 2, max_kappa_gap: float = 0.1) -> list:
    """The ``n_best`` backbones by mean out-of-fold kappa over heads (paper: the two best).

    The paper ensembles the two best of many trained backbones (*Training strategy*), so
    both members grade about equally well. With only two candidates, "the two best" would
    take a backbone that failed to learn too, and averaging its near-uniform softmax with
    the good one's pulls every head toward the majority grade. A candidate joins only if
    its mean out-of-fold kappa is within ``max_kappa_gap`` of the best one's. The rule
    reads out-of-fold kappas only; the test cohort never enters it.
    """
    if max_kappa_gap < 0:
        raise ValueError(f"max_kappa_gap must be >= 0, got {max_kappa_gap}")
    kappa = long_table2[long_table2["metric"] == "quadratic_kappa"].groupby("model")["estimate"].mean()
    kappa = kappa.sort_values(ascending=False)
    order = [name for name in kappa.index[:n_best] if kappa[name] >= kappa.iloc[0] - max_kappa_gap]
    return [run for name in order for run in runs if run.name == name]


def ensemble_out_of_fold(runs: list) -> dict:
    """Mean out-of-fold probabilities of the ensemble's backbones (each row from models that did not see it)."""
    if not runs:
        raise ValueError("ensemble_out_of_fold needs at least one run")
    return {task: np.mean([run.oof[task] for run in runs], axis=0) for task in runs[0].oof}


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
