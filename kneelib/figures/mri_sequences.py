"""MRI figures: every sequence of a synthetic participant with its ground truth, the MSME
echoes, and the real DESS and T1rho exam (synthetic next to real:
:mod:`kneelib.figures.synthetic_vs_real`).

Series are read with :func:`kneelib.data.read_dicom_series`; tissue labels and lesion
masks with :func:`kneelib.synth.ground_truth.load_series_with_truth`, which checks that
they lie on the DICOM grid.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from kneelib.data.inventory import series_acquisition_row

__all__ = ["GALLERY_SERIES", "plot_sequence_gallery", "plot_msme_echoes",
           "plot_dess_and_t1rho"]


#: Tissue labels drawn in overlays (others transparent): label name -> colour.
_TISSUE_COLOURS = {
    "femur": "#d9b38c", "tibia": "#c49a6c", "patella": "#e0c090", "fibula": "#b08860",
    "femoral_cartilage": "#2ca02c", "tibial_cartilage_medial": "#17becf", "tibial_cartilage_lateral": "#1f77b4",
    "patellar_cartilage": "#98df8a", "meniscus_medial": "#9467bd", "meniscus_lateral": "#c5b0d5",
    "acl": "#8c564b", "pcl": "#e377c2", "joint_fluid": "#aec7e8", "hoffa_fat_pad": "#ffdd57",
    "patellar_tendon": "#7f7f7f", "collateral_ligament": "#bcbd22",
}


#: Lesion masks drawn as contours: name -> colour.
_LESION_COLOURS = {
    "effusion_synovitis": "red", "bml": "yellow", "hoffa_synovitis": "magenta", "cartilage_loss": "cyan",
    "meniscal_damage": "orange", "osteophyte": "lime", "foreign_object": "white",
}


#: Series of the gallery (one column each), right knee unless the name says LEFT.
GALLERY_SERIES = ("SAG_IW_TSE_RIGHT", "SAG_IW_TSE_LEFT", "COR_IW_TSE_RIGHT", "SAG_3D_DESS_RIGHT",
                  "SAG_T2_MAP_RIGHT")


def _label_rgba(labels: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    from matplotlib.colors import to_rgba

    from kneelib.synth.spec import TISSUE_LABELS

    table = np.zeros((max(TISSUE_LABELS.values()) + 1, 4))
    for name, colour in _TISSUE_COLOURS.items():
        table[TISSUE_LABELS[name]] = to_rgba(colour, alpha)
    return table[np.clip(labels, 0, len(table) - 1)]


def _show_grey(ax, image, aspect, title=""):
    low, high = np.percentile(image, [0.5, 99.5])
    ax.imshow(image, cmap="gray", vmin=low, vmax=high if high > low else low + 1, aspect=aspect,
              interpolation="nearest")
    ax.set_title(title, fontsize=8)
    ax.set_axis_off()


def _draw_lesions(ax, masks: dict, index: int):
    for name, mask in masks.items():
        if mask[index].any():
            ax.contour(mask[index].astype(float), levels=[0.5], colors=[_LESION_COLOURS.get(name, "white")],
                       linewidths=1.2)


def plot_sequence_gallery(cohort_root: str | Path, participant_id: str, visit_month: int = 0,
                          series: tuple[str, ...] = GALLERY_SERIES):
    """One slice of every MRI sequence of one participant with its ground truth.

    Rows: the image as the DICOM files hold it; the tissue labels; the lesion masks
    (contours). Each column is one series (first echo of the MSME T2 map) at the slice
    with the most lesion voxels. Pixels are drawn with their true aspect ratio.

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    from kneelib.data import read_image_index
    from kneelib.synth.ground_truth import load_series_with_truth, series_truth_table, showcase_slice

    root = Path(cohort_root)
    index = read_image_index(root)
    truth = series_truth_table(root)
    fig, axes = plt.subplots(3, len(series), figsize=(3.0 * len(series), 9.4), squeeze=False)
    seen_lesions = set()
    for col, description in enumerate(series):
        volume, labels, masks = load_series_with_truth(root, index, truth, participant_id, visit_month, description)
        pixels = volume.slices(0 if volume.n_echoes > 1 else None)
        k = showcase_slice(labels, masks)
        aspect = volume.spacing_mm[1] / volume.spacing_mm[0]
        echo = f", TE {volume.echo_times_ms[0]:g} ms" if volume.echo_times_ms else ""
        title = f"{description}\nslice {k + 1}/{len(pixels)}{echo}"
        _show_grey(axes[0, col], pixels[k], aspect, title)
        _show_grey(axes[1, col], pixels[k], aspect, "tissue labels")
        axes[1, col].imshow(_label_rgba(labels[k]), aspect=aspect, interpolation="nearest")
        _show_grey(axes[2, col], pixels[k], aspect, "lesion masks: " + (", ".join(
            n for n in masks if masks[n][k].any()) or "none on this slice"))
        axes[2, col].title.set_fontsize(7)
        _draw_lesions(axes[2, col], masks, k)
        seen_lesions.update(n for n in masks if masks[n][k].any())
    handles = [Patch(facecolor=c, label=n.replace("_", " ")) for n, c in _TISSUE_COLOURS.items()]
    handles += [Line2D([], [], color=_LESION_COLOURS[n], lw=2, label=f"lesion: {n.replace('_', ' ')}")
                for n in _LESION_COLOURS if n in seen_lesions]
    fig.legend(handles=handles, loc="lower center", ncol=6, fontsize=7, frameon=False)
    fig.suptitle(f"Synthetic participant {participant_id}, month {visit_month}: every MRI sequence with its "
                 "ground truth")
    fig.tight_layout(rect=(0, 0.07, 1, 0.97))
    return fig


