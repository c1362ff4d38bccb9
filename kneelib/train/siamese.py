"""Training and cross-validation of the Siamese knee-pain network with fastai (paper 000).

Paper 000, Methods "Deep learning architecture": "The training was performed using
stochastic gradient descent optimizer and cross-entropy loss function for binary
classification, and a batch size of 64"; Methods (cross-validation paragraph): 10-fold
cross-validation in which each subject is tested exactly once, AUC of the pooled ROC.

Inputs are arrays ``images`` of shape ``(n_subjects, 2 knees, n_slices, H, W)``
(knee 0 = left, 1 = right; slices medial -> lateral after mirroring) and ``labels``
(0 = frequent pain in the left knee, 1 = in the right knee). Intensities are
standardised with the mean and standard deviation of the *training* subjects only.

Choices the paper does not state (recorded as deviations in the chapter): the
learning-rate schedule (fastai one-cycle with SGD + momentum), the epoch count,
weight decay, and the monitoring set -- a stratified ``valid_fraction`` of each
training fold, so the held-out fold is touched only once, to predict it.

Design note: how the chapter composes these steps
-------------------------------------------------
``kneelib.papers.siamese_pain`` (written once the synthetic cohort exists) will:

1. ask ``kneelib.data`` for the cohort table (unilateral frequent pain; Model A = all
   after QC, Model B = WOMAC pain difference above 2) and the SAG_IW_TSE_LEFT/RIGHT series;
   Table 1 via :func:`kneelib.stats.group_tests.table1_by_group`;
2. per knee: slices medial -> lateral with left knees mirrored
   (:func:`kneelib.preprocess.registration.sagittal_slices` on a ``kneelib.data`` Volume,
   or :func:`~kneelib.preprocess.registration.order_slices_medial_to_lateral` on raw
   stacks), find the PCL centre slice
   (:func:`kneelib.preprocess.center_slice.detect_pcl_center_slice`; report exact and
   +/-1 accuracy against ``pcl_center_slice`` of the ground truth; record knees it
   cannot find in the QC exclusion list), keep ``n_slices`` around it (``step=3`` at
   ``default`` so 7 slices span the paper's 23), register each slice rigidly to the
   template knee and resample the 105 mm crop at ``image_size``
   (:func:`kneelib.preprocess.registration.preprocess_knee`, which carries the lesion
   masks along with ``label_volumes``), cached per subject;
3. stack to ``images`` and run :func:`cross_validate` for Models A and B with folds
   from :func:`kneelib.train.splits.stratified_kfold` on
   :func:`kneelib.train.splits.make_strata`; pooled/per-fold AUC with CIs, ROC curves
   and the subgroup table from :mod:`kneelib.stats.roc` (Fig. 4);
4. on the 70:15:15 split (:func:`kneelib.train.splits.stratified_train_val_test_split`)
   train one Siamese model and one :func:`kneelib.models.vgg_cam.siamese_vgg16_cam`
   with :func:`train_siamese`, compute CAMs on the test part
   (:func:`kneelib.explain.cam.siamese_cams`, :func:`~kneelib.explain.cam.top_cam_slice`)
   and score them with :mod:`kneelib.explain.pointing` against the planted lesion
   masks (Fig. 3I as a pointing game);
5. show subjects with :class:`kneelib.widgets.SubjectExplorer` (in the book, its kernel-free
   twin :class:`kneelib.widgets.StaticExplorer`).

Budget of the ``default`` run (``benchmarks/bench_siamese.py``; 2 cores): a training
step costs 0.64 GFLOP per knee pair at 64 px, 7 slices, widths 16..128; measured
80-115 pairs/s on an idle machine and 10-16 pairs/s while other jobs loaded it.
Training pair-steps = n_subjects x 0.9 x (1 - valid_fraction) x epochs x folds, e.g.
Model A n = 300 and Model B n = 150, 10 epochs, 10 folds: about 36,000 -> 6-8 min idle.
The VGG16-CAM comparison (width 1/8) costs 2.7x per pair but trains once on the 70%
split. Rigid registration: about 25-60 ms per slice (4,200 slices for 300 subjects).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Callable


import numpy as np
import pandas as pd
import torch

# fastai's torch.jit FutureWarning is silenced once, in kneelib/train/__init__.py
import fastai.callback.progress  # noqa: F401,E402  (registers the progress bar and Learner.no_bar)
import fastai.callback.schedule  # noqa: F401,E402  (Learner.fit_one_cycle)
from fastai.data.core import DataLoaders
from fastai.data.load import DataLoader
from fastai.learner import Learner
from fastai.losses import CrossEntropyLossFlat
from fastai.metrics import RocAucBinary
from fastai.optimizer import SGD
from fastai.torch_core import set_seed
from torch import nn
from tqdm.auto import tqdm

from .splits import stratified_kfold

__all__ = [
    "TrainConfig",
    "Standardization",
    "PairedKneeDataset",
    "build_dataloaders",
    "make_learner",
    "merge_small_strata",
    "train_siamese",
    "predict_probability",
    "CrossValidationResult",
    "cross_validate",
]


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings of one training run.

    Attributes
    ----------
    epochs : int
        Passes over the training subjects.
    lr : float
        Peak learning rate of the one-cycle schedule.
    batch_size : int
        64 in the paper.
    momentum : float
        SGD momentum (fastai's one-cycle cycles it between 0.95 and 0.85 around it).
    weight_decay : float
        Decoupled weight decay.
    valid_fraction : float
        Share of the training subjects held out (stratified) for the fastai
        validation display; the model is never selected on it. 0 = no monitoring set.
    seed : int
        Seeds model initialisation, shuffling and the monitoring split.
    channels_last : bool
        Store convolution weights channels-last (NHWC); about 1.4x faster training
        on this CPU (oneDNN) for one-channel slices, same results for the same seed.
    """

    epochs: int = 10
    lr: float = 0.05
    batch_size: int = 64
    momentum: float = 0.9
    weight_decay: float = 1e-4
    valid_fraction: float = 0.1
    seed: int = 0
    channels_last: bool = True


