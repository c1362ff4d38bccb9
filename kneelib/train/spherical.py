"""Training the spherical-image classifiers of paper 001 with fastai, and the Fig. S4 grid.

Paper 001, Methods "Chronic pain model training": Adam, "class-weighted binary cross entropy
loss, based on the class imbalance", up to 100 epochs with "early stopping 15-epoch patience
for validation loss non-improvement", batch size 300; "Model training optimization [...] using
the training and validation splits with two different learning rates (1e-4 and 1e-5), three
types of Resnet [...], three initialization strategies (Random, ImageNet, OA), and four variants
of layer freezing"; "the test performance was evaluated just once for the optimal 18 models".

- :func:`prepare_images`: uint8 ``(n, H, W, 3)`` images (:mod:`kneelib.qmri.inputs`) to float
  ``(n, 3, s, s)`` tensors at ``image_size`` (area averaging), standardised with the ImageNet
  channel means and SDs (what the substitute's weights expect; the same for every model).
- :func:`train_spherical`: one fastai ``Learner`` (Adam, class-weighted
  ``CrossEntropyLossFlat``), with early stopping on the validation loss and the best
  validation-loss weights restored (:class:`KeepBestValidLoss`).
- :func:`grid_search`: every configuration of a grid on the same training and validation
  knees; the chosen one maximises the validation selection score of the authors'
  ``painoptimization.csv``, TPN = sensitivity + specificity + AUC (validation only).
"""
from __future__ import annotations

import contextlib
import copy
import io
import itertools
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

import fastai.callback.progress  # noqa: F401  (registers the progress bar and Learner.no_bar)
from fastai.callback.core import Callback
from fastai.callback.tracker import EarlyStoppingCallback
from fastai.data.core import DataLoaders
from fastai.data.load import DataLoader
from fastai.learner import Learner
from fastai.losses import CrossEntropyLossFlat
from fastai.optimizer import Adam
from fastai.torch_core import set_seed

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "SphericalTrainConfig", "prepare_images", "class_weights",
           "KeepBestValidLoss", "QuietEarlyStopping", "train_spherical", "predict_probability", "validation_scores", "grid_configurations", "grid_search"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class SphericalTrainConfig:
    """One training run (paper: Adam, 100 epochs, patience 15, batch 300; lr 1e-4 or 1e-5)."""

    epochs: int = 100
    lr: float = 1e-4
    batch_size: int = 300
    weight_decay: float = 0.0
    patience: int = 15
    seed: int = 0


