"""Cross-validated training of the slice-attention network with fastai (paper 002, 2.2.3, 2.4.2).

Schiratti et al. 2021, 2.2.3: "The performance of models ... was evaluated using a five-fold
cross-validation scheme". Folds are subject-level (both knees of a participant in the same
fold, :func:`kneelib.train.splits.stratified_kfold` with ``groups``), stratified on the label.

Choices the paper does not state (the chapter lists them as deviations): Adam with fastai's
one-cycle schedule for a fixed number of epochs (no early stopping, so the test fold never
steers model selection), class-weighted cross-entropy (the classes are 14 % / 86 %; the
paper's 13 % precision at 84 % recall shows a decision threshold far below the prevalence-
blind 0.5), and per-feature standardisation of slice vectors and clinical variables with the
mean and standard deviation of the *training* knees of each fold. With ``n_components`` the
standardised slice vectors are further projected on the leading principal axes of the training
knees' slices, whitened (:class:`FoldStandardisation`): with ~500 training knees, a network
that meets 1280 inputs per slice overfits them and drowns the one clinical input (BMI); the
book's chapter chose its settings on a separate development cohort
(``kneelib.papers.jsn_progression.DEVELOPMENT_RUNS``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch

import fastai.callback.progress  # noqa: F401  (Learner.no_bar)
import fastai.callback.schedule  # noqa: F401  (Learner.fit_one_cycle)
from fastai.data.core import DataLoaders
from fastai.data.load import DataLoader
from fastai.learner import Learner
from fastai.losses import CrossEntropyLossFlat
from fastai.optimizer import Adam
from fastai.torch_core import set_seed

from kneelib.models.slice_attention import SliceAttentionNet

__all__ = ["AttentionTrainConfig", "FoldStandardisation", "SliceBagDataset", "train_attention_model",
           "predict_attention_model", "CrossValidatedAttention", "cross_validate_attention"]


@dataclass(frozen=True)
class AttentionTrainConfig:
    """Optimisation and size settings of one training run (none given by the paper)."""

    epochs: int = 15
    lr: float = 1e-3
    batch_size: int = 32
    weight_decay: float = 1e-2
    conv_channels: int = 64
    gru_hidden: int = 32
    mlp_hidden: int = 64
    dropout: float = 0.3
    class_weighted: bool = True
    n_components: int | None = None
    seed: int = 0

    def __post_init__(self):
        if self.n_components is not None and int(self.n_components) < 1:
            raise ValueError(f"n_components must be >= 1 or None, got {self.n_components}")


@dataclass(frozen=True)
class FoldStandardisation:
    """Mean and SD of slice features and clinical variables over the training knees, and
    optionally the leading principal axes of the standardised training slices.

    With ``components`` (``(k, n_features)``, rows scaled so that each projection has unit
    variance over the training slices), :meth:`apply` returns ``k`` whitened principal
    scores per slice instead of the ``n_features`` standardised values.
    """

    feature_mean: np.ndarray
    feature_sd: np.ndarray
    clinical_mean: np.ndarray
    clinical_sd: np.ndarray
    components: np.ndarray | None = None

    @classmethod
    def fit(cls, features, mask, clinical, rows, n_components: int | None = None) -> "FoldStandardisation":
        rows = np.asarray(rows, dtype=int)
        present = features[rows][mask[rows]]
        if len(present) == 0:
            raise ValueError("no slice among the training knees")
        clin = np.asarray(clinical, dtype=float)[rows]
        mean, sd = present.mean(0), present.std(0) + 1e-6
        components = None
        if n_components is not None:
            k = int(n_components)
            if k > min(present.shape):
                raise ValueError(f"n_components={k} exceeds the training slices' rank bound {min(present.shape)}")
            z = ((present - mean) / sd).astype(np.float64)
            # eigenvectors of the (features x features) covariance: five times faster than an
            # SVD of the (slices x features) matrix at 7,600 x 1,280, same axes
            variance, axes = np.linalg.eigh(z.T @ z / max(len(z) - 1, 1))
            order = np.argsort(variance)[::-1][:k]
            axes = axes[:, order].T
            axes *= np.where(axes[np.arange(k), np.abs(axes).argmax(axis=1)] < 0, -1.0, 1.0)[:, None]  # fixed sign
            components = (axes / np.sqrt(np.maximum(variance[order], 1e-12))[:, None]).astype(np.float32)
        return cls(mean, sd, clin.mean(0) if clin.shape[1] else np.zeros(0),
                   clin.std(0) + 1e-6 if clin.shape[1] else np.ones(0), components)

    @property
    def n_inputs(self) -> int:
        """Length of a slice vector after :meth:`apply`."""
        return len(self.feature_mean) if self.components is None else len(self.components)

    def transform_torch(self, vectors: torch.Tensor) -> torch.Tensor:
        """:meth:`apply`'s slice transform on a ``(..., n_features)`` tensor, differentiable (Grad-CAM)."""
        mean = torch.as_tensor(self.feature_mean, dtype=vectors.dtype, device=vectors.device)
        sd = torch.as_tensor(self.feature_sd, dtype=vectors.dtype, device=vectors.device)
        z = (vectors - mean) / sd
        if self.components is not None:
            z = z @ torch.as_tensor(self.components, dtype=vectors.dtype, device=vectors.device).T
        return z

    def apply(self, features, mask, clinical) -> tuple[np.ndarray, np.ndarray]:
        scaled = (features - self.feature_mean) / self.feature_sd
        if self.components is not None:
            scaled = scaled @ self.components.T
        scaled = scaled * mask[..., None]
        clin = (np.asarray(clinical, dtype=float) - self.clinical_mean) / self.clinical_sd
        return scaled.astype(np.float32), clin.astype(np.float32)