@dataclass(frozen=True)
class Standardization:
    """Intensity mean and standard deviation of the training subjects."""

    mean: float
    std: float

    @classmethod
    def fit(cls, images: np.ndarray, indices: np.ndarray) -> "Standardization":
        total = total_sq = count = 0.0
        for start in range(0, len(indices), 64):  # chunked: works on memory-mapped arrays
            values = np.asarray(images[np.sort(indices)[start:start + 64]], dtype=np.float64)
            total, total_sq, count = total + values.sum(), total_sq + (values ** 2).sum(), count + values.size
        if count == 0:
            raise ValueError("no training images to standardise with")
        mean = total / count
        std = float(np.sqrt(max(total_sq / count - mean ** 2, 0.0)))
        if not np.isfinite(std) or std == 0:
            raise ValueError("training images have zero or non-finite intensity spread; check preprocessing")
        return cls(float(mean), std)


def _check_images(images, labels) -> tuple[np.ndarray, np.ndarray]:
    images = np.asarray(images) if not isinstance(images, np.ndarray) else images
    labels = np.asarray(labels).astype(np.int64)
    if images.ndim != 5 or images.shape[1] != 2:
        raise ValueError(f"images must have shape (n_subjects, 2 knees, n_slices, H, W); got {images.shape}")
    if len(labels) != len(images):
        raise ValueError(f"labels has {len(labels)} entries but images has {len(images)} subjects")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 0 (left knee painful) or 1 (right knee painful)")
    return images, labels


