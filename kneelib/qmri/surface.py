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

The cylinder test is vectorised: the cartilage voxel centres go into a :class:`scipy.spatial.cKDTree`;
balls centred along each vertex's normal collect candidate voxels, and the exact test
(``0 <= t <= max_depth_mm`` along the normal, distance from the axis ``<= radius_mm``) keeps the
voxels in the cylinder. Only the first contiguous run of cartilage along the normal counts (a
ray leaving the cartilage and meeting it again across a notch stops at the gap), and a vertex is
*articular* when that run starts within ``max_start_mm`` of the bone surface.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree
from skimage import measure

from kneelib.qmri import QmriInputError

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


def _check_mask(mask, spacing_mm, what: str) -> tuple[np.ndarray, np.ndarray]:
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise QmriInputError(f"needs a 3-D mask, got shape {mask.shape}", what=what)
    spacing = np.asarray(spacing_mm, dtype=float).reshape(-1)
    if spacing.size != 3 or np.any(~np.isfinite(spacing)) or np.any(spacing <= 0):
        raise QmriInputError(f"spacing_mm needs 3 positive values (one per axis), got {spacing_mm}", what=what)
    return mask.astype(bool), spacing


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
    mask, spacing = _check_mask(bone_mask, spacing_mm, "shaft crop")
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
    mask, spacing = _check_mask(mask, spacing_mm, "centroid")
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
    mask, spacing = _check_mask(mask, spacing_mm, "marching cubes")
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


def _cylinder_pairs(tree: cKDTree, points: np.ndarray, origins: np.ndarray, normals: np.ndarray,
                    radius: float, max_depth: float, step: float):
    """(vertex row, voxel index, t) of every voxel centre in each vertex's cylinder (deduplicated)."""
    ball = float(np.hypot(radius, step / 2.0)) * (1 + 1e-9)
    offsets = np.arange(step / 2.0, max_depth + step / 2.0, step)
    rows_all, cols_all = [], []
    for offset in offsets:  # balls along the axis cover the cylinder [0, max_depth] x radius
        hits = tree.query_ball_point(origins + offset * normals, r=ball)
        lengths = np.fromiter((len(h) for h in hits), dtype=np.int64, count=len(hits))
        if lengths.sum() == 0:
            continue
        rows_all.append(np.repeat(np.arange(len(hits)), lengths))
        cols_all.append(np.concatenate([np.asarray(h, dtype=np.int64) for h in hits if h]))
    if not rows_all:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0)
    rows, cols = np.concatenate(rows_all), np.concatenate(cols_all)
    key = np.unique(rows * len(points) + cols)
    rows, cols = key // len(points), key % len(points)
    d = points[cols] - origins[rows]
    t = np.einsum("ij,ij->i", d, normals[rows])
    perp2 = np.einsum("ij,ij->i", d, d) - t * t
    inside = (t >= 0) & (t <= max_depth) & (perp2 <= radius * radius)
    return rows[inside], cols[inside], t[inside]


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
    cartilage, spacing = _check_mask(cartilage_mask, spacing_mm, "cartilage projection")
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
    n = mesh.n_vertices
    voxels = np.argwhere(cartilage)
    names = list(maps)
    layers = ("", "_deep", "_superficial") if depth is not None else ("",)
    sums = {k + s: np.zeros(n) for k in names for s in layers}
    counts = {k + s: np.zeros(n) for k in names for s in layers}
    n_voxels = np.zeros(n, dtype=np.int64)
    articular = np.zeros(n, dtype=bool)
    if voxels.size:
        points = voxels * spacing
        tree = cKDTree(points)
        # only vertices with cartilage near the start of their cylinder can be articular
        near, _ = tree.query(mesh.vertices, k=1, distance_upper_bound=start_limit + radius_mm + spacing.max())
        candidates = np.flatnonzero(np.isfinite(near))
        values_at = {k: np.asarray(maps[k], dtype=float)[tuple(voxels.T)] for k in names}
        depth_at = np.asarray(depth, dtype=float)[tuple(voxels.T)] if depth is not None else None
        step = float(min(radius_mm, spacing.min()))
        for first in range(0, candidates.size, chunk):
            verts = candidates[first:first + chunk]
            rows, cols, t = _cylinder_pairs(tree, points, mesh.vertices[verts], mesh.normals[verts],
                                            float(radius_mm), float(max_depth_mm), step)
            if rows.size == 0:
                continue
            order = np.lexsort((t, rows))
            rows, cols, t = rows[order], cols[order], t[order]
            new_row = np.r_[True, rows[1:] != rows[:-1]]
            gap = np.r_[False, np.diff(t) > gap_limit] & ~new_row
            # keep the first contiguous run: no gap yet within the row
            run = np.cumsum(gap)
            run_start = run[np.flatnonzero(new_row)]
            first_of_row = np.repeat(run_start, np.diff(np.r_[np.flatnonzero(new_row), rows.size]))
            keep = run == first_of_row
            start_t = np.repeat(t[new_row], np.diff(np.r_[np.flatnonzero(new_row), rows.size]))
            keep &= start_t <= start_limit
            rows, cols = rows[keep], cols[keep]
            vertex = verts[rows]
            np.add.at(n_voxels, vertex, 1)
            for k in names:
                for suffix in layers:
                    use = np.isfinite(values_at[k][cols])
                    if suffix == "_deep":
                        use &= depth_at[cols] <= 0.5
                    elif suffix == "_superficial":
                        use &= depth_at[cols] > 0.5
                    np.add.at(sums[k + suffix], vertex[use], values_at[k][cols][use])
                    np.add.at(counts[k + suffix], vertex[use], 1)
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
    bone, spacing = _check_mask(bone_mask, spacing_mm, "bone surface projection")
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
