"""The six input strategies of paper 001, Fig. 4: spherical maps as 3-channel 8-bit images.

Paper 001 (Morales et al.), Methods, "Spherical transformation": "The spherical images were group
normalized by the minimum and maximum biomarker value from each bone for all the patients. The
normalized spherical images for each patient were merged into three-channel 8-bit images [...]
Each channel was normalized separately." Fig. 4: (a) cartilage thickness x 3; (b) bone shape x 3;
(c) T2 deep, superficial, average; (d) thickness, bone shape, empty; (e) T2 deep, T2 superficial,
thickness; (f) thickness, bone shape, average T2 (:data:`STRATEGIES`).

:func:`group_ranges` takes the minimum and maximum of each map over all knees of one bone (in the
chapter: over the training knees, so the test knees do not set the scale); :func:`strategy_image`
scales each channel to 0-255 with those ranges (clipped, rounded) and puts 0 where a map has no
value (e.g. bone without cartilage) and in the empty channel.
"""
from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np

from kneelib.qmri import QmriInputError

__all__ = ["STRATEGIES", "group_ranges", "strategy_image", "strategy_images"]

#: Channel maps of each strategy (None: an empty channel), Fig. 4a-f, keyed by a short name.
STRATEGIES: dict[str, tuple[str | None, str | None, str | None]] = {
    "thickness": ("thickness", "thickness", "thickness"),                  # (a)
    "bone_shape": ("bone_shape", "bone_shape", "bone_shape"),              # (b)
    "t2": ("t2_deep", "t2_superficial", "t2_total"),                       # (c)
    "thickness_bone_shape": ("thickness", "bone_shape", None),             # (d)
    "t2_thickness": ("t2_deep", "t2_superficial", "thickness"),            # (e)
    "all": ("thickness", "bone_shape", "t2_total"),                        # (f)
}


def group_ranges(maps_of_knees: Iterable[Mapping[str, np.ndarray]]) -> dict[str, tuple[float, float]]:
    """Minimum and maximum of each map over all knees (of one bone): the group normalisation.

    Raises
    ------
    QmriInputError
        No knees, or a map without any finite value in any knee.
    """
    low, high = {}, {}
    n = 0
    for maps in maps_of_knees:
        n += 1
        for name, image in maps.items():
            values = np.asarray(image, dtype=float)
            values = values[np.isfinite(values)]
            if values.size:
                low[name] = min(low.get(name, np.inf), float(values.min()))
                high[name] = max(high.get(name, -np.inf), float(values.max()))
    if n == 0:
        raise QmriInputError("no knees given", what="group normalisation")
    return {name: (low[name], high[name]) for name in low}


def strategy_image(maps: Mapping[str, np.ndarray], strategy: str,
                   ranges: Mapping[str, tuple[float, float]]) -> np.ndarray:
    """One knee's 3-channel 8-bit image of a Fig. 4 strategy, ``(rows, columns, 3)`` uint8.

    Parameters
    ----------
    maps : mapping of str to ndarray
        Spherical maps of one bone (:attr:`kneelib.qmri.biomarkers.BoneBiomarkers.maps`).
    strategy : str
        A key of :data:`STRATEGIES`.
    ranges : mapping
        :func:`group_ranges` of the same bone.

    Raises
    ------
    QmriInputError
        Unknown strategy, a channel's map or range missing, maps of different shapes.
    """
    if strategy not in STRATEGIES:
        raise QmriInputError(f"unknown strategy {strategy!r}; expected one of {list(STRATEGIES)}",
                             what="input strategy")
    names = STRATEGIES[strategy]
    shapes = {np.shape(maps[n]) for n in names if n is not None and n in maps}
    missing = [n for n in names if n is not None and (n not in maps or n not in ranges)]
    if missing:
        raise QmriInputError(f"strategy {strategy!r} needs maps and group ranges of {missing}", what="input strategy")
    if len(shapes) != 1:
        raise QmriInputError(f"the maps differ in shape: {shapes}", what="input strategy")
    shape = shapes.pop()
    channels = []
    for name in names:
        if name is None:
            channels.append(np.zeros(shape, np.uint8))
            continue
        low, high = ranges[name]
        image = np.asarray(maps[name], dtype=float)
        scaled = (image - low) / (high - low) if high > low else np.zeros(shape)
        scaled = np.where(np.isfinite(scaled), np.clip(scaled, 0.0, 1.0), 0.0)
        channels.append(np.round(255.0 * scaled).astype(np.uint8))
    return np.stack(channels, axis=-1)


def strategy_images(maps: Mapping[str, np.ndarray], ranges: Mapping[str, tuple[float, float]]) -> dict:
    """All six strategies of one knee and bone: ``{strategy: uint8 image}`` (Fig. 4a-f)."""
    return {name: strategy_image(maps, name, ranges) for name in STRATEGIES}
