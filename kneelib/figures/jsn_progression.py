"""Figures of the JSN-progression chapter (paper 002): N4 on the real DESS, ROC per fold (Fig. 4-5),
confusion matrices, attention by slice and Grad-CAM on driver slices (Fig. 6)."""
from __future__ import annotations

import numpy as np

__all__ = ["plot_n4", "plot_task_rocs", "plot_confusions", "plot_attention_profile", "plot_slice_cams"]


def plot_n4(before: np.ndarray, after: np.ndarray, bias: np.ndarray, region: np.ndarray, cv_before: float,
            cv_after: float):
    """One real DESS slice before and after N4, the fitted bias field and the outlined region."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(11, 3.9))
    vmax = float(np.percentile(before, 99.5))
    for ax, image, title in ((axes[0], before, f"before N4 (CV {cv_before:.3f})"),
                             (axes[1], after, f"after N4 (CV {cv_after:.3f})")):
        ax.imshow(image, cmap="gray", vmin=0, vmax=vmax)
        ax.contour(region, levels=[0.5], colors="yellow", linewidths=1)
        ax.set_title(title, fontsize=10)
    shown = axes[2].imshow(bias, cmap="viridis")
    axes[2].set_title("N4 bias field", fontsize=10)
    fig.colorbar(shown, ax=axes[2], fraction=0.046)
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    return fig


def plot_task_rocs(results: dict, paper_auc: dict, intervals: dict | None = None):
    """ROC per fold and pooled for each task (``name -> (labels, probability, fold)``).

    ``intervals``: task -> ``(auc, ci_low, ci_high)`` from the results table (the subject
    bootstrap), shown in the legends so figure and table give one interval.
    """
    import matplotlib.pyplot as plt

    from kneelib.stats.roc import plot_roc

    fig, axes = plt.subplots(1, len(results), figsize=(4.6 * len(results), 4.6), squeeze=False)
    for ax, (name, (labels, probability, fold)) in zip(axes[0], results.items()):
        plot_roc({name: (labels, probability)}, ax=ax, folds={name: fold},
                 paper_auc={name: paper_auc[name]} if paper_auc.get(name) is not None else None,
                 intervals={name: intervals[name]} if intervals and name in intervals else None)
        ax.set_title(name, fontsize=10)
        ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    return fig


def plot_confusions(tables: dict):
    """Confusion matrices (counts) side by side (``name -> 2x2 DataFrame``)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tables), figsize=(3.2 * len(tables), 3.0), squeeze=False)
    for ax, (name, table) in zip(axes[0], tables.items()):
        values = table.to_numpy()
        ax.imshow(values, cmap="Blues")
        for (r, c), v in np.ndenumerate(values):
            ax.text(c, r, str(int(v)), ha="center", va="center", color="black")
        ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=["pred 0", "pred 1"], yticklabels=["true 0", "true 1"])
        ax.set_title(name, fontsize=9)
    fig.tight_layout()
    return fig


def plot_attention_profile(attention: np.ndarray, mask: np.ndarray, labels: np.ndarray, driver_share=None):
    """Mean attention per slice position for progressors and non-progressors, with the share of
    progressors whose slice shows a planted driver (when given)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    position = np.arange(attention.shape[1])
    for value, name in ((1, "progressors"), (0, "non-progressors")):
        rows = labels == value
        weights = np.where(mask[rows], attention[rows], np.nan)
        ax.plot(position, np.nanmean(weights, axis=0), marker="o", label=f"mean attention, {name}")
    ax.axhline(1 / attention.shape[1], color="grey", ls="--", lw=1, label="uniform attention")
    ax.set(xlabel="slice in the window (posterior -> anterior)", ylabel="attention weight")
    if driver_share is not None:
        twin = ax.twinx()
        twin.bar(position, driver_share, alpha=0.2, color="C3")
        twin.set_ylabel("progressors with a driver on the slice", color="C3")
        twin.set_ylim(0, 1)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig


def plot_slice_cams(images, cams, masks, titles):
    """Driver slices with their Grad-CAM and the planted driver outline."""
    import matplotlib.pyplot as plt

    from kneelib.explain.gradcam import upsample_cams

    n = len(images)
    fig, axes = plt.subplots(1, max(n, 1), figsize=(2.7 * max(n, 1), 3.0), squeeze=False)
    for ax in axes[0]:
        ax.axis("off")
    if n:
        up = upsample_cams(np.asarray(cams), np.asarray(images).shape[1:])
        for ax, image, cam, mask, title in zip(axes[0], images, up, masks, titles):
            ax.imshow(image, cmap="gray")
            ax.imshow(cam, cmap="jet", alpha=0.4, vmin=0, vmax=1)
            ax.contour(mask, levels=[0.5], colors="white", linewidths=1)
            ax.set_title(title, fontsize=8)
    fig.tight_layout()
    return fig