def prepare_images(images: np.ndarray, image_size: int | None = None) -> torch.Tensor:
    """uint8 ``(n, H, W, 3)`` -> standardised float ``(n, 3, s, s)`` (``s = image_size``, default ``H``)."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be (n, H, W, 3), got {images.shape}")
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
    if image_size is not None and x.shape[-1] != image_size:
        x = F.interpolate(x, size=(image_size, image_size), mode="area")
    mean = torch.tensor(IMAGENET_MEAN)[None, :, None, None]
    std = torch.tensor(IMAGENET_STD)[None, :, None, None]
    return ((x - mean) / std).contiguous()


def class_weights(labels) -> torch.Tensor:
    """``n / (2 n_c)`` per class (balanced weights from the training labels)."""
    counts = np.bincount(np.asarray(labels, int), minlength=2).astype(float)
    if np.any(counts == 0):
        raise ValueError(f"both classes are needed in the training labels, got counts {counts.tolist()}")
    return torch.tensor(counts.sum() / (2.0 * counts), dtype=torch.float32)


class _Rows(torch.utils.data.Dataset):
    def __init__(self, x: torch.Tensor, y: np.ndarray, rows: np.ndarray):
        self.x, self.y, self.rows = x, torch.as_tensor(np.asarray(y, np.int64)), np.asarray(rows, int)

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        r = self.rows[i]
        return self.x[r], self.y[r]


class KeepBestValidLoss(Callback):
    """Remember the weights of the epoch with the lowest validation loss; restore them after fit.

    It also keeps the frozen stages (:func:`kneelib.models.spherical_resnet.set_frozen`) in eval
    mode while training, so their batch-norm statistics stay those they were loaded with.
    """

    order = 70

    def before_fit(self):
        self.best, self.state, self.best_epoch = np.inf, None, -1

    def before_train(self):  # after fastai's TrainEvalCallback has put the model in training mode
        frozen = getattr(self.learn.model, "n_frozen", 0)
        for stage in list(getattr(self.learn.model, "stages", []))[:frozen]:
            stage.eval()  # frozen stages keep their batch-norm statistics

    def after_epoch(self):
        loss = self.recorder.values[-1][1] if self.recorder.values else np.inf
        if loss is not None and np.isfinite(loss) and loss < self.best:
            self.best, self.best_epoch = float(loss), self.epoch
            self.state = copy.deepcopy(self.learn.model.state_dict())

    def after_fit(self):
        if self.state is not None:
            self.learn.model.load_state_dict(self.state)


class QuietEarlyStopping(EarlyStoppingCallback):
    """fastai's early stopping without its printed line (a chapter page showed one per fit).

    ``stopped_after_epoch`` records the epoch the fit stopped after (None: ran to the end).
    """

    stopped_after_epoch = None

    def after_epoch(self):
        with contextlib.redirect_stdout(io.StringIO()) as said:
            try:
                super().after_epoch()
            finally:
                if said.getvalue():
                    self.stopped_after_epoch = int(self.epoch)


def train_spherical(model: torch.nn.Module, images: torch.Tensor, labels, train_rows, valid_rows,
                    config: SphericalTrainConfig = SphericalTrainConfig(), show_progress: bool = False) -> Learner:
    """Train ``model`` on ``train_rows`` of ``images`` (:func:`prepare_images`), monitored on ``valid_rows``.

    Class-weighted cross-entropy (:func:`class_weights` of the training rows), Adam, constant
    learning rate, early stopping after ``config.patience`` epochs without a lower validation
    loss; the best validation-loss weights are restored. ``learner.best_epoch`` records which,
    ``learner.stopped_after_epoch`` the epoch early stopping ended the fit after (None: all epochs).
    """
    labels = np.asarray(labels, int)
    train_rows, valid_rows = np.asarray(train_rows, int), np.asarray(valid_rows, int)
    if len(valid_rows) == 0:
        raise ValueError("train_spherical needs validation rows (early stopping and selection use them)")
    set_seed(config.seed)
    train = DataLoader(_Rows(images, labels, train_rows), bs=config.batch_size, shuffle=True,
                       drop_last=len(train_rows) > config.batch_size)
    valid = DataLoader(_Rows(images, labels, valid_rows), bs=config.batch_size, shuffle=False)
    dls = DataLoaders(train, valid, device=torch.device("cpu") if not torch.cuda.is_available() else None)
    keep = KeepBestValidLoss()
    learner = Learner(dls, model, loss_func=CrossEntropyLossFlat(weight=class_weights(labels[train_rows])),
                      opt_func=Adam, wd=config.weight_decay, cbs=[keep])
    stop = QuietEarlyStopping(monitor="valid_loss", patience=config.patience)
    if show_progress:  # fastai's progress bar, without the per-epoch table
        with learner.no_logging():
            learner.fit(config.epochs, config.lr, cbs=[stop])
    else:
        with learner.no_bar(), learner.no_logging():
            learner.fit(config.epochs, config.lr, cbs=[stop])
    learner.best_epoch = keep.best_epoch
    learner.stopped_after_epoch = stop.stopped_after_epoch
    learner.opt = None  # Adam's moments are not needed after the fit (and cycles would keep them alive)
    return learner


@torch.no_grad()
def predict_probability(model: torch.nn.Module, images: torch.Tensor, rows=None, batch_size: int = 128) -> np.ndarray:
    """Softmax probability of class 1 for ``rows`` of ``images`` (all rows by default)."""
    rows = np.arange(len(images)) if rows is None else np.asarray(rows, int)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    try:
        for start in range(0, len(rows), batch_size):
            batch = images[rows[start:start + batch_size]].to(device)
            out.append(torch.softmax(model(batch), dim=1)[:, 1].cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def validation_scores(labels, probability, threshold: float = 0.5) -> dict:
    """Sensitivity, specificity and ROC AUC at ``threshold``, and TPN = their sum (the authors' score)."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(labels, int)
    called = np.asarray(probability) >= threshold
    sensitivity = float(called[y == 1].mean()) if (y == 1).any() else np.nan
    specificity = float((~called[y == 0]).mean()) if (y == 0).any() else np.nan
    auc = float(roc_auc_score(y, probability)) if len(np.unique(y)) == 2 else np.nan
    return {"sensitivity": sensitivity, "specificity": specificity, "auc": auc,
            "tpn": sensitivity + specificity + auc}


def grid_configurations(grid: dict[str, Sequence]) -> list[dict]:
    """Every combination of ``grid`` (Fig. S4), without duplicates.

    The ImageNet initialisation is always the substitute architecture
    (:data:`kneelib.models.spherical_resnet.IMAGENET_SUBSTITUTE`), so its combinations that differ
    only in ``arch`` collapse to one.
    """
    from kneelib.models.spherical_resnet import IMAGENET_SUBSTITUTE

    keys, seen, out = list(grid), set(), []
    for values in itertools.product(*(grid[k] for k in keys)):
        configuration = dict(zip(keys, values))
        if configuration.get("init") == "imagenet" and "arch" in configuration:
            configuration["arch"] = IMAGENET_SUBSTITUTE
        marker = tuple(sorted(configuration.items()))
        if marker not in seen:
            seen.add(marker)
            out.append(configuration)
    return out


def grid_search(factory: Callable[[dict], torch.nn.Module], images: torch.Tensor, labels, train_rows, valid_rows,
                grid: dict[str, Sequence] | Sequence[dict], config: SphericalTrainConfig = SphericalTrainConfig(),
                show_progress: bool = False):
    """Train every configuration of ``grid`` and choose on validation (Fig. S4).

    Parameters
    ----------
    factory : callable
        ``factory(configuration) -> model`` (a fresh, possibly frozen, model for one
        configuration: the grid's keys other than ``lr``).
    grid : dict of str to sequence, or list of dict
        E.g. ``{"lr": [1e-4, 1e-5], "arch": [...], "init": [...], "freeze": [...]}``
        (:func:`grid_configurations`) or the configurations themselves; ``lr`` (if present)
        overrides ``config.lr``.

    Returns
    -------
    table : DataFrame
        One row per configuration: its values, validation sensitivity / specificity / AUC /
        TPN, ``best_epoch``, ``epochs`` run, ``images`` passed (training + validation, all
        epochs), ``seconds``, ``chosen`` (the highest TPN; ties: the first).
    model : torch.nn.Module
        The chosen configuration's trained model (the others are not kept).
    """
    import time

    configurations = grid_configurations(grid) if isinstance(grid, dict) else [dict(c) for c in grid]
    rows, best_model, best_tpn = [], None, -np.inf
    for configuration in configurations:
        run_config = replace(config, lr=float(configuration.get("lr", config.lr)))
        set_seed(config.seed)
        start = time.perf_counter()
        learner = train_spherical(factory(configuration), images, labels, train_rows, valid_rows, run_config,
                                  show_progress=show_progress)
        seconds = time.perf_counter() - start
        scores = validation_scores(np.asarray(labels)[valid_rows], predict_probability(learner.model, images, valid_rows))
        epochs = len(learner.recorder.values)
        rows.append({**configuration, **scores, "best_epoch": learner.best_epoch, "epochs": epochs,
                     "images": epochs * (len(train_rows) + len(valid_rows)), "seconds": seconds})
        tpn = scores["tpn"] if np.isfinite(scores["tpn"]) else -np.inf
        if best_model is None or tpn > best_tpn:
            best_model, best_tpn = learner.model, tpn
        del learner
    table = pd.DataFrame(rows)
    best = int(table["tpn"].fillna(-np.inf).to_numpy().argmax())
    table["chosen"] = np.arange(len(table)) == best
    return table, best_model
