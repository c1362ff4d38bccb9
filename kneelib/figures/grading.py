"""Figures of the radiograph grading chapters (paper 004, Tiulpin & Saarakkala 2020).

Training curves, confusion matrices (Fig. 4), ROC and precision-recall curves (Fig. 3),
metric bars against baselines, Grad-CAM examples and the pointing game, and the knee
localisation on bilateral radiographs. Every function takes computed results and
returns a matplotlib figure; nothing here computes a statistic.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from kneelib.data.knee_radiographs import TASK_LABELS

__all__ = ["plot_history", "plot_confusion", "plot_metric_bars", "plot_kl_grad_cams", "plot_confusions",
           "plot_binary_curves", "plot_pointing_examples", "plot_localisation", "plot_reliability"]


def plot_history(history: pd.DataFrame, best_epoch: int | None = None,
                 metric_title: str = "internal validation (model selection)",
                 held_out_label: str = "internal-val loss"):
    """Training curves: losses and held-out kappa/balanced accuracy per epoch.

    With a ``fold`` column holding several folds (:func:`kneelib.train.grading.train_kl_folds`),
    every fold is drawn, one line style per fold, in the colour of its quantity.
    """
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 3.6))
    folds = sorted(history["fold"].unique()) if "fold" in history and history["fold"].nunique() > 1 else [None]
    styles = ["-", "--", ":", "-."]
    for i, fold in enumerate(folds):
        part = history if fold is None else history[history["fold"] == fold]
        suffix = "" if fold is None else f", fold {fold}"
        line = styles[i % len(styles)]
        ax_loss.plot(part["epoch"], part["train_loss"], "o" + line, color="C0", label="train loss" + suffix)
        ax_loss.plot(part["epoch"], part["valid_loss"], "s" + line, color="C1", label=held_out_label + suffix)
        for colour, (column, label) in zip(("C0", "C1"), (("kl_kappa", "quadratic kappa"),
                                                           ("kl_bacc", "balanced accuracy"))):
            ax_metric.plot(part["epoch"], part[column], "o" + line, color=colour, label=label + suffix)
    if best_epoch is not None:
        ax_metric.axvline(best_epoch, color="grey", ls="--", label=f"selected epoch {best_epoch}")
    first = history if folds == [None] else history[history["fold"] == folds[0]]
    for epoch, lr in zip(first["epoch"], first["lr"]):
        ax_metric.annotate(f"{lr:.2g}", (epoch, 0.02), ha="center", fontsize=7, color="grey")
    for ax in (ax_loss, ax_metric):
        ax.set_xticks(sorted(history["epoch"].unique()))
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("cross-entropy")
    ax_loss.legend(fontsize=8 if len(folds) > 1 else None)
    ax_metric.set_ylim(0, 1)
    ax_metric.set_xlabel("epoch (grey: learning rate)")
    ax_metric.set_title(metric_title)
    ax_metric.legend(loc="upper left", fontsize=7 if len(folds) > 1 else 8, ncol=2 if len(folds) > 1 else 1)
    fig.tight_layout()
    return fig


def plot_confusion(percent: np.ndarray, low: np.ndarray | None = None, high: np.ndarray | None = None,
                   counts: np.ndarray | None = None, title: str = "KL confusion matrix (row %)"):
    """Heat map of a row-percent confusion matrix, with counts and 95% CIs in the cells."""
    import matplotlib.pyplot as plt

    n = percent.shape[0]
    fig, ax = plt.subplots(figsize=(5.6, 4.8))
    image = ax.imshow(np.nan_to_num(percent), cmap="Blues", vmin=0, vmax=100)
    for i in range(n):
        for j in range(n):
            if np.isnan(percent[i, j]):
                continue
            text = f"{percent[i, j]:.0f}%"
            if counts is not None:
                text += f"\n(n={counts[i, j]})"
            if low is not None and high is not None:
                text += f"\n[{low[i, j]:.0f}-{high[i, j]:.0f}]"
            ax.text(j, i, text, ha="center", va="center", fontsize=7,
                    color="white" if percent[i, j] > 55 else "black")
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xlabel("predicted KL grade")
    ax.set_ylabel("reference KL grade")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.046, label="% of reference grade")
    fig.tight_layout()
    return fig


def plot_metric_bars(table: pd.DataFrame, metrics=("quadratic_kappa", "balanced_accuracy", "accuracy")):
    """Model vs majority grade vs chance, with 95% bootstrap CIs as error bars."""
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(table["model"]))
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 3.4))
    for ax, metric in zip(np.atleast_1d(axes), metrics):
        part = table[table["metric"] == metric].set_index("model").reindex(models)
        errors = np.vstack([part["estimate"] - part["ci_low"], part["ci_high"] - part["estimate"]])
        ax.bar(range(len(models)), part["estimate"], yerr=np.nan_to_num(errors), capsize=4,
               color=["tab:blue", "tab:grey", "tab:orange"][:len(models)])
        ax.set_xticks(range(len(models)))
        ax.set_xticklabels([m.replace(" (", "\n(") for m in models], fontsize=8)
        ax.set_title(metric.replace("_", " "))
        ax.axhline(0, color="black", lw=0.6)
    fig.tight_layout()
    return fig


def plot_kl_grad_cams(inputs: np.ndarray, cams: np.ndarray, titles: list):
    """Grad-CAM of the KL head over the network inputs (from :func:`~kneelib.train.grading_evaluation.kl_grad_cams`)."""
    from kneelib.explain.gradcam import plot_grad_cams

    return plot_grad_cams(inputs, cams, titles=titles, ncols=min(5, len(inputs)))


def plot_confusions(targets: np.ndarray, probabilities: dict, title: str = "", cutpoints: dict | None = None):
    """Row-percent confusion matrix per head (Fig. 4), counts in the cells.

    The predicted grade is the arg-max, or the expected grade cut at ``cutpoints[head]``
    (:func:`kneelib.stats.ordinal.decode_grades`).
    """
    import matplotlib.pyplot as plt

    from kneelib.stats.agreement import confusion
    from kneelib.stats.ordinal import decode_grades

    fig, axes = plt.subplots(2, 4, figsize=(15, 7.4))
    for ax, (index, task) in zip(axes.ravel(), enumerate(TASK_LABELS)):
        n = probabilities[task].shape[1]
        known = targets[:, index] >= 0
        counts = confusion(targets[known, index], decode_grades(probabilities[task][known], (cutpoints or {}).get(task)), n)
        totals = counts.sum(axis=1, keepdims=True)
        percent = np.divide(100.0 * counts, totals, out=np.full(counts.shape, np.nan), where=totals > 0)
        ax.imshow(np.nan_to_num(percent), cmap="Blues", vmin=0, vmax=100)
        for i in range(n):
            for j in range(n):
                if totals[i, 0]:
                    ax.text(j, i, f"{percent[i, j]:.0f}%\n{counts[i, j]}", ha="center", va="center", fontsize=7,
                            color="white" if percent[i, j] > 55 else "black")
        ax.set_xticks(range(n))
        ax.set_yticks(range(n))
        ax.set_xlabel("predicted grade")
        ax.set_ylabel("reference grade")
        ax.set_title(TASK_LABELS[task])
    axes.ravel()[-1].axis("off")
    fig.suptitle(title or "Confusion matrices (row %, counts)")
    fig.tight_layout()
    return fig


def plot_binary_curves(curves: dict):
    """ROC (top) and precision-recall (bottom) per curve group (Fig. 3).

    ``curves`` is the second result of :func:`kneelib.train.grading_evaluation.binary_curves`.
    """
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys(group for group, _ in curves)) or ["(no curve)"]
    fig, axes = plt.subplots(2, len(groups), figsize=(4.4 * len(groups), 8), squeeze=False)
    for column, group in enumerate(groups):
        ax_roc, ax_pr = axes[0, column], axes[1, column]
        for (name, label), c in curves.items():
            if name != group:
                continue
            ax_roc.plot(c["fpr"], c["tpr"], label=f"{label}: AUC {c['auc']:.2f}")
            ax_pr.plot(c["recall"], c["precision"], label=f"{label}: AP {c['ap']:.2f} (prev. {c['prevalence']:.2f})")
        ax_roc.plot([0, 1], [0, 1], color="grey", ls=":", lw=0.8)
        ax_roc.set(xlabel="false-positive rate", ylabel="true-positive rate", title=f"ROC, {group}")
        ax_pr.set(xlabel="recall", ylabel="precision", title=f"Precision-recall, {group}", ylim=(0, 1.02))
        for ax, loc in ((ax_roc, "lower right"), (ax_pr, "lower left")):
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8, loc=loc)
    fig.tight_layout()
    return fig


def plot_pointing_examples(examples: dict):
    """Grad-CAM per osteophyte head on knees with that osteophyte; the site box in white.

    The white + marks the point the pointing game scored
    (:func:`kneelib.explain.pointing.hot_spot` of the drawn map).
    """
    import matplotlib.pyplot as plt

    from kneelib.explain.gradcam import upsample_cams
    from kneelib.explain.pointing import hot_spot

    n_cols = max((len(v[0]) for v in examples.values()), default=1)
    fig, axes = plt.subplots(max(1, len(examples)), n_cols, figsize=(2.7 * n_cols, 2.9 * max(1, len(examples))),
                             squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for row, (task, (inputs, cams, masks, titles)) in enumerate(examples.items()):
        up = upsample_cams(cams, inputs.shape[1:])
        for col in range(len(inputs)):
            ax = axes[row, col]
            ax.imshow(inputs[col], cmap="gray")
            ax.imshow(up[col], cmap="jet", alpha=0.4, vmin=0, vmax=1)
            ax.contour(masks[col], levels=[0.5], colors="white", linewidths=1)
            peak = hot_spot(cams[col], inputs.shape[1:])
            ax.plot(peak[1], peak[0], "w+", ms=10, mew=2)
            ax.set_title(titles[col], fontsize=8)
    fig.tight_layout()
    return fig


def plot_localisation(prepared, radiographs: dict, n_examples: int = 4, seed: int = 0, size_mm: float = 140.0):
    """Bilateral images with the true and predicted knee centres, and the resulting knee crops."""
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(seed)
    knees = prepared.knees
    paths = list(dict.fromkeys(knees["path"]))
    chosen = [paths[i] for i in sorted(rng.choice(len(paths), size=min(n_examples, len(paths)), replace=False))]
    fig, axes = plt.subplots(len(chosen), 3, figsize=(11, 2.6 * len(chosen)), squeeze=False,
                             gridspec_kw={"width_ratios": [2.2, 1, 1]})
    for row, path in zip(axes, chosen):
        pixels, spacing = radiographs[path]
        row[0].imshow(pixels, cmap="gray")
        for side, ax in zip(("R", "L"), row[1:]):
            hit = knees.index[(knees["path"] == path) & (knees["side"] == side)]
            if not len(hit):
                ax.axis("off")
                continue
            k = knees.loc[hit[0]]
            row[0].plot(k["joint_centre_col"], k["joint_centre_row"], "g+", ms=12, mew=2)
            row[0].plot(k["centre_col"], k["centre_row"], "rx", ms=9, mew=2)
            half = size_mm / 2 / spacing
            row[0].add_patch(plt.Rectangle((k["centre_col"] - half, k["centre_row"] - half), 2 * half, 2 * half,
                                           fill=False, color="red", lw=1))
            ax.imshow(prepared.images[hit[0]], cmap="gray")
            ax.set_title(f"{side} knee, KL {k['kl_grade']}, rotated {k['angle_deg']:+.1f} deg"
                         + (", mirrored" if side == "L" else ""), fontsize=8)
            ax.axis("off")
        row[0].set_title(f"green +: true joint centre, red x: localiser, box: {size_mm:.0f} mm crop", fontsize=8)
        row[0].axis("off")
    fig.tight_layout()
    return fig


def plot_reliability(tables: dict, ece: dict | None = None, title: str = "Reliability diagram"):
    """Top-class confidence vs accuracy per bin, one line per set of probabilities.

    ``tables``: label -> :func:`kneelib.stats.calibration.reliability_table`; ``ece``: label
    -> expected calibration error (shown in the legend). Marker area follows the bin's count.
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=1, label="perfect calibration")
    for label, table in tables.items():
        text = label if not ece or label not in ece else f"{label} (ECE {ece[label]:.3f})"
        line, = ax.plot(table["confidence"], table["accuracy"], "-", label=text)
        ax.scatter(table["confidence"], table["accuracy"], s=8 + 2 * table["n"], color=line.get_color(), alpha=0.6)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top-grade probability)")
    ax.set_ylabel("accuracy in the bin")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return fig
