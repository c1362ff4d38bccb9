"""Training, ensembling and inference of the 3-D segmentation networks of paper 001.

Supplement 003 (*Bone segmentation network training*, *... inference and ensembling*,
*Cartilage segmentation networks training*):

- batch size 1, Adam, learning rate 5e-4 (bones) or 1e-4 (cartilage), Xavier uniform
  weights (:func:`kneelib.models.segmentation.build_segmentation_network`);
- up to 500 epochs with early stopping after 30 epochs without a better validation
  loss (here: ``patience`` validations, one every ``validate_every`` steps);
- online augmentation: an independent 50% chance of a mediolateral flip and of a
  rotation of the sagittal plane by -5 to +5 degrees in 1-degree steps, labels kept
  integer (nearest-neighbour, no artificial partial volume);
- volumes normalised to their 85th intensity percentile (:func:`normalise_intensity`);
- each ensemble member trained with a different distance-weighted loss
  (:mod:`kneelib.train.segmentation_losses`); the ensemble averages the members'
  softmax outputs (:class:`SegmentationEnsemble`).

CPU budget (the chapter's ``default``): volumes resampled to ~1.5-2 mm
(:func:`resample_to_spacing`, about 64^3 voxels for a knee field of view), patches of
32^3-48^3 voxels, batch 2, the small UNet of
:data:`kneelib.models.segmentation.SMALL_UNET` (~0.15 M parameters): one step of a
batch of two patches took 0.15 s (32^3) and 0.32 s (48^3) on one loaded core, so two
members of 200-300 steps each train in about 2-3 minutes; inference of a 64^3 volume
takes ~0.5 s per member (whole volume) or ~1.2 s per member (48^3 sliding windows). ``paper``: MONAI's V-Net (45.6 M parameters)
at the full DESS grid, on a GPU.

Axis convention: volumes are ``(slices, rows, columns)`` as
:func:`kneelib.synth.ground_truth.load_series_with_truth` returns them; for the sagittal
DESS the slices run mediolaterally, so the flip is along axis 0 and the sagittal
rotation in the plane of axes 1 and 2 (both configurable).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from scipy import ndimage
from torch import nn

from kneelib.models.segmentation import SegmentationInputError, build_segmentation_network
from kneelib.train.segmentation_losses import (SEGMENTATION_LOSSES, class_weights_from_labels,
                                               distance_weight_map, segmentation_loss)

__all__ = [
    "SegmentationTrainConfig",
    "TrainedSegmenter",
    "normalise_intensity",
    "resample_to_spacing",
    "resize_to_shape",
    "train_segmentation",
    "train_ensemble",
    "SegmentationEnsemble",
    "predict_volume",
    "keep_anatomical_components",
]

#: Intensity percentile each volume is divided by (supplement 003: 85th).
NORMALISATION_PERCENTILE = 85.0


@dataclass(frozen=True)
class SegmentationTrainConfig:
    """Settings of :func:`train_segmentation`.

    Attributes
    ----------
    loss : str
        One of :data:`kneelib.train.segmentation_losses.SEGMENTATION_LOSSES`.
    n_steps : int
        Optimiser steps (batches).
    patch_size : tuple of int
        Patch side per axis; a multiple of the network's divisor (8 for the small UNet,
        16 for the V-Net). Volumes smaller than a patch are padded with background.
    batch_size : int
        Patches per step (1 in the supplement).
    learning_rate : float
        Adam learning rate (5e-4 bones, 1e-4 cartilage in the supplement).
    distance_weighting : bool
        Multiply the loss by the distance weight map (Caliva et al. 2019).
    class_weight_power : float
        Exponent of :func:`~kneelib.train.segmentation_losses.class_weights_from_labels`.
    flip_probability, rotation_probability, max_rotation_degrees : float
        Augmentation (supplement: 0.5, 0.5, 5 degrees in 1-degree steps).
    foreground_probability : float
        Chance a patch is centred on a random foreground voxel (else anywhere).
    validate_every, patience : int
        Validation loss every ``validate_every`` steps; stop after ``patience``
        validations without improvement and restore the best weights.
    mediolateral_axis : int
        Axis of the flip.
    sagittal_axes : tuple of int
        Plane of the rotation.
    seed : int
        Seed of patch sampling, augmentation and torch.
    """

    loss: str = "mixed"
    n_steps: int = 200
    patch_size: tuple[int, ...] = (48, 48, 48)
    batch_size: int = 2
    learning_rate: float = 5e-4
    distance_weighting: bool = True
    class_weight_power: float = 0.5
    flip_probability: float = 0.5
    rotation_probability: float = 0.5
    max_rotation_degrees: int = 5
    foreground_probability: float = 0.5
    validate_every: int = 50
    patience: int = 30
    mediolateral_axis: int = 0
    sagittal_axes: tuple[int, int] = (1, 2)
    seed: int = 0


@dataclass
class TrainedSegmenter:
    """A trained network with its loss history.

    Attributes
    ----------
    model : torch.nn.Module
        In eval mode, best validation weights restored when validation data was given.
    loss : str
    history : pandas.DataFrame
        ``step``, ``train_loss`` and (every ``validate_every`` steps) ``valid_loss``.
    class_weight : numpy.ndarray
    best_step : int
    seconds : float
        Training wall time.
    """

    model: nn.Module
    loss: str
    history: pd.DataFrame
    class_weight: np.ndarray
    best_step: int
    seconds: float = 0.0
    config: SegmentationTrainConfig = field(default_factory=SegmentationTrainConfig)


def normalise_intensity(volume, percentile: float = NORMALISATION_PERCENTILE) -> np.ndarray:
    """``volume`` divided by its ``percentile``-th intensity percentile (supplement 003), float32.

    Raises
    ------
    SegmentationInputError
        Non-finite values, or a percentile of zero (an empty volume).
    """
    volume = np.asarray(volume, dtype=np.float32)
    if not np.all(np.isfinite(volume)):
        raise SegmentationInputError("volume holds non-finite values", what="normalise_intensity")
    scale = float(np.percentile(volume, percentile))
    if scale <= 0:
        raise SegmentationInputError(f"the {percentile:g}th intensity percentile is {scale:g}; "
                                     "cannot normalise (empty volume?)", what="normalise_intensity")
    return volume / scale


def resample_to_spacing(volume, spacing_mm: Sequence[float], target_mm: float | Sequence[float],
                        order: int = 1) -> tuple[np.ndarray, tuple[float, ...]]:
    """Resample a volume to (about) ``target_mm`` voxels: ``(array, actual spacing)``.

    ``order`` 1 for images, 0 (nearest) for label volumes. The actual spacing differs
    from the target by the rounding of the new shape.
    """
    volume = np.asarray(volume)
    spacing = np.asarray(spacing_mm, dtype=float)
    target = np.broadcast_to(np.asarray(target_mm, dtype=float), spacing.shape)
    if spacing.shape != (volume.ndim,) or np.any(spacing <= 0) or np.any(target <= 0):
        raise SegmentationInputError(f"spacing {spacing_mm} / target {target_mm} do not fit a {volume.ndim}-D volume",
                                     what="resample_to_spacing")
    shape = np.maximum(1, np.round(np.array(volume.shape) * spacing / target)).astype(int)
    resized = resize_to_shape(volume, tuple(shape), order=order)
    return resized, tuple(float(s) for s in spacing * np.array(volume.shape) / shape)


def resize_to_shape(volume, shape: Sequence[int], order: int = 1) -> np.ndarray:
    """Resize the last ``len(shape)`` axes of ``volume`` to ``shape`` (leading axes kept)."""
    volume = np.asarray(volume)
    lead = volume.ndim - len(shape)
    factors = [1.0] * lead + [s / n for s, n in zip(shape, volume.shape[lead:])]
    out = ndimage.zoom(volume, factors, order=order, mode="nearest", grid_mode=True)
    return out


def _pad_to(array: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    pad = [(0, max(0, s - n)) for s, n in zip(shape, array.shape)]
    return np.pad(array, pad) if any(p[1] for p in pad) else array


def _check_pairs(images, labels, n_classes: int, what: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    images = [np.asarray(v) for v in images]
    labels = [np.asarray(v) for v in labels]
    if not images or len(images) != len(labels):
        raise SegmentationInputError(f"{len(images)} images and {len(labels)} label volumes", what=what)
    for i, (image, label) in enumerate(zip(images, labels)):
        if image.ndim != 3 or image.shape != label.shape:
            raise SegmentationInputError(f"volume {i}: image {image.shape} and labels {label.shape} must be the "
                                         "same 3-D shape", what=what)
        if label.min() < 0 or label.max() >= n_classes:
            raise SegmentationInputError(f"volume {i}: labels must lie in [0, {n_classes}) (network class indices; "
                                         "see kneelib.models.segmentation.network_targets)", what=what)
    return images, labels


class _PatchSampler:
    """Random (foreground-biased) patches with the supplement's flip/rotation augmentation."""

    def __init__(self, images, labels, weights, config: SegmentationTrainConfig):
        self.config = config
        self.rng = np.random.default_rng(config.seed)
        size = tuple(config.patch_size)
        self.images = [_pad_to(v, size) for v in images]
        self.labels = [_pad_to(v, size) for v in labels]
        self.weights = [_pad_to(v, size) for v in weights]
        self.foreground = [np.flatnonzero(v.ravel() > 0) for v in self.labels]

    def patch(self):
        config, rng = self.config, self.rng
        k = int(rng.integers(len(self.images)))
        image, label, weight = self.images[k], self.labels[k], self.weights[k]
        size = np.array(config.patch_size)
        shape = np.array(image.shape)
        if len(self.foreground[k]) and rng.random() < config.foreground_probability:
            centre = np.array(np.unravel_index(rng.choice(self.foreground[k]), image.shape))
            start = np.clip(centre - size // 2, 0, shape - size)
        else:
            start = np.array([int(rng.integers(0, n - s + 1)) for n, s in zip(shape, size)])
        box = tuple(slice(a, a + s) for a, s in zip(start, size))
        image, label, weight = image[box], label[box], weight[box]
        if rng.random() < config.flip_probability:
            image, label, weight = (np.flip(a, config.mediolateral_axis) for a in (image, label, weight))
        if config.max_rotation_degrees and rng.random() < config.rotation_probability:
            angle = float(rng.integers(-config.max_rotation_degrees, config.max_rotation_degrees + 1))
            if angle:
                axes = tuple(config.sagittal_axes)
                image = ndimage.rotate(image, angle, axes=axes, reshape=False, order=1, mode="nearest")
                label = ndimage.rotate(label, angle, axes=axes, reshape=False, order=0, mode="nearest")
                weight = ndimage.rotate(weight, angle, axes=axes, reshape=False, order=1, mode="nearest")
        return (np.ascontiguousarray(image, dtype=np.float32), np.ascontiguousarray(label, dtype=np.int64),
                np.ascontiguousarray(weight, dtype=np.float32))

    def batch(self, batch_size: int):
        parts = [self.patch() for _ in range(batch_size)]
        images, labels, weights = (torch.from_numpy(np.stack(p)) for p in zip(*parts))
        return images.unsqueeze(1), labels, weights


def _validation_loss(model, loss_fn, images, labels, weights, config) -> float:
    model.eval()
    total = 0.0
    with torch.no_grad():
        for image, label, weight in zip(images, labels, weights):
            divisor = int(getattr(model, "divisor", 1))
            shape = [int(np.ceil(n / divisor) * divisor) for n in image.shape]
            x = torch.from_numpy(_pad_to(image, shape)[None, None].astype(np.float32))
            y = torch.from_numpy(_pad_to(label, shape)[None].astype(np.int64))
            w = torch.from_numpy(_pad_to(weight, shape)[None].astype(np.float32))
            total += float(loss_fn(model(x), y, w if config.distance_weighting else None))
    model.train()
    return total / len(images)


def train_segmentation(model: nn.Module, images, labels, spacing_mm: Sequence[float],
                       config: SegmentationTrainConfig = SegmentationTrainConfig(),
                       valid_images=None, valid_labels=None, class_weight=None,
                       show_progress: bool = True) -> TrainedSegmenter:
    """Train one network on 3-D volumes with one of the supplement's losses.

    Parameters
    ----------
    model : torch.nn.Module
        From :func:`~kneelib.models.segmentation.build_segmentation_network` (its
        ``class_names`` give the number of classes).
    images : sequence of arrays (D, H, W)
        Raw intensities; each is normalised by :func:`normalise_intensity`.
    labels : sequence of int arrays (D, H, W)
        Network class indices (:func:`~kneelib.models.segmentation.network_targets`).
    spacing_mm : sequence of 3 float
        Voxel size (for the distance maps).
    config : SegmentationTrainConfig
    valid_images, valid_labels : sequences, optional
        Whole validation volumes for early stopping (supplement: patience 30 epochs).
    class_weight : array, optional
        Class weights; default from the training labels
        (:func:`~kneelib.train.segmentation_losses.class_weights_from_labels`).
    show_progress : bool
        A tqdm progress bar over the steps.

    Returns
    -------
    TrainedSegmenter

    Raises
    ------
    SegmentationInputError
        Mismatched shapes, labels outside the network's classes, an unknown loss.
    """
    import time

    from tqdm.auto import tqdm

    n_classes = len(getattr(model, "class_names", ())) or None
    if n_classes is None:
        raise SegmentationInputError("model has no class_names (build it with build_segmentation_network)",
                                     what="train_segmentation")
    if config.loss not in SEGMENTATION_LOSSES:
        raise SegmentationInputError(f"unknown loss {config.loss!r}; expected one of {SEGMENTATION_LOSSES}",
                                     what="train_segmentation")
    images, labels = _check_pairs(images, labels, n_classes, "train_segmentation")
    divisor = int(getattr(model, "divisor", 1))
    if any(s % divisor for s in config.patch_size):
        raise SegmentationInputError(f"patch {config.patch_size} must be a multiple of {divisor} for this network",
                                     what="train_segmentation")
    start = time.perf_counter()
    torch.manual_seed(config.seed)
    images = [normalise_intensity(v) for v in images]
    weights = [distance_weight_map(v, spacing_mm) for v in labels]
    if class_weight is None:
        class_weight = class_weights_from_labels(labels, n_classes, power=config.class_weight_power)
    loss_fn = segmentation_loss(config.loss, class_weight=class_weight)
    valid = None
    if valid_images is not None:
        v_images, v_labels = _check_pairs(valid_images, valid_labels, n_classes, "train_segmentation (validation)")
        valid = ([normalise_intensity(v) for v in v_images], v_labels,
                 [distance_weight_map(v, spacing_mm) for v in v_labels])
    sampler = _PatchSampler(images, labels, weights, config)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    model.train()
    rows, best, best_state, best_step, waited = [], np.inf, None, config.n_steps, 0
    bar = tqdm(range(1, config.n_steps + 1), desc=f"{getattr(model, 'segmentation_task', '')} {config.loss}",
               disable=not show_progress, leave=False)
    for step in bar:
        x, y, w = sampler.batch(config.batch_size)
        optimiser.zero_grad()
        loss = loss_fn(model(x), y, w if config.distance_weighting else None)
        loss.backward()
        optimiser.step()
        row = {"step": step, "train_loss": loss.item(), "valid_loss": np.nan}
        if valid is not None and (step % config.validate_every == 0 or step == config.n_steps):
            row["valid_loss"] = _validation_loss(model, loss_fn, *valid, config)
            if row["valid_loss"] < best:
                best, best_state, best_step, waited = row["valid_loss"], copy.deepcopy(model.state_dict()), step, 0
            else:
                waited += 1
        rows.append(row)
        bar.set_postfix(loss=f"{row['train_loss']:.3f}")
        if valid is not None and waited >= config.patience:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return TrainedSegmenter(model, config.loss, pd.DataFrame(rows), np.asarray(class_weight), best_step,
                            time.perf_counter() - start, config)


def train_ensemble(task: str, images, labels, spacing_mm: Sequence[float], losses: Sequence[str] = ("mixed", "dice"),
                   architecture: str = "unet", config: SegmentationTrainConfig = SegmentationTrainConfig(),
                   valid_images=None, valid_labels=None, show_progress: bool = True,
                   model_factory: Callable[[], nn.Module] | None = None) -> list[TrainedSegmenter]:
    """Train one member per loss (supplement 003: each V-Net with a different loss).

    Member ``i`` is built after ``torch.manual_seed(config.seed + i)`` and trained with
    seed ``config.seed + i``. ``paper``: the five losses of
    :data:`~kneelib.train.segmentation_losses.SEGMENTATION_LOSSES` with the V-Net; the
    CPU ``default``: two losses with the small UNet.
    """
    members = []
    for i, loss in enumerate(losses):
        torch.manual_seed(config.seed + i)
        model = model_factory() if model_factory else build_segmentation_network(task, architecture)
        member_config = replace(config, loss=loss, seed=config.seed + i)
        members.append(train_segmentation(model, images, labels, spacing_mm, member_config, valid_images,
                                          valid_labels, show_progress=show_progress))
    return members


class SegmentationEnsemble(nn.Module):
    """Average of the members' softmax outputs (supplement 003, *inference and ensembling*).

    ``forward(x)`` returns probabilities ``(B, C, *spatial)``, not logits.
    """

    def __init__(self, members: Sequence[nn.Module]):
        super().__init__()
        if not members:
            raise SegmentationInputError("an ensemble needs at least one member", what="SegmentationEnsemble")
        self.members = nn.ModuleList(members)
        names = {tuple(getattr(m, "class_names", ())) for m in members}
        if len(names) > 1:
            raise SegmentationInputError(f"members segment different classes: {sorted(names)}",
                                         what="SegmentationEnsemble")
        self.class_names = names.pop()
        self.divisor = int(max(getattr(m, "divisor", 1) for m in members))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.softmax(m(x), dim=1) for m in self.members]).mean(0)


