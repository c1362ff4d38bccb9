"""Point correspondence between bone surfaces of different knees (paper 001, Fig. 1 and Methods).

Paper 001, "Grad-CAM interpretation": "The vertices of a reference bone surface [...] were
mapped on all the bone surfaces in the test set using a fully automatic landmark-matching
algorithm" (curvature features, Lombaert et al.; the paper cites Coherent Point Drift and
Besl & McKay's iterative closest point). No point-set registration package (pycpd, probreg,
open3d) is installed here, so this module implements Besl & McKay's rigid ICP with scipy's
KD-tree (:func:`rigid_icp`: closest points, then the least-squares rotation by SVD, Kabsch),
started from the bones' own spherical frames (:func:`frame_coordinates`: each bone about its
centroid in its anatomical frame, so knees start roughly aligned), and carries per-vertex values
to the reference by the nearest aligned vertex (:func:`values_on_reference`). Curvature
features are not used: the synthetic knees are one template bent by smooth deformations, so
position alone pairs homologous points well; on real knees CPD with curvature would be better.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

__all__ = ["IcpResult", "Correspondence", "frame_coordinates", "rigid_icp", "correspondence_to_reference",
           "values_on_reference"]


@dataclass(frozen=True)
class IcpResult:
    """``aligned = source @ rotation.T + translation``; ``rms_mm`` the final closest-point RMS."""

    rotation: np.ndarray
    translation: np.ndarray
    rms_mm: float
    iterations: int

    def apply(self, points: np.ndarray) -> np.ndarray:
        return np.asarray(points, float) @ self.rotation.T + self.translation


def frame_coordinates(bone) -> np.ndarray:
    """A bone's vertices about its centroid in its spherical frame (rows x, y, z), ``(n, 3)`` mm."""
    return (np.asarray(bone.vertices, float) - np.asarray(bone.centroid_mm, float)) @ np.asarray(bone.frame).T


def _kabsch(source: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    cs, ct = source.mean(0), target.mean(0)
    u, _, vt = np.linalg.svd((source - cs).T @ (target - ct))
    d = np.sign(np.linalg.det(vt.T @ u.T))
    rotation = vt.T @ np.diag([1.0, 1.0, d]) @ u.T
    return rotation, ct - cs @ rotation.T


def rigid_icp(source, target, *, max_iterations: int = 50, tolerance_mm: float = 1e-4,
              max_points: int = 4000, seed: int = 0) -> IcpResult:
    """Rigid iterative closest point (Besl & McKay 1992) of ``source`` onto ``target``.

    Parameters
    ----------
    source, target : ndarray (n, 3), (m, 3)
    max_iterations : int
    tolerance_mm : float
        Stop when the RMS changes by less.
    max_points : int
        The source is subsampled (seeded) to at most this many points for speed.

    Raises
    ------
    ValueError
        Fewer than 3 points or not ``(n, 3)``.
    """
    source, target = np.asarray(source, float), np.asarray(target, float)
    for name, points in (("source", source), ("target", target)):
        if points.ndim != 2 or points.shape[1] != 3 or len(points) < 3:
            raise ValueError(f"{name} must be (n >= 3, 3) points, got {points.shape}")
    if len(source) > max_points:
        source = source[np.random.default_rng(seed).choice(len(source), max_points, replace=False)]
    tree = cKDTree(target)
    rotation, translation = np.eye(3), np.zeros(3)
    previous, rms, k = np.inf, np.inf, 0
    for k in range(1, max_iterations + 1):
        moved = source @ rotation.T + translation
        distance, nearest = tree.query(moved)
        rms = float(np.sqrt(np.mean(distance ** 2)))
        if abs(previous - rms) < tolerance_mm:
            break
        previous = rms
        rotation, translation = _kabsch(source, target[nearest])
    return IcpResult(rotation, translation, rms, k)


@dataclass(frozen=True)
class Correspondence:
    """For every reference vertex, the nearest vertex of one aligned surface (``valid``: within the limit)."""

    nearest: np.ndarray
    valid: np.ndarray
    icp: IcpResult | None

    def carry(self, values) -> np.ndarray:
        """Per-vertex ``values`` of the surface at the reference vertices (NaN where not valid)."""
        out = np.asarray(values, float)[self.nearest]
        out[~self.valid] = np.nan
        return out


def correspondence_to_reference(reference_points, points, *, align: bool = True,
                                max_distance_mm: float = 5.0) -> Correspondence:
    """Align ``points`` onto ``reference_points`` (:func:`rigid_icp`, when ``align``), then pair each
    reference vertex with the nearest aligned vertex; pairs farther than ``max_distance_mm`` are not valid."""
    reference_points, points = np.asarray(reference_points, float), np.asarray(points, float)
    icp = rigid_icp(points, reference_points) if align else None
    moved = icp.apply(points) if icp is not None else points
    distance, nearest = cKDTree(moved).query(reference_points)
    return Correspondence(nearest, distance <= max_distance_mm, icp)


def values_on_reference(reference_points, points, values, *, align: bool = True, max_distance_mm: float = 5.0):
    """Per-vertex ``values`` of one surface carried to the vertices of a reference surface.

    ``points`` (e.g. :func:`frame_coordinates` of a knee's bone) are aligned onto
    ``reference_points`` by :func:`rigid_icp` (``align``), then each reference vertex takes the
    value of the nearest aligned vertex; NaN where that vertex is farther than
    ``max_distance_mm``. Returns ``(values at the reference vertices, IcpResult or None)``.
    """
    if len(np.asarray(values)) != len(np.asarray(points)):
        raise ValueError(f"{len(np.asarray(values))} values for {len(np.asarray(points))} points")
    pairs = correspondence_to_reference(reference_points, points, align=align, max_distance_mm=max_distance_mm)
    return pairs.carry(values), pairs.icp
