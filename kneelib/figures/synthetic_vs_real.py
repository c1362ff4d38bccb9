"""Synthetic next to real: the figures of the cohort chapter's "Synthetic next to real" section (issue 10).

- :func:`plot_dess_planes`: a synthetic SAG 3D DESS sagittal slice through the medial
  condyle and a coronal reformat through both tibial plateaus, next to the same planes of
  the real DESS (pyKNEEr demo exam), on one millimetre scale;
- :func:`plot_msme_synthetic_vs_real`: echoes of one slice of the synthetic MSME T2 series
  and of the real 8-echo MSME (pymskt), each with its T2 map fitted by
  :func:`kneelib.qmri.relaxometry.fit_t2_monoexponential` (paper 001, Methods "Relaxometry");
- :func:`plot_bone_surfaces`: marching-cubes bone surfaces (scikit-image) of a synthetic
  knee next to those of the real knee template, from the front and from the medial side.

Every plane is drawn in patient orientation read from the series' affine (RAS): sagittal
views anterior left and superior up, coronal views the patient's right on the left
(radiological convention). The real series carry no labels, so the real planes are fixed
slice positions chosen by eye (module constants below).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from kneelib.data.inventory import series_acquisition_row

__all__ = ["REAL_DESS_SAGITTAL_SLICE", "REAL_DESS_CORONAL_COLUMN", "REAL_MSME_SLICE", "BONE_COLOURS",
           "PYMSKT_BONE_LABELS", "oriented_plane", "plot_dess_planes", "slice_t2_map",
           "plot_msme_synthetic_vs_real", "BoneMesh", "bone_meshes", "read_template_labels",
           "synthetic_bone_labels", "plot_bone_surfaces"]

#: Slice of the real DESS (pyKNEEr, ``DESS_echo1``, index of ``Volume.slices()``) through the
#: medial femoral condyle (low slice numbers are medial in this right knee: RAS x grows laterally).
REAL_DESS_SAGITTAL_SLICE = 22
#: Column (anterior-posterior index) of the real DESS whose coronal reformat passes through both
#: tibial plateaus and the tibial spines.
REAL_DESS_CORONAL_COLUMN = 262
#: Slice of the real MSME (pymskt ``MESE_T2``) through the medial femoral condyle.
REAL_MSME_SLICE = 6

#: Bones drawn by :func:`plot_bone_surfaces`: name -> colour.
BONE_COLOURS = {"femur": "#d9b38c", "tibia": "#9ecae1", "patella": "#fdae6b", "fibula": "#a1d99b"}
#: Bone label codes of pymskt's label map (``SAG_3D_DESS_RIGHT_bones_cart_men_fib-label.nrrd``, SOURCE.md).
PYMSKT_BONE_LABELS = {"femur": 5, "tibia": 6, "patella": 7, "fibula": 8}


# --------------------------------------------------------------------------- planes in patient orientation
def _canonical(array_xyz: np.ndarray, affine: np.ndarray):
    """``array_xyz`` (volume array axes) reoriented to RAS axes, and its voxel sizes (mm)."""
    from nibabel.orientations import apply_orientation, io_orientation

    orientation = io_orientation(affine)
    data = apply_orientation(array_xyz, orientation)
    spacing = np.empty(3)
    spacing[orientation[:, 0].astype(int)] = np.linalg.norm(affine[:3, :3], axis=0)  # RAS axis <- array axis
    return data, spacing


def oriented_plane(array_xyz: np.ndarray, affine: np.ndarray, plane: str, index_xyz: tuple[int, int, int]):
    """One sagittal or coronal plane through voxel ``index_xyz`` in patient orientation.

    Parameters
    ----------
    array_xyz : ndarray
        A 3-D array on the voxel grid of ``affine`` (``Volume.array`` layout).
    affine : (4, 4) ndarray
        Voxel -> RAS mm.
    plane : {"sagittal", "coronal"}
    index_xyz : tuple of int
        A voxel (array indices) the plane passes through.

    Returns
    -------
    image : ndarray
        Sagittal: rows superior -> inferior, columns anterior -> posterior. Coronal: rows
        superior -> inferior, columns patient right -> left.
    extent : tuple
        ``(0, width_mm, height_mm, 0)`` for :func:`matplotlib.pyplot.imshow`.
    """
    from nibabel.orientations import io_orientation

    orientation = io_orientation(affine)
    data, spacing = _canonical(array_xyz, affine)
    # the voxel's index along each RAS axis
    ras_index = [0, 0, 0]
    for array_axis, (ras_axis, flip) in enumerate(orientation):
        n = array_xyz.shape[array_axis]
        i = index_xyz[array_axis]
        ras_index[int(ras_axis)] = n - 1 - i if flip < 0 else i
    if plane == "sagittal":
        image = data[ras_index[0], ::-1, ::-1].T  # rows: S -> I, columns: A -> P
        height, width = data.shape[2] * spacing[2], data.shape[1] * spacing[1]
    elif plane == "coronal":
        image = data[::-1, ras_index[1], ::-1].T  # rows: S -> I, columns: R -> L
        height, width = data.shape[2] * spacing[2], data.shape[0] * spacing[0]
    else:
        raise ValueError(f"plane must be 'sagittal' or 'coronal', not {plane!r}")
    return np.ascontiguousarray(image), (0.0, float(width), float(height), 0.0)


def _show(ax, image, extent, title, low_high=None):
    low, high = low_high if low_high is not None else np.percentile(image, [0.5, 99.5])
    ax.imshow(image, cmap="gray", vmin=low, vmax=high if high > low else low + 1, extent=extent,
              interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.tick_params(labelsize=7)


def _synthetic_series(cohort_root, participant_id, visit_month, description):
    from kneelib.data import read_image_index
    from kneelib.synth.ground_truth import load_series_with_truth, series_truth_table

    root = Path(cohort_root)
    volume, labels, _ = load_series_with_truth(root, read_image_index(root), series_truth_table(root),
                                               participant_id, visit_month, description)
    return volume, labels


def _medial_slice_and_plateau_column(labels: np.ndarray) -> tuple[int, int]:
    """Slice with the most medial tibial cartilage and the mean column of all tibial cartilage.

    ``labels`` is ``(slices, rows, columns)`` in the synthetic label codes
    (:data:`kneelib.synth.spec.TISSUE_LABELS`).
    """
    from kneelib.synth.spec import TISSUE_LABELS

    medial = labels == TISSUE_LABELS["tibial_cartilage_medial"]
    tibial = medial | (labels == TISSUE_LABELS["tibial_cartilage_lateral"])
    if not medial.any():
        medial = labels == TISSUE_LABELS["femoral_cartilage"]
        tibial = medial
    if not medial.any():
        return labels.shape[0] // 2, labels.shape[2] // 2
    k = int(np.argmax(medial.reshape(len(labels), -1).sum(axis=1)))
    column = int(round(np.nonzero(tibial)[2].mean()))
    return k, column


def plot_dess_planes(cohort_root: str | Path, participant_id: str, real_dess_folder: str | Path,
                     visit_month: int = 0, real_sagittal_slice: int = REAL_DESS_SAGITTAL_SLICE,
                     real_coronal_column: int = REAL_DESS_CORONAL_COLUMN):
    """Synthetic SAG 3D DESS next to the real DESS: a sagittal slice and a coronal reformat.

    The synthetic sagittal slice is the one with the most medial tibial cartilage (through
    the medial condyle); its coronal reformat passes through the mean anterior-posterior
    position of the tibial cartilage (both plateaus). The real planes are
    :data:`REAL_DESS_SAGITTAL_SLICE` and :data:`REAL_DESS_CORONAL_COLUMN`. All four panels
    share one millimetre scale; each is windowed to its own 0.5-99.5th percentiles.

    Returns
    -------
    fig : matplotlib.figure.Figure
    info : pandas.DataFrame
        Acquisition parameters of both series.
    """
    import matplotlib.pyplot as plt

    from kneelib.data import read_dicom_series

    synthetic, labels = _synthetic_series(cohort_root, participant_id, visit_month, "SAG_3D_DESS_RIGHT")
    real = read_dicom_series(real_dess_folder)
    k_synth, column_synth = _medial_slice_and_plateau_column(labels)
    rows = synthetic.shape[1]
    real_k = int(np.clip(real_sagittal_slice, 0, real.shape[2] - 1))
    real_column = int(np.clip(real_coronal_column, 0, real.shape[0] - 1))
    panels = (
        ("synthetic", synthetic, (column_synth, rows // 2, k_synth),
         f"slice {k_synth + 1}/{synthetic.shape[2]}", f"column {column_synth + 1}/{synthetic.shape[0]}"),
        ("real (pyKNEEr demo)", real, (real_column, real.shape[1] // 2, real_k),
         f"slice {real_k + 1}/{real.shape[2]}", f"column {real_column + 1}/{real.shape[0]}"),
    )
    fig, axes = plt.subplots(2, 2, figsize=(10, 9.6))
    for row, (name, volume, voxel, sag_where, cor_where) in enumerate(panels):
        array = volume.array if volume.array.ndim == 3 else volume.array[..., 0]
        sagittal, sag_extent = oriented_plane(array, volume.affine, "sagittal", voxel)
        coronal, cor_extent = oriented_plane(array, volume.affine, "coronal", voxel)
        window = np.percentile(sagittal, [0.5, 99.5])
        _show(axes[row, 0], sagittal, sag_extent, f"{name}: sagittal, {sag_where}\n(medial condyle; anterior left)",
              window)
        _show(axes[row, 1], coronal, cor_extent, f"{name}: coronal reformat, {cor_where}\n(both plateaus; "
              "patient's right on the left)", window)
        for ax in axes[row]:
            ax.set_xlabel("mm", fontsize=8)
            ax.set_ylabel("mm", fontsize=8)
    fig.suptitle(f"SAG 3D DESS: synthetic participant {participant_id} (top) and a real DESS (bottom)", fontsize=11)
    fig.tight_layout()
    info = pd.DataFrame([series_acquisition_row("synthetic SAG_3D_DESS_RIGHT", synthetic),
                         series_acquisition_row("real DESS (pyKNEEr)", real)])
    return fig, info


# --------------------------------------------------------------------------- MSME echoes and T2 maps
def slice_t2_map(echoes: np.ndarray, echo_times_ms, min_signal_fraction: float = 0.08) -> np.ndarray:
    """T2 map (ms) of one slice's echoes ``(rows, columns, n_echoes)``; NaN outside tissue or where the fit failed.

    The three-parameter fit is :func:`kneelib.qmri.relaxometry.fit_t2_monoexponential`
    (paper 001, Methods "Relaxometry") on the voxels whose first echo exceeds
    ``min_signal_fraction`` of the slice's 99th percentile (background stays NaN); voxels
    whose fit did not converge are NaN.
    """
    from kneelib.qmri.relaxometry import fit_t2_monoexponential

    echoes = np.asarray(echoes, dtype=float)
    mask = echoes[..., 0] > min_signal_fraction * np.percentile(echoes[..., 0], 99)
    fit = fit_t2_monoexponential(echoes, echo_times_ms, mask=mask)
    return np.where(fit.converged, fit.t2_ms, np.nan)


def _echo_choice(n_echoes: int, n_shown: int) -> list[int]:
    return sorted(set(np.linspace(0, n_echoes - 1, min(n_shown, n_echoes)).round().astype(int).tolist()))


def plot_msme_synthetic_vs_real(cohort_root: str | Path, participant_id: str, real_msme_folder: str | Path,
                                visit_month: int = 0, n_echoes_shown: int = 4, real_slice: int = REAL_MSME_SLICE,
                                t2_range_ms: tuple[float, float] = (0.0, 100.0)):
    """Echoes of one MSME slice and its T2 map: synthetic (top) next to the real 8-echo MSME (bottom).

    The synthetic slice is the SAG_T2_MAP_RIGHT slice with the most medial tibial
    cartilage; the real one :data:`REAL_MSME_SLICE` (medial condyle). ``n_echoes_shown``
    echoes from first to last are drawn with the first echo's window, so the decay shows;
    the T2 maps (:func:`slice_t2_map`) share one colour scale. Planes are in patient
    orientation (anterior left, superior up) on one millimetre scale.

    Returns
    -------
    fig : matplotlib.figure.Figure
    info : pandas.DataFrame
        Acquisition parameters of both series.
    """
    import matplotlib.pyplot as plt

    from kneelib.data import read_dicom_series

    synthetic, labels = _synthetic_series(cohort_root, participant_id, visit_month, "SAG_T2_MAP_RIGHT")
    real = read_dicom_series(real_msme_folder)
    k_synth, _ = _medial_slice_and_plateau_column(labels)
    k_real = int(np.clip(real_slice, 0, real.shape[2] - 1))
    n_shown = min(n_echoes_shown, max(synthetic.n_echoes, real.n_echoes))
    fig, axes = plt.subplots(2, n_shown + 1, figsize=(2.6 * (n_shown + 1) + 1.0, 6.2), squeeze=False,
                             layout="constrained")
    image = None
    for row, (name, volume, k) in enumerate((("synthetic", synthetic, k_synth), ("real (pymskt)", real, k_real))):
        voxel = (volume.shape[0] // 2, volume.shape[1] // 2, k)
        planes = [oriented_plane(volume.array[..., e], volume.affine, "sagittal", voxel) for e in range(volume.n_echoes)]
        extent = planes[0][1]
        echoes = np.stack([plane for plane, _ in planes], axis=-1)
        window = np.percentile(echoes[..., 0], [0.5, 99.5])
        chosen = _echo_choice(volume.n_echoes, n_shown)
        for col in range(n_shown):
            ax = axes[row, col]
            ax.set_axis_off()
            if col >= len(chosen):
                continue
            echo = chosen[col]
            ax.imshow(echoes[..., echo], cmap="gray", vmin=window[0], vmax=window[1], extent=extent,
                      interpolation="nearest")
            ax.set_title(f"{name}\necho {echo + 1}/{volume.n_echoes}, TE {volume.echo_times_ms[echo]:.1f} ms",
                         fontsize=8)
        t2 = slice_t2_map(echoes, volume.echo_times_ms)
        ax = axes[row, -1]
        image = ax.imshow(t2, cmap="magma", vmin=t2_range_ms[0], vmax=t2_range_ms[1], extent=extent,
                          interpolation="nearest")
        ax.set_facecolor("black")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"{name}: T2 map, slice {k + 1}/{volume.shape[2]}\n(black: background or no fit)", fontsize=8)
    fig.colorbar(image, ax=axes[:, -1], shrink=0.8, label="T2 (ms)")
    fig.suptitle(f"MSME T2 mapping: synthetic participant {participant_id} (top), a real 8-echo MSME (bottom); "
                 "three-parameter fit", fontsize=10)
    info = pd.DataFrame([series_acquisition_row("synthetic SAG_T2_MAP_RIGHT", synthetic),
                         series_acquisition_row("real MSME (pymskt)", real)])
    return fig, info


# --------------------------------------------------------------------------- 3-D bone surfaces
@dataclass(frozen=True)
class BoneMesh:
    """A triangle mesh in RAS millimetres: ``vertices (n, 3)``, ``faces (m, 3)``."""

    vertices: np.ndarray
    faces: np.ndarray


def bone_meshes(labels_xyz: np.ndarray, affine: np.ndarray, codes: dict[str, int],
                mesh_mm: float = 1.5) -> dict[str, BoneMesh]:
    """Marching-cubes surfaces (:func:`skimage.measure.marching_cubes`) of labelled structures.

    Each structure's mask is block-averaged to about ``mesh_mm`` voxels (keeps the meshes a
    few ten thousand faces: matplotlib draws them in seconds), then the 0.5 iso-surface is
    taken and its vertices mapped to RAS mm with ``affine`` (scaled to the coarser grid).

    Parameters
    ----------
    labels_xyz : ndarray of int
        Label map on the grid of ``affine`` (``Volume.array`` axis order).
    affine : (4, 4) ndarray
        Voxel -> RAS mm.
    codes : dict
        Structure name -> label code; structures absent from the map are left out.
    mesh_mm : float
        Approximate edge length of the grid the surfaces are extracted on.
    """
    from skimage.measure import marching_cubes

    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    factors = np.maximum(1, np.round(mesh_mm / spacing)).astype(int)
    meshes = {}
    for name, code in codes.items():
        mask = labels_xyz == code
        if mask.sum() < 8:
            continue
        shape = (np.array(mask.shape) // factors) * factors
        block = mask[:shape[0], :shape[1], :shape[2]].reshape(
            shape[0] // factors[0], factors[0], shape[1] // factors[1], factors[1], shape[2] // factors[2],
            factors[2]).mean(axis=(1, 3, 5))
        block = np.pad(block, 1)  # closed surfaces where a bone leaves the field of view
        if block.max() <= 0.5:
            continue
        vertices, faces, _, _ = marching_cubes(block, level=0.5)
        # coarse index (with the pad) -> fine voxel index: centre of the block
        fine = (vertices - 1.0) * factors + (factors - 1) / 2.0
        ras = fine @ affine[:3, :3].T + affine[:3, 3]
        meshes[name] = BoneMesh(vertices=ras, faces=faces.astype(np.int64))
    return meshes


def read_template_labels(label_map: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """A label map (NRRD, NIfTI; read with SimpleITK) as ``(labels_xyz, RAS affine)``.

    Raises
    ------
    kneelib.data.errors.KneelibDataError
        The file is missing or not a 3-D label image.
    """
    import SimpleITK as sitk

    from kneelib.data.errors import KneelibDataError

    path = Path(label_map)
    if not path.is_file():
        raise KneelibDataError(f"{path}: label map not found", path=path, reason="missing file")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise KneelibDataError(f"{path}: not a readable label image ({error})", path=path,
                               reason="unreadable label image") from error
    if image.GetDimension() != 3:
        raise KneelibDataError(f"{path}: a {image.GetDimension()}-D image, not a 3-D label map", path=path,
                               reason="not 3-D")
    labels = np.transpose(sitk.GetArrayFromImage(image), (2, 1, 0))
    direction = np.array(image.GetDirection()).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = direction * np.array(image.GetSpacing())
    affine[:3, 3] = image.GetOrigin()
    return labels, np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine  # ITK is LPS; RAS flips x and y


def synthetic_bone_labels(cohort_root: str | Path, participant_id: str, visit_month: int = 0,
                          description: str = "SAG_3D_DESS_RIGHT") -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Ground-truth tissue labels of one synthetic series: ``(labels_xyz, affine, bone codes)``."""
    from kneelib.synth.spec import TISSUE_LABELS

    volume, labels = _synthetic_series(cohort_root, participant_id, visit_month, description)
    codes = {name: TISSUE_LABELS[name] for name in BONE_COLOURS}
    return np.transpose(labels, (2, 1, 0)), volume.affine, codes


#: Views of :func:`plot_bone_surfaces`: title -> (elevation, azimuth) of matplotlib's camera, right knee (RAS).
_VIEWS = {"from the front": (10.0, 90.0), "from the medial side": (10.0, 180.0)}


def plot_bone_surfaces(knees: dict[str, dict[str, BoneMesh]]):
    """Shaded bone surfaces of several knees, one row per knee, from the front and from the medial side.

    Parameters
    ----------
    knees : dict
        Title -> :func:`bone_meshes` of a right knee (RAS mm; a left knee mirrored to a right).
        Each row is centred on its femur-tibia midpoint and drawn with equal axes,
        orthographic projection.

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt
    from matplotlib.colors import LightSource, to_rgba
    from matplotlib.patches import Patch
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection

    light = LightSource(azdeg=315, altdeg=45)
    fig = plt.figure(figsize=(4.2 * len(_VIEWS), 4.4 * len(knees)))
    for row, (title, meshes) in enumerate(knees.items()):
        points = np.concatenate([m.vertices for m in meshes.values()]) if meshes else np.zeros((1, 3))
        centre = (points.min(axis=0) + points.max(axis=0)) / 2.0
        half = float((points.max(axis=0) - points.min(axis=0)).max()) / 2.0 + 2.0
        for col, (view, (elevation, azimuth)) in enumerate(_VIEWS.items()):
            ax = fig.add_subplot(len(knees), len(_VIEWS), row * len(_VIEWS) + col + 1, projection="3d")
            if meshes:  # one collection: matplotlib depth-sorts faces within a collection, not between them
                triangles = np.concatenate([m.vertices[m.faces] for m in meshes.values()]) - centre
                colours = np.concatenate([np.tile(to_rgba(BONE_COLOURS[name]), (len(m.faces), 1))
                                          for name, m in meshes.items()])
                ax.add_collection3d(Poly3DCollection(triangles, facecolors=colours, linewidths=0.0, shade=True,
                                                     lightsource=light))
            for setter in (ax.set_xlim, ax.set_ylim, ax.set_zlim):
                setter(-half, half)
            ax.set_box_aspect((1, 1, 1), zoom=1.3)
            ax.set_proj_type("ortho")
            ax.view_init(elev=elevation, azim=azimuth)
            ax.set_axis_off()
            ax.set_title(f"{title}\n{view}", fontsize=9)
    fig.legend(handles=[Patch(facecolor=c, label=n) for n, c in BONE_COLOURS.items()], loc="lower center",
               ncol=len(BONE_COLOURS), fontsize=8, frameon=False)
    fig.suptitle("Bone surfaces (marching cubes): a synthetic knee and the real knee template", fontsize=11)
    fig.tight_layout(rect=(0, 0.04, 1, 0.97))
    return fig
