"""Grad-CAM for each head of the multi-task grading network.

Paper 004 (Tiulpin & Saarakkala 2020) names the missing analysis of attention maps as
a limitation (*Discussion*); its predecessor (Tiulpin et al. 2018) showed attention
maps. Grad-CAM (Selvaraju et al. 2017) weights the last convolutional feature maps
by the spatial mean of the gradient of one head's class score and keeps the positive
part. Because every head shares the backbone, each head gets its own map from the
same feature maps. The maps can be scored against planted lesions with
:mod:`kneelib.explain.pointing`.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from kneelib.explain.upsample import upsample_saliency

__all__ = ["grad_cam", "upsample_cams", "plot_grad_cams"]


def grad_cam(model, images: torch.Tensor, task: str, target_grades=None
             ) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM maps of one head.

    Parameters
    ----------
    model : MultiTaskNet
        Needs ``forward_features``, ``forward_heads`` and ``task_slices``.
    images : Tensor, shape (batch, channels, H, W)
        Network inputs (already normalised).
    task : str
        Head whose score is explained (e.g. ``"kl"`` or ``"osteophyte_fl"``).
    target_grades : int or sequence of int, optional
        Grade whose logit is explained per image; default: the predicted grade.

    Returns
    -------
    cams : ndarray, shape (batch, h, w)
        Non-negative maps on the feature grid, each scaled to max 1 (all-zero maps
        stay zero).
    grades : ndarray of int, shape (batch,)
        The explained grade per image.
    """
    slices = model.task_slices()
    if task not in slices:
        raise ValueError(f"model has no head '{task}'; heads: {list(slices)}")
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            device = next(model.parameters()).device
            # the input requires grad so that frozen backbones still yield feature gradients
            inputs = images.detach().to(device).requires_grad_(True)
            features = model.forward_features(inputs)
            features.retain_grad()
            logits = model.forward_heads(features)[:, slices[task]]
            if target_grades is None:
                grades = logits.argmax(dim=1)
            else:
                grades = torch.as_tensor(np.broadcast_to(np.asarray(target_grades), (len(images),)).copy(),
                                         dtype=torch.long, device=device)
                n_grades = logits.shape[1]
                if (grades < 0).any() or (grades >= n_grades).any():
                    raise ValueError(f"target grades must lie in 0..{n_grades - 1}")
            score = logits.gather(1, grades[:, None]).sum()
            model.zero_grad(set_to_none=True)
            score.backward()
        weights = features.grad.mean(dim=(2, 3), keepdim=True)
        cams = F.relu((weights * features).sum(dim=1)).detach().cpu()
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    peak = cams.flatten(1).max(dim=1).values.clamp_min(1e-12)[:, None, None]
    cams = torch.where(cams.flatten(1).max(dim=1).values[:, None, None] > 0, cams / peak, cams)
    return cams.numpy(), grades.cpu().numpy()


def upsample_cams(cams: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``(batch, h, w)`` maps on the image grid ``size``, as ``float32``.

    The same resampling as the pointing game
    (:func:`kneelib.explain.upsample.upsample_saliency`, half-pixel centres).
    """
    return upsample_saliency(np.asarray(cams, dtype=np.float32), size)


def plot_grad_cams(images: np.ndarray, cams: np.ndarray, titles=None, alpha: float = 0.45,
                   ncols: int = 4, cmap: str = "jet"):
    """Grid of radiographs with their Grad-CAM overlaid; returns the matplotlib figure.

    ``images`` is ``(n, H, W)`` (any range); ``cams`` is ``(n, h, w)`` and is upsampled.
    """
    import matplotlib.pyplot as plt

    images = np.asarray(images)
    n = len(images)
    cams_up = upsample_cams(cams, images.shape[1:])
    ncols = min(ncols, n)
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.6 * ncols, 2.8 * nrows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i in range(n):
        ax = axes.ravel()[i]
        ax.imshow(images[i], cmap="gray")
        ax.imshow(cams_up[i], cmap=cmap, alpha=alpha, vmin=0, vmax=1)
        if titles is not None:
            ax.set_title(titles[i], fontsize=9)
    fig.tight_layout()
    return fig
