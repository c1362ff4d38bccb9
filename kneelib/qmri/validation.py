"""Checks of the thickness and T2 stages against the synthetic ground truth (issue 11, steps 4-5).

Paper 001 (Morales et al.), Methods "Morphometry" and "Relaxometry" define the measurements; this
module measures their error on synthetic knees whose cartilage the generator planted.

What "known" is
---------------
*Thickness.* The generator (``kneelib.synth.anatomy``) builds each cartilage as the voxels whose
distance from the bone surface is below a per-voxel cover thickness: the real template's
thickness pattern, scaled per region so that the region's mean equals the planted
``cartilage_thickness_mm_<region>`` of ``ground_truth/knees.csv`` (regions FM, FL, TR on the
femur, TM, TL on the tibia, P on the patella; "before focal loss"). The known thickness here is
that planted regional mean, not a measurement on the ground-truth label volume, because the
label volume is written on the acquisition grid (0.36 x 0.36 x 0.7 mm for the OAI DESS, 2.2 x 2.2
x 4.7 mm at ``smoke``): a measurement on it carries the very discretisation error being measured,
and no finer label grid is written. Known per cartilage (:func:`known_thickness_from_truth`):
femoral = the mean of FM, FL and TR (the regions' areas are not written; the three differ by about
0.2 mm, so the equal weighting is uncertain by about 0.1 mm), tibial = the mean of TM and TL
(each also compared on its own, the truth labels split medial and lateral), patellar = P. Focal
cartilage loss thins a region below its planted mean; :func:`thickness_errors` reports the
knee's largest loss fraction beside each row so a table can exclude such knees.

*T2.* The generator plants ``T2(d) = T2_deep + (T2_sup - T2_deep) d^1.5 + elevation_region`` at
normalised depth ``d`` (0 at the bone, 1 at the joint; ``kneelib.synth.tissue.cartilage_t2_ms``).
The known layer T2 (:func:`planted_layer_t2`) is that profile averaged over ``d`` in [0, 0.5]
(deep), (0.5, 1] (superficial) and [0, 1] (total), uniform in depth (a cartilage of constant
thickness), plus the region's elevation (femoral: mean of FM, FL, TR; tibial: TM, TL).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from kneelib.qmri import QmriInputError
from kneelib.qmri.biomarkers import BONES, CARTILAGE_OF, anatomical_directions, structure_masks
from kneelib.qmri.relaxometry import cartilage_depth, layer_t2
from kneelib.qmri.thickness import thickness_along_normals, thickness_per_slice

__all__ = ["REGIONS_OF", "known_thickness_from_truth", "planted_layer_t2", "thickness_errors", "t2_errors",
           "median_absolute_errors"]

#: Generator regions (``kneelib.synth.spec.CARTILAGE_REGIONS``) of each cartilage.
REGIONS_OF: dict[str, tuple[str, ...]] = {"femoral_cartilage": ("FM", "FL", "TR"), "tibial_cartilage": ("TM", "TL"),
                                          "patellar_cartilage": ("P",)}


def _region_mean(row: Mapping, prefix: str, cartilage: str) -> float:
    try:
        return float(np.mean([float(row[f"{prefix}{r}"]) for r in REGIONS_OF[cartilage]]))
    except KeyError as error:
        raise QmriInputError(f"the truth row lacks {error.args[0]!r} (a knees.csv row of a generated cohort?)",
                             what="ground truth") from None


def known_thickness_from_truth(row: Mapping) -> dict[str, float]:
    """Planted mean thickness (mm) per cartilage from one ``ground_truth/knees.csv`` row (module doc)."""
    return {c: _region_mean(row, "cartilage_thickness_mm_", c) for c in REGIONS_OF}


def planted_layer_t2(elevation_ms: float = 0.0) -> dict[str, float]:
    """Deep, superficial and total T2 (ms) of the generator's depth profile plus an elevation (module doc)."""
    from kneelib.synth.tissue import CARTILAGE_T2_DEEP_MS as deep, CARTILAGE_T2_SUPERFICIAL_MS as sup

    rise = sup - deep
    # mean of d^1.5 over [0, 0.5], (0.5, 1] and [0, 1]
    m_deep = 0.5 ** 1.5 / 2.5
    m_sup = (1 - 0.5 ** 2.5) / (2.5 * 0.5)
    return {"deep": deep + rise * m_deep + elevation_ms, "superficial": deep + rise * m_sup + elevation_ms,
            "total": deep + rise / 2.5 + elevation_ms}


