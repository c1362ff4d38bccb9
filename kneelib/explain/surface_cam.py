"""Grad-CAM of a spherical map carried back to the bone surface, and scored against planted truth.

Paper 001, Fig. 5: "We then leveraged the invertible property of our spherical transformation
method to generate articular surface importance heat maps"; Methods: the DL-guided thickness is
"weight averaging of the cartilage thickness with the scaled values of Grad-CAM as weights".

- :func:`cam_on_surface`: a Grad-CAM on the network's feature grid, upsampled to the spherical
  grid (:func:`kneelib.explain.gradcam.upsample_cams`, the one upsampler) and sampled at every
  vertex by the inverse spherical map
  (:meth:`kneelib.qmri.biomarkers.BoneBiomarkers.values_from_map`); vertices outside the map's
  elevation range get NaN.
- :func:`weighted_average`: the DL-guided average of a per-vertex value with the surface
  Grad-CAM as weights (over vertices where both exist).
- :func:`compartment_averages`: the classical lateral and medial averages (vertices on either
  side of the bone's centroid along the patient's right-left direction; medial is towards the
  left for a right knee).
- :func:`surface_pointing` and :func:`region_overlap`: the Grad-CAM peak and a significant SPM
  region against a planted region on the surface, each with its chance level.
"""
from __future__ import annotations

import numpy as np

from kneelib.explain.gradcam import upsample_cams

__all__ = ["cam_on_surface", "weighted_average", "compartment_averages", "surface_pointing", "region_overlap"]


def cam_on_surface(bone, cam: np.ndarray, grid=None) -> np.ndarray:
    """Per-vertex Grad-CAM of one bone (non-negative; NaN off the map)."""
    from kneelib.qmri.spherical import PAPER_GRID

    grid = grid if grid is not None else PAPER_GRID
    full = upsample_cams(np.asarray(cam, np.float32)[None], grid.shape)[0]
    values = bone.values_from_map(full, grid, order=1)
    return np.where(np.isfinite(values), np.maximum(values, 0.0), np.nan)


def weighted_average(values, weights) -> float:
    """``sum(w v) / sum(w)`` over vertices with both finite and ``w > 0`` (NaN when there are none)."""
    values, weights = np.asarray(values, float), np.asarray(weights, float)
    use = np.isfinite(values) & np.isfinite(weights) & (weights > 0)
    return float(np.sum(weights[use] * values[use]) / np.sum(weights[use])) if use.any() else float("nan")


def compartment_averages(bone, values, right) -> tuple[float, float]:
    """(lateral, medial) mean of a per-vertex value of a RIGHT knee's bone (NaN where empty)."""
    values = np.asarray(values, float)
    side = (np.asarray(bone.vertices, float) - np.asarray(bone.centroid_mm, float)) @ np.asarray(right, float)
    finite = np.isfinite(values)
    lateral, medial = finite & (side > 0), finite & (side <= 0)
    mean = lambda m: float(values[m].mean()) if m.any() else float("nan")
    return mean(lateral), mean(medial)


def surface_pointing(cam_values, in_region, candidates=None) -> dict:
    """Does the surface Grad-CAM peak fall in the planted region? With the chance of a random vertex.

    Parameters
    ----------
    cam_values : ndarray (n_vertices,)
    in_region : ndarray of bool (n_vertices,)
        Vertices of the planted region (e.g. within a few mm of a focal cartilage loss).
    candidates : ndarray of bool, optional
        Vertices the peak may lie on (e.g. the articular ones); default where the CAM is finite.

    Returns
    -------
    dict
        ``hit`` (bool, or None for an empty or all-zero map), ``chance`` (share of candidate
        vertices in the region), ``peak`` (vertex index or -1).
    """
    cam = np.asarray(cam_values, float)
    region = np.asarray(in_region, bool)
    candidates = np.isfinite(cam) if candidates is None else (np.asarray(candidates, bool) & np.isfinite(cam))
    if not candidates.any():
        return {"hit": None, "chance": float("nan"), "peak": -1}
    chance = float(region[candidates].mean())
    masked = np.where(candidates, cam, -np.inf)
    if not np.max(masked) > 0:
        return {"hit": None, "chance": chance, "peak": -1}
    peak = int(np.argmax(masked))
    return {"hit": bool(region[peak]), "chance": chance, "peak": peak}


def region_overlap(found, truth, candidates=None) -> dict:
    """Overlap of a found vertex set (e.g. significant SPM vertices) with a planted one.

    Returns ``dice``, ``precision`` (share of found vertices in the truth), ``recall``, ``chance``
    (the precision expected of a found set placed at random: the truth's share of candidates),
    ``n_found``, ``n_truth``.
    """
    found, truth = np.asarray(found, bool), np.asarray(truth, bool)
    candidates = np.ones_like(found) if candidates is None else np.asarray(candidates, bool)
    found, truth = found & candidates, truth & candidates
    both = int((found & truth).sum())
    n_found, n_truth = int(found.sum()), int(truth.sum())
    return {"dice": 2 * both / (n_found + n_truth) if n_found + n_truth else float("nan"),
            "precision": both / n_found if n_found else float("nan"),
            "recall": both / n_truth if n_truth else float("nan"),
            "chance": n_truth / int(candidates.sum()) if candidates.any() else float("nan"),
            "n_found": n_found, "n_truth": n_truth}
