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
from pathlib import Path

import numpy as np
import pandas as pd

from kneelib.data.knee_radiographs import GRADE_TASKS, TASK_GRADES

# fastai's torch.jit FutureWarning is silenced once, in kneelib/train/__init__.py.

__all__ = ["set_determinism", "train_kl_model", "subject_folds", "BackboneRun", "cross_validate_backbone",
           "best_runs", "ensemble_out_of_fold", "ensemble_probabilities", "KLRecipe", "KLFoldModels",
           "kl_subject_folds", "train_kl_folds", "ensemble_kl_probabilities", "KLInferenceChoices",
           "choose_kl_inference", "fit_kl_feature_density"]


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


# ---------------------------------------------------------------------------------------------
# The CPU recipe of the real-radiograph KL grader (issue 14)
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class KLRecipe:
    """What is trained: backbone, input size, epochs and schedule of one KL network.

    ``schedule="finetune"``: :func:`kneelib.train.multitask.finetune_phases` (heads only
    for ``head_epochs`` at ``head_lr``, then one cycle over all layers, peak ``lr`` for the
    heads and ``lr / lr_mult`` for the backbone); ``"transfer"``/``"scratch"``: paper 004's
    schedules. The last epoch's weights are kept (no epoch selection). ``frozen_blocks`` > 0
    keeps the stem and that many leading backbone blocks frozen throughout
    (:class:`kneelib.train.multitask.FrozenPrefix`), which makes a CPU step cheaper.
    ``rotation_deg`` and ``scale_range`` add random rotation and zoom to paper 004's crop,
    noise and gamma (:class:`kneelib.train.multitask.AugmentationSettings`; off by default).
    """

    backbone: str = "efficientnet_lite0"
    image_size: int = 160
    max_epochs: int = 8
    schedule: str = "finetune"
    imagenet: bool = True
    lr: float = 3e-3
    lr_mult: float = 3.0
    head_lr: float = 1e-2
    head_epochs: int = 1
    batch_size: int = 32
    noise_std: float = 0.03
    gamma_range: tuple = (0.7, 1.5)
    frozen_blocks: int = 0
    rotation_deg: float = 0.0
    scale_range: tuple = (1.0, 1.0)

    def augmentation(self):
        """The training augmentation (:class:`kneelib.train.multitask.AugmentationSettings`)."""
        from kneelib.train.multitask import AugmentationSettings

        return AugmentationSettings(noise_std=self.noise_std, gamma_range=tuple(self.gamma_range),
                                    rotation_deg=float(self.rotation_deg), scale_range=tuple(self.scale_range))

    def phases(self):
        """The training phases (:class:`kneelib.train.multitask.Phase`)."""
        from kneelib.train.multitask import finetune_phases

        if self.schedule == "finetune":
            return finetune_phases(self.max_epochs, self.head_epochs, self.head_lr, self.lr, self.lr_mult)
        return _phases(self.schedule, self.max_epochs)


@dataclass
class KLFoldModels:
    """Models trained by :func:`train_kl_folds` and their held-out predictions.

    Attributes
    ----------
    models : list of MultiTaskNet
        One per held-out fold (eval mode).
    folds : ndarray of int
        Fold of every row; ``-1`` rows were never held out (always trained on).
    held_out_tta : dict
        Option name (:data:`kneelib.train.multitask.TTA_OPTIONS`) -> ``(n, 5)`` softmax of
        each held-out row by the model that did not train on it under that test-time
        augmentation (NaN for ``-1`` rows); always holds ``"plain"`` (:attr:`held_out`).
    history : DataFrame
        One row per epoch and fold.
    seconds : float
        Wall time of training and held-out prediction.
    """

    models: list
    folds: np.ndarray
    held_out_tta: dict
    history: pd.DataFrame
    seconds: float

    @property
    def held_out(self) -> np.ndarray:
        """Held-out softmax of the plain central crop (``held_out_tta["plain"]``)."""
        return self.held_out_tta["plain"]

    @property
    def held_out_rows(self) -> np.ndarray:
        """Mask of the rows with a held-out prediction."""
        return self.folds >= 0


def kl_subject_folds(grades, subjects, n_folds: int, seed: int = 0) -> np.ndarray:
    """Subject-level folds stratified by KL grade (both knees of a participant share a fold)."""
    from kneelib.data.chen_kl import merge_sparse_grades
    from kneelib.train.splits import stratified_kfold

    grades = np.asarray(grades).astype(int)
    subjects = np.asarray(subjects).astype(str)
    strata = merge_sparse_grades(grades, subjects, n_folds)
    return stratified_kfold(grades, n_splits=n_folds, strata=strata, groups=subjects, seed=seed)


