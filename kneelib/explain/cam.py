"""Class activation maps (CAM) of the Siamese knee-pain network (paper 000, Fig. 3).

Paper 000, Methods "Class activation mapping and radiologist review": the final
feature maps of the left and right knee (``f_L,n`` and ``f_R,n``, 512 x 28 x 28) are
multiplied by the weights of their fully connected layer ``FC_n``, giving one 28 x 28
CAM per MRI slice; for each subject the CAM with the highest average value among the
23 slices is the one that shows the most pain-relevant region. CAM itself is Zhou
et al. (2016): ``M_c(x, y) = sum_k w_k^c f_k(x, y)``.

Works with any model exposing ``forward_features(images) -> (B, 2, S, C, h, w)`` and
``cam_weights() -> (weights (classes, S, 2, C), bias)``, i.e.
:class:`kneelib.models.siamese.SiameseSliceNet` with the paper's branches or the VGG16
trunks of :mod:`kneelib.models.vgg_cam`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from kneelib.explain.upsample import upsample_saliency

__all__ = [
    "class_activation_map",
    "SiameseCams",
    "siamese_cams",
    "painful_knee_cams",
    "top_cam_slice",
    "upsample_cam",
    "normalize_cam",
]


def class_activation_map(feature_maps: torch.Tensor, class_weights: torch.Tensor) -> torch.Tensor:
    """``sum_k w_k f_k(x, y)`` over the channel axis (Zhou et al. 2016, Eq. 1 without the bias).

    Parameters
    ----------
    feature_maps : torch.Tensor
        Shape ``(..., C, h, w)``.
    class_weights : torch.Tensor
        Shape ``(..., C)``, broadcastable against the leading axes of ``feature_maps``.

    Returns
    -------
    torch.Tensor
        Shape ``(..., h, w)``. Its spatial mean is the map's contribution to the logit.
    """
    if feature_maps.shape[-3] != class_weights.shape[-1]:
        raise ValueError(
            f"feature_maps have {feature_maps.shape[-3]} channels but class_weights have "
            f"{class_weights.shape[-1]}")
    return (feature_maps * class_weights[..., :, None, None]).sum(dim=-3)


@dataclass(frozen=True)
class SiameseCams:
    """CAMs of a batch of subjects.

    Attributes
    ----------
    cams : ndarray, shape (n_subjects, 2 knees, n_slices, h, w)
        Map of each subject's ``target_class`` on every knee and slice.
    target_class : ndarray of int, shape (n_subjects,)
        The class each subject's maps explain (0 = left knee painful, 1 = right).
    probability_right : ndarray, shape (n_subjects,)
        Softmax probability of class 1 (pain in the right knee).
    """

    cams: np.ndarray
    target_class: np.ndarray
    probability_right: np.ndarray


@torch.no_grad()
def siamese_cams(model, images, target_class=None, contrast: bool = False,
                 batch_size: int = 32, standardization=None) -> SiameseCams:
    """CAMs per subject, knee and slice from a trained Siamese model (Fig. 3B).

    Parameters
    ----------
    model : SiameseSliceNet
        Put in eval mode here (and restored afterwards).
    images : array-like, shape (n_subjects, 2, n_slices, H, W)
    target_class : None, int or array of int
        Class to explain per subject; ``None`` = the predicted class (the knee the
        model says hurts). Pass the labels to explain the knee with confirmed pain,
        as the radiologist review did (Fig. 3I).
    contrast : bool
        Weight by ``w_c - w_other`` instead of ``w_c``. With two softmax classes only
        the difference moves the prediction; the paper (and Zhou et al.) use ``w_c``.
    batch_size : int
        Subjects per forward pass.
    standardization : object with ``mean`` and ``std`` or None
        Intensity scaling the model was trained with
        (``learner.dls.standardization`` of :mod:`kneelib.train.siamese`); ``None`` if
        ``images`` are already scaled.

    Returns
    -------
    SiameseCams
    """
    images = np.asarray(images, dtype=np.float32)
    if images.ndim not in (5, 6) or images.shape[1] != 2:
        raise ValueError(f"images must have shape (n_subjects, 2 knees, n_slices, H, W); got {images.shape}")
    if standardization is not None:
        images = (images - np.float32(standardization.mean)) / np.float32(standardization.std)
    images = torch.from_numpy(images)
    was_training = model.training
    model.eval()
    try:
        weights, _ = model.cam_weights()  # (classes, S, 2, C)
        maps, probabilities = [], []
        for start in range(0, len(images), batch_size):
            features = model.forward_features(images[start:start + batch_size])  # (B, 2, S, C, h, w)
            probabilities.append(torch.softmax(model.head(features), dim=1))
            maps.append(features)
        probabilities = torch.cat(probabilities)
        if target_class is None:
            target = probabilities.argmax(dim=1)
        else:
            target = torch.as_tensor(np.broadcast_to(np.asarray(target_class), (len(images),)).copy(),
                                     dtype=torch.long)
        if target.min() < 0 or target.max() >= weights.shape[0]:
            raise ValueError(f"target_class must lie in [0, {weights.shape[0] - 1}]")
        cams, offset = [], 0
        for features in maps:
            batch_target = target[offset:offset + len(features)]
            offset += len(features)
            class_weights = weights[batch_target]  # (B, S, 2, C)
            if contrast:
                class_weights = class_weights - (weights.sum(dim=0, keepdim=True) - weights[batch_target]) / (
                    weights.shape[0] - 1)
            class_weights = class_weights.transpose(1, 2)  # (B, 2, S, C)
            cams.append(class_activation_map(features, class_weights))
    finally:
        model.train(was_training)
    return SiameseCams(torch.cat(cams).numpy(), target.numpy(), probabilities[:, 1].numpy())


def painful_knee_cams(cams: np.ndarray, knee_index) -> np.ndarray:
    """The maps of one knee per subject: ``cams[i, knee_index[i]]``.

    Parameters
    ----------
    cams : ndarray, shape (n_subjects, 2, n_slices, h, w)
    knee_index : int or array of int
        0 = left, 1 = right per subject (the label for the knee with pain, or the
        predicted class).

    Returns
    -------
    ndarray, shape (n_subjects, n_slices, h, w)
    """
    cams = np.asarray(cams)
    knee_index = np.broadcast_to(np.asarray(knee_index, dtype=int), (cams.shape[0],))
    if np.any((knee_index < 0) | (knee_index > 1)):
        raise ValueError("knee_index must be 0 (left) or 1 (right)")
    return cams[np.arange(cams.shape[0]), knee_index]


def top_cam_slice(cams: np.ndarray) -> np.ndarray:
    """Slice with the highest mean CAM per subject (Methods: "selecting the CAM with
    highest average value from the 23 CAMs").

    Parameters
    ----------
    cams : ndarray, shape (n_subjects, n_slices, h, w)

    Returns
    -------
    ndarray of int, shape (n_subjects,)
    """
    cams = np.asarray(cams)
    if cams.ndim != 4:
        raise ValueError(f"cams must have shape (n_subjects, n_slices, h, w); got {cams.shape}")
    return cams.mean(axis=(-2, -1)).argmax(axis=1)


def upsample_cam(cam: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """CAMs ``(..., h, w)`` on the image grid ``size``, as ``float32``.

    Bilinear, as Zhou et al.; the same resampling as the pointing game
    (:func:`kneelib.explain.upsample.upsample_saliency`, half-pixel centres).
    """
    return upsample_saliency(np.asarray(cam, dtype=np.float32), size)


def normalize_cam(cam: np.ndarray) -> np.ndarray:
    """Min-max scale each map ``(..., h, w)`` to [0, 1] for display (constant maps -> 0)."""
    cam = np.asarray(cam, dtype=np.float32)
    low = cam.min(axis=(-2, -1), keepdims=True)
    span = cam.max(axis=(-2, -1), keepdims=True) - low
    return np.where(span > 0, (cam - low) / np.where(span > 0, span, 1), 0.0).astype(np.float32)
