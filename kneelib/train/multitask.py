"""Training the multi-task KL/OARSI network with fastai.

Paper 004 (Tiulpin & Saarakkala 2020), *Training strategy*:

- loss: one cross-entropy per head, summed (joint training of KL and OARSI grades);
- transfer learning: only the FC heads for the first two epochs at LR 1e-2, then the
  whole network at 1e-3 for one epoch, then 1e-4 for the remaining seventeen epochs;
- from scratch: LR 1e-4, divided by ten after the 10th and the 15th epoch;
- Adam, weight decay 1e-4 (L2, as in PyTorch 1.0's Adam), dropout 0.5 before each
  head (in the model);
- augmentation (SOLT in the paper): random 300 x 300 crop of the 310 x 310 image,
  Gaussian noise and random gamma correction.

Missing grades are coded ``-1`` and ignored by the loss and the metrics.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from functools import partial
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "MISSING_GRADE",
    "AugmentationSettings",
    "RadiographDataset",
    "MultiTaskLoss",
    "TaskAgreementMetric",
    "SelectBestEpoch",
    "Phase",
    "transfer_phases",
    "scratch_phases",
    "finetune_phases",
    "make_dataloaders",
    "build_learner",
    "fit_phases",
    "predict_probabilities",
    "predict_view_probabilities",
    "predict_tta_options",
    "resize_for_crop",
    "random_rotate_zoom",
    "rotate_zoom",
    "View",
    "TTA_OPTIONS",
    "tta_views",
    "pooled_features",
    "layer_features",
    "FrozenPrefix",
    "backbone_prefix",
]

#: Target value of a grade that was not read (ignored by loss and metrics).
MISSING_GRADE = -1


def resize_for_crop(crop_size: int) -> int:
    """Side length to resize to before cropping ``crop_size`` (paper 004: 310 for 300)."""
    return int(round(crop_size * 310 / 300))


@dataclass(frozen=True)
class AugmentationSettings:
    """Training augmentation of paper 004 (SOLT: random crop, Gaussian noise, gamma).

    Attributes
    ----------
    noise_std : float
        Standard deviation of additive Gaussian noise on the [0, 1] image.
    gamma_range : tuple of float
        Gamma drawn log-uniformly from this range (``image ** gamma``).
    rotation_deg : float
        Rotation drawn uniformly from ``[-rotation_deg, rotation_deg]`` degrees about the
        image centre (0: none, paper 004's setting).
    scale_range : tuple of float
        Isotropic zoom drawn log-uniformly from this range (``(1, 1)``: none). Rotation and
        zoom are one bilinear resampling of the whole prepared image (edge pixels repeated
        outside it), before the random crop. Paper 004 names only the crop, noise and gamma;
        this project's ``paper`` KL recipe adds rotation and zoom against the overfitting
        its cross-validation folds showed (issue 14).
    """

    noise_std: float = 0.03
    gamma_range: tuple[float, float] = (0.7, 1.5)
    rotation_deg: float = 0.0
    scale_range: tuple[float, float] = (1.0, 1.0)

    @property
    def geometric(self) -> bool:
        """Whether rotation or zoom is drawn at all."""
        return self.rotation_deg > 0 or tuple(self.scale_range) != (1.0, 1.0)


def rotate_zoom(image: torch.Tensor, angle_deg: float, zoom: float) -> torch.Tensor:
    """``image`` (H, W) rotated by ``angle_deg`` degrees and zoomed by ``zoom`` about its centre.

    One bilinear resampling (``affine_grid``/``grid_sample``), edge pixels repeated outside
    the image; ``zoom`` > 1 enlarges the content. Rotation and zoom are one resampling, which
    is why this does not chain :func:`kneelib.preprocess.radiograph.rotate` (rotation only)
    with a separate zoom. The identity (0 degrees, zoom 1) returns ``image`` unchanged.
    """
    if zoom <= 0:
        raise ValueError(f"zoom must be > 0, got {zoom}")
    if angle_deg == 0 and zoom == 1:
        return image
    angle = math.radians(float(angle_deg))
    cos, sin = math.cos(angle) / zoom, math.sin(angle) / zoom
    theta = torch.tensor([[[cos, -sin, 0.0], [sin, cos, 0.0]]], dtype=image.dtype)
    grid = F.affine_grid(theta, [1, 1, *image.shape], align_corners=False)
    return F.grid_sample(image[None, None], grid, mode="bilinear", padding_mode="border",
                         align_corners=False)[0, 0]


def random_rotate_zoom(image: torch.Tensor, rotation_deg: float, scale_range) -> torch.Tensor:
    """``image`` (H, W) rotated and zoomed about its centre by a random draw (:func:`rotate_zoom`).

    The angle is uniform in ``[-rotation_deg, rotation_deg]`` degrees and the zoom
    log-uniform in ``scale_range`` (> 1 enlarges the content); both come from torch's
    global generator, so a seeded run draws the same transforms.
    """
    low, high = (float(v) for v in scale_range)
    if not 0 < low <= high:
        raise ValueError(f"scale_range must be 0 < low <= high, got {scale_range}")
    angle = float(torch.empty(1).uniform_(-rotation_deg, rotation_deg)) if rotation_deg > 0 else 0.0
    zoom = math.exp(float(torch.empty(1).uniform_(math.log(low), math.log(high)))) if high > low else low
    return rotate_zoom(image, angle, zoom)


@dataclass(frozen=True)
class View:
    """One deterministic test-time view of a prepared image: rotation, zoom, left-right mirror.

    Rotation and zoom resample the prepared image before the central crop
    (:func:`rotate_zoom`, as the training augmentation does before its random crop); the
    mirror flips the network input. ``View()`` is the plain central crop.
    """

    rotation_deg: float = 0.0
    zoom: float = 1.0
    flip: bool = False


#: Test-time augmentation options, by name: the views whose softmax is averaged.
TTA_OPTIONS: dict[str, tuple[View, ...]] = {
    "plain": (View(),),
    "flip TTA": (View(), View(flip=True)),
    "rotation TTA": (View(), View(-5.0), View(5.0)),
    "rotation+zoom TTA": (View(), View(-5.0), View(5.0), View(zoom=0.95), View(zoom=1.05)),
}


def tta_views(option: str) -> tuple[View, ...]:
    """The views of a named test-time augmentation option (:data:`TTA_OPTIONS`)."""
    if option not in TTA_OPTIONS:
        raise ValueError(f"unknown test-time augmentation {option!r}; known: {sorted(TTA_OPTIONS)}")
    return TTA_OPTIONS[option]


class RadiographDataset(torch.utils.data.Dataset):
    """Prepared knee images and their grades, cropped/augmented on the fly.

    Parameters
    ----------
    images : ndarray, shape (n, S, S)
        ``uint8`` (0-255) or float in [0, 1], e.g. from
        :func:`kneelib.preprocess.radiograph.prepare_image_stack`.
    targets : ndarray, shape (n, n_tasks)
        Integer grades per head (``-1`` when missing).
    crop_size : int
        Side of the crop fed to the network (random in training, central otherwise).
    augment : bool
        Random crop, gamma and noise (training) or a plain central crop.
    augmentation : AugmentationSettings
    view : View, optional
        Without augmentation: the deterministic rotation/zoom applied before the central
        crop (test-time augmentation; the mirror of a :class:`View` is applied by
        :func:`predict_probabilities`, not here).

    Notes
    -----
    Randomness comes from torch's global generator, so with ``num_workers=0`` and a
    fixed seed the augmented batches are identical between runs. Every item is
    globally contrast-normalised after augmentation and has shape ``(1, crop, crop)``.
    """

    def __init__(self, images: np.ndarray, targets: np.ndarray, crop_size: int, augment: bool,
                 augmentation: AugmentationSettings = AugmentationSettings(), view: View | None = None):
        images = np.asarray(images)
        targets = np.asarray(targets, dtype=np.int64)
        if targets.ndim == 1:
            targets = targets[:, None]
        if images.ndim != 3 or len(images) != len(targets):
            raise ValueError(f"images {images.shape} must be (n, S, S) with n = len(targets) = {len(targets)}")
        if crop_size > min(images.shape[1:]):
            raise ValueError(f"crop_size {crop_size} exceeds the image size {images.shape[1:]}")
        self.images = images
        self.scale = 255.0 if images.dtype == np.uint8 else 1.0
        self.targets = torch.from_numpy(targets)
        self.crop_size = int(crop_size)
        self.augment = bool(augment)
        self.augmentation = augmentation
        self.view = view

    def __len__(self) -> int:
        return len(self.images)

    def image_tensor(self, index: int) -> torch.Tensor:
        """The network input of item ``index`` (augmented when ``augment``)."""
        image = torch.from_numpy(np.asarray(self.images[index], dtype=np.float32) / self.scale)
        if self.augment and self.augmentation.geometric:
            image = random_rotate_zoom(image, self.augmentation.rotation_deg, self.augmentation.scale_range)
        elif not self.augment and self.view is not None:
            image = rotate_zoom(image, self.view.rotation_deg, self.view.zoom)
        height, width = image.shape
        size = self.crop_size
        if self.augment:
            top = int(torch.randint(0, height - size + 1, (1,)))
            left = int(torch.randint(0, width - size + 1, (1,)))
        else:
            top, left = (height - size) // 2, (width - size) // 2
        image = image[top:top + size, left:left + size]
        if self.augment:
            low, high = self.augmentation.gamma_range
            gamma = math.exp(float(torch.empty(1).uniform_(math.log(low), math.log(high))))
            image = image.clamp(0.0, 1.0) ** gamma
            image = image + self.augmentation.noise_std * torch.randn_like(image)
        image = (image - image.mean()) / (image.std(unbiased=False) + 1e-6)
        return image[None].contiguous()

    def __getitem__(self, index: int):
        return self.image_tensor(index), self.targets[index]


class MultiTaskLoss(nn.Module):
    """Sum over heads of the cross-entropy of each head's grades (paper 004).

    Parameters
    ----------
    task_classes : mapping str -> int
        Heads in output order and their number of grades (``model.task_classes``).
    task_weights : mapping str -> float, optional
        Weight per head (default 1 each).
    """

    def __init__(self, task_classes, task_weights=None):
        super().__init__()
        self.task_classes = dict(task_classes)
        self.task_weights = {t: float((task_weights or {}).get(t, 1.0)) for t in self.task_classes}
        self.slices, start = {}, 0
        for task, n in self.task_classes.items():
            self.slices[task] = slice(start, start + n)
            start += n
        self.n_outputs = start

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if logits.shape[1] != self.n_outputs:
            raise ValueError(f"logits have {logits.shape[1]} columns, heads need {self.n_outputs}")
        if targets.ndim == 1:
            targets = targets[:, None]
        total = logits.new_zeros(())
        for index, (task, sl) in enumerate(self.slices.items()):
            y = targets[:, index]
            if (y != MISSING_GRADE).any():
                total = total + self.task_weights[task] * F.cross_entropy(
                    logits[:, sl], y, ignore_index=MISSING_GRADE)
        return total

    def activation(self, logits: torch.Tensor) -> torch.Tensor:
        """Softmax within each head (used by fastai ``get_preds``)."""
        return torch.cat([logits[:, sl].softmax(dim=1) for sl in self.slices.values()], dim=1)

    def decodes(self, probabilities: torch.Tensor) -> torch.Tensor:
        """Most probable grade per head, ``(batch, n_tasks)``."""
        return torch.stack([probabilities[:, sl].argmax(dim=1) for sl in self.slices.values()], dim=1)


def _metric_base():
    from fastai.learner import Metric

    return Metric


class TaskAgreementMetric(_metric_base()):
    """A fastai metric of one head: ``fn(y_true, y_pred)`` on the validation set.

    Parameters
    ----------
    task : str
        Head name.
    task_index : int
        Column of the head in the target tensor.
    columns : slice
        Columns of the head in the concatenated logits.
    fn : callable
        E.g. :func:`kneelib.stats.agreement.quadratic_kappa`.
    metric_name : str
        Name shown by fastai (e.g. ``"kl_kappa"``).
    """

    def __init__(self, task: str, task_index: int, columns: slice, fn: Callable, metric_name: str):
        self.task, self.task_index, self.columns, self.fn = task, task_index, columns, fn
        self.metric_name = metric_name
        self.reset()

    def reset(self):
        self.predicted, self.reference = [], []

    def accumulate(self, learn):
        predicted = learn.pred[:, self.columns].argmax(dim=1).detach().cpu()
        reference = learn.y[:, self.task_index].detach().cpu()
        keep = reference != MISSING_GRADE
        self.predicted.append(predicted[keep])
        self.reference.append(reference[keep])

    @property
    def value(self):
        if not self.reference:
            return None
        reference = torch.cat(self.reference).numpy()
        if len(reference) == 0:
            return None
        return float(self.fn(reference, torch.cat(self.predicted).numpy()))

    @property
    def name(self):
        return self.metric_name


def _callback_base():
    from fastai.callback.core import Callback

    return Callback


class SelectBestEpoch(_callback_base()):
    """Keep the weights of the epoch with the best monitored validation metric.

    Model selection on an *internal* validation split (never on the reported test
    split). Survives several ``fit`` calls (the phases of a schedule): it numbers
    epochs globally and records one history row per epoch.

    Parameters
    ----------
    monitor : str
        Metric name as fastai shows it (e.g. ``"kl_kappa"`` or ``"valid_loss"``).
    greater_is_better : bool
    """

    order = 60  # after fastai's Recorder (50) has logged the epoch

    def __init__(self, monitor: str = "kl_kappa", greater_is_better: bool = True):
        self.monitor = monitor
        self.greater_is_better = greater_is_better
        self.best_value = -math.inf if greater_is_better else math.inf
        self.best_epoch = None
        self.best_state = None
        self.history: list[dict] = []
        self.phase = ""
        self._epochs_done = 0

    def after_epoch(self):
        names = list(self.recorder.metric_names[1:])
        values = list(self.recorder.values[-1]) if self.recorder.values else []
        row = {"epoch": self._epochs_done + 1, "phase": self.phase,
               "lr": float(self.opt.hypers[-1]["lr"])}
        row.update({n: (float(v) if v is not None else math.nan) for n, v in zip(names, values)
                    if n != "time"})
        self.history.append(row)
        self._epochs_done += 1
        value = row.get(self.monitor, math.nan)
        if value is None or not math.isfinite(value):
            return
        better = value > self.best_value if self.greater_is_better else value < self.best_value
        if better:
            self.best_value, self.best_epoch = value, row["epoch"]
            self.best_state = copy.deepcopy(self.learn.model.state_dict())

    def history_frame(self) -> pd.DataFrame:
        """One row per epoch: phase, LR, losses and metrics."""
        return pd.DataFrame(self.history)

    def restore_best(self) -> None:
        """Load the weights of the best epoch into the learner's model."""
        if self.best_state is not None:
            self.learn.model.load_state_dict(self.best_state)


@dataclass(frozen=True)
class Phase:
    """A run of epochs at one learning rate (constant, or the peak of a one-cycle schedule).

    Attributes
    ----------
    name : str
    n_epochs : int
    lr : float
        Learning rate of the heads (of every layer when ``backbone_lr`` is None).
    train_backbone : bool
        False: the backbone is frozen (heads only).
    backbone_lr : float, optional
        Discriminative learning rate of the backbone (fastai ``slice(backbone_lr, lr)``).
    one_cycle : bool
        fastai ``fit_one_cycle`` (warm-up to ``lr`` then cosine annealing) instead of a
        constant rate.
    """

    name: str
    n_epochs: int
    lr: float
    train_backbone: bool
    backbone_lr: float | None = None
    one_cycle: bool = False


def transfer_phases(max_epochs: int = 20, head_epochs: int = 2,
                    lrs: Sequence[float] = (1e-2, 1e-3, 1e-4), decay_at: float | None = None) -> list[Phase]:
    """Paper 004's transfer schedule cut to ``max_epochs``.

    Heads only at ``lrs[0]`` for ``head_epochs``; the whole network at ``lrs[1]``; then
    ``lrs[2]`` for the rest. ``decay_at=None`` is the paper's split (*Training strategy*):
    one epoch at ``lrs[1]`` (20 epochs = 2 + 1 + 17). A fraction ``decay_at`` in (0, 1]
    keeps ``lrs[1]`` up to epoch ``round(decay_at * max_epochs)`` instead: a short CPU run
    has a small fraction of the paper's optimiser steps, and with one epoch at 1e-3 and the
    rest at 1e-4 an ImageNet EfficientNet-Lite0 on 64 px knee crops did not learn in 8 epochs.
    """
    if max_epochs < 1:
        raise ValueError(f"max_epochs must be >= 1, got {max_epochs}")
    if head_epochs < 0:
        raise ValueError(f"head_epochs must be >= 0, got {head_epochs}")
    if len(lrs) != 3:
        raise ValueError(f"lrs must hold 3 learning rates (heads, all layers, after the decay), got {list(lrs)}")
    if decay_at is not None and not 0 < decay_at <= 1:
        raise ValueError(f"decay_at must be in (0, 1] or None, got {decay_at}")
    heads = min(head_epochs, max_epochs)
    phases = [Phase("heads only", heads, lrs[0], False)] if heads else []
    rest = max_epochs - heads
    first = min(1, rest) if decay_at is None else min(rest, max(1, int(round(decay_at * max_epochs)) - heads))
    if first >= 1:
        phases.append(Phase("all layers", first, lrs[1], True))
    if rest - first >= 1:
        phases.append(Phase("all layers", rest - first, lrs[2], True))
    return phases


def scratch_phases(max_epochs: int = 20, lr: float = 1e-4) -> list[Phase]:
    """Paper 004's from-scratch schedule: ``lr``, /10 after epoch 10 and 15 (scaled to ``max_epochs``)."""
    if max_epochs < 1:
        raise ValueError(f"max_epochs must be >= 1, got {max_epochs}")
    first = max(1, int(round(max_epochs * 10 / 20)))
    second = max(first, int(round(max_epochs * 15 / 20)))
    counts = [first, second - first, max_epochs - second]
    return [Phase("all layers (scratch)", n, lr * 10 ** -i, True) for i, n in enumerate(counts) if n > 0]


def finetune_phases(max_epochs: int = 10, head_epochs: int = 1, head_lr: float = 1e-2, lr: float = 3e-3,
                    lr_mult: float = 3.0) -> list[Phase]:
    """A fine-tuning schedule for short CPU runs: heads only, then one cycle over all layers.

    ``head_epochs`` epochs train the heads only at a constant ``head_lr`` (the new heads
    start random); the remaining epochs train every layer with fastai's one-cycle policy
    (warm-up, then cosine annealing to almost zero) with discriminative learning rates:
    peak ``lr`` for the heads and ``lr / lr_mult`` for the ImageNet backbone. A schedule
    that ends at a tiny learning rate makes the last epoch's weights usable without epoch
    selection, so no held-out split is spent on choosing an epoch.
    """
    if max_epochs < 1:
        raise ValueError(f"max_epochs must be >= 1, got {max_epochs}")
    if head_epochs < 0:
        raise ValueError(f"head_epochs must be >= 0, got {head_epochs}")
    if lr <= 0 or head_lr <= 0 or lr_mult < 1:
        raise ValueError(f"learning rates must be > 0 and lr_mult >= 1, got lr={lr}, head_lr={head_lr}, "
                         f"lr_mult={lr_mult}")
    heads = min(head_epochs, max_epochs - 1) if max_epochs > 1 else max_epochs
    phases = [Phase("heads only", heads, head_lr, False)] if heads else []
    if max_epochs - heads >= 1:
        phases.append(Phase("all layers (one cycle)", max_epochs - heads, lr, True, backbone_lr=lr / lr_mult,
                            one_cycle=True))
    return phases


def backbone_prefix(model, n_blocks: int) -> list:
    """The stem and the first ``n_blocks`` blocks of a timm EfficientNet-style backbone (``blocks``).

    Raises
    ------
    ValueError
        If the backbone has no ``conv_stem``/``blocks`` or fewer blocks than asked.
    """
    backbone = model.backbone
    if n_blocks == 0:
        return []
    if not hasattr(backbone, "blocks") or not hasattr(backbone, "conv_stem"):
        raise ValueError(f"backbone {type(backbone).__name__} has no conv_stem/blocks to freeze")
    if not 0 <= n_blocks <= len(backbone.blocks):
        raise ValueError(f"n_blocks must lie in 0..{len(backbone.blocks)}, got {n_blocks}")
    return [backbone.conv_stem, backbone.bn1, *backbone.blocks[:n_blocks]]


class FrozenPrefix(_callback_base()):
    """Keep the stem and the first blocks of the backbone frozen in every phase (fastai callback).

    The early, high-resolution blocks cost most of a CPU training step; with their weights
    frozen (and their batch-norm statistics fixed: eval mode) no gradient flows through them,
    and a step costs little more than a forward pass there. Runs after fastai's
    ``freeze``/``unfreeze`` at the start of each ``fit``.
    """

    order = 5

    def __init__(self, modules: list):
        self.modules = list(modules)

    def _apply(self):
        for module in self.modules:
            module.eval()
            for parameter in module.parameters():
                parameter.requires_grad_(False)

    def before_fit(self):
        self._apply()

    def before_epoch(self):
        self._apply()

    def before_train(self):
        self._apply()


def make_dataloaders(train_ds: RadiographDataset, valid_ds: RadiographDataset, batch_size: int = 32,
                     device=None):
    """fastai ``DataLoaders``: shuffled training batches, ``num_workers=0`` (determinism).

    ``device`` defaults to CUDA when available, else CPU.
    """
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader

    train_dl = DataLoader(train_ds, bs=batch_size, shuffle=True, drop_last=len(train_ds) > batch_size,
                          num_workers=0)
    valid_dl = DataLoader(valid_ds, bs=batch_size, shuffle=False, num_workers=0)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return DataLoaders(train_dl, valid_dl, device=torch.device(device))


def build_learner(model, dls, weight_decay: float = 1e-4, monitor_task: str = "kl",
                  extra_cbs=None):
    """fastai ``Learner`` for a :class:`~kneelib.models.multitask.MultiTaskNet`.

    Adam as in PyTorch (betas 0.9/0.999, eps 1e-8, L2 weight decay), parameter groups
    ``[backbone, heads]`` so that ``freeze()`` trains the heads only, kappa and
    balanced accuracy of every head as metrics, and a :class:`SelectBestEpoch`
    callback (``learn.select_best``) monitoring ``<monitor_task>_kappa``.
    """
    import fastai.callback.progress  # noqa: F401  (registers fastai's progress bars as a default callback)
    import fastai.callback.schedule  # noqa: F401  (adds Learner.fit_one_cycle)
    from fastai.learner import Learner
    from fastai.optimizer import Adam

    from kneelib.stats.agreement import balanced_accuracy, quadratic_kappa

    metrics = []
    for index, (task, columns) in enumerate(model.task_slices().items()):
        metrics.append(TaskAgreementMetric(task, index, columns, quadratic_kappa, f"{task}_kappa"))
        metrics.append(TaskAgreementMetric(task, index, columns, balanced_accuracy, f"{task}_bacc"))
    select_best = SelectBestEpoch(monitor=f"{monitor_task}_kappa")
    learn = Learner(
        dls, model, loss_func=MultiTaskLoss(model.task_classes),
        opt_func=partial(Adam, mom=0.9, sqr_mom=0.999, eps=1e-8, decouple_wd=False),
        splitter=lambda m: [m.backbone_parameters(), m.head_parameters()],
        metrics=metrics, wd=weight_decay, wd_bn_bias=False, train_bn=False,
        cbs=[select_best, *(extra_cbs or [])],
    )
    learn.select_best = select_best
    return learn


def fit_phases(learn, phases: Sequence[Phase], restore_best: bool = True,
               show_progress: bool = True) -> pd.DataFrame:
    """Train through ``phases`` (heads only = backbone frozen) and return the epoch history.

    With ``restore_best`` the model ends with the weights of the best epoch on the
    learner's validation set (which must be an internal validation split). Without
    ``show_progress`` fastai's progress bars and per-epoch tables are not printed (the
    history is returned either way).
    """
    from contextlib import ExitStack

    for phase in phases:
        if phase.n_epochs <= 0:
            continue
        if phase.train_backbone:
            learn.unfreeze()
        else:
            learn.freeze()
        learn.select_best.phase = phase.name
        with ExitStack() as quiet:
            if not show_progress:
                quiet.enter_context(learn.no_bar())
                quiet.enter_context(learn.no_logging())
            lr = phase.lr if phase.backbone_lr is None else slice(phase.backbone_lr, phase.lr)
            if phase.one_cycle:
                learn.fit_one_cycle(phase.n_epochs, lr_max=lr)
            else:
                learn.fit(phase.n_epochs, lr=lr)
    learn.unfreeze()  # leave every parameter trainable (and differentiable, e.g. for Grad-CAM)
    if restore_best:
        learn.select_best.restore_best()
    return learn.select_best.history_frame()


def _input_batches(images: np.ndarray, crop_size: int, batch_size: int, progress: bool = False,
                   desc: str = "predicting", geometries: Sequence[tuple[float, float]] = ((0.0, 1.0),)):
    """Central crops of prepared images as network inputs, ``batch_size`` images at a time.

    Yields one list per batch: the batch under each ``(rotation_deg, zoom)`` of
    ``geometries`` (:func:`rotate_zoom` before the crop).
    """
    from tqdm.auto import tqdm

    targets = np.zeros((len(images), 1), dtype=np.int64)
    datasets = [RadiographDataset(images, targets, crop_size, augment=False, view=View(angle, zoom))
                for angle, zoom in geometries]
    for start in tqdm(range(0, len(images), batch_size), desc=desc, disable=not progress):
        stop = min(start + batch_size, len(images))
        yield [torch.stack([dataset.image_tensor(i) for i in range(start, stop)]) for dataset in datasets]


@torch.no_grad()
def predict_view_probabilities(model, images: np.ndarray, crop_size: int, views: Sequence[View],
                               batch_size: int = 64, progress: bool = False) -> list[dict[str, np.ndarray]]:
    """Softmax probabilities of every head under each view, ``[{head: (n, n_grades)} per view]``.

    Views that share a rotation and zoom share one resampling of each batch; the mirror
    flips the network input (the central crop).
    """
    views = tuple(views)
    if not views:
        raise ValueError("at least one view is needed")
    geometries = list(dict.fromkeys((float(v.rotation_deg), float(v.zoom)) for v in views))
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    outputs = [{task: [] for task in model.tasks} for _ in views]
    for batches in _input_batches(images, crop_size, batch_size, progress, geometries=geometries):
        batches = [batch.to(device) for batch in batches]
        for view, out in zip(views, outputs):
            batch = batches[geometries.index((float(view.rotation_deg), float(view.zoom)))]
            batch = batch.flip(-1) if view.flip else batch
            for task, logits in model.split_logits(model(batch)).items():
                out[task].append(logits.softmax(dim=1).cpu().numpy())
    model.train(was_training)
    return [{task: np.concatenate(chunks) if chunks else np.zeros((0, model.task_classes[task]), dtype=np.float32)
             for task, chunks in out.items()} for out in outputs]


def _mean_over_views(per_view: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Softmax averaged over views, summed in view order (float32, as the network computes it)."""
    summed = {task: value.copy() for task, value in per_view[0].items()}
    for p in per_view[1:]:
        for task in summed:
            summed[task] += p[task]
    return {task: value / np.float32(len(per_view)) for task, value in summed.items()}


def predict_probabilities(model, images: np.ndarray, crop_size: int, batch_size: int = 64,
                          progress: bool = False, tta_flip: bool = False,
                          views: Sequence[View] | None = None) -> dict[str, np.ndarray]:
    """Softmax probabilities of every head on prepared images (central crop, no augmentation).

    Parameters
    ----------
    tta_flip : bool
        Test-time augmentation: average the softmax of the image and of its left-right
        mirror image (the views of ``TTA_OPTIONS["flip TTA"]``).
    views : sequence of View, optional
        Test-time augmentation by any views (e.g. :func:`tta_views`): the softmax is
        averaged over them. Overrides ``tta_flip``.

    Returns
    -------
    dict
        Head name -> array ``(n, n_grades)``.
    """
    if views is None:
        views = TTA_OPTIONS["flip TTA" if tta_flip else "plain"]
    return _mean_over_views(predict_view_probabilities(model, images, crop_size, views, batch_size, progress))


def predict_tta_options(model, images: np.ndarray, crop_size: int, options: Sequence[str],
                        batch_size: int = 64, progress: bool = False) -> dict[str, dict[str, np.ndarray]]:
    """:func:`predict_probabilities` under several test-time augmentation options at once.

    Every distinct view of the options (:data:`TTA_OPTIONS`) is predicted once, so e.g.
    ``plain``, ``flip TTA`` and ``rotation TTA`` cost four forward passes, not six.

    Returns
    -------
    dict
        Option -> head name -> array ``(n, n_grades)``.
    """
    union = list(dict.fromkeys(view for option in options for view in tta_views(option)))
    per_view = dict(zip(union, predict_view_probabilities(model, images, crop_size, union, batch_size, progress)))
    return {option: _mean_over_views([per_view[v] for v in tta_views(option)]) for option in options}


@torch.no_grad()
def pooled_features(model, images: np.ndarray, crop_size: int, batch_size: int = 64) -> np.ndarray:
    """The pooled backbone features (the heads' input) of prepared images, ``(n, n_features)``."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    chunks = [model.backbone.forward_head(model.forward_features(batch.to(device)), pre_logits=True).cpu().numpy()
              for (batch,) in _input_batches(images, crop_size, batch_size)]
    model.train(was_training)
    return np.concatenate(chunks) if chunks else np.zeros((0, 0), dtype=np.float32)


@torch.no_grad()
def layer_features(model, images: np.ndarray, crop_size: int, batch_size: int = 64) -> dict[str, np.ndarray]:
    """Activation statistics of every feature stage of the backbone, and the pooled features.

    For each stage of timm's ``feature_info`` (e.g. ``blocks.0`` ... ``blocks.6`` of an
    EfficientNet) the per-channel mean and standard deviation of its output over the
    image, ``(n, 2 * channels)``; ``"pooled"``: :func:`pooled_features`. The inputs for
    the out-of-distribution score (:class:`kneelib.stats.feature_density.LayeredDensity`).
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    modules = dict(model.backbone.named_modules())
    stages = [info["module"] for info in model.backbone.feature_info]
    captured: dict[str, torch.Tensor] = {}
    handles = [modules[name].register_forward_hook(lambda _m, _i, out, name=name: captured.__setitem__(name, out))
               for name in stages]
    chunks: dict[str, list] = {name: [] for name in [*stages, "pooled"]}
    try:
        for (batch,) in _input_batches(images, crop_size, batch_size):
            pooled = model.backbone.forward_head(model.forward_features(batch.to(device)), pre_logits=True)
            chunks["pooled"].append(pooled.cpu().numpy())
            for name in stages:
                out = captured[name].flatten(2)
                stats = torch.cat([out.mean(dim=2), out.std(dim=2, correction=0)], dim=1)
                chunks[name].append(stats.cpu().numpy())
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return {name: np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)
            for name, parts in chunks.items()}