def _as_probability_model(model) -> nn.Module:
    if isinstance(model, SegmentationEnsemble):
        return model
    if isinstance(model, TrainedSegmenter):
        model = model.model
    if isinstance(model, (list, tuple)):
        return SegmentationEnsemble([m.model if isinstance(m, TrainedSegmenter) else m for m in model])
    return SegmentationEnsemble([model])


def predict_volume(model, volume, roi_size: Sequence[int] | None = None, overlap: float = 0.25,
                   sw_batch_size: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Segment one volume: ``(labels, probabilities)``.

    Parameters
    ----------
    model : nn.Module, TrainedSegmenter, SegmentationEnsemble, or a list of them
        A list becomes a :class:`SegmentationEnsemble` (mean softmax).
    volume : array (D, H, W)
        Raw intensities (normalised here like in training).
    roi_size : sequence of int, optional
        Sliding-window size (MONAI's :func:`monai.inferers.sliding_window_inference`,
        Gaussian blending); default the whole volume padded to the network's divisor.
    overlap : float
        Overlap of the windows.

    Returns
    -------
    labels : numpy.ndarray of uint8, (D, H, W)
        Arg-max class of the averaged probabilities.
    probabilities : numpy.ndarray of float32, (C, D, H, W)
    """
    from monai.inferers import sliding_window_inference

    ensemble = _as_probability_model(model)
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise SegmentationInputError(f"expected a 3-D volume, got shape {volume.shape}", what="predict_volume")
    divisor = ensemble.divisor
    padded = [int(np.ceil(n / divisor) * divisor) for n in volume.shape]
    if roi_size is None:
        roi_size = padded
    if any(int(r) % divisor for r in roi_size):
        raise SegmentationInputError(f"roi_size {tuple(roi_size)} must be a multiple of {divisor}",
                                     what="predict_volume")
    x = torch.from_numpy(_pad_to(normalise_intensity(volume), padded)[None, None])
    ensemble.eval()
    with torch.no_grad():
        probabilities = sliding_window_inference(x, tuple(int(r) for r in roi_size), sw_batch_size, ensemble,
                                                 overlap=overlap, mode="gaussian")
    box = (0, slice(None)) + tuple(slice(0, n) for n in volume.shape)
    probabilities = probabilities[box].numpy().astype(np.float32)
    return probabilities.argmax(0).astype(np.uint8), probabilities


def keep_anatomical_components(labels, class_names: Sequence[str], components: dict[str, int] | None = None,
                               hosts: dict[str, np.ndarray] | None = None, host_margin_voxels: int = 3,
                               fragment_fraction: float = 0.25, connectivity: int = 3) -> np.ndarray:
    """Keep, per class, the largest connected components a knee has (the rest becomes background).

    A network's arg-max labels carry islands away from the structure (a patch of "patellar
    cartilage" on the trochlea, bone voxels in the fat pad). Each class keeps its
    :data:`~kneelib.models.segmentation.ANATOMICAL_COMPONENTS` largest connected components
    (two tibial cartilage plates and two menisci, one of everything else), and any further
    component at least ``fragment_fraction`` of the largest (a structure the network split
    in two keeps both halves); with ``hosts``, a
    cartilage class first drops the components that do not come within ``host_margin_voxels``
    of the bone it covers (cartilage lies on its bone). Components are
    :func:`scipy.ndimage.label`'s. Supplement 003 reports no post-processing; its five-member
    V-Net ensembles at full resolution leave few islands.

    Parameters
    ----------
    labels : array of int, (D, H, W)
        Class codes (index into ``class_names``; 0 background).
    class_names : sequence of str
        The network's classes (:func:`kneelib.models.segmentation.network_classes`).
    components : dict, optional
        Components to keep per class name (default the anatomical counts; classes not named
        are left as they are).
    hosts : dict, optional
        ``{class name: boolean mask}`` of the structure each class must touch (e.g. the
        segmented femur for the femoral cartilage); an empty mask gates nothing.
    host_margin_voxels : int
        How close (voxels, chessboard distance) a component must come to its host.
    fragment_fraction : float
        Components at least this share of the class's largest one are kept beyond the count.
    connectivity : int
        1 (faces), 2 (edges) or 3 (corners) neighbourhood of a component.

    Returns
    -------
    numpy.ndarray of uint8
        The cleaned labels, same shape.

    Raises
    ------
    SegmentationInputError
        Not a 3-D integer volume, codes beyond ``class_names``, or a host mask of another shape.
    """
    from kneelib.models.segmentation import ANATOMICAL_COMPONENTS

    labels = np.asarray(labels)
    if labels.ndim != 3 or not np.issubdtype(labels.dtype, np.integer):
        raise SegmentationInputError(f"expected a 3-D integer label volume, got {labels.dtype} of shape {labels.shape}",
                                     what="keep_anatomical_components")
    if labels.size and int(labels.max()) >= len(class_names):
        raise SegmentationInputError(f"label code {int(labels.max())} beyond the {len(class_names)} classes "
                                     f"{tuple(class_names)}", what="keep_anatomical_components")
    counts = ANATOMICAL_COMPONENTS if components is None else components
    hosts = hosts or {}
    structure = ndimage.generate_binary_structure(3, connectivity)
    out = labels.astype(np.uint8, copy=True)
    for code, name in enumerate(class_names):
        if code == 0 or name not in counts:
            continue
        components_of_class, n = ndimage.label(labels == code, structure=structure)
        if n == 0:
            continue
        sizes = np.bincount(components_of_class.ravel(), minlength=n + 1)[1:]
        candidates = np.arange(1, n + 1)
        host = hosts.get(name)
        if host is not None:
            host = np.asarray(host, dtype=bool)
            if host.shape != labels.shape:
                raise SegmentationInputError(f"host mask of {name} has shape {host.shape}, labels {labels.shape}",
                                             what="keep_anatomical_components")
            if host.any():
                near = ndimage.binary_dilation(host, structure=np.ones((3, 3, 3), bool),
                                               iterations=int(host_margin_voxels))
                touching = np.unique(components_of_class[near & (components_of_class > 0)])
                candidates = candidates[np.isin(candidates, touching)]
        by_size = candidates[np.argsort(sizes[candidates - 1], kind="stable")[::-1]]
        if by_size.size == 0:
            kept = by_size
        else:
            large = by_size[sizes[by_size - 1] >= fragment_fraction * sizes[by_size[0] - 1]]
            kept = np.union1d(by_size[:int(counts[name])], large)
        out[(components_of_class > 0) & ~np.isin(components_of_class, kept)] = 0
    return out