def plot_msme_echoes(cohort_root: str | Path, participant_id: str, visit_month: int = 0):
    """The seven MSME echoes of one slice and the cartilage signal decay across echoes.

    The right panel shows the mean signal of the femoral and tibial cartilage labels per
    echo (log scale) and its three-parameter fit of paper 001
    (:func:`kneelib.qmri.relaxometry.fit_t2_monoexponential`, the book's one T2 fit).

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt

    from kneelib.data import read_image_index
    from kneelib.qmri.relaxometry import fit_t2_monoexponential, monoexponential
    from kneelib.synth.ground_truth import load_series_with_truth, series_truth_table, showcase_slice
    from kneelib.synth.spec import TISSUE_LABELS

    root = Path(cohort_root)
    index = read_image_index(root)
    truth = series_truth_table(root)
    volume, labels, masks = load_series_with_truth(root, index, truth, participant_id, visit_month,
                                                    "SAG_T2_MAP_RIGHT")
    k = showcase_slice(labels, masks)
    aspect = volume.spacing_mm[1] / volume.spacing_mm[0]
    n = volume.n_echoes
    fig, axes = plt.subplots(1, n + 1, figsize=(2.0 * n + 3.4, 2.8),
                             gridspec_kw={"width_ratios": [1] * n + [1.6]})
    first = volume.slices(0)[k]
    low, high = np.percentile(first, [0.5, 99.5])
    for echo in range(n):
        ax = axes[echo]
        ax.imshow(volume.slices(echo)[k], cmap="gray", vmin=low, vmax=high, aspect=aspect, interpolation="nearest")
        ax.set_title(f"TE {volume.echo_times_ms[echo]:g} ms", fontsize=8)
        ax.set_axis_off()
    cartilage = np.isin(labels, [TISSUE_LABELS["femoral_cartilage"], TISSUE_LABELS["tibial_cartilage_medial"],
                                 TISSUE_LABELS["tibial_cartilage_lateral"]])
    ax = axes[-1]
    if cartilage.any():
        te = np.asarray(volume.echo_times_ms)
        signal = np.array([volume.slices(e)[cartilage].mean() for e in range(n)])
        fit = fit_t2_monoexponential(signal[None, :], te)
        ax.semilogy(te, signal, "o", label="mean cartilage signal")
        ax.semilogy(te, monoexponential(te, fit.s0[0], fit.t2_ms[0], fit.offset[0]), "-",
                    label=f"fit: T2 = {fit.t2_ms[0]:.0f} ms")
        ax.legend(fontsize=7)
    ax.set_xlabel("echo time (ms)")
    ax.set_title("femoral + tibial cartilage", fontsize=8)
    fig.suptitle(f"MSME T2 map (SAG_T2_MAP_RIGHT), participant {participant_id}, slice {k + 1}", fontsize=10)
    fig.tight_layout()
    return fig


def _slice_x_mm(volume, index: int) -> float:
    """World (RAS) x of slice ``index`` of a sagittal volume."""
    return float((volume.affine @ np.array([0.0, 0.0, float(index), 1.0]))[0])


def plot_dess_and_t1rho(dataset_dir: str | Path):
    """The real DESS mid-sagittal slice and the T1rho slice at its four spin-lock times.

    Both series are read with :func:`kneelib.data.read_dicom_series`; the four T1rho
    folders (``TSL01ms`` ... ``TSL60ms``) form one 4-D volume whose echo axis holds the
    spin-lock times (stored in the EchoTime tag, see the data set's SOURCE.md). The DESS
    panel also shows the slice nearest to the T1rho slab's centre.

    Returns
    -------
    fig : matplotlib.figure.Figure
    info : pandas.DataFrame
        One row per series: slices, matrix, voxel size, TE/TSL, TR, flip angle, scanner.

    Raises
    ------
    FileNotFoundError
        No T1rho spin-lock folder under ``cubequant_T1rho``.
    kneelib.data.KneelibDataError
        A series that cannot be read (named).
    """
    import matplotlib.pyplot as plt

    from kneelib.data import read_dicom_series

    dataset_dir = Path(dataset_dir)
    dess = read_dicom_series(dataset_dir / "DESS_echo1")
    t1rho_folders = sorted(p for p in (dataset_dir / "cubequant_T1rho").iterdir() if p.is_dir())
    if not t1rho_folders:
        raise FileNotFoundError(f"no spin-lock folders under {dataset_dir / 'cubequant_T1rho'}")
    t1rho = read_dicom_series(t1rho_folders)
    dess_slices = dess.slices()
    mid = dess_slices.shape[0] // 2
    t1rho_mid = t1rho.shape[2] // 2
    t1rho_x = _slice_x_mm(t1rho, t1rho_mid)
    dess_match = int(np.argmin([abs(_slice_x_mm(dess, k) - t1rho_x) for k in range(dess_slices.shape[0])]))

    n_tsl = len(t1rho.echo_times_ms)
    fig, axes = plt.subplots(1, 2 + n_tsl, figsize=(2.8 * (2 + n_tsl), 3.3))

    def show(ax, image, title):
        low, high = np.percentile(image, [1, 99.5])
        ax.imshow(image, cmap="gray", vmin=low, vmax=high)
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()

    show(axes[0], dess_slices[mid], f"DESS, mid slab\nx = {_slice_x_mm(dess, mid):.1f} mm")
    show(axes[1], dess_slices[dess_match], f"DESS at T1rho centre\nx = {_slice_x_mm(dess, dess_match):.1f} mm")
    for echo, (ax, tsl) in enumerate(zip(axes[2:], t1rho.echo_times_ms)):
        show(ax, t1rho.slices(echo)[t1rho_mid], f"T1rho, TSL {tsl:g} ms\nx = {t1rho_x:.1f} mm")
    fig.suptitle("One real knee exam (pyKNEEr demo data): sagittal 3D DESS and T1rho")
    fig.tight_layout()
    info = pd.DataFrame([series_acquisition_row("DESS echo 1", dess), series_acquisition_row("T1rho (4 spin locks)", t1rho)])
    return fig, info