def train_kl_folds(images: np.ndarray, grades, folds, recipe: KLRecipe = KLRecipe(), seed: int = 0,
                   show_progress: bool = False, checkpoint_dir=None, tta_options=None) -> KLFoldModels:
    """Train one KL network per held-out fold; predict the held-out rows under every TTA option.

    With ``folds`` from :func:`kl_subject_folds` this is subject-level K-fold
    cross-validation, and the models form an ensemble whose members never saw their
    own fold. With folds of ``-1`` (train) and ``0`` (an internal validation split) it
    trains a single model and predicts the internal split. The held-out rows never steer
    training (no epoch selection: the last epoch is kept).

    Parameters
    ----------
    images : ndarray, (n, S, S) uint8
        Prepared crops (:func:`kneelib.preprocess.knee_crops.prepare_images`), ``S``
        at least ``recipe.image_size``.
    grades : array-like of int, (n,)
    folds : array-like of int, (n,)
        Held-out fold of every row, ``-1`` for rows that are always trained on.
    recipe : KLRecipe
    seed : int
        Fold ``k`` is trained with seed ``seed + k``.
    show_progress : bool
        fastai's progress bars and per-epoch tables.
    checkpoint_dir : path-like, optional
        Keep every finished fold there (weights, held-out predictions, history, seconds)
        under a content key of the recipe, seed, fold and training data
        (:func:`kl_fold_checkpoint_key`), written by :func:`kneelib.cache.atomic_write`. A rerun
        loads the folds already finished and trains only the others, so a long ensemble
        (the ``paper`` set) that was interrupted resumes where it stopped. ``seconds``
        counts each fold's original training time. Held-out predictions of a TTA option
        that a checkpoint lacks are computed from its weights and added to it.
    tta_options : sequence of str, optional
        Test-time augmentation options whose held-out predictions are made
        (:data:`kneelib.train.multitask.TTA_OPTIONS`; default: all of them).
    """
    import torch

    from kneelib.cache import atomic_write
    from kneelib.models.multitask import KL_ONLY, build_multitask_model
    from kneelib.train.multitask import (TTA_OPTIONS, FrozenPrefix, RadiographDataset, backbone_prefix,
                                         build_learner, fit_phases, make_dataloaders, predict_tta_options)

    images = np.asarray(images)
    grades = np.asarray(grades).astype(int)
    folds = np.asarray(folds).astype(int)
    if not len(images) == len(grades) == len(folds):
        raise ValueError(f"images ({len(images)}), grades ({len(grades)}) and folds ({len(folds)}) differ in length")
    held = sorted(int(f) for f in np.unique(folds) if f >= 0)
    if not held:
        raise ValueError("folds hold no held-out fold (every value is -1)")
    options = list(dict.fromkeys(["plain", *(TTA_OPTIONS if tta_options is None else tta_options)]))
    phases = recipe.phases()
    augmentation = recipe.augmentation()
    held_out_tta = {option: np.full((len(grades), 5), np.nan) for option in options}
    models, histories = [], []
    seconds = 0.0
    for fold in held:
        set_determinism(seed + fold)
        train, test = folds != fold, folds == fold
        model = build_multitask_model(recipe.backbone, KL_ONLY, imagenet=recipe.imagenet)
        checkpoint = None
        if checkpoint_dir is not None:
            key = kl_fold_checkpoint_key(images, grades, folds, recipe, seed, fold)
            checkpoint = Path(checkpoint_dir) / f"fold{fold}_{key[:24]}.pt"
            if checkpoint.is_file():
                saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
                model.load_state_dict(saved["state_dict"])
                model.eval()
                saved_tta = _checkpoint_tta(saved)
                missing = [option for option in options if option not in saved_tta]
                if missing:
                    saved_tta.update({option: p["kl"] for option, p in
                                      predict_tta_options(model, images[test], recipe.image_size, missing).items()})
                    saved = {**{k: v for k, v in saved.items() if k not in ("held_out", "held_out_flip")},
                             "held_out_tta": saved_tta}
                    atomic_write(checkpoint, lambda tmp, saved=saved: torch.save(saved, tmp))
                for option in options:
                    held_out_tta[option][test] = saved_tta[option]
                histories.append(saved["history"])
                seconds += float(saved["seconds"])
                models.append(model)
                continue
        fold_start = time.perf_counter()
        dls = make_dataloaders(
            RadiographDataset(images[train], grades[train], recipe.image_size, augment=True,
                              augmentation=augmentation),
            RadiographDataset(images[test], grades[test], recipe.image_size, augment=False),
            batch_size=recipe.batch_size)
        frozen = backbone_prefix(model, recipe.frozen_blocks)
        learn = build_learner(model, dls, monitor_task="kl", extra_cbs=[FrozenPrefix(frozen)] if frozen else None)
        history = fit_phases(learn, phases, restore_best=False, show_progress=show_progress)
        histories.append(history.assign(fold=fold))
        model.eval()
        predicted = predict_tta_options(model, images[test], recipe.image_size, options)
        for option in options:
            held_out_tta[option][test] = predicted[option]["kl"]
        models.append(model)
        fold_seconds = time.perf_counter() - fold_start
        seconds += fold_seconds
        if checkpoint is not None:
            saved = {"state_dict": model.state_dict(), "held_out_tta": {o: p["kl"] for o, p in predicted.items()},
                     "history": histories[-1], "seconds": fold_seconds}
            atomic_write(checkpoint, lambda tmp, saved=saved: torch.save(saved, tmp))
    return KLFoldModels(models, folds, held_out_tta, pd.concat(histories, ignore_index=True), seconds)


