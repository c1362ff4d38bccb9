"""The distance-weighted loss family of the segmentation ensembles of paper 001.

Supplement 003, *Bone segmentation network implementation*: each of the five V-Nets
was trained with a different distance-weighted loss (Caliva et al. 2019, "Distance map
loss penalty term for semantic segmentation"):

=========================  ==========================================================
name (:data:`SEGMENTATION_LOSSES`)  loss
=========================  ==========================================================
``weighted_dice``          class-weighted soft Dice loss
``weighted_cross_entropy`` class-weighted cross-entropy
``mixed``                  class-weighted Dice + 0.1 x class-weighted cross-entropy
``penalised_confidence``   class-weighted cross-entropy - beta x entropy of the softmax
                           (penalised confident output, Pereyra et al. 2017)
``dice``                   plain (unweighted) soft Dice loss
=========================  ==========================================================

Class weights enter four of the five losses ("class weights were added to four of the
losses"); :func:`class_weights_from_labels` derives them from the training label
frequencies (the supplement gives no formula: inverse frequency to the power 0.5,
normalised to mean 1, is our choice, milder than plain inverse frequency whose
~1000:1 ratio between background and patellar cartilage makes training unstable).

Distance weighting (Caliva et al. 2019): every voxel's term is multiplied by
``1 + Phi``, where ``Phi`` is the inverted, normalised distance map of the ground truth,
``Phi = 1 - D / max(D)`` with ``D`` the Euclidean distance (mm, voxel spacing) to the
nearest label boundary (:func:`distance_weight_map`): boundary voxels weigh 2, the
voxels farthest from any boundary 1, so errors along the bone and cartilage surfaces
cost most. For the Dice terms the weight multiplies the voxel sums of the soft
intersection and of the two volumes; for cross-entropy and entropy it multiplies each
voxel's term.

Without a weight map (``forward(logits, target)``) the losses are MONAI's
(:class:`monai.losses.DiceLoss`, :class:`monai.losses.DiceCELoss` with ``lambda_ce=0.1``,
:class:`torch.nn.CrossEntropyLoss`); with a map of ones the weighted forms reproduce them
exactly (tests/test_train_segmentation.py).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from kneelib.models.segmentation import SegmentationInputError

__all__ = [
    "SEGMENTATION_LOSSES",
    "MIXED_CE_WEIGHT",
    "CONFIDENCE_PENALTY",
    "DistanceWeightedSegmentationLoss",
    "segmentation_loss",
    "distance_weight_map",
    "class_weights_from_labels",
]

#: Names of the supplement's five losses, in its order.
SEGMENTATION_LOSSES: tuple[str, ...] = ("weighted_dice", "weighted_cross_entropy", "mixed",
                                        "penalised_confidence", "dice")

#: Weight of the cross-entropy in the mixed loss (supplement 003: 0.1).
MIXED_CE_WEIGHT = 0.1

#: Weight beta of the entropy penalty (not given by the supplement; Pereyra et al. 2017 use 0.1-2.5).
CONFIDENCE_PENALTY = 0.1

#: (dice weight, cross-entropy weight, entropy penalty, class-weighted) of each loss.
_TERMS = {
    "weighted_dice": (1.0, 0.0, 0.0, True),
    "weighted_cross_entropy": (0.0, 1.0, 0.0, True),
    "mixed": (1.0, MIXED_CE_WEIGHT, 0.0, True),
    "penalised_confidence": (0.0, 1.0, CONFIDENCE_PENALTY, True),
    "dice": (1.0, 0.0, 0.0, False),
}

_SMOOTH = 1e-5  # MONAI's smooth_nr and smooth_dr


class DistanceWeightedSegmentationLoss(nn.Module):
    """Soft Dice, cross-entropy and entropy penalty with class and voxel (distance) weights.

    ``loss = dice_weight * Dice + ce_weight * CE - entropy_penalty * H``.

    Parameters
    ----------
    dice_weight, ce_weight, entropy_penalty : float
        Weights of the three terms.
    class_weight : sequence of float, optional
        One weight per class (``None``: all 1).
    name : str
        The loss's name (for logs).

    Notes
    -----
    ``forward(logits, target, weight_map=None)``: ``logits`` ``(B, C, *spatial)``,
    ``target`` integer class indices ``(B, *spatial)`` or ``(B, 1, *spatial)``,
    ``weight_map`` ``(B, *spatial)`` or ``(B, 1, *spatial)`` voxel weights (e.g.
    :func:`distance_weight_map`).

    - Dice (MONAI's formula, ``batch=False``): per sample and class
      ``1 - (2 sum w p g + eps) / (sum w p + sum w g + eps)``, times the class weight,
      averaged over samples and classes (background included).
    - CE: ``sum_i w_i c_{t_i} nll_i / sum_i c_{t_i}`` (torch's class-weighted mean when
      ``w = 1``; Caliva's ``mean((1 + Phi) CE)`` when ``c = 1``).
    - H: ``mean_i w_i H(p_i)``, the softmax entropy in nats.
    """

    def __init__(self, dice_weight: float = 1.0, ce_weight: float = 0.0, entropy_penalty: float = 0.0,
                 class_weight: Sequence[float] | None = None, name: str = ""):
        super().__init__()
        self.dice_weight = float(dice_weight)
        self.ce_weight = float(ce_weight)
        self.entropy_penalty = float(entropy_penalty)
        self.name = name
        weight = None if class_weight is None else torch.as_tensor(np.asarray(class_weight, dtype=np.float32))
        self.register_buffer("class_weight", weight)
        self._monai = self._monai_loss()

    def _monai_loss(self):
        """MONAI's module for the unweighted-voxel case, where MONAI has it."""
        from monai.losses import DiceCELoss, DiceLoss

        if self.entropy_penalty:
            return None
        if self.dice_weight and self.ce_weight:
            return DiceCELoss(to_onehot_y=True, softmax=True, weight=self.class_weight,
                              lambda_dice=self.dice_weight, lambda_ce=self.ce_weight)
        if self.dice_weight:
            return DiceLoss(to_onehot_y=True, softmax=True, weight=self.class_weight)
        return None

    def forward(self, logits: torch.Tensor, target: torch.Tensor, weight_map: torch.Tensor | None = None):
        target = _check_target(logits, target)
        if weight_map is None and self._monai is not None:
            return self._monai(logits, target.unsqueeze(1))
        if weight_map is None:
            weight_map = torch.ones_like(target, dtype=logits.dtype)
        else:
            weight_map = weight_map.to(logits.dtype)
            if weight_map.dim() == logits.dim():
                weight_map = weight_map[:, 0]
            if weight_map.shape != target.shape:
                raise SegmentationInputError(f"weight map {tuple(weight_map.shape)} does not match the target "
                                             f"{tuple(target.shape)}", what=self.name or "segmentation loss")
        n_classes = logits.shape[1]
        class_weight = (self.class_weight if self.class_weight is not None
                        else torch.ones(n_classes, dtype=logits.dtype, device=logits.device))
        if class_weight.numel() != n_classes:
            raise SegmentationInputError(f"{class_weight.numel()} class weights for {n_classes} classes",
                                         what=self.name or "segmentation loss")
        class_weight = class_weight.to(logits.device, logits.dtype)
        loss = logits.new_zeros(())
        log_p = F.log_softmax(logits, dim=1)
        if self.dice_weight:
            p = log_p.exp()
            onehot = F.one_hot(target, n_classes).movedim(-1, 1).to(logits.dtype)
            w = weight_map.unsqueeze(1)
            axes = tuple(range(2, logits.dim()))
            intersection = (w * p * onehot).sum(axes)
            denominator = (w * p).sum(axes) + (w * onehot).sum(axes)
            dice = 1.0 - (2.0 * intersection + _SMOOTH) / (denominator + _SMOOTH)
            loss = loss + self.dice_weight * (dice * class_weight).mean()
        if self.ce_weight:
            nll = -log_p.gather(1, target.unsqueeze(1)).squeeze(1)
            c = class_weight[target]
            loss = loss + self.ce_weight * (weight_map * c * nll).sum() / c.sum()
        if self.entropy_penalty:
            entropy = -(log_p.exp() * log_p).sum(1)
            loss = loss - self.entropy_penalty * (weight_map * entropy).mean()
        return loss


def _check_target(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if target.dim() == logits.dim():
        target = target[:, 0]
    if target.shape[0] != logits.shape[0] or target.shape[1:] != logits.shape[2:]:
        raise SegmentationInputError(f"target {tuple(target.shape)} does not match logits {tuple(logits.shape)}",
                                     what="segmentation loss")
    target = target.long()
    if target.numel() and (target.min() < 0 or target.max() >= logits.shape[1]):
        raise SegmentationInputError(f"target classes must lie in [0, {logits.shape[1] - 1}], got "
                                     f"[{int(target.min())}, {int(target.max())}]", what="segmentation loss")
    return target


def segmentation_loss(name: str, class_weight: Sequence[float] | None = None,
                      confidence_penalty: float = CONFIDENCE_PENALTY) -> DistanceWeightedSegmentationLoss:
    """One of the supplement's five losses (:data:`SEGMENTATION_LOSSES`).

    Parameters
    ----------
    name : str
        Loss name (table in the module docstring).
    class_weight : sequence of float, optional
        Class weights (e.g. :func:`class_weights_from_labels`); ignored by ``"dice"``,
        the supplement's one loss without class weights.
    confidence_penalty : float
        beta of ``"penalised_confidence"``.

    Returns
    -------
    DistanceWeightedSegmentationLoss
        Call it as ``loss(logits, target, weight_map)``; the distance weighting is the
        ``weight_map`` (:func:`distance_weight_map`).

    Raises
    ------
    SegmentationInputError
        Unknown name.
    """
    if name not in _TERMS:
        raise SegmentationInputError(f"unknown loss {name!r}; expected one of {SEGMENTATION_LOSSES}",
                                     what="segmentation_loss")
    dice, ce, entropy, weighted = _TERMS[name]
    if entropy:
        entropy = float(confidence_penalty)
    return DistanceWeightedSegmentationLoss(dice, ce, entropy, class_weight if weighted else None, name=name)


def distance_weight_map(labels, spacing_mm: Sequence[float] | None = None) -> np.ndarray:
    """Voxel weights ``1 + Phi`` of Caliva et al. (2019) for one label volume.

    Parameters
    ----------
    labels : array of int
        Class indices of one volume (any dimension).
    spacing_mm : sequence of float, optional
        Voxel size per axis (default 1).

    Returns
    -------
    numpy.ndarray of float32
        2 on the label boundaries (voxels with a face neighbour of another class), falling
        linearly with the distance ``D`` to the nearest boundary to 1 at the largest
        distance: ``1 + (1 - D / max D)``. A volume with one class only weighs 1
        everywhere.

    Raises
    ------
    SegmentationInputError
        Spacing of the wrong length or not positive.
    """
    labels = np.asarray(labels)
    spacing = np.ones(labels.ndim) if spacing_mm is None else np.asarray(spacing_mm, dtype=float)
    if spacing.shape != (labels.ndim,) or not np.all(spacing > 0):
        raise SegmentationInputError(f"spacing {spacing_mm} does not fit a {labels.ndim}-D volume",
                                     what="distance_weight_map")
    boundary = np.zeros(labels.shape, dtype=bool)
    for axis in range(labels.ndim):
        differs = np.diff(labels, axis=axis) != 0
        lead = [slice(None)] * labels.ndim
        trail = [slice(None)] * labels.ndim
        lead[axis] = slice(1, None)
        trail[axis] = slice(None, -1)
        boundary[tuple(lead)] |= differs
        boundary[tuple(trail)] |= differs
    if not boundary.any():
        return np.ones(labels.shape, dtype=np.float32)
    distance = ndimage.distance_transform_edt(~boundary, sampling=spacing)
    top = distance.max()
    phi = 1.0 - distance / top if top > 0 else np.ones_like(distance)
    return (1.0 + phi).astype(np.float32)


def class_weights_from_labels(label_volumes, n_classes: int, power: float = 0.5) -> np.ndarray:
    """Class weights ``(1 / frequency) ** power`` normalised to mean 1.

    Parameters
    ----------
    label_volumes : sequence of arrays of int
        Training label volumes (class indices).
    n_classes : int
    power : float
        1 gives inverse-frequency weights, 0 equal weights (default 0.5, our choice).

    Returns
    -------
    numpy.ndarray, shape (n_classes,)
        A class absent from every volume gets the weight of one voxel (count 1).

    Raises
    ------
    SegmentationInputError
        No volumes, or class indices outside ``[0, n_classes)``.
    """
    counts = np.zeros(n_classes, dtype=float)
    for volume in label_volumes:
        values = np.asarray(volume).ravel().astype(np.int64)
        if values.size and (values.min() < 0 or values.max() >= n_classes):
            raise SegmentationInputError(f"class indices outside [0, {n_classes}) in a label volume",
                                         what="class_weights_from_labels")
        counts += np.bincount(values, minlength=n_classes)
    if counts.sum() == 0:
        raise SegmentationInputError("no labelled voxels", what="class_weights_from_labels")
    frequency = np.maximum(counts, 1.0) / counts.sum()
    weights = frequency ** (-float(power))
    return weights / weights.mean()
