"""Network-ready knee crops of paper 004 (Tiulpin & Saarakkala 2020, *Data Pre-processing*).

- :func:`prepare_knees`: bilateral radiographs -> localised 140 mm crops, plateau
  levelled, left knees mirrored, histogram clipped, resized to 310/300 of the network
  input (synthetic chapter), with approximate osteophyte sites
  (:func:`osteophyte_region_masks`) for the pointing game;
- :func:`prepare_images`: ready-made knee crops (the Chen KL PNGs) -> the same
  histogram clipping and resizing.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from kneelib.data.knee_radiographs import GRADE_TASKS

__all__ = ["PreparedKnees", "CHEN_WIDTH_PER_PLATEAU", "osteophyte_region_masks", "localised_knee_crop",
           "prepare_knees", "prepare_images"]

#: Side of a knee crop framed like the Chen et al. (2019) crops, over the distance of the
#: outer plateau margins: the plateau spans about 87 % of a real crop's width (looked at
#: on the ``train`` crops of ``chen_kl_radiographs``). The Chen crops were cut from
#: detected knee boxes and resized, so every knee fills its crop alike. Used by the
#: realism measures (:func:`kneelib.train.realism.plateau_framed_crop_mm`) and the cohort
#: chapter's crops figure (:func:`kneelib.synth.ground_truth.synthetic_knee_crops`).
CHEN_WIDTH_PER_PLATEAU = 1.15


def osteophyte_region_masks(margins_rc: dict[str, np.ndarray], out_size: int, size_mm: float = 140.0,
                            reach_mm: float = 12.0, half_width_mm: float = 10.0) -> dict[str, np.ndarray]:
    """Approximate osteophyte sites in a knee crop, from the plateau-margin landmarks.

    The synthetic cohort stores no lesion masks for the radiograph, so each OARSI site
    is approximated by a box at the joint margin: the tibial site from ``reach_mm``
    below to 2 mm above the tibial plateau margin, the femoral site from ``reach_mm``
    above to 2 mm below it (the femoral condyle margin sits just above the tibial
    one), ``half_width_mm`` either side of the margin column. The planted osteophytes
    are marginal lips at these places (femoral pointing to the joint line, tibial upwards).

    Parameters
    ----------
    margins_rc : dict
        ``"lateral"`` / ``"medial"`` -> (row, col) of the plateau margin in crop pixels.
    out_size : int
        Crop side in pixels.
    size_mm, reach_mm, half_width_mm : float
        Crop side, box height and half-width in millimetres.

    Returns
    -------
    dict
        Head name (``osteophyte_fl`` ...) -> boolean mask ``(out_size, out_size)``.
    """
    px = out_size / size_mm
    rows, cols = np.mgrid[0:out_size, 0:out_size]
    masks = {}
    for compartment, letter in (("lateral", "l"), ("medial", "m")):
        r, c = np.asarray(margins_rc[compartment], dtype=float)
        in_cols = np.abs(cols - c) <= half_width_mm * px
        masks[f"osteophyte_f{letter}"] = in_cols & (rows >= r - reach_mm * px) & (rows <= r + 2 * px)
        masks[f"osteophyte_t{letter}"] = in_cols & (rows >= r - 2 * px) & (rows <= r + reach_mm * px)
    return masks


@dataclass
class PreparedKnees:
    """Knee crops of one cohort and what the chapter needs beside them.

    Attributes
    ----------
    images : ndarray, (n, S, S) uint8
        Histogram-clipped crops (S = ``resize_for_crop(image_size)``).
    targets : ndarray, (n, 7) int
        Grades per head (-1 missing), columns in :data:`~kneelib.data.knee_radiographs.GRADE_TASKS` order.
    knees : DataFrame
        The cohort rows (with ``participant_id``, the bootstrap's subject), plus
        ``angle_deg`` and ``centre_row/col`` used for the crop.
    masks : dict
        Head -> boolean (n, S, S) approximate osteophyte sites (:func:`osteophyte_region_masks`).
    """

    images: np.ndarray
    targets: np.ndarray
    knees: pd.DataFrame
    masks: dict

    @property
    def subjects(self) -> np.ndarray:
        """Subject of every row (the cluster of the bootstrap CIs)."""
        return self.knees["participant_id"].astype(str).to_numpy()

    def subset(self, rows) -> "PreparedKnees":
        """The same knees restricted to ``rows`` (boolean mask or indices)."""
        rows = np.asarray(rows)
        index = np.flatnonzero(rows) if rows.dtype == bool else rows.astype(int)
        return PreparedKnees(self.images[index], self.targets[index], self.knees.iloc[index].reset_index(drop=True),
                             {task: mask[index] for task, mask in self.masks.items()})


def localised_knee_crop(localiser, pixels: np.ndarray, spacing_mm: float, side: str, size_mm=140.0,
                        out_size: int = 310, mirror_side: str | None = "L") -> tuple[np.ndarray, dict, dict]:
    """One knee of a bilateral radiograph: localise it and cut the plateau-levelled square crop.

    Paper 004, *Data Pre-processing*: landmarks of the knee (``localiser``, a
    :class:`kneelib.preprocess.knee_localisation.KneeLocaliser`), a ``size_mm`` square
    around the joint centre rotated so that the plateau is horizontal, the knee on
    ``mirror_side`` mirrored (:func:`kneelib.preprocess.knee_localisation.knee_crop`).
    ``size_mm`` is a number or a function of the predicted landmarks (a crop framed on the
    knee's own size).

    Returns
    -------
    crop : ndarray, (out_size, out_size) float32
        Unclipped grey values of the radiograph.
    geometry : dict
        The keyword arguments of ``knee_crop``/``crop_points`` for this knee.
    landmarks : dict
        Predicted landmark name -> (row, col) in radiograph pixels.
    """
    from kneelib.preprocess.knee_localisation import knee_crop, plateau_angle_deg

    found = localiser.predict(pixels, spacing_mm, sides=(side,))[side]
    angle = plateau_angle_deg(found["plateau_lateral"], found["plateau_medial"], side)
    if callable(size_mm):
        size_mm = size_mm(found)
    geometry = dict(centre_rc=found["joint_centre"], angle_deg=angle, side=side, pixel_spacing_mm=float(spacing_mm),
                    size_mm=float(size_mm), out_size=int(out_size), mirror_side=mirror_side)
    return knee_crop(pixels, **geometry), geometry, found


def prepare_knees(knees: pd.DataFrame, radiographs: dict, localiser, image_size: int,
                  mirror_side: str = "L", size_mm: float = 140.0, low_percentile: float = 5.0,
                  high_percentile: float = 99.0, progress: bool = True) -> PreparedKnees:
    """Localise, crop 140 mm, level the plateau, mirror, clip the histogram, resize (paper 004).

    ``size_mm`` is the side of the square crop: one value (paper 004: 140 mm) or one
    per knee (a crop framed on each knee's size, as a knee detector's box is).

    The crop is resampled straight to ``resize_for_crop(image_size)`` pixels (310 for
    the paper's 300 px network input); global contrast normalisation happens per
    image at the network input (:class:`kneelib.train.multitask.RadiographDataset`).

    Raises
    ------
    LocaliserLeakError
        If a knee's subject trained ``localiser`` (crops must come from a localiser
        that never saw the subject: see
        :func:`kneelib.preprocess.knee_localisation.localisation_split`).
    """
    from tqdm.auto import tqdm

    from kneelib.preprocess.knee_localisation import crop_points
    from kneelib.preprocess.radiograph import clip_histogram
    from kneelib.train.multitask import resize_for_crop

    localiser.check_unseen(knees["participant_id"])
    sizes_mm = np.broadcast_to(np.asarray(size_mm, dtype=float), (len(knees),))
    if not np.all(sizes_mm > 0):
        raise ValueError(f"crop sizes must be positive mm; got {sorted(set(sizes_mm[~(sizes_mm > 0)].tolist()))}")
    out_size = resize_for_crop(image_size)
    images = np.zeros((len(knees), out_size, out_size), dtype=np.uint8)
    masks = {task: np.zeros((len(knees), out_size, out_size), dtype=bool)
             for task in GRADE_TASKS if task.startswith("osteophyte")}
    centres, angles = [], []
    for i, row in enumerate(tqdm(list(knees.itertuples(index=False)), desc="knee crops", disable=not progress)):
        pixels, spacing = radiographs[row.path]
        raw, geometry, found = localised_knee_crop(localiser, pixels, spacing, row.side, float(sizes_mm[i]),
                                                   out_size, mirror_side)
        angle = geometry["angle_deg"]
        crop = clip_histogram(raw, low_percentile, high_percentile)
        images[i] = np.round(crop * 255).astype(np.uint8)
        margins = crop_points([[getattr(row, f"plateau_margin_{c}_row"), getattr(row, f"plateau_margin_{c}_col")]
                               for c in ("lateral", "medial")], **geometry)
        for task, mask in osteophyte_region_masks({"lateral": margins[0], "medial": margins[1]},
                                                  out_size, float(sizes_mm[i])).items():
            masks[task][i] = mask
        centres.append(found["joint_centre"])
        angles.append(angle)
    knees = knees.reset_index(drop=True).copy()
    knees["centre_row"], knees["centre_col"] = np.array(centres).reshape(-1, 2).T
    knees["angle_deg"] = angles
    return PreparedKnees(images, knees[list(GRADE_TASKS)].to_numpy(int), knees, masks)


def prepare_images(table: pd.DataFrame, image_size: int, mirror_side: str | None = None,
                   progress: bool = True) -> np.ndarray:
    """Histogram-clipped knee images resized for a random ``image_size`` crop (uint8 stack).

    Paper 004 resizes to 310 px and crops 300 px; the same 310/300 ratio is kept.
    ``table`` needs ``path`` and ``side`` (e.g. :func:`kneelib.data.chen_kl.read_chen_kl`).
    """
    from kneelib.preprocess.radiograph import prepare_image_stack
    from kneelib.train.multitask import resize_for_crop

    return prepare_image_stack(table["path"], resize_for_crop(image_size), sides=table["side"],
                               mirror_side=mirror_side, progress=progress)