def thickness_errors(labels, spacing_mm: Sequence[float], known_mm: Mapping[str, float], *, codes="tissue",
                     affine=None, knee: str = "", max_loss_fraction: float = float("nan")) -> pd.DataFrame:
    """Per cartilage: per-slice and along-normals thickness of a label volume against the known value.

    Parameters
    ----------
    labels, codes, affine
        As :func:`kneelib.qmri.biomarkers.extract_knee_biomarkers` (truth or segmentation).
    spacing_mm : sequence of 3 float
    known_mm : mapping
        Known thickness per cartilage (:func:`known_thickness_from_truth`).
    knee : str
        Identifier written in the ``knee`` column.
    max_loss_fraction : float
        The knee's largest planted focal loss (written in the ``max_loss_fraction`` column).

    Returns
    -------
    pandas.DataFrame
        ``knee, cartilage, known_mm, per_slice_mm`` (mean of the skeleton values: the paper's
        method), ``normals_mm`` (mean along the bone normals, :func:`kneelib.qmri.thickness.
        thickness_along_normals`), ``error_per_slice_mm``, ``error_normals_mm`` (measured minus
        known), ``max_loss_fraction``.
    """
    masks = structure_masks(labels, codes)
    spacing = np.asarray(spacing_mm, dtype=float)
    ml_axis = int(np.argmax(np.abs(anatomical_directions(affine, spacing)["right"])))
    rows = []
    for bone in BONES:
        name = CARTILAGE_OF[bone]
        if name not in known_mm:
            continue
        cartilage = masks[name] & ~masks[bone]
        if not cartilage.any():
            raise QmriInputError(f"no {name} voxels", what="thickness validation")
        per_slice = thickness_per_slice(cartilage, spacing, slice_axis=ml_axis).values_mm
        normals = thickness_along_normals(cartilage, masks[bone], spacing).thickness_mm
        normals = normals[np.isfinite(normals)]
        measured_slice = float(per_slice.mean()) if per_slice.size else np.nan
        measured_normals = float(normals.mean()) if normals.size else np.nan
        known = float(known_mm[name])
        rows.append({"knee": knee, "cartilage": name, "known_mm": known, "per_slice_mm": measured_slice,
                     "normals_mm": measured_normals, "error_per_slice_mm": measured_slice - known,
                     "error_normals_mm": measured_normals - known, "max_loss_fraction": max_loss_fraction})
    return pd.DataFrame(rows)


def t2_errors(t2_ms: np.ndarray, labels, spacing_mm: Sequence[float], elevation_ms: Mapping[str, float], *,
              codes="tissue", valid=None, knee: str = "") -> pd.DataFrame:
    """Per cartilage and layer: fitted T2 (a map on the label grid) against the planted layer T2.

    Parameters
    ----------
    t2_ms : ndarray
        T2 map on the label grid (:attr:`kneelib.qmri.relaxometry.T2Fit.t2_ms`).
    labels, codes, spacing_mm
        The label volume it belongs to.
    elevation_ms : mapping
        Planted elevation per cartilage (:func:`kneelib.qmri.validation` module doc; e.g. the
        mean of ``cartilage_t2_elevation_ms_<region>`` over the cartilage's regions).
    valid : ndarray of bool, optional
        Voxels whose fit is usable (e.g. converged and covered by the MSME).

    Returns
    -------
    pandas.DataFrame
        ``knee, cartilage, layer, planted_ms, fitted_ms, error_ms, n_voxels``.
    """
    masks = structure_masks(labels, codes)
    t2 = np.asarray(t2_ms, dtype=float)
    if t2.shape != next(iter(masks.values())).shape:
        raise QmriInputError(f"T2 map shape {t2.shape} is not the label grid's", what="T2 validation")
    rows = []
    for bone in BONES:
        name = CARTILAGE_OF[bone]
        if name not in elevation_ms:
            continue
        cartilage = masks[name] & ~masks[bone]
        if not cartilage.any():
            continue
        depth = cartilage_depth(cartilage, masks[bone], spacing_mm)
        fitted = layer_t2(t2, cartilage, depth, valid=valid)
        planted = planted_layer_t2(float(elevation_ms[name]))
        for layer, value, n in (("deep", fitted.deep_ms, fitted.n_deep),
                                ("superficial", fitted.superficial_ms, fitted.n_superficial),
                                ("total", fitted.total_ms, fitted.n_total)):
            rows.append({"knee": knee, "cartilage": name, "layer": layer, "planted_ms": planted[layer],
                         "fitted_ms": value, "error_ms": value - planted[layer], "n_voxels": n})
    return pd.DataFrame(rows)


def elevation_from_truth(row: Mapping) -> dict[str, float]:
    """Planted T2 elevation (ms) per cartilage from one ``knees.csv`` row: the mean over its regions."""
    return {c: _region_mean(row, "cartilage_t2_elevation_ms_", c) for c in REGIONS_OF}


__all__.append("elevation_from_truth")


def median_absolute_errors(table: pd.DataFrame, columns: Sequence[str], by: Sequence[str] = ("cartilage",)) -> pd.DataFrame:
    """Median absolute error of each column per group (e.g. per cartilage), with the number of knees."""
    grouped = table.groupby(list(by))
    out = grouped[list(columns)].agg(lambda v: float(np.nanmedian(np.abs(v))))
    out["n_knees"] = grouped.size()
    return out.reset_index()