def _checkpoint_tta(saved: dict) -> dict:
    """Held-out predictions of a fold checkpoint by TTA option (older checkpoints: plain and flip only)."""
    if "held_out_tta" in saved:
        return dict(saved["held_out_tta"])
    return {"plain": saved["held_out"], "flip TTA": saved["held_out_flip"]}


def kl_fold_checkpoint_key(images, grades, folds, recipe: KLRecipe, seed: int, fold: int) -> str:
    """Content key (:func:`kneelib.cache.content_key`) of one fold of :func:`train_kl_folds`:
    recipe, seed, fold, torch version and the exact training data."""
    from dataclasses import asdict

    import torch

    from kneelib.cache import content_key

    arrays = (np.ascontiguousarray(images), np.asarray(grades, dtype=np.int64), np.asarray(folds, dtype=np.int64))
    layout = [[str(a.dtype), list(a.shape)] for a in arrays]
    return content_key(asdict(recipe), {"seed": int(seed), "fold": int(fold), "torch": torch.__version__,
                                        "arrays": layout}, *(a.tobytes() for a in arrays), version="kl-fold-1")


def ensemble_kl_probabilities(models: list, images: np.ndarray, image_size: int, tta: str = "plain",
                              temperature: float = 1.0, batch_size: int = 64, progress: bool = False) -> np.ndarray:
    """Mean KL softmax of the models under a test-time augmentation option, then temperature-scaled.

    ``tta`` names an option of :data:`kneelib.train.multitask.TTA_OPTIONS` (``"plain"``,
    ``"flip TTA"``, ``"rotation TTA"``, ...). The one implementation of a saved grader's
    probabilities: the chapter and ``grade-kl`` both call it.
    """
    from kneelib.stats.calibration import apply_temperature
    from kneelib.train.multitask import predict_probabilities, tta_views

    if not models:
        raise ValueError("ensemble_kl_probabilities needs at least one model")
    views = tta_views(tta)
    mean = np.mean([predict_probabilities(m, images, image_size, batch_size=batch_size, progress=progress,
                                          views=views)["kl"] for m in models], axis=0)
    return mean if temperature == 1.0 else apply_temperature(mean, temperature)


@dataclass(frozen=True)
class KLInferenceChoices:
    """Inference settings chosen on held-out training predictions (never on the reported split).

    Attributes
    ----------
    tta : str
        The test-time augmentation option (:data:`kneelib.train.multitask.TTA_OPTIONS`):
        ``"plain"``, ``"flip TTA"`` (the image and its mirror image), ``"rotation TTA"``...
    temperature : float
        Softmax temperature (1: none).
    cutpoints : tuple or None
        Cut-points on the expected grade, or None for the arg-max.
    table : DataFrame
        The evidence: one row per candidate (``choice, option, kappa, nll, ece, chosen``).
    """

    tta: str
    temperature: float
    cutpoints: tuple | None
    table: pd.DataFrame


