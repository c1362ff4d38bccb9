"""Per-knee qMRI biomarker extraction of paper 001, with a content-addressed cache.

Paper 001 (Morales et al.), Methods: "Morphometry" (cartilage thickness per sagittal slice,
bone shape), "Relaxometry" (cartilage T2, deep / superficial / total), "Bone surface projection"
(meshes, shaft crop, cylinder of 0.729 mm along each bone normal) and "Spherical transformation"
(224 x 224 maps). :func:`extract_knee_biomarkers` composes the stage functions of
:mod:`kneelib.qmri.thickness`, :mod:`kneelib.qmri.relaxometry`, :mod:`kneelib.qmri.surface` and
:mod:`kneelib.qmri.spherical` for ONE knee (no global state), so :func:`extract_many` runs knees in
parallel through :func:`kneelib.executor.map_tasks` (joblib, or a dask cluster);
:func:`cached_knee_biomarkers` keeps each knee's result as one ``.npz`` under a key of the input
bytes, the parameters and :data:`CODE_VERSION` (written to a temporary name, then renamed), for the
chronic-pain chapter. The entry stores what the chapters need at the precision they need it
(:data:`STORED_DTYPES`: spherical maps, per-vertex values and vertex normals as float16, faces as
16-bit indices, no vertex angles, which are derived again from the vertices; about 1.2 MB a knee
instead of 3.0; a value keeps ~3.5 significant digits, 0.016 mm of a 50 mm bone
shape, 0.03 ms of a 90 ms T2, far below the measurements' own error) and is read back as float32;
a knee just computed is returned as read back, so it equals the same knee from the cache.

Per bone (femur, tibia, patella) with its cartilage:

- thickness per sagittal slice (:func:`kneelib.qmri.thickness.thickness_per_slice`; the slice axis
  is the array axis nearest the patient's left-right direction). The skeleton values are spread to
  every cartilage pixel of the slice (each takes its nearest skeleton pixel's value) and this dense
  map is what the bone-surface cylinders average ("the calculated cartilage thickness of the
  overlying cartilage was projected to each perpendicular point"); the cylinder's own thickness
  (cartilage volume / cross-section) is kept as ``thickness_normal``;
- with MSME echoes on the label grid (:func:`kneelib.qmri.alignment.align_msme_to_dess`) the
  vectorised Levenberg-Marquardt T2 fit over the cartilage, deep / superficial halves from
  :func:`kneelib.qmri.relaxometry.cartilage_depth`, the compartment means and the per-vertex
  ``t2_deep``, ``t2_superficial``, ``t2_total``;
- bone shape, the surface values and their 224 x 224 spherical maps about the bone centroid, with
  the vertices' (theta, phi) kept for the inverse map (:meth:`BoneBiomarkers.values_from_map`).

Spherical frame (:func:`bone_frames`): z from the articular surface towards the rest of the bone
(superior for the femur, inferior for the tibia, anterior for the patella, whose articular face
looks posterior), so the paper's phi range (-pi/2 to pi/8) centres the cartilage; x anterior for
femur and tibia (the theta seam lies posterior), superior for the patella. Directions come from
the volume's RAS affine; without one the array axes are taken as RAS.
"""
from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from scipy import ndimage

from kneelib.qmri import QmriInputError
from kneelib.qmri.relaxometry import cartilage_depth, fit_t2_monoexponential, layer_t2
from kneelib.qmri.spherical import (PAPER_GRID, SphericalGrid, frame_from_axes, spherical_coordinates,
                                    spherical_maps, surface_values_from_map)
from kneelib.qmri.surface import PAPER_CYLINDER_RADIUS_MM, bone_surface_projection
from kneelib.qmri.thickness import thickness_per_slice

__all__ = [
    "CODE_VERSION", "BONES", "CARTILAGE_OF", "MAP_NAMES", "LABEL_CODES", "BiomarkerOptions", "BoneBiomarkers",
    "KneeBiomarkers", "structure_masks", "anatomical_directions", "bone_frames", "extract_knee_biomarkers",
    "biomarker_cache_key", "save_biomarkers", "load_biomarkers", "cached_knee_biomarkers", "extract_many",
]

#: Bump when the output for the same input changes (part of the cache key).
CODE_VERSION = "qmri-biomarkers-5"
#: Precision of what a cache entry stores (read back as float32); fields not named keep theirs.
STORED_DTYPES: dict[str, type] = {"maps": np.float16, "normals": np.float16, "values": np.float16}
#: Fields a cache entry does not store: derived again from the float32 vertices, the centroid and
#: the frame on reading (:func:`spherical_coordinates`), exactly as :func:`extract_knee_biomarkers` does.
DERIVED_FIELDS: tuple[str, ...] = ("theta", "phi", "rho")

BONES: tuple[str, ...] = ("femur", "tibia", "patella")
CARTILAGE_OF: dict[str, str] = {"femur": "femoral_cartilage", "tibia": "tibial_cartilage",
                                "patella": "patellar_cartilage"}
#: Per-vertex values and spherical maps of each bone.
MAP_NAMES: tuple[str, ...] = ("bone_shape", "thickness", "thickness_normal", "t2_deep", "t2_superficial", "t2_total")


def _tissue_codes() -> dict[str, tuple[int, ...]]:
    from kneelib.models.segmentation import TISSUES_OF_CLASS
    from kneelib.synth.spec import TISSUE_LABELS
    return {name: tuple(TISSUE_LABELS[t] for t in TISSUES_OF_CLASS[name])
            for name in (*BONES, *CARTILAGE_OF.values())}


#: Label codes of the six structures in the label conventions met in this project.
LABEL_CODES: dict[str, dict[str, tuple[int, ...]]] = {
    # kneelib.synth.spec.TISSUE_LABELS (the synthetic ground truth)
    "tissue": _tissue_codes(),
    # kneelib.models.segmentation: the bone network's classes + 10 * the cartilage network's
    # (see structure_masks: a pair of class volumes is combined as bone + 10 * cartilage)
    "network": {"femur": (1,), "tibia": (2,), "patella": (3,), "femoral_cartilage": (10,),
                "tibial_cartilage": (20,), "patellar_cartilage": (30,)},
    # pymskt's SAG_3D_DESS segmentation (SOURCE.md of pymskt_knee_mri)
    "pymskt": {"femoral_cartilage": (1,), "tibial_cartilage": (2, 3), "patellar_cartilage": (4,),
               "femur": (5,), "tibia": (6,), "patella": (7,)},
}


def structure_masks(labels, codes: str | Mapping[str, Sequence[int]] = "tissue") -> dict[str, np.ndarray]:
    """Boolean masks of femur, tibia, patella and their cartilages from a label volume.

    Parameters
    ----------
    labels : ndarray of int, 3-D, or (bone_classes, cartilage_classes)
        One label volume, or with ``codes="network"`` the pair of class volumes of
        :mod:`kneelib.models.segmentation` (bone network: 1 femur, 2 tibia, 3 patella; cartilage
        network: 1 femoral, 2 tibial, 3 patellar cartilage). Where a voxel is both bone and
        cartilage, cartilage wins (the masks are disjoint).
    codes : {"tissue", "network", "pymskt"} or mapping
        :data:`LABEL_CODES` key, or ``{structure: codes}`` for the six structures.

    Raises
    ------
    QmriInputError
        Unknown convention, a structure missing from the mapping, non-integer labels, a pair of
        volumes of different shapes.
    """
    if isinstance(codes, str):
        if codes not in LABEL_CODES:
            raise QmriInputError(f"unknown label convention {codes!r}; expected one of {sorted(LABEL_CODES)} "
                                 "or a mapping", what="label codes")
        convention, table = codes, LABEL_CODES[codes]
    else:
        convention, table = "mapping", {k: tuple(int(c) for c in v) for k, v in codes.items()}
    missing = [s for s in (*BONES, *CARTILAGE_OF.values()) if s not in table]
    if missing:
        raise QmriInputError(f"the label mapping lacks {missing}", what="label codes")
    if isinstance(labels, (tuple, list)):
        if convention != "network" or len(labels) != 2:
            raise QmriInputError("a pair of label volumes is the (bone, cartilage) output of the networks: use "
                                 "codes='network'", what="labels")
        bone, cartilage = (np.asarray(a) for a in labels)
        if bone.shape != cartilage.shape:
            raise QmriInputError(f"bone classes {bone.shape} and cartilage classes {cartilage.shape} differ in "
                                 "shape", what="labels")
        cartilage = np.where(cartilage <= 3, cartilage, 0)  # menisci (4) are not used here
        labels = np.where(cartilage > 0, 10 * cartilage.astype(np.int64), bone.astype(np.int64))
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise QmriInputError(f"needs a 3-D label volume, got shape {labels.shape}", what="labels")
    if labels.dtype.kind not in "iub":
        raise QmriInputError(f"labels must be integer codes, got dtype {labels.dtype}", what="labels")
    return {name: np.isin(labels, table[name]) for name in (*BONES, *CARTILAGE_OF.values())}


def anatomical_directions(affine: np.ndarray | None, spacing_mm: Sequence[float]) -> dict[str, np.ndarray]:
    """Unit vectors of the patient's right, anterior and superior directions in array-mm space.

    Array-mm space: ``index * spacing`` per axis (the frame of :mod:`kneelib.qmri.surface`).
    ``affine`` is a :class:`kneelib.data.dicom.Volume`'s RAS voxel-to-world matrix; None means the
    array axes are R, A, S.
    """
    spacing = np.asarray(spacing_mm, dtype=float)
    if affine is None:
        return {"right": np.array([1.0, 0, 0]), "anterior": np.array([0, 1.0, 0]), "superior": np.array([0, 0, 1.0])}
    linear = np.asarray(affine, dtype=float)[:3, :3]
    out = {}
    for name, world in (("right", [1.0, 0, 0]), ("anterior", [0, 1.0, 0]), ("superior", [0, 0, 1.0])):
        index = np.linalg.solve(linear, np.asarray(world))  # index steps per mm of world motion
        vector = index * spacing
        out[name] = vector / np.linalg.norm(vector)
    return out


def bone_frames(directions: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Spherical frame (rows x, y, z) of each bone; z from the articular surface into the bone (module doc)."""
    r, a, s = (np.asarray(directions[k]) for k in ("right", "anterior", "superior"))
    return {"femur": frame_from_axes(s, a), "tibia": frame_from_axes(-s, a), "patella": frame_from_axes(a, s)}


@dataclass(frozen=True)
class BiomarkerOptions:
    """Parameters of the extraction (all part of the cache key).

    Attributes
    ----------
    radius_mm : float
        Projection cylinder radius (paper: 0.729 mm).
    map_method : str
        ``griddata`` method of the spherical maps ("cubic": the paper's bicubic interpolation).
    t2_range_ms : (float, float)
        Plausible T2; fits outside are not used.
    t2_statistic : str
        "mean" (the paper's average) or "median" for the compartment T2.
    smoothing_sigma_mm : float
        Mask smoothing before marching cubes (0: the binary mask, as the paper).
    """

    radius_mm: float = PAPER_CYLINDER_RADIUS_MM
    map_method: str = "cubic"
    t2_range_ms: tuple[float, float] = (1.0, 200.0)
    t2_statistic: str = "mean"
    smoothing_sigma_mm: float = 0.0
    grid: SphericalGrid = PAPER_GRID


@dataclass(frozen=True)
class BoneBiomarkers:
    """Biomarkers of one bone (paper 001, Figs. 3 and 4).

    Attributes
    ----------
    bone : str
    vertices, faces, normals : ndarray
        The (shaft-cropped) bone surface in array-mm space (:class:`kneelib.qmri.surface.SurfaceMesh`).
    centroid_mm : ndarray (3,)
    frame : ndarray (3, 3)
        Rows x, y, z of the spherical frame.
    theta, phi, rho : ndarray (n_vertices,)
        Spherical coordinates of the vertices about the centroid (the inverse map uses them).
    articular : ndarray of bool (n_vertices,)
        Cartilage in the vertex's cylinder.
    vertex_values : dict of str to ndarray (n_vertices,)
        :data:`MAP_NAMES` (NaN off the cartilage; T2 NaN without echoes).
    maps : dict of str to ndarray :attr:`SphericalGrid.shape`
        Spherical maps of :attr:`vertex_values` (NaN where no value).
    slice_thickness_mean_mm, slice_thickness_median_mm : ndarray
        Per sagittal slice (paper's "Morphometry"), NaN for slices without this cartilage.
    summary : dict of str to float
        ``thickness_mean_mm`` / ``thickness_median_mm`` (all skeleton values), ``t2_deep_ms``,
        ``t2_superficial_ms``, ``t2_total_ms`` (compartment T2), ``n_cartilage_voxels``.
    """

    bone: str
    vertices: np.ndarray
    faces: np.ndarray
    normals: np.ndarray
    centroid_mm: np.ndarray
    frame: np.ndarray
    theta: np.ndarray
    phi: np.ndarray
    rho: np.ndarray
    articular: np.ndarray
    vertex_values: dict = field(default_factory=dict)
    maps: dict = field(default_factory=dict)
    slice_thickness_mean_mm: np.ndarray = field(default_factory=lambda: np.zeros(0))
    slice_thickness_median_mm: np.ndarray = field(default_factory=lambda: np.zeros(0))
    summary: dict = field(default_factory=dict)

    def values_from_map(self, image: np.ndarray, grid: SphericalGrid = PAPER_GRID, order: int = 3) -> np.ndarray:
        """Inverse spherical map: a 2-D map (e.g. a Grad-CAM) back onto this bone's vertices (paper 001, Fig. 5)."""
        return surface_values_from_map(image, self.theta, self.phi, grid, order=order)

    def surface_mean(self, name: str) -> float:
        """Mean of a per-vertex value over the vertices that have one (the "original average" of Fig. S3)."""
        values = self.vertex_values[name]
        finite = np.isfinite(values)
        return float(values[finite].mean()) if finite.any() else float("nan")

    def map_mean(self, name: str) -> float:
        """Mean of a spherical map over its valued pixels (the "spherical average" of Fig. S3)."""
        image = self.maps[name]
        finite = np.isfinite(image)
        return float(image[finite].mean()) if finite.any() else float("nan")


@dataclass(frozen=True)
class KneeBiomarkers:
    """All bones of one knee, with the key it is cached under."""

    bones: dict
    spacing_mm: np.ndarray
    t2_fitted: bool
    key: str = ""
    code_version: str = CODE_VERSION


def _dense_slice_thickness(cartilage: np.ndarray, skeleton_map: np.ndarray, axis: int, spacing: np.ndarray):
    """Each cartilage pixel takes the skeleton thickness of the nearest skeleton pixel of its slice."""
    dense = np.full(cartilage.shape, np.nan)
    sampling = np.delete(spacing, axis)
    for k in np.flatnonzero(cartilage.any(axis=tuple(a for a in range(3) if a != axis))):
        index = [slice(None)] * 3
        index[axis] = k
        index = tuple(index)
        values = skeleton_map[index]
        skeleton = np.isfinite(values)
        if not skeleton.any():
            continue
        _, nearest = ndimage.distance_transform_edt(~skeleton, sampling=sampling, return_indices=True)
        layer = values[tuple(nearest)]
        dense[index] = np.where(cartilage[index], layer, np.nan)
    return dense


def _check_echoes(echoes, echo_times_ms, shape):
    if echoes is None:
        return None, None
    echoes = np.asarray(echoes)
    if echoes.ndim != 4 or echoes.shape[:3] != tuple(shape):
        raise QmriInputError(f"echoes must be (label grid) + (n_echoes,) = {tuple(shape)} + (n,), got "
                             f"{echoes.shape}; align them first (kneelib.qmri.alignment.align_msme_to_dess)",
                             what="MSME echoes")
    if echo_times_ms is None or len(echo_times_ms) != echoes.shape[3]:
        raise QmriInputError(f"need one echo time per echo ({echoes.shape[3]}), got {echo_times_ms}",
                             what="MSME echoes")
    return echoes, np.asarray(echo_times_ms, dtype=float)


def extract_knee_biomarkers(labels, spacing_mm: Sequence[float], *, codes="tissue", affine=None, echoes=None,
                            echo_times_ms=None, echo_valid=None,
                            options: BiomarkerOptions = BiomarkerOptions()) -> KneeBiomarkers:
    """Thickness, bone shape, T2, surface projections and spherical maps of one knee (paper 001, Methods).

    Parameters
    ----------
    labels : ndarray of int (3-D) or pair
        Segmentation or ground truth on the DESS grid, ``(columns, rows, slices)`` as a
        :class:`kneelib.data.dicom.Volume`; see :func:`structure_masks`.
    spacing_mm : sequence of 3 float
    codes : str or mapping
        Label convention (:data:`LABEL_CODES`).
    affine : (4, 4) ndarray, optional
        The DESS volume's RAS affine (slice axis, long axis, spherical frames); default: array
        axes are R, A, S.
    echoes : ndarray, optional
        MSME echoes on the label grid, ``labels.shape + (n_echoes,)``.
    echo_times_ms : sequence of float, optional
    echo_valid : ndarray of bool, optional
        Voxels where the echoes are data (:attr:`kneelib.qmri.alignment.AlignedEchoes.covered`).
    options : BiomarkerOptions

    Returns
    -------
    KneeBiomarkers

    Raises
    ------
    QmriInputError
        Bad labels or codes, bad spacing, echoes not on the label grid, a bone missing.
    """
    masks = structure_masks(labels, codes)
    shape = next(iter(masks.values())).shape
    spacing = np.asarray(spacing_mm, dtype=float).reshape(-1)
    if spacing.size != 3 or np.any(~np.isfinite(spacing)) or np.any(spacing <= 0):
        raise QmriInputError(f"spacing_mm needs 3 positive values, got {spacing_mm}", what="biomarker extraction")
    echoes, te = _check_echoes(echoes, echo_times_ms, shape)
    directions = anatomical_directions(affine, spacing)
    axis_of = lambda d: int(np.argmax(np.abs(directions[d])))
    ml_axis, long_axis = axis_of("right"), axis_of("superior")
    if ml_axis == long_axis:
        raise QmriInputError("the left-right and superior directions fall on the same array axis", what="affine")
    frames = bone_frames(directions)

    t2_map = None
    if echoes is not None:
        cartilage_any = masks["femoral_cartilage"] | masks["tibial_cartilage"] | masks["patellar_cartilage"]
        if echo_valid is not None:
            cartilage_any &= np.asarray(echo_valid, dtype=bool)
        fit = fit_t2_monoexponential(echoes, te, mask=cartilage_any, t2_range_ms=options.t2_range_ms)
        t2_map = np.where(fit.converged, fit.t2_ms, np.nan)

    bones = {}
    for bone in BONES:
        bone_mask, cartilage = masks[bone], masks[CARTILAGE_OF[bone]]
        if not bone_mask.any():
            raise QmriInputError(f"no {bone} voxels in the label volume", what="biomarker extraction")
        cartilage &= ~bone_mask
        per_slice = thickness_per_slice(cartilage, spacing, slice_axis=ml_axis)
        dense = _dense_slice_thickness(cartilage, per_slice.thickness_map_mm, ml_axis, spacing)
        maps = {"thickness": dense}
        depth = None
        summary = {"thickness_mean_mm": float(np.mean(per_slice.values_mm)) if per_slice.values_mm.size else np.nan,
                   "thickness_median_mm": float(np.median(per_slice.values_mm)) if per_slice.values_mm.size else np.nan,
                   "n_cartilage_voxels": float(cartilage.sum())}
        if t2_map is not None and cartilage.any():
            depth = cartilage_depth(cartilage, bone_mask, spacing)
            maps["t2"] = t2_map
            layers = layer_t2(t2_map, cartilage, depth, statistic=options.t2_statistic)
            summary.update(t2_deep_ms=layers.deep_ms, t2_superficial_ms=layers.superficial_ms,
                           t2_total_ms=layers.total_ms)
        projection = bone_surface_projection(
            bone_mask, spacing, cartilage_mask=cartilage if cartilage.any() else None, maps=maps, depth=depth,
            crop=bone != "patella", long_axis=long_axis, mediolateral_axis=ml_axis,
            radius_mm=options.radius_mm, smoothing_sigma_mm=options.smoothing_sigma_mm)
        mesh, n = projection.mesh, projection.mesh.n_vertices
        nan = np.full(n, np.nan)
        cart = projection.cartilage
        values = {"bone_shape": projection.bone_shape_mm,
                  "thickness": cart.values.get("thickness", nan) if cart else nan,
                  "thickness_normal": cart.thickness_mm if cart else nan,
                  "t2_deep": cart.values.get("t2_deep", nan) if cart else nan,
                  "t2_superficial": cart.values.get("t2_superficial", nan) if cart else nan,
                  "t2_total": cart.values.get("t2", nan) if cart else nan}
        # the angles of the vertices as stored (float32), so a cache entry derives them again exactly
        vertices = mesh.vertices.astype(np.float32)
        theta, phi, rho = spherical_coordinates(vertices.astype(float), projection.centroid_mm, frames[bone])
        near_grid = (phi >= options.grid.phi_min - 0.2) & (phi <= options.grid.phi_max + 0.2)
        mapped = {name: v for name, v in values.items() if (np.isfinite(v) & near_grid).sum() >= 4}
        spherical = spherical_maps(theta, phi, mapped, options.grid, method=options.map_method)
        spherical = {name: spherical[name] if name in spherical else np.full(options.grid.shape, np.nan)
                     for name in values}
        bones[bone] = BoneBiomarkers(
            bone=bone, vertices=vertices, faces=mesh.faces.astype(np.int32),
            normals=mesh.normals.astype(np.float32), centroid_mm=projection.centroid_mm, frame=frames[bone],
            theta=theta, phi=phi, rho=rho, articular=cart.articular if cart else np.zeros(n, bool),
            vertex_values=values, maps=spherical, slice_thickness_mean_mm=per_slice.mean_mm,
            slice_thickness_median_mm=per_slice.median_mm, summary=summary)
    return KneeBiomarkers(bones=bones, spacing_mm=spacing, t2_fitted=t2_map is not None)


# ------------------------------------------------------------------------------------------ cache
def biomarker_cache_key(labels, spacing_mm, *, codes="tissue", affine=None, echoes=None, echo_times_ms=None,
                        echo_valid=None, options: BiomarkerOptions = BiomarkerOptions()) -> str:
    """SHA-256 over the input arrays' bytes (with shape and dtype), the parameters and :data:`CODE_VERSION`."""
    digest = hashlib.sha256(f"{CODE_VERSION}\n".encode())
    arrays = list(labels) if isinstance(labels, (tuple, list)) else [labels]
    for name, array in [*((f"labels{i}", a) for i, a in enumerate(arrays)), ("affine", affine), ("echoes", echoes),
                        ("echo_valid", echo_valid)]:
        digest.update(name.encode())
        if array is None:
            digest.update(b"none")
            continue
        array = np.ascontiguousarray(array)
        digest.update(f"{array.shape}{array.dtype.str}".encode())
        digest.update(array.tobytes())
    parameters = {"spacing": [float(s) for s in np.asarray(spacing_mm, float).reshape(-1)],
                  "codes": codes if isinstance(codes, str) else {k: list(v) for k, v in codes.items()},
                  "echo_times": None if echo_times_ms is None else [float(t) for t in echo_times_ms],
                  "options": repr(options)}
    digest.update(json.dumps(parameters, sort_keys=True).encode())
    return digest.hexdigest()


_ARRAY_FIELDS = ("vertices", "faces", "normals", "centroid_mm", "frame", "theta", "phi", "rho", "articular",
                 "slice_thickness_mean_mm", "slice_thickness_median_mm")


def save_biomarkers(result: KneeBiomarkers, path: str | Path) -> Path:
    """Write a :class:`KneeBiomarkers` as one ``.npz`` (temporary name, then rename: never half-written)."""
    from kneelib.cache import atomic_write

    path = Path(path)
    arrays = {"spacing_mm": result.spacing_mm, "t2_fitted": np.array(result.t2_fitted),
              "key": np.array(result.key), "code_version": np.array(result.code_version)}
    for bone, b in result.bones.items():
        for name in _ARRAY_FIELDS:
            if name in DERIVED_FIELDS:
                continue
            value = getattr(b, name)
            if name == "faces" and len(b.vertices) <= np.iinfo(np.uint16).max + 1:
                value = value.astype(np.uint16)  # vertex indices of a bone fit in 16 bits (lossless)
            arrays[f"{bone}/{name}"] = value.astype(STORED_DTYPES[name]) if name in STORED_DTYPES else value
        for name, v in b.vertex_values.items():
            arrays[f"{bone}/values/{name}"] = v.astype(STORED_DTYPES["values"])
        for name, v in b.maps.items():
            arrays[f"{bone}/maps/{name}"] = v.astype(STORED_DTYPES["maps"])
        for name, v in b.summary.items():
            arrays[f"{bone}/summary/{name}"] = np.array(float(v))
    return atomic_write(path, lambda tmp: np.savez_compressed(tmp, **arrays), suffix=".npz")


def load_biomarkers(path: str | Path) -> KneeBiomarkers:
    """Read a file of :func:`save_biomarkers` (float16 arrays come back as float32)."""
    with np.load(path, allow_pickle=False) as data:
        items = {k: data[k] for k in data.files}  # each data[k] decompresses its member: read once
    items = {k: v.astype(np.float32) if v.dtype == np.float16 else v for k, v in items.items()}
    bones = {}
    for bone in BONES:
        if f"{bone}/vertices" not in items:
            continue
        pick = lambda prefix: {k[len(prefix):]: v for k, v in items.items() if k.startswith(prefix)}
        fields = {name: items[f"{bone}/{name}"] for name in _ARRAY_FIELDS if name not in DERIVED_FIELDS}
        fields["faces"] = fields["faces"].astype(np.int32)
        fields.update(zip(DERIVED_FIELDS, spherical_coordinates(fields["vertices"].astype(float), fields["centroid_mm"],
                                                                 fields["frame"])))
        bones[bone] = BoneBiomarkers(bone=bone, vertex_values=pick(f"{bone}/values/"),
                                     maps=pick(f"{bone}/maps/"),
                                     summary={k: float(v) for k, v in pick(f"{bone}/summary/").items()}, **fields)
    return KneeBiomarkers(bones=bones, spacing_mm=items["spacing_mm"], t2_fitted=bool(items["t2_fitted"]),
                          key=str(items["key"]), code_version=str(items["code_version"]))


def cached_knee_biomarkers(labels, spacing_mm, *, cache_dir: str | Path | None = None, **kwargs) -> KneeBiomarkers:
    """:func:`extract_knee_biomarkers` served from the content-addressed cache when possible.

    The entry lives at ``cache_dir / key[:2] / key.npz`` (default
    ``kneelib.config.cache_root() / "qmri_biomarkers"``), ``key`` from :func:`biomarker_cache_key`.
    """
    from kneelib import config
    from kneelib.cache import entry_path

    key = biomarker_cache_key(labels, spacing_mm, **kwargs)
    root = Path(cache_dir) if cache_dir is not None else config.cache_root() / "qmri_biomarkers"
    path = entry_path(root, key, ".npz")
    if path.is_file():
        return load_biomarkers(path)
    result = extract_knee_biomarkers(labels, spacing_mm, **kwargs)
    result = KneeBiomarkers(bones=result.bones, spacing_mm=result.spacing_mm, t2_fitted=result.t2_fitted, key=key)
    # what the entry holds (stored precision): a knee computed now equals the same knee read later
    return load_biomarkers(save_biomarkers(result, path))


def extract_many(knees: Sequence[Mapping], *, n_jobs: int = 2, cache_dir: str | Path | None = None,
                 use_cache: bool = True, backend: str = "loky", scheduler=None,
                 progress: bool = False) -> list[KneeBiomarkers]:
    """Biomarkers of many knees in parallel (:func:`kneelib.executor.map_tasks`; one knee per task).

    Parameters
    ----------
    knees : sequence of mappings
        Keyword arguments of :func:`extract_knee_biomarkers` per knee (``labels``, ``spacing_mm``,
        optional ``codes``, ``affine``, ``echoes``, ``echo_times_ms``, ``echo_valid``, ``options``).
    n_jobs : int
        Local workers (1: in this process).
    cache_dir : path, optional
    use_cache : bool
        Through :func:`cached_knee_biomarkers` (default) or not.
    backend : str
        joblib backend ("loky" processes by default; "threading" avoids the start-up cost for a few
        small knees, the numpy/scipy work releasing the GIL only in part).
    scheduler : str, Client or cluster, optional
        A dask.distributed scheduler (default ``$KNEELIB_DASK_SCHEDULER``; none: joblib).
    progress : bool
    """
    from kneelib.executor import map_tasks

    task = (functools.partial(_cached_knee, cache_dir=None if cache_dir is None else str(cache_dir)) if use_cache
            else _extract_knee)
    return map_tasks(task, [dict(k) for k in knees], n_jobs=n_jobs, scheduler=scheduler, backend=backend,
                     progress=progress, desc="qMRI biomarkers", unit="knee")


def _cached_knee(knee: dict, cache_dir: str | None) -> KneeBiomarkers:
    return cached_knee_biomarkers(cache_dir=cache_dir, **knee)


def _extract_knee(knee: dict) -> KneeBiomarkers:
    return extract_knee_biomarkers(**knee)