class SliceBagDataset(torch.utils.data.Dataset):
    """``(features, mask, clinical, label)`` of one knee per item."""

    def __init__(self, features, mask, clinical, labels, rows):
        self.features, self.mask, self.clinical = features, mask, clinical
        self.labels, self.rows = np.asarray(labels, dtype=np.int64), np.asarray(rows, dtype=int)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i):
        r = self.rows[i]
        return (torch.from_numpy(self.features[r]), torch.from_numpy(self.mask[r]),
                torch.from_numpy(self.clinical[r]), torch.tensor(self.labels[r]))


def _check(features, mask, clinical, labels):
    features = np.asarray(features, dtype=np.float32)
    mask = np.asarray(mask, dtype=bool)
    clinical = np.asarray(clinical, dtype=np.float32)
    labels = np.asarray(labels)
    if clinical.ndim == 1:
        clinical = clinical[:, None]
    if features.ndim != 3 or mask.shape != features.shape[:2]:
        raise ValueError(f"features must be (knees, slices, n) with mask (knees, slices); got "
                         f"{features.shape} and {mask.shape}")
    if not (len(clinical) == len(labels) == len(features)):
        raise ValueError(f"features ({len(features)}), clinical ({len(clinical)}) and labels ({len(labels)}) "
                         f"must have one row per knee")
    if not np.all(np.isfinite(clinical)):
        raise ValueError("clinical variables hold missing values; exclude or impute those knees first")
    if not mask.any(axis=1).all():
        raise ValueError("some knees have no slice (missing series); drop them first")
    return features, mask, clinical, labels


def train_attention_model(features, mask, clinical, labels, train_rows,
                          config: AttentionTrainConfig = AttentionTrainConfig()):
    """Train one :class:`~kneelib.models.slice_attention.SliceAttentionNet` on ``train_rows``.

    Returns
    -------
    model : SliceAttentionNet (eval mode)
    standardisation : FoldStandardisation
    """
    features, mask, clinical, labels = _check(features, mask, clinical, labels)
    train_rows = np.asarray(train_rows, dtype=int)
    y = labels[train_rows].astype(int)
    if not set(np.unique(y)) <= {0, 1} or len(np.unique(y)) < 2:
        raise ValueError("training labels must hold both classes 0 and 1")
    standard = FoldStandardisation.fit(features, mask, clinical, train_rows, config.n_components)
    scaled, clin = standard.apply(features, mask, clinical)
    set_seed(config.seed)
    train = DataLoader(SliceBagDataset(scaled, mask, clin, labels, train_rows), bs=config.batch_size,
                       shuffle=True, drop_last=len(train_rows) > config.batch_size)
    valid = DataLoader(SliceBagDataset(scaled, mask, clin, labels, train_rows[:0]), bs=config.batch_size)
    set_seed(config.seed)
    model = SliceAttentionNet(scaled.shape[2], clin.shape[1], config.conv_channels, 3, config.gru_hidden,
                              config.mlp_hidden, config.dropout)
    weight = None
    if config.class_weighted:
        counts = np.bincount(y, minlength=2).astype(np.float32)
        weight = torch.tensor(len(y) / (2 * counts), dtype=torch.float32)
    learner = Learner(DataLoaders(train, valid), model, loss_func=CrossEntropyLossFlat(weight=weight),
                      opt_func=partial(Adam), wd=config.weight_decay)
    with learner.no_bar(), learner.no_logging():
        learner.fit_one_cycle(config.epochs, config.lr)
    return model.eval(), standard