class PairedKneeDataset(torch.utils.data.Dataset):
    """Subjects ``indices`` of ``images`` as standardised float tensors with their label.

    ``images`` may be a memory map; items are read and standardised lazily.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, indices, standardization: Standardization):
        self.images, self.labels = images, labels
        self.indices = np.asarray(indices, dtype=int)
        self.standardization = standardization

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int):
        row = self.indices[item]
        image = (np.asarray(self.images[row], dtype=np.float32) - self.standardization.mean) / self.standardization.std
        return torch.from_numpy(image.astype(np.float32)), torch.tensor(self.labels[row])


def build_dataloaders(images, labels, train_indices, valid_indices, batch_size: int = 64, seed: int = 0,
                      device=None) -> DataLoaders:
    """fastai ``DataLoaders`` over subjects of a ``(n, 2, n_slices, H, W)`` array.

    Parameters
    ----------
    images : ndarray, shape (n_subjects, 2, n_slices, H, W)
    labels : array-like of {0, 1}, shape (n_subjects,)
    train_indices, valid_indices : array-like of int
        Subjects of each part (disjoint).
    batch_size : int
        64 in the paper (Methods).
    seed : int
        Seeds the shuffling of the training loader (via fastai's ``set_seed``, which
        re-seeds Python, NumPy and torch globally).
    device : torch.device or None
        fastai's default when ``None``.

    Returns
    -------
    DataLoaders
        ``dls.standardization`` holds the training mean/std used for both parts.
    """
    images, labels = _check_images(images, labels)
    train_indices = np.asarray(train_indices, dtype=int)
    valid_indices = np.asarray(valid_indices, dtype=int)
    if len(train_indices) == 0:
        raise ValueError("train_indices is empty")
    if np.intersect1d(train_indices, valid_indices).size:
        raise ValueError("train_indices and valid_indices share subjects")
    standardization = Standardization.fit(images, train_indices)
    set_seed(seed)  # fastai's DataLoader draws its shuffling RNG from `random`
    train = DataLoader(PairedKneeDataset(images, labels, train_indices, standardization), bs=batch_size,
                       shuffle=True, drop_last=len(train_indices) > batch_size, device=device)
    valid = DataLoader(PairedKneeDataset(images, labels, valid_indices, standardization), bs=batch_size,
                       shuffle=False, device=device)
    dls = DataLoaders(train, valid, device=device)
    dls.standardization = standardization
    return dls


def make_learner(dls: DataLoaders, model: nn.Module, config: TrainConfig = TrainConfig()) -> Learner:
    """fastai ``Learner``: SGD with momentum, cross-entropy, ROC AUC on the monitoring set."""
    metrics = [RocAucBinary()] if len(dls.valid.dataset) else []
    return Learner(dls, model, loss_func=CrossEntropyLossFlat(),
                   opt_func=partial(SGD, mom=config.momentum), wd=config.weight_decay, metrics=metrics)


def _learner_quietly(learner: Learner, show_progress: bool):
    if show_progress:
        from contextlib import nullcontext
        return nullcontext()
    from contextlib import ExitStack
    stack = ExitStack()
    stack.enter_context(learner.no_bar())
    stack.enter_context(learner.no_logging())
    return stack


def merge_small_strata(strata, labels, min_count: int) -> np.ndarray:
    """Strata in which every stratum has at least ``min_count`` rows, each within one label.

    A stratum smaller than ``min_count`` joins the largest stratum of its label; scikit-learn's
    stratified k-fold then never meets a class with fewer members than folds (which it
    answers with "The least populated class in y has only ... members").

    Parameters
    ----------
    strata : array-like of str, shape (n,)
        E.g. from :func:`kneelib.train.splits.make_strata` (label first in each stratum).
    labels : array-like, shape (n,)
    min_count : int
        Number of folds.

    Returns
    -------
    ndarray of str

    Raises
    ------
    ValueError
        When a label has fewer than ``min_count`` rows (no stratification can keep it in
        every fold).
    """
    strata = np.asarray(strata).astype(object)
    labels = np.asarray(labels)
    if len(strata) != len(labels):
        raise ValueError(f"strata has {len(strata)} values but labels has {len(labels)}")
    for value in np.unique(labels):
        members = labels == value
        if members.sum() < min_count:
            raise ValueError(f"label {value} has {int(members.sum())} subjects, fewer than {min_count} folds")
        names, counts = np.unique(strata[members], return_counts=True)
        small = names[counts < min_count]
        if len(small):
            strata[members & np.isin(strata, small)] = names[np.argmax(counts)]
    return strata.astype(str)


def train_siamese(images, labels, train_indices, model_factory: Callable[[], nn.Module],
                  config: TrainConfig = TrainConfig(), valid_indices=None, strata=None,
                  show_progress: bool = True) -> Learner:
    """Train one model on ``train_indices`` (fixed epochs, one-cycle SGD).

    Parameters
    ----------
    images, labels
        As in :func:`build_dataloaders`.
    train_indices : array-like of int
        Subjects the model may learn from.
    model_factory : callable
        Returns a new, untrained model (called after seeding, so initialisation is
        reproducible).
    config : TrainConfig
    valid_indices : array-like of int or None
        Monitoring subjects. ``None``: one fold of a stratified
        ``round(1 / config.valid_fraction)``-fold split of ``train_indices`` (by
        ``strata`` if given, else by label); none when a class has fewer subjects
        than folds. Strata too small for the monitoring folds are merged
        (:func:`merge_small_strata`).
    strata : array-like or None
        Stratum per subject of the whole array, for the monitoring split.
    show_progress : bool
        fastai progress bars and the per-epoch table.

    Returns
    -------
    Learner
        Trained; ``learner.dls.standardization`` holds the intensity scaling, and
        ``learner.recorder.values`` the per-epoch monitoring metrics.
    """
    images, labels = _check_images(images, labels)
    train_indices = np.asarray(train_indices, dtype=int)
    if valid_indices is None:
        n_parts = int(round(1 / config.valid_fraction)) if config.valid_fraction > 0 else 0
        class_counts = np.bincount(labels[train_indices], minlength=2)
        if n_parts >= 2 and class_counts.min() >= n_parts:
            part_labels = labels[train_indices]
            part_strata = (None if strata is None
                           else merge_small_strata(np.asarray(strata)[train_indices], part_labels, n_parts))
            part = stratified_kfold(labels[train_indices], n_parts, strata=part_strata, seed=config.seed)
            valid_indices, train_indices = train_indices[part == 0], train_indices[part != 0]
        else:  # too few subjects per class for a stratified monitoring set
            valid_indices = np.array([], dtype=int)
    dls = build_dataloaders(images, labels, train_indices, valid_indices, config.batch_size, config.seed)
    set_seed(config.seed)
    model = model_factory()
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    learner = make_learner(dls, model, config)
    with _learner_quietly(learner, show_progress):
        learner.fit_one_cycle(config.epochs, config.lr)
    return learner


@torch.no_grad()
def predict_probability(model: nn.Module, images, indices, standardization: Standardization,
                        batch_size: int = 64) -> np.ndarray:
    """Softmax probability of class 1 (pain in the right knee) for subjects ``indices``."""
    images = images if isinstance(images, np.ndarray) else np.asarray(images)
    indices = np.asarray(indices, dtype=int)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    try:
        for start in range(0, len(indices), batch_size):
            rows = indices[start:start + batch_size]
            batch = (np.asarray(images[rows], dtype=np.float32) - standardization.mean) / standardization.std
            logits = model(torch.from_numpy(batch.astype(np.float32)).to(device))
            out.append(torch.softmax(logits, dim=1)[:, 1].cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(out) if out else np.array([], dtype=np.float32)


@dataclass
class CrossValidationResult:
    """Out-of-fold predictions of a k-fold cross-validation.

    Attributes
    ----------
    probability : ndarray, shape (n_subjects,)
        P(right knee painful) from the model that did not see the subject.
    fold : ndarray of int, shape (n_subjects,)
    labels : ndarray of int, shape (n_subjects,)
    history : DataFrame
        Per fold and epoch: train loss, monitoring loss and AUC.
    models : dict of int to (nn.Module, Standardization)
        Each fold's trained network and input standardisation, kept when
        ``cross_validate(..., keep_models=True)`` (for out-of-fold saliency maps).
    """

    probability: np.ndarray
    fold: np.ndarray
    labels: np.ndarray
    history: pd.DataFrame = field(default_factory=pd.DataFrame)
    models: dict = field(default_factory=dict)


def cross_validate(images, labels, fold, model_factory: Callable[[], nn.Module],
                   config: TrainConfig = TrainConfig(), strata=None,
                   show_progress: bool = True, keep_models: bool = False) -> CrossValidationResult:
    """k-fold cross-validation: train on ``fold != k``, predict ``fold == k`` (paper 000, 10 folds).

    Fold ``k`` is trained with seed ``config.seed + k``; the same inputs and seed give
    the same out-of-fold predictions on CPU. With ``keep_models`` each fold's network is
    returned, so that every subject can be explained by the model that never saw it.
    """
    images, labels = _check_images(images, labels)
    fold = np.asarray(fold, dtype=int)
    if len(fold) != len(labels):
        raise ValueError(f"fold has {len(fold)} entries but there are {len(labels)} subjects")
    probability = np.full(len(labels), np.nan)
    histories, models = [], {}
    folds = np.unique(fold)
    for k in tqdm(folds, desc="folds", disable=not show_progress):
        train_indices, test_indices = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
        fold_config = TrainConfig(**{**config.__dict__, "seed": config.seed + int(k)})
        learner = train_siamese(images, labels, train_indices, model_factory, fold_config, strata=strata,
                                show_progress=False)
        probability[test_indices] = predict_probability(learner.model, images, test_indices,
                                                        learner.dls.standardization, config.batch_size)
        names = [n for n in learner.recorder.metric_names[1:] if n != "time"]
        table = pd.DataFrame([list(v) for v in learner.recorder.values], columns=names[:len(learner.recorder.values[0])])
        table.insert(0, "epoch", np.arange(len(table)))
        table.insert(0, "fold", int(k))
        histories.append(table)
        if keep_models:
            models[int(k)] = (learner.model.eval(), learner.dls.standardization)
    return CrossValidationResult(probability, fold, labels, pd.concat(histories, ignore_index=True), models)
