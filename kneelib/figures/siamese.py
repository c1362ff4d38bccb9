"""Figures of the Siamese knee-pain chapter (paper 000, Chang et al. 2020).

* :func:`plot_roc_panels` -- Fig. 4A-B: pooled out-of-fold ROC of Models A and B with the
  per-fold curves and the published AUC in the legend;
* :func:`plot_cam_comparison` -- Fig. 3A-B: the painful knee's top-CAM slice with the
  VGG16-CAM and the Siamese map, beside the planted lesions.
"""
from __future__ import annotations

import numpy as np

from kneelib.explain.siamese_hot_spots import LESION_LABELS
from kneelib.preprocess.siamese_inputs import LESION_NAMES

__all__ = ["plot_roc_panels", "plot_cam_comparison"]


def plot_roc_panels(models: dict, paper_auc: dict | None = None, n_folds: int | None = None):
    """Fig. 4A-B: one panel per cross-validated model (:class:`kneelib.train.siamese_cv.CrossValidatedModel`).

    Parameters
    ----------
    models : dict of str to CrossValidatedModel
    paper_auc : dict of str to float, optional
        Published AUC per model name, shown in the legend.
    n_folds : int, optional
        For the panel titles.

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt

    from kneelib.stats.roc import plot_roc

    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 5), squeeze=False)
    for ax, (name, model) in zip(axes[0], models.items()):
        plot_roc({name: (model.result.labels, model.result.probability)}, ax=ax, folds={name: model.result.fold},
                 paper_auc=paper_auc)
        folds = f", {n_folds}-fold CV" if n_folds else ""
        ax.set_title(f"{name} (n = {len(model.cohort)} subjects{folds})")
    fig.tight_layout()
    return fig


def plot_cam_comparison(data, saliency, n_show: int = 4):
    """Fig. 3A-B: the painful knee's top-CAM slice of test subjects with the VGG16-CAM and the
    Siamese map, and the planted lesions of the Siamese slice (colour per lesion, legend)."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    from kneelib.explain.cam import normalize_cam, upsample_cam

    colours = ["#00bcd4", "#ff9800", "#e91e63", "#8bc34a", "#9c27b0"]
    labels = data.cohort["label"].to_numpy()
    n_show = min(n_show, len(saliency.test))
    fig, axes = plt.subplots(3, n_show, figsize=(2.4 * n_show, 7.8), squeeze=False)
    size = data.images.shape[-1]
    for i in range(n_show):
        subject = saliency.test[i]
        knee = int(labels[subject])
        correct = (saliency.probability["siamese"][i] >= 0.5) == bool(knee)
        for row, architecture in enumerate(("vgg16_cam", "siamese")):
            s = int(saliency.top_slice[architecture][i])
            cam = normalize_cam(upsample_cam(saliency.cams[architecture][i, knee, s], size))
            axes[row, i].imshow(data.images[subject, knee, s], cmap="gray")
            axes[row, i].imshow(cam, cmap="jet", alpha=0.4)
            axes[row, i].set_title(f"{'VGG16-CAM' if row == 0 else 'Siamese'}, slice {s}", fontsize="small")
        s = int(saliency.top_slice["siamese"][i])
        code = data.lesions[subject, knee, s].astype(int)
        first = np.full(code.shape, -1)
        for bit in reversed(range(len(LESION_NAMES))):  # highest priority drawn last
            first[(code >> bit) & 1 == 1] = bit
        axes[2, i].imshow(data.images[subject, knee, s], cmap="gray")
        axes[2, i].imshow(np.ma.masked_less(first, 0), cmap=ListedColormap(colours), vmin=0,
                          vmax=len(colours) - 1, alpha=0.7, interpolation="nearest")
        axes[2, i].set_title(f"{data.cohort['participant_id'].iloc[subject]} "
                             f"({'LR'[knee]} knee, {'correct' if correct else 'wrong'})", fontsize="small")
    for ax in axes.flat:
        ax.set_axis_off()
    fig.legend([Patch(color=c) for c in colours], [LESION_LABELS[n] for n in LESION_NAMES], loc="lower center",
               ncol=3, fontsize="small", frameon=False)
    fig.suptitle("CAMs of the painful knee (top slice)\nand the planted lesions", fontsize="medium")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig
