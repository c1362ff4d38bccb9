"""Figures of the qMRI-biomarker chapter (paper 001 Figs. 3-4, supplement 003 Fig. S2).

- :func:`plot_segmentation_overlay`: DESS slices with label overlays (truth and prediction, or a
  real DESS with the prediction);
- :func:`plot_error_maps`: Supplementary Fig. S2 (agreement green, false positive cyan, false
  negative magenta; :func:`kneelib.stats.segmentation.error_map`);
- :func:`plot_surface_views`: a per-vertex biomarker on the bone surfaces in fixed views (the
  bone's spherical frame: seen from the joint, and from the side);
- :func:`plot_spherical_maps`: the 224 x 224 maps of each bone (Fig. 3b-d);
- :func:`plot_relaxation_map`: a real T2 / T1rho map over its first echo with the regions read;
- :func:`segmentation_viewer`: an ipywidgets slice viewer with the overlay (JupyterLab).

Arrays are ``(slices, rows, columns)`` unless said otherwise.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import ListedColormap

__all__ = ["LABEL_COLOURS", "overlay_rgba", "plot_segmentation_overlay", "plot_error_maps", "plot_surface_views",
           "plot_spherical_maps", "plot_relaxation_map", "segmentation_viewer", "static_segmentation_viewer",
           "plot_bland_altman", "plot_strategies"]

#: Colours of class codes 1..9 in the overlays (bone network 1-3, cartilage network 1-4).
LABEL_COLOURS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6", "#bcf60c", "#fabebe")


def overlay_rgba(labels: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """RGBA image of a 2-D label slice (0 transparent)."""
    from matplotlib.colors import to_rgba

    rgba = np.zeros(labels.shape + (4,), dtype=float)
    for code in np.unique(labels):
        if code:
            rgba[labels == code] = to_rgba(LABEL_COLOURS[(int(code) - 1) % len(LABEL_COLOURS)], alpha)
    return rgba


def _show(ax, image, spacing, title=""):
    extent = None
    if spacing is not None:
        extent = (0, image.shape[1] * spacing[1], image.shape[0] * spacing[0], 0)
    ax.imshow(image, cmap="gray", extent=extent, vmin=0, vmax=np.percentile(image, 99.5) or 1)
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    return extent


def plot_segmentation_overlay(image: np.ndarray, overlays: Mapping[str, np.ndarray], slices: Sequence[int],
                              spacing_mm: Sequence[float] | None = None, title: str = "",
                              legend: Mapping[int, str] | None = None):
    """One row per slice: the image, then the image under each named label overlay."""
    n_cols = 1 + len(overlays)
    fig, axes = plt.subplots(len(slices), n_cols, figsize=(2.6 * n_cols, 2.6 * len(slices)), squeeze=False)
    in_plane = None if spacing_mm is None else tuple(spacing_mm)[1:]
    for r, index in enumerate(slices):
        extent = _show(axes[r, 0], image[index], in_plane, f"slice {index}")
        for c, (name, labels) in enumerate(overlays.items(), start=1):
            _show(axes[r, c], image[index], in_plane, name if r == 0 else "")
            axes[r, c].imshow(overlay_rgba(labels[index]), extent=extent, interpolation="nearest")
    if legend:
        from matplotlib.patches import Patch

        handles = [Patch(color=LABEL_COLOURS[(code - 1) % len(LABEL_COLOURS)], label=name)
                   for code, name in legend.items() if code]
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 5), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.05 if legend else 0, 1, 0.97))
    return fig


def plot_error_maps(image: np.ndarray, predictions: Mapping[str, np.ndarray], truths: Mapping[str, np.ndarray],
                    slices: Sequence[int], spacing_mm: Sequence[float] | None = None, title: str = ""):
    """Supplementary Fig. S2: per network, agreement / false positive / false negative voxels on slices."""
    from matplotlib.patches import Patch

    from kneelib.stats.segmentation import ERROR_CODES, ERROR_COLOURS, error_map

    colours = ["none"] * (max(ERROR_CODES.values()) + 1)
    for name, code in ERROR_CODES.items():
        if name in ERROR_COLOURS:
            colours[code] = ERROR_COLOURS[name]
    cmap = ListedColormap([(0, 0, 0, 0)] + [c for c in colours[1:]])
    fig, axes = plt.subplots(len(predictions), len(slices), figsize=(2.8 * len(slices), 2.8 * len(predictions)),
                             squeeze=False)
    in_plane = None if spacing_mm is None else tuple(spacing_mm)[1:]
    for r, name in enumerate(predictions):
        codes = error_map(predictions[name], truths[name])
        for c, index in enumerate(slices):
            extent = _show(axes[r, c], image[index], in_plane, f"{name}, slice {index}")
            shown = np.ma.masked_equal(codes[index], 0)
            axes[r, c].imshow(shown, cmap=cmap, vmin=0, vmax=len(colours) - 1, extent=extent,
                              interpolation="nearest", alpha=0.8)
    handles = [Patch(color=ERROR_COLOURS[k], label=k.replace("_", " ")) for k in ERROR_COLOURS]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    return fig


def _frame_coordinates(bone) -> np.ndarray:
    return (np.asarray(bone.vertices) - np.asarray(bone.centroid_mm)) @ np.asarray(bone.frame).T


def plot_surface_views(bones: Mapping[str, object], value: str, label: str = "", cmap: str = "viridis",
                       vmin: float | None = None, vmax: float | None = None):
    """A per-vertex value on each bone in two fixed views of its spherical frame.

    View 1 looks at the articular surface from the joint (along the frame's z axis); view 2 from
    the side (x against z). Vertices without a value (non-articular) are grey. ``bones`` maps a
    bone name to a :class:`kneelib.qmri.biomarkers.BoneBiomarkers`.
    """
    fig, axes = plt.subplots(2, len(bones), figsize=(3.3 * len(bones), 6.2), squeeze=False)
    finite = np.concatenate([np.asarray(b.vertex_values.get(value, []), float).ravel() for b in bones.values()])
    finite = finite[np.isfinite(finite)]
    if vmin is None and finite.size:
        vmin, vmax = np.percentile(finite, [2, 98])
    scatter = None
    for c, (name, bone) in enumerate(bones.items()):
        xyz = _frame_coordinates(bone)
        values = np.asarray(bone.vertex_values.get(value, np.full(len(xyz), np.nan)), float)
        for r, (u, v, depth, view) in enumerate(((0, 1, 2, "from the joint"), (0, 2, 1, "side"))):
            order = np.argsort(xyz[:, depth])[::-1] if r == 0 else np.argsort(xyz[:, depth])
            ax = axes[r, c]
            grey = ~np.isfinite(values[order])
            ax.scatter(xyz[order][grey, u], xyz[order][grey, v], s=0.3, c="0.8", rasterized=True)
            keep = order[~grey]
            if keep.size:
                scatter = ax.scatter(xyz[keep, u], xyz[keep, v], s=0.6, c=values[keep], cmap=cmap, vmin=vmin,
                                     vmax=vmax, rasterized=True)
            ax.set_aspect("equal")
            ax.set_title(f"{name}, {view}", fontsize=9)
            ax.axis("off")
    if scatter is not None:
        fig.colorbar(scatter, ax=axes.ravel().tolist(), shrink=0.6, label=label or value)
    return fig


def plot_spherical_maps(bones: Mapping[str, object], names: Sequence[str], labels: Mapping[str, str] | None = None):
    """Spherical maps (rows: bones, columns: biomarkers), theta across, phi down (paper 001, Fig. 3)."""
    labels = labels or {}
    fig, axes = plt.subplots(len(bones), len(names), figsize=(2.7 * len(names), 2.6 * len(bones)), squeeze=False)
    for r, (bone_name, bone) in enumerate(bones.items()):
        for c, name in enumerate(names):
            ax = axes[r, c]
            image = bone.maps.get(name)
            if image is None or not np.isfinite(image).any():
                ax.text(0.5, 0.5, "no values", ha="center", va="center", transform=ax.transAxes)
            else:
                shown = ax.imshow(image, cmap="magma" if "t2" in name else "viridis",
                                  extent=(-np.pi, np.pi, -np.pi / 2, np.pi / 8), aspect="auto")
                fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02)
            ax.set_title(f"{bone_name}: {labels.get(name, name)}", fontsize=8)
            ax.set_xticks([-np.pi, 0, np.pi], ["-\u03c0", "0", "\u03c0"], fontsize=7)
            ax.set_yticks([-np.pi / 2, 0, np.pi / 8], ["-\u03c0/2", "0", "\u03c0/8"], fontsize=7)
    fig.tight_layout()
    return fig


def plot_relaxation_map(first_echo: np.ndarray, relaxation_ms: np.ndarray, rois: Mapping[str, np.ndarray] | None = None,
                        spacing_mm: Sequence[float] | None = None, title: str = "", vmax: float = 100.0,
                        label: str = "T2 (ms)"):
    """A real relaxation map (one slice) beside its first echo, with region outlines."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.4))
    extent = _show(axes[0], first_echo, spacing_mm, "first echo")
    _show(axes[1], first_echo, spacing_mm, label)
    shown = axes[1].imshow(np.ma.masked_invalid(relaxation_ms), cmap="inferno", vmin=0, vmax=vmax, extent=extent,
                           interpolation="nearest")
    fig.colorbar(shown, ax=axes[1], fraction=0.046, label=label)
    for k, (name, mask) in enumerate((rois or {}).items()):
        colour = LABEL_COLOURS[k % len(LABEL_COLOURS)]
        for ax in axes:
            ax.contour(mask.astype(float), levels=[0.5], colors=[colour], linewidths=1.2, extent=extent,
                       origin="upper")
        axes[0].plot([], [], color=colour, label=name)
    if rois:
        axes[0].legend(loc="lower left", fontsize=7, framealpha=0.7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def segmentation_viewer(image: np.ndarray, overlays: Mapping[str, np.ndarray], spacing_mm=None):
    """ipywidgets viewer: a slice slider, an overlay chooser and an opacity slider (JupyterLab).

    Returns a :class:`kneelib.widgets.LiveOrStatic`: displayed, JupyterLab shows the widget and the
    HTML book its kernel-free twin (:func:`static_segmentation_viewer`); ``.widget`` is the VBox.
    """
    from kneelib.widgets import LiveOrStatic

    import ipywidgets as widgets

    slider = widgets.IntSlider(value=image.shape[0] // 2, min=0, max=image.shape[0] - 1, description="slice")
    chooser = widgets.Dropdown(options=list(overlays), description="overlay")
    opacity = widgets.FloatSlider(value=0.45, min=0.0, max=1.0, step=0.05, description="opacity")
    output = widgets.Output()

    def draw(*_):
        with output:
            output.clear_output(wait=True)
            fig, ax = plt.subplots(figsize=(4.5, 4.5))
            _show(ax, image[slider.value], None, f"slice {slider.value}")
            ax.imshow(overlay_rgba(overlays[chooser.value][slider.value], alpha=opacity.value),
                      interpolation="nearest")
            plt.show()

    for control in (slider, chooser, opacity):
        control.observe(draw, names="value")
    draw()
    return LiveOrStatic(widgets.VBox([widgets.HBox([slider, chooser, opacity]), output]),
                        static_segmentation_viewer(image, overlays))


def static_segmentation_viewer(image: np.ndarray, overlays: Mapping[str, np.ndarray], *, max_side: int = 192,
                               display_side: int = 360, max_bytes: int = 2_000_000, alpha: float = 0.45,
                               quality: int = 85):
    """:func:`segmentation_viewer` without a kernel, for the HTML book (:class:`kneelib.widgets.StaticSliceViewer`).

    One menu entry per overlay over the same slices (stored once): the image as JPEG frames
    (0 to the volume's 99.5th percentile), the labels as PNG frames in :data:`LABEL_COLOURS`
    under an opacity slider. When all slices would pass ``max_bytes``, every k-th slice is kept
    (the captions give the slice numbers).
    """
    from kneelib.widgets import StaticSliceViewer, encode_frame, frame_size, grey_frames

    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3:
        raise ValueError(f"image must be (slices, H, W); got {image.shape}")
    for name, labels in overlays.items():
        if np.shape(labels) != image.shape:
            raise ValueError(f"overlay {name!r} has shape {np.shape(labels)}, the image {image.shape}")
    n, height, width = image.shape
    size = frame_size((height, width), max_side)
    high = float(np.percentile(image, 99.5)) or 1.0

    def render(keep):
        base = grey_frames(image[keep], size, 0.0, high, quality)
        over = {name: [encode_frame((overlay_rgba(np.asarray(labels)[k], alpha=1.0) * 255).round().astype(np.uint8),
                                    size, "PNG") for k in keep] for name, labels in overlays.items()}
        return base, over

    keep = list(range(n))
    base, over = render(keep)
    total = StaticSliceViewer.stack_bytes(base) + sum(StaticSliceViewer.stack_bytes(f) for f in over.values())
    if total > max_bytes:
        keep = list(range(0, n, int(np.ceil(total / max_bytes))))
        base, over = render(keep)
    longer = max(height, width)
    viewer = StaticSliceViewer(len(keep), (round(display_side * width / longer), round(display_side * height / longer)),
                               menu_label="Overlay", overlay_label="overlay", alpha=alpha, slice_numbers=keep)
    base_id = viewer.add_stack(base)
    middle = len(keep) // 2
    for name, frames in over.items():
        viewer.add_view(name, f"{name}: slice by slice", [{"base": base_id, "over": viewer.add_stack(frames),
                                                           "caption": "slice {slice}"}], start=middle)
    if len(keep) < n:
        viewer.note = f"{len(keep)} of {n} slices shown, one in {keep[1] - keep[0]} (size cap)"
    return viewer


def plot_bland_altman(pairs, summary, biomarker_labels: Mapping[str, str] | None = None):
    """Supplementary Fig. S3: spherical minus surface average against their mean, per bone and biomarker.

    Solid black: zero; solid grey: mean difference; dashed grey: mean +- 2 SD (the supplement's lines).
    """
    labels = biomarker_labels or {"thickness": "thickness (mm)", "t2_total": "T2 (ms)"}
    panels = list(summary[["biomarker", "bone"]].itertuples(index=False, name=None)) if len(summary) else []
    if not panels:
        fig, ax = plt.subplots(figsize=(4, 2))
        ax.text(0.5, 0.5, "fewer than two knees per bone", ha="center", va="center")
        ax.axis("off")
        return fig
    biomarkers = list(dict.fromkeys(b for b, _ in panels))
    bones = list(dict.fromkeys(b for _, b in panels))
    fig, axes = plt.subplots(len(biomarkers), len(bones), figsize=(3.2 * len(bones), 2.8 * len(biomarkers)),
                             squeeze=False)
    for ax in axes.ravel():
        ax.set_visible(False)
    for biomarker, bone in panels:
        ax = axes[biomarkers.index(biomarker), bones.index(bone)]
        ax.set_visible(True)
        part = pairs[(pairs.bone == bone) & (pairs.biomarker == biomarker)]
        row = summary[(summary.bone == bone) & (summary.biomarker == biomarker)].iloc[0]
        mean = (part["spherical_mean"] + part["surface_mean"]) / 2
        ax.scatter(mean, part["spherical_mean"] - part["surface_mean"], s=14, color="C0")
        ax.axhline(0, color="black", lw=1)
        ax.axhline(row["bias"], color="0.5", lw=1.2)
        for limit in (row["lower_limit"], row["upper_limit"]):
            ax.axhline(limit, color="0.5", lw=1, ls="--")
        ax.set_title(f"{bone}, {labels.get(biomarker, biomarker)}", fontsize=9)
        ax.set_xlabel("mean of the two averages", fontsize=8)
        ax.tick_params(labelsize=7)
    for row in axes:
        row[0].set_ylabel("spherical - surface average", fontsize=8)
    fig.tight_layout()
    return fig


def plot_strategies(images: Mapping[str, np.ndarray], title: str = ""):
    """The six 3-channel 8-bit input images of paper 001, Fig. 4 (one knee, one bone)."""
    fig, axes = plt.subplots(1, len(images), figsize=(2.3 * len(images), 2.6), squeeze=False)
    for ax, (name, image) in zip(axes[0], images.items()):
        ax.imshow(image)
        ax.set_title(name, fontsize=8)
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