@torch.no_grad()
def predict_attention_model(model, standardisation: FoldStandardisation, features, mask, clinical, rows):
    """Probability of class 1 and the attention weights ``(len(rows), slices)`` of knees ``rows``."""
    rows = np.asarray(rows, dtype=int)
    clinical = np.asarray(clinical, dtype=np.float32)
    clinical = clinical[:, None] if clinical.ndim == 1 else clinical
    scaled, clin = standardisation.apply(features[rows], mask[rows], clinical[rows])
    model.eval()
    logits = model(torch.from_numpy(scaled), torch.from_numpy(mask[rows]), torch.from_numpy(clin))
    return torch.softmax(logits, dim=1)[:, 1].numpy(), model.last_attention.numpy()


@dataclass
class CrossValidatedAttention:
    """Out-of-fold predictions of one attention model (every knee predicted by the fold model
    that never saw its participant)."""

    name: str
    rows: np.ndarray
    labels: np.ndarray
    fold: np.ndarray
    probability: np.ndarray
    attention: np.ndarray
    models: list = field(default_factory=list, repr=False)
    standardisations: list = field(default_factory=list, repr=False)


def _fit_fold(job: tuple):
    """Train on one fold's training rows, predict its test rows (one task of :func:`cross_validate_attention`).

    Each fold seeds its own generators (:func:`train_attention_model`), so its model does not
    depend on the process or the order it runs in. ``threads``: torch threads inside the task.
    """
    import torch

    features, mask, clinical, labels, train, test, config, threads = job
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model, standard = train_attention_model(features, mask, clinical, labels, train, config)
        probability, attention = predict_attention_model(model, standard, features, mask, clinical, test)
    finally:
        torch.set_num_threads(before)
    return probability, attention, model, standard


def cross_validate_attention(name: str, features, mask, clinical, labels, fold,
                             config: AttentionTrainConfig = AttentionTrainConfig(),
                             n_jobs: int | None = 1) -> CrossValidatedAttention:
    """Train on ``fold != k`` and predict ``fold == k`` for every fold ``k`` (paper 002, 2.2.3).

    With ``n_jobs`` > 1 (None: every core) the folds run in worker processes of
    :func:`kneelib.executor.map_tasks`, one torch thread each; every fold seeds itself, so the
    result equals the sequential one.

    Parameters
    ----------
    features, mask, clinical, labels
        One row per knee of the task (labels 0/1, no missing values).
    fold : array-like of int
        Test fold per knee (subject-level, e.g. :func:`kneelib.train.splits.stratified_kfold`
        with ``groups``).
    config : AttentionTrainConfig
    n_jobs : int, optional
        Worker processes over folds (1: in this process, with its torch threads).

    Returns
    -------
    CrossValidatedAttention
    """
    import torch

    from kneelib.executor import map_tasks, resolve_n_jobs

    features, mask, clinical, labels = _check(features, mask, clinical, labels)
    fold = np.asarray(fold)
    if len(fold) != len(labels):
        raise ValueError(f"fold has {len(fold)} entries for {len(labels)} knees")
    probability = np.full(len(labels), np.nan)
    attention = np.zeros(mask.shape, np.float32)
    folds = np.unique(fold)
    workers = resolve_n_jobs(n_jobs, len(folds))
    threads = 1 if workers > 1 else torch.get_num_threads()
    tests = [np.flatnonzero(fold == k) for k in folds]
    jobs = [(features, mask, clinical, labels, np.flatnonzero(fold != k), test, config, threads)
            for k, test in zip(folds, tests)]
    outcomes = map_tasks(_fit_fold, jobs, n_jobs=workers, progress=False, desc=name, unit="fold")
    models, standards = [], []
    for test, (fold_probability, fold_attention, model, standard) in zip(tests, outcomes):
        probability[test], attention[test] = fold_probability, fold_attention
        models.append(model)
        standards.append(standard)
    return CrossValidatedAttention(name, np.arange(len(labels)), labels.astype(int), fold, probability, attention,
                                   models, standards)