def choose_kl_inference(fold_models: KLFoldModels, grades, subjects, n_calibration_folds: int = 5,
                        seed: int = 0) -> KLInferenceChoices:
    """Test-time augmentation, temperature and decoding, each decided out of sample on held-out training rows.

    1. **Test-time augmentation**: of the options with held-out predictions
       (``fold_models.held_out_tta``), the one with the highest held-out quadratic kappa
       (arg-max); an option with more views must beat the others strictly, so ties keep
       the cheaper one (``plain`` first).
    2. **Temperature scaling** is used when the temperature, fitted by cross-fitting
       (on the other calibration folds), lowers the held-out negative log-likelihood;
       the final temperature is then fitted on every held-out row.
    3. **Decoding**: arg-max or cut-points on the expected grade, whichever has the
       higher cross-fitted kappa (:func:`kneelib.stats.ordinal.choose_decoding`).

    The calibration folds are the cross-validation folds when there are several, else
    subject-level folds drawn within the single held-out split.
    """
    from kneelib.stats.agreement import quadratic_kappa
    from kneelib.stats.calibration import (apply_temperature, expected_calibration_error, fit_temperature,
                                           negative_log_likelihood)
    from kneelib.stats.ordinal import choose_decoding
    from kneelib.train.multitask import tta_views

    rows_mask = fold_models.held_out_rows
    y = np.asarray(grades).astype(int)[rows_mask]
    subjects = np.asarray(subjects).astype(str)[rows_mask]
    folds = fold_models.folds[rows_mask]
    if len(np.unique(folds)) < 2:
        folds = kl_subject_folds(y, subjects, min(n_calibration_folds, len(np.unique(subjects))), seed)
    grade_scale = range(5)
    options = sorted(fold_models.held_out_tta, key=lambda option: len(tta_views(option)))
    rows = []
    kappas = {}
    for option in options:
        p = fold_models.held_out_tta[option][rows_mask]
        kappas[option] = quadratic_kappa(y, p.argmax(axis=1), grades=grade_scale)
        rows.append({"choice": "test-time augmentation", "option": option, "kappa": kappas[option],
                     "nll": negative_log_likelihood(p, y), "ece": expected_calibration_error(p, y)})
    tta = options[0]
    for option in options[1:]:
        if kappas[option] > kappas[tta]:
            tta = option
    p = fold_models.held_out_tta[tta][rows_mask]
    crossed = np.empty_like(p)
    for fold in np.unique(folds):
        test = folds == fold
        crossed[test] = apply_temperature(p[test], fit_temperature(p[~test], y[~test]))
    use_temperature = negative_log_likelihood(crossed, y) < negative_log_likelihood(p, y)
    temperature = fit_temperature(p, y) if use_temperature else 1.0
    for option, q in (("T = 1", p), ("cross-fitted T", crossed)):
        rows.append({"choice": "temperature scaling", "option": option,
                     "kappa": quadratic_kappa(y, q.argmax(axis=1), grades=grade_scale),
                     "nll": negative_log_likelihood(q, y), "ece": expected_calibration_error(q, y)})
    calibrated = apply_temperature(p, temperature)
    decoding = choose_decoding({"kl": calibrated}, {"kl": y}, folds)
    row = decoding.table.iloc[0]
    rows.append({"choice": "decoding", "option": "arg-max", "kappa": row["argmax_kappa"]})
    rows.append({"choice": "decoding", "option": "cut-points on the expected grade (cross-fitted)",
                 "kappa": row["cutpoints_kappa"]})
    table = pd.DataFrame(rows)
    cutpoints = decoding.cutpoints["kl"]
    table["chosen"] = [(r == tta) if c == "test-time augmentation" else
                       use_temperature == (r != "T = 1") if c == "temperature scaling" else
                       (cutpoints is not None) == (r != "arg-max")
                       for c, r in zip(table["choice"], table["option"])]
    table.attrs["temperature"] = temperature
    return KLInferenceChoices(tta, float(temperature), None if cutpoints is None else tuple(cutpoints), table)


def fit_kl_feature_density(fold_models: KLFoldModels, images: np.ndarray, image_size: int,
                           max_reference: int = 1500, quantile: float = 0.995, seed: int = 0):
    """Out-of-distribution reference of the first model: its training rows' features, held-out threshold.

    One Gaussian per feature stage of the first model
    (:func:`kneelib.stats.feature_density.fit_layered_density` on
    :func:`kneelib.train.multitask.layer_features`), fitted on (up to ``max_reference``)
    rows the first model trained on; the thresholds are the ``quantile`` of the scores of
    the rows it did not train on.
    """
    from kneelib.stats.feature_density import fit_layered_density
    from kneelib.train.multitask import layer_features

    first_fold = sorted(int(f) for f in np.unique(fold_models.folds) if f >= 0)[0]
    trained = np.flatnonzero(fold_models.folds != first_fold)
    rng = np.random.default_rng(seed)
    if len(trained) > max_reference:
        trained = np.sort(rng.choice(trained, size=max_reference, replace=False))
    model = fold_models.models[0]
    held = np.flatnonzero(fold_models.folds == first_fold)
    return fit_layered_density(layer_features(model, images[trained], image_size),
                               layer_features(model, images[held], image_size), quantile)
