"""Figures of the chronic-pain chapter (paper 001, Fig. 1)."""
from __future__ import annotations

from typing import Mapping

import matplotlib.pyplot as plt
import numpy as np

__all__ = ["plot_group_maps", "plot_validation_auc"]


def _view(ax, points, values, title, cmap, vmin, vmax):
    order = np.argsort(points[:, 2])[::-1]  # seen from the joint: the articular surface in front
    finite = np.isfinite(values[order])
    ax.scatter(points[order][~finite, 0], points[order][~finite, 1], s=0.3, c="0.85", rasterized=True)
    keep = order[finite]
    artist = ax.scatter(points[keep, 0], points[keep, 1], s=0.6, c=values[keep], cmap=cmap, vmin=vmin, vmax=vmax,
                        rasterized=True)
    ax.set_aspect("equal")
    ax.set_title(title, fontsize=8)
    ax.axis("off")
    return artist


def plot_group_maps(maps: Mapping[tuple, dict], strategy_names: Mapping[str, str] | None = None, alpha: float = 0.05):
    """Fig. 1: per bone and single biomarker, the TP and TN group-mean Grad-CAM on the reference
    surface and the SPM (-log10 of the family-wise p, signed by t: TP > TN positive).

    ``maps``: ``{(bone, strategy): entry}`` of :func:`kneelib.papers.qmri_pain.group_analysis`
    (``points`` in the reference bone's spherical frame, ``tp_mean``, ``tn_mean``, ``spm``).
    Seen from the joint, along the frame's z axis; vertices without a value are grey.
    """
    keys = list(maps)
    if not keys:
        fig, ax = plt.subplots(figsize=(4, 1))
        ax.text(0.5, 0.5, "no group maps (no TP or no TN knee)", ha="center", va="center")
        ax.axis("off")
        return fig
    fig, axes = plt.subplots(len(keys), 3, figsize=(8.4, 2.5 * len(keys)), squeeze=False)
    for i, key in enumerate(keys):
        entry = maps[key]
        bone, strategy = key
        name = (strategy_names or {}).get(strategy, strategy)
        points = np.asarray(entry["points"])
        peak = np.nanmax([np.nanmax(entry["tp_mean"]) if np.isfinite(entry["tp_mean"]).any() else 0,
                          np.nanmax(entry["tn_mean"]) if np.isfinite(entry["tn_mean"]).any() else 0, 1e-6])
        a = _view(axes[i, 0], points, entry["tp_mean"], f"{bone}, {name}\nTP(pain) mean Grad-CAM", "jet", 0, peak)
        _view(axes[i, 1], points, entry["tn_mean"], "TN(no pain) mean Grad-CAM", "jet", 0, peak)
        fig.colorbar(a, ax=axes[i, :2].tolist(), shrink=0.7)
        spm = entry.get("spm")
        if spm is None:
            axes[i, 2].axis("off")
            axes[i, 2].set_title("SPM: too few knees", fontsize=8)
            continue
        signed = np.sign(np.nan_to_num(spm.t)) * -np.log10(np.clip(spm.p_fwe, 1e-12, 1))
        limit = max(2.0, float(np.nanmax(np.abs(signed))) if np.isfinite(signed).any() else 2.0)
        b = _view(axes[i, 2], points, np.where(np.isfinite(spm.p_fwe), signed, np.nan),
                  f"SPM, signed -log10 p (FWE); {int(spm.significant(alpha).sum())} vertices p<{alpha}",
                  "coolwarm", -limit, limit)
        fig.colorbar(b, ax=axes[i, 2], shrink=0.7)
    return fig


def plot_validation_auc(grids: Mapping[tuple, object]):
    """Fig. S4-like: validation AUC of every grid configuration per bone and strategy, by initialisation."""
    keys = list(grids)
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(keys) + 1.2))
    colours = {"random": "tab:grey", "imagenet": "tab:blue", "oa": "tab:orange"}
    for i, key in enumerate(keys):
        grid = grids[key]
        for init, part in grid.groupby("init"):
            ax.scatter(part["auc"], np.full(len(part), i), c=colours.get(init, "k"), s=14,
                       label=init)
        chosen = grid[grid["chosen"]]
        ax.scatter(chosen["auc"], [i] * len(chosen), facecolors="none", edgecolors="k", s=60)
    ax.set_yticks(range(len(keys)), [f"{b}, {s}" for b, s in keys], fontsize=7)
    ax.axvline(0.5, color="0.7", lw=0.8)
    ax.set_xlabel("validation ROC AUC (circled: chosen by validation TPN)")
    handles, labels = ax.get_legend_handles_labels()
    seen = dict(zip(labels, handles))
    ax.legend(seen.values(), seen.keys(), fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig
