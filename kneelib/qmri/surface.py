"""Bone and cartilage surfaces of paper 001 and the projection of cartilage biomarkers onto the bone.

Paper 001 (Morales et al.), Methods, "Bone surface projection": the femoral and tibial shafts
are "cropped to the mediolateral length of each bone, thus creating a cubic bounding box"
(:func:`crop_shaft`); the bone and cartilage masks are "converted from voxel masks to a
triangulated mesh using marching cubes" (:func:`mesh_from_mask`, scikit-image
``measure.marching_cubes`` with the voxel spacing); "the bone shape was defined as the distance
from the centroid of the bone [...] to the bone surface" (:func:`bone_shape`); and "the
projection from the cartilage to the bone surface was calculated using the intersection between
the normal vector for each point in the bone surface and the cartilage maps. This normal vector
spanning from each point in the bone surface formed a cylinder with a radius of 0.729 mm [...]
that averaged the cartilage thickness and cartilage T2 values along the cartilage cross-section
it covered" (:func:`project_cartilage_to_bone`). :func:`bone_surface_projection` composes the
four for one bone.

Coordinates are mm in array-axis order, the origin at the centre of voxel ``(0, 0, 0)``
(``index * spacing``); normals are unit vectors in that space pointing out of the bone.

The cylinder test is vectorised and needs no search tree: the cartilage mask, cropped to its
bounding box and padded, holds each cartilage voxel's id; the cylinder's axis is cut into slabs
one step long (the radius or the smallest voxel size, whichever is smaller) and, at the middle
of each slab, a precomputed set of voxel offsets covering a ball of radius
``hypot(radius, step / 2)`` is looked up in that array, which finds every voxel centre of the
slab's part of the cylinder. The exact test (``0 <= t <= max_depth_mm`` along the normal,
distance from the axis ``<= radius_mm``) keeps the voxels in the cylinder, each (vertex, voxel)
pair once (at the step of its own slab). Only the first contiguous run of cartilage along the
normal counts (a ray leaving the cartilage and meeting it again across a notch stops at the
gap), and a vertex is *articular* when that run starts within ``max_start_mm`` of the bone
surface; a vertex stops stepping once its run is over or cannot start in time, which does not
change the result. Vertices go in chunks, so memory is bounded by the chunk size. On the real
OAI-geometry femur of ``pymskt_knee_mri`` (0.36 x 0.36 x 0.7 mm, 137k vertices after the shaft
crop, 127k cartilage voxels) the projection takes about 2 s on one core.

(A first version used :class:`scipy.spatial.cKDTree` ball queries; it was taken out after a
segmentation fault inside the full test suite that never reproduced alone. The lookup here is
plain numpy indexing, deterministic, and is checked against a brute-force cylinder test in
``tests/test_qmri_surface.py``.)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
from scipy import ndimage
from skimage import measure

from kneelib.qmri import QmriInputError
from kneelib.qmri.thickness import _check_mask_and_spacing

__all__ = [
    "PAPER_CYLINDER_RADIUS_MM",
    "SurfaceMesh",
    "CartilageProjection",
    "BoneSurfaceProjection",
    "crop_shaft",
    "mask_centroid_mm",
    "mesh_from_mask",
    "bone_shape",
    "project_cartilage_to_bone",
    "bone_surface_projection",
]

#: Paper 001, "Bone surface projection": the cylinder radius, "double the in-plane pixel resolution".
PAPER_CYLINDER_RADIUS_MM = 0.729


def _check_mesh(mesh) -> tuple[np.ndarray, np.ndarray]:
    """Finite (n, 3) vertices and normals; non-zero normals scaled to unit length."""
    vertices = np.asarray(mesh.vertices, dtype=float)
    normals = np.asarray(mesh.normals, dtype=float)
    if vertices.ndim != 2 or vertices.shape[1:] != (3,) or normals.shape != vertices.shape:
        raise QmriInputError(f"needs (n, 3) vertices and normals, got {vertices.shape} and {normals.shape}",
                             what="cartilage projection")
    if not (np.isfinite(vertices).all() and np.isfinite(normals).all()):
        raise QmriInputError("the mesh has non-finite vertices or normals", what="cartilage projection")
    length = np.linalg.norm(normals, axis=1, keepdims=True)
    return vertices, np.divide(normals, length, out=np.zeros_like(normals), where=length > 0)


@dataclass(frozen=True)
class SurfaceMesh:
    """A triangulated surface in mm (array-axis order, origin at the centre of voxel 0).

    Attributes
    ----------
    vertices : ndarray, (n, 3)
        Vertex positions (mm).
    faces : ndarray of int, (m, 3)
        Vertex indices of each triangle.
    normals : ndarray, (n, 3)
        Unit vertex normals pointing out of the object (from the inside to the outside).
    """

    vertices: np.ndarray
    faces: np.ndarray
    normals: np.ndarray

    @property
    def area_mm2(self) -> float:
        """Total triangle area (mm^2)."""
        a, b, c = (self.vertices[self.faces[:, k]] for k in range(3))
        return float(0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1).sum())

    @property
    def n_vertices(self) -> int:
        return int(self.vertices.shape[0])


def crop_shaft(bone_mask: np.ndarray, spacing_mm: Sequence[float], *, long_axis: int = 1,
               mediolateral_axis: int = 2, joint_end: str = "auto") -> np.ndarray:
    """Crop a femoral or tibial shaft to the bone's mediolateral width (paper 001, "Bone surface projection").

    "The shafts of the tibia and femur bone masks were cropped to the mediolateral length of each
    bone, thus creating a cubic bounding box, in order to be invariant to the different shaft
    lengths." The mediolateral width ``W`` is the extent of the mask along ``mediolateral_axis``
    (mm, voxel edge to voxel edge); along ``long_axis`` only the ``W`` mm nearest the joint end
    are kept.

    Parameters
    ----------
    bone_mask : ndarray of bool, 3-D
    spacing_mm : sequence of 3 float
    long_axis : int
        The bone's long (superior-inferior) axis; 1 (rows) for a sagittal
        :class:`kneelib.data.dicom.Volume` ``(columns, rows, slices)``.
    mediolateral_axis : int
        2 (slices) for a sagittal series.
    joint_end : {"auto", "low", "high"}
        Which end of the long axis (low or high index) is the joint. ``"auto"``: the end whose
        outermost tenth of the bone is wider mediolaterally (an epiphysis is wider than a shaft).

    Returns
    -------
    ndarray of bool
        Same shape, voxels beyond ``W`` from the joint end set to False (unchanged when the bone
        is already shorter than ``W``).

    Raises
    ------
    QmriInputError
        Not 3-D, bad spacing or axes, empty mask.
    """
    mask, spacing = _check_mask_and_spacing(bone_mask, spacing_mm, "shaft crop")
    if not (-3 <= long_axis < 3 and -3 <= mediolateral_axis < 3) or long_axis % 3 == mediolateral_axis % 3:
        raise QmriInputError(f"long_axis {long_axis} and mediolateral_axis {mediolateral_axis} must be two "
                             "different axes among 0, 1, 2",
                             what="shaft crop")
    if joint_end not in ("auto", "low", "high"):
        raise QmriInputError(f"joint_end must be 'auto', 'low' or 'high', got {joint_end!r}", what="shaft crop")
    if not mask.any():
        raise QmriInputError("the bone mask is empty", what="shaft crop")
    la, ml = long_axis % 3, mediolateral_axis % 3
    other = 3 - la - ml
    ml_present = np.flatnonzero(mask.any(axis=(la, other)))
    width_mm = (ml_present[-1] - ml_present[0] + 1) * spacing[ml]
    # per long-axis index, the mediolateral extent of the bone (voxels)
    profile = np.moveaxis(mask, (la, ml, other), (0, 1, 2)).any(axis=2)
    rows = np.flatnonzero(profile.any(axis=1))
    first, last = rows[0], rows[-1]
    if joint_end == "auto":
        extent = np.array([np.ptp(np.flatnonzero(r)) + 1 if r.any() else 0 for r in profile])
        tenth = max(1, (last - first + 1) // 10)
        joint_end = "low" if extent[first:first + tenth].mean() >= extent[last - tenth + 1:last + 1].mean() else "high"
    keep = int(np.floor(width_mm / spacing[la] + 1e-9))
    out = mask.copy()
    index = [slice(None)] * 3
    if joint_end == "low":
        index[la] = slice(first + keep, None)
    else:
        index[la] = slice(None, max(last + 1 - keep, 0))
    out[tuple(index)] = False
    return out


def mask_centroid_mm(mask: np.ndarray, spacing_mm: Sequence[float]) -> np.ndarray:
    """Volumetric centroid of a mask (mm, array-axis order, origin at voxel 0's centre).

    Raises
    ------
    QmriInputError
        Not 3-D, bad spacing, empty mask.
    """
    mask, spacing = _check_mask_and_spacing(mask, spacing_mm, "centroid")
    if not mask.any():
        raise QmriInputError("the mask is empty", what="centroid")
    return np.argwhere(mask).mean(axis=0) * spacing


def mesh_from_mask(mask: np.ndarray, spacing_mm: Sequence[float], *, smoothing_sigma_mm: float = 0.0,
                   normal_smoothing_mm: float | None = None, step_size: int = 1) -> SurfaceMesh:
    """Triangulated surface of a mask by marching cubes, with outward unit normals (paper 001, Methods).

    scikit-image ``measure.marching_cubes`` at level 0.5 of the mask (zero-padded by one voxel
    so the surface is closed at the volume border), with ``spacing=spacing_mm`` so the vertices
    are in mm. The normal at each vertex is minus the gradient of the Gaussian-smoothed mask
    (sigma ``normal_smoothing_mm``): it points out of the object by construction, whatever the
    triangle winding.

    Parameters
    ----------
    mask : ndarray of bool, 3-D
    spacing_mm : sequence of 3 float
    smoothing_sigma_mm : float
        Gaussian smoothing of the mask before marching cubes (0: the binary mask, as in the paper;
        about one voxel removes the staircase at the cost of slightly shrinking sharp convex parts).
    normal_smoothing_mm : float, optional
        Smoothing for the normals; default the largest voxel size.
    step_size : int
        Marching cubes step (voxels); larger gives a coarser mesh.

    Returns
    -------
    SurfaceMesh

    Raises
    ------
    QmriInputError
        Not 3-D, bad spacing, empty mask, bad step size.
    """
    mask, spacing = _check_mask_and_spacing(mask, spacing_mm, "marching cubes")
    if not mask.any():
        raise QmriInputError("the mask is empty", what="marching cubes")
    if int(step_size) < 1:
        raise QmriInputError(f"step_size must be a positive integer, got {step_size}", what="marching cubes")
    level_set = np.pad(mask.astype(np.float32), 1)
    if smoothing_sigma_mm > 0:
        level_set = ndimage.gaussian_filter(level_set, sigma=smoothing_sigma_mm / spacing)
    vertices, faces, _, _ = measure.marching_cubes(level_set, level=0.5, spacing=tuple(spacing),
                                                   step_size=int(step_size))
    vertices = vertices - spacing  # undo the one-voxel pad
    sigma = float(normal_smoothing_mm) if normal_smoothing_mm is not None else float(spacing.max())
    smooth = np.pad(mask.astype(np.float32), 1)
    if sigma > 0:
        smooth = ndimage.gaussian_filter(smooth, sigma=sigma / spacing)
    coords = ((vertices + spacing) / spacing).T
    gradient = np.stack([ndimage.map_coordinates(np.gradient(smooth, spacing[a], axis=a), coords, order=1)
                         for a in range(3)], axis=1)
    outward = -gradient
    length = np.linalg.norm(outward, axis=1, keepdims=True)
    normals = np.divide(outward, length, out=np.zeros_like(outward), where=length > 0)
    return SurfaceMesh(vertices=vertices.astype(float), faces=faces.astype(np.int64), normals=normals)


def bone_shape(mesh: SurfaceMesh, centroid_mm: Sequence[float]) -> np.ndarray:
    """Bone shape of paper 001 ("Morphometry", Fig. 3b): distance (mm) from each surface vertex to the centroid."""
    centroid = np.asarray(centroid_mm, dtype=float).reshape(-1)
    if centroid.size != 3:
        raise QmriInputError(f"centroid_mm needs 3 values, got {centroid_mm}", what="bone shape")
    return np.linalg.norm(mesh.vertices - centroid, axis=1)


@dataclass(frozen=True)
class CartilageProjection:
    """Cartilage sampled in a cylinder along each bone-surface normal (paper 001, "Bone surface projection").

    Attributes
    ----------
    articular : ndarray of bool, (n_vertices,)
        Cartilage found in the vertex's cylinder, starting within ``max_start_mm`` of the bone.
    n_voxels : ndarray of int
        Cartilage voxels (centres) in the cylinder's first contiguous run.
    thickness_mm : ndarray
        Cartilage volume in the cylinder divided by its cross-section
        (``n_voxels * voxel volume / (pi radius^2)``): the thickness along the normal; NaN where
        not articular.
    values : dict of str to ndarray
        Mean of each per-voxel map over the finite values in the cylinder (NaN where none); with
        ``depth`` given also ``<name>_deep`` (depth <= 0.5) and ``<name>_superficial`` (> 0.5).
    radius_mm : float
    """

    articular: np.ndarray
    n_voxels: np.ndarray
    thickness_mm: np.ndarray
    values: dict = field(default_factory=dict)
    radius_mm: float = PAPER_CYLINDER_RADIUS_MM


def _ball_offsets(spacing: np.ndarray, reach_mm: float) -> np.ndarray:
    """Integer voxel offsets ``o`` whose centre ``(base + o) * spacing`` can lie within ``reach_mm`` of a point.

    The point lies in the cell ``[base, base + 1) * spacing`` (``base = floor(point / spacing)``);
    an offset is kept when the nearest point of that cell is within ``reach_mm`` of the voxel
    centre (a small margin absorbs rounding), so every voxel centre within ``reach_mm`` of any
    point of the cell is among ``base + offsets``.
    """
    reach = float(reach_mm) * (1 + 1e-9) + 1e-9
    ranges = [np.arange(-int(np.floor(reach / s)) - 1, int(np.floor(reach / s)) + 3) for s in spacing]
    grid = np.stack(np.meshgrid(*ranges, indexing="ij"), axis=-1).reshape(-1, 3)
    # per axis distance from the cell [0, 1) to the offset, in mm (0 for offsets 0 and 1)
    gap = np.where(grid < 0, -grid, np.where(grid > 1, grid - 1, 0)) * spacing
    return grid[np.einsum("ij,ij->i", gap, gap) <= reach * reach].astype(np.int64)


class _CartilageLookup:
    """The cartilage mask cropped to its bounding box and zero-padded, as voxel ids (-1 outside).

    ``ids[flat]`` is the row of the voxel in ``voxels`` (``np.argwhere`` order) or -1; the
    padding is wide enough that ``base + offset`` stays inside the array for every accepted
    ``base`` (:meth:`hits`), and a ``base`` beyond it has no cartilage within reach.
    """

    def __init__(self, voxels: np.ndarray, offsets: np.ndarray):
        low, high = voxels.min(axis=0), voxels.max(axis=0)
        self.pad = offsets.max(axis=0) - offsets.min(axis=0)
        self.low = low
        self.shape = high - low + 1
        padded_shape = self.shape + 2 * self.pad
        ids = np.full(tuple(padded_shape), -1, dtype=np.int32 if len(voxels) < 2**31 else np.int64)
        inner = voxels - low + self.pad
        ids[tuple(inner.T)] = np.arange(len(voxels))
        self.ids = ids.reshape(-1)
        self.strides = np.array([padded_shape[1] * padded_shape[2], padded_shape[2], 1], dtype=np.int64)
        self.offsets_flat = offsets @ self.strides
        self.base_min = -self.pad - offsets.min(axis=0)
        self.base_max = self.shape + self.pad - 1 - offsets.max(axis=0)

    def hits(self, points_mm: np.ndarray, spacing: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row, voxel id) of every cartilage voxel among ``floor(point / spacing) + offsets``."""
        base = np.floor(points_mm / spacing).astype(np.int64) - self.low
        valid = np.all((base >= self.base_min) & (base <= self.base_max), axis=1)
        rows = np.flatnonzero(valid)
        flat = (base[rows] + self.pad) @ self.strides
        ids = self.ids[flat[:, None] + self.offsets_flat[None, :]]
        hit_row, hit_col = np.nonzero(ids >= 0)
        return rows[hit_row], ids[hit_row, hit_col].astype(np.int64)


def _cylinder_pairs(lookup: _CartilageLookup, points: np.ndarray, spacing: np.ndarray, origins: np.ndarray,
                    normals: np.ndarray, radius: float, max_depth: float, step: float, *,
                    stop_start: float | None = None, stop_gap: float | None = None):
    """(vertex row, voxel id, t) of the voxel centres in each vertex's cylinder, each pair once.

    The axis is cut into slabs ``[k step, (k + 1) step)``; every voxel centre of the cylinder in
    slab ``k`` lies within ``hypot(radius, step / 2)`` of the slab's mid-point on the axis, so the
    precomputed offsets around that point find it (:func:`_ball_offsets`). The exact test
    (``0 <= t <= max_depth``, distance from the axis ``<= radius``) keeps the cylinder's voxels
    and each pair is kept at the step of its own slab (no duplicates). Normals must be unit
    vectors.

    With ``stop_start`` / ``stop_gap`` a vertex stops early, without changing the first run of
    :func:`_first_runs`: once no voxel lies before ``(k + 1) step > stop_start``, or the last one
    lies more than ``stop_gap`` before it (all voxels up to ``(k + 1) step`` have been seen).
    """
    n_rows = len(origins)
    n_steps = int(np.floor(max_depth / step)) + 1
    last_t = np.full(n_rows, -np.inf)
    active = np.arange(n_rows)
    rows_all, cols_all, t_all = [], [], []
    radius2 = radius * radius
    for k in range(n_steps):
        if active.size == 0:
            break
        centre = origins[active] + ((k + 0.5) * step) * normals[active]
        hit_rows, cols = lookup.hits(centre, spacing)
        rows = active[hit_rows]
        d = points[cols] - origins[rows]
        t = np.einsum("ij,ij->i", d, normals[rows])
        perp2 = np.einsum("ij,ij->i", d, d) - t * t
        slab = np.floor(t / step)
        inside = (t >= 0) & (t <= max_depth) & (perp2 <= radius2) & (slab == k)
        rows, cols, t = rows[inside], cols[inside], t[inside]
        rows_all.append(rows)
        cols_all.append(cols)
        t_all.append(t)
        np.maximum.at(last_t, rows, t)
        seen_to = (k + 1) * step
        done = np.zeros(active.size, dtype=bool)
        if stop_start is not None:
            done |= np.isneginf(last_t[active]) & (seen_to > stop_start)
        if stop_gap is not None:
            seen = last_t[active]
            done |= np.isfinite(seen) & (seen_to - seen > stop_gap)
        active = active[~done]
    return np.concatenate(rows_all), np.concatenate(cols_all), np.concatenate(t_all)


def _first_runs(rows: np.ndarray, cols: np.ndarray, t: np.ndarray, start_limit: float, gap_limit: float):
    """The pairs of each vertex's first contiguous run along the normal that starts within ``start_limit``."""
    if rows.size == 0:
        return rows, cols
    order = np.lexsort((t, rows))
    rows, cols, t = rows[order], cols[order], t[order]
    new_row = np.r_[True, rows[1:] != rows[:-1]]
    lengths = np.diff(np.r_[np.flatnonzero(new_row), rows.size])
    gap = np.r_[False, np.diff(t) > gap_limit] & ~new_row
    run = np.cumsum(gap)  # runs numbered along the sorted pairs; a row's first run has its first number
    keep = (run == np.repeat(run[new_row], lengths)) & (np.repeat(t[new_row], lengths) <= start_limit)
    return rows[keep], cols[keep]


def project_cartilage_to_bone(mesh: SurfaceMesh, cartilage_mask: np.ndarray, spacing_mm: Sequence[float], *,
                              maps: Mapping[str, np.ndarray] | None = None, depth: np.ndarray | None = None,
                              radius_mm: float = PAPER_CYLINDER_RADIUS_MM, max_depth_mm: float = 10.0,
                              max_start_mm: float | None = None, max_gap_mm: float | None = None,
                              chunk: int = 20_000) -> CartilageProjection:
    """Project cartilage thickness and per-voxel maps onto the bone surface along the normals.

    Paper 001, Methods "Bone surface projection": from each bone-surface vertex a cylinder of
    radius ``radius_mm`` (0.729 mm in the paper) runs along the outward normal; the cartilage
    voxels whose centres lie in it (the first contiguous run) give the vertex its thickness (their
    volume over the cylinder's cross-section) and the mean of each per-voxel map (e.g. a skeleton
    thickness map of :func:`kneelib.qmri.thickness.thickness_per_slice`, a T2 map of
    :func:`kneelib.qmri.relaxometry.fit_t2_monoexponential`) over the cylinder. With ``depth``
    (:func:`kneelib.qmri.relaxometry.cartilage_depth`) each map is also averaged over the deep
    (bottom) and superficial (top) halves, as the paper's deep and superficial T2.

    Parameters
    ----------
    mesh : SurfaceMesh
        The bone surface (normals out of the bone), in the mm frame of the masks.
    cartilage_mask : ndarray of bool, 3-D
        The cartilage on that bone.
    spacing_mm : sequence of 3 float
    maps : mapping of str to ndarray, optional
        Per-voxel maps, the mask's shape; NaN values are ignored.
    depth : ndarray, optional
        Normalised cartilage depth (0 at the bone, 1 at the joint), the mask's shape.
    radius_mm : float
        Cylinder radius.
    max_depth_mm : float
        Cylinder length.
    max_start_mm : float, optional
        A vertex is articular when its first cartilage voxel lies within this distance along the
        normal; default one largest voxel size plus the radius.
    max_gap_mm : float, optional
        A gap longer than this along the normal ends the run; default twice the largest voxel size.
    chunk : int
        Vertices per batch (bounds memory).

    Returns
    -------
    CartilageProjection

    Raises
    ------
    QmriInputError
        Bad mask, spacing, radius, or a map/depth of another shape.
    """
    cartilage, spacing = _check_mask_and_spacing(cartilage_mask, spacing_mm, "cartilage projection")
    if not (np.isfinite(radius_mm) and radius_mm > 0 and np.isfinite(max_depth_mm) and max_depth_mm > 0):
        raise QmriInputError(f"radius_mm and max_depth_mm must be positive, got {radius_mm}, {max_depth_mm}",
                             what="cartilage projection")
    maps = dict(maps or {})
    for name, array in list(maps.items()) + ([("depth", depth)] if depth is not None else []):
        if np.shape(array) != cartilage.shape:
            raise QmriInputError(f"map {name!r} has shape {np.shape(array)}, the mask {cartilage.shape}",
                                 what="cartilage projection")
    start_limit = float(max_start_mm) if max_start_mm is not None else float(spacing.max() + radius_mm)
    gap_limit = float(max_gap_mm) if max_gap_mm is not None else float(2 * spacing.max())
    if not (np.isfinite(start_limit) and start_limit >= 0 and np.isfinite(gap_limit) and gap_limit > 0):
        raise QmriInputError(f"max_start_mm must be >= 0 and max_gap_mm > 0, got {start_limit}, {gap_limit}",
                             what="cartilage projection")
    if int(chunk) < 1:
        raise QmriInputError(f"chunk must be a positive integer, got {chunk}", what="cartilage projection")
    chunk = int(chunk)
    n = mesh.n_vertices
    voxels = np.argwhere(cartilage)
    names = list(maps)
    layers = ("", "_deep", "_superficial") if depth is not None else ("",)
    sums = {k + s: np.zeros(n) for k in names for s in layers}
    counts = {k + s: np.zeros(n) for k in names for s in layers}
    n_voxels = np.zeros(n, dtype=np.int64)
    articular = np.zeros(n, dtype=bool)
    vertices, normals = _check_mesh(mesh)
    if voxels.size:
        points = voxels * spacing
        values_at = {k: np.asarray(maps[k], dtype=float)[tuple(voxels.T)] for k in names}
        depth_at = np.asarray(depth, dtype=float)[tuple(voxels.T)] if depth is not None else None
        step = float(min(radius_mm, spacing.min()))
        lookup = _CartilageLookup(voxels, _ball_offsets(spacing, float(np.hypot(radius_mm, step / 2))))
        # a vertex without a direction (zero normal) has no cylinder
        candidates = np.flatnonzero(np.any(normals != 0, axis=1))
        for first in range(0, candidates.size, chunk):
            verts = candidates[first:first + chunk]
            rows, cols, t = _cylinder_pairs(lookup, points, spacing, vertices[verts], normals[verts],
                                            float(radius_mm), float(max_depth_mm), step,
                                            stop_start=start_limit, stop_gap=gap_limit)
            rows, cols = _first_runs(rows, cols, t, start_limit, gap_limit)
            vertex = verts[rows]
            n_voxels += np.bincount(vertex, minlength=n)
            for k in names:
                value = values_at[k][cols]
                for suffix in layers:
                    use = np.isfinite(value)
                    if suffix == "_deep":
                        use &= depth_at[cols] <= 0.5
                    elif suffix == "_superficial":
                        use &= depth_at[cols] > 0.5
                    sums[k + suffix] += np.bincount(vertex[use], weights=value[use], minlength=n)
                    counts[k + suffix] += np.bincount(vertex[use], minlength=n)
        articular = n_voxels > 0
    thickness = np.where(articular, n_voxels * float(np.prod(spacing)) / (np.pi * radius_mm ** 2), np.nan)
    values = {k: np.divide(sums[k], counts[k], out=np.full(n, np.nan), where=counts[k] > 0) for k in sums}
    return CartilageProjection(articular=articular, n_voxels=n_voxels, thickness_mm=thickness, values=values,
                               radius_mm=float(radius_mm))


@dataclass(frozen=True)
class BoneSurfaceProjection:
    """One bone's surface with its biomarkers (paper 001, Fig. 3a-d).

    Attributes
    ----------
    mesh : SurfaceMesh
        The (shaft-cropped) bone surface.
    centroid_mm : ndarray, (3,)
        Volumetric centroid of the (cropped) bone mask.
    bone_shape_mm : ndarray
        Vertex-to-centroid distance.
    cartilage : CartilageProjection or None
    """

    mesh: SurfaceMesh
    centroid_mm: np.ndarray
    bone_shape_mm: np.ndarray
    cartilage: CartilageProjection | None


def bone_surface_projection(bone_mask: np.ndarray, spacing_mm: Sequence[float], *,
                            cartilage_mask: np.ndarray | None = None, maps: Mapping[str, np.ndarray] | None = None,
                            depth: np.ndarray | None = None, crop: bool = True, long_axis: int = 1,
                            mediolateral_axis: int = 2, joint_end: str = "auto",
                            radius_mm: float = PAPER_CYLINDER_RADIUS_MM, smoothing_sigma_mm: float = 0.0,
                            **projection_options) -> BoneSurfaceProjection:
    """Crop the shaft, mesh the bone, bone shape, and project the cartilage (paper 001, "Bone surface projection").

    Composes :func:`crop_shaft` (``crop=True``; False for the patella), :func:`mesh_from_mask`,
    :func:`mask_centroid_mm` + :func:`bone_shape` and, with ``cartilage_mask``,
    :func:`project_cartilage_to_bone` (extra keyword arguments go to it).

    Returns
    -------
    BoneSurfaceProjection
    """
    bone, spacing = _check_mask_and_spacing(bone_mask, spacing_mm, "bone surface projection")
    if crop:
        bone = crop_shaft(bone, spacing, long_axis=long_axis, mediolateral_axis=mediolateral_axis,
                          joint_end=joint_end)
    mesh = mesh_from_mask(bone, spacing, smoothing_sigma_mm=smoothing_sigma_mm)
    centroid = mask_centroid_mm(bone, spacing)
    projection = None
    if cartilage_mask is not None:
        projection = project_cartilage_to_bone(mesh, cartilage_mask, spacing, maps=maps, depth=depth,
                                               radius_mm=radius_mm, **projection_options)
    return BoneSurfaceProjection(mesh=mesh, centroid_mm=centroid, bone_shape_mm=bone_shape(mesh, centroid),
                                 cartilage=projection)
