"""Figures of the realism measures of issue 10 (item 4): what the real-vs-synthetic discriminator keys on.

Takes the ``gradcam`` summary of :func:`kneelib.train.realism.discriminability` (mean
network input and mean Grad-CAM per class, a few examples) and returns a matplotlib
figure; nothing here computes a statistic.
"""
from __future__ import annotations

import numpy as np

__all__ = ["plot_discriminator_gradcam"]


def plot_discriminator_gradcam(gradcam: dict, title: str | None = None, alpha: float = 0.45,
                               n_examples: int = 2, cmap: str = "jet"):
    """Mean Grad-CAM of the discriminator over real and over synthetic test images, with examples.

    Parameters
    ----------
    gradcam : dict
        ``mean_image``, ``mean_cam``, ``examples`` (class -> (inputs, cams)),
        ``border_share`` and optionally ``sd_image`` / ``spread``, keyed by ``"real"`` /
        ``"synthetic"``, as returned in
        ``discriminability(...)["gradcam"]``.
    title : str, optional
    n_examples : int
        Single test images shown per class beside the means.

    Returns
    -------
    matplotlib.figure.Figure
        One row per class: mean input, its standard deviation across the class's test
        images (when ``gradcam`` has ``sd_image``; one grey scale for both classes), mean
        input with the mean Grad-CAM, then examples.
    """
    import matplotlib.pyplot as plt

    classes = [c for c in ("real", "synthetic") if c in gradcam["mean_cam"]]
    n_examples = min(n_examples, min(len(gradcam["examples"][c][0]) for c in classes))
    spread = "sd_image" in gradcam
    first = 3 if spread else 2
    ncols = first + n_examples
    fig, axes = plt.subplots(len(classes), ncols, figsize=(2.4 * ncols, 2.6 * len(classes)), squeeze=False)
    # one grey scale for the SD maps of both classes, so that their spread compares
    sd_max = max(float(gradcam["sd_image"][c].max()) for c in classes) if spread else None
    for row, name in enumerate(classes):
        image, cam = gradcam["mean_image"][name], gradcam["mean_cam"][name]
        border = gradcam.get("border_share", {}).get(name, np.nan)
        axes[row, 0].imshow(image, cmap="gray")
        axes[row, 0].set_title(f"{name}: mean input", fontsize=9)
        if spread:
            axes[row, 1].imshow(gradcam["sd_image"][name], cmap="gray", vmin=0, vmax=sd_max)
            axes[row, 1].set_title(f"SD across images (mean {gradcam['spread'][name]:.2f})", fontsize=9)
        axes[row, first - 1].imshow(image, cmap="gray")
        axes[row, first - 1].imshow(cam, cmap=cmap, alpha=alpha, vmin=0, vmax=max(float(cam.max()), 1e-6))
        axes[row, first - 1].set_title(f"mean Grad-CAM (border {border:.0%})", fontsize=9)
        inputs, cams = gradcam["examples"][name]
        for k in range(n_examples):
            ax = axes[row, first + k]
            ax.imshow(inputs[k], cmap="gray")
            ax.imshow(cams[k], cmap=cmap, alpha=alpha, vmin=0, vmax=1)
            ax.set_title(f"{name} example {k + 1}", fontsize=9)
    for ax in axes.ravel():
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
