"""The real knee every synthetic knee is built from (issue 10, item 1).

:func:`load_template` reads ``kneelib/synth/data/knee_template.npz``, the compact form of a
real right-knee segmentation at OAI SAG 3D DESS geometry from the test data of pymskt
(Gatti A. A., "pymskt: Python musculoskeletal toolkit", MIT licence), derived by
:mod:`kneelib.synth.derive_template`. It holds, on 1 mm grids in the canonical shape space of
:mod:`kneelib.synth.anatomy` (``x`` lateral, ``y`` anterior, ``z`` superior; femoral space
for femur and patella, tibial space for tibia, fibula and menisci):

* signed distances of the femur, tibia, patella, fibula and both menisci;
* the template's cartilage cover of the femur, tibia and patella: thickness (mm) and region
  (``CARTILAGE_REGIONS`` index + 1) of the bone surface point nearest each voxel;
* landmarks and the mean template cartilage thickness per region.

The template ships with the package, so a cohort can be generated on a fresh clone without
``KNEELIB_DATA``.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import ndimage

from kneelib.synth.spec import CARTILAGE_REGIONS

__all__ = ["KneeTemplate", "load_template", "TEMPLATE_PATH"]

TEMPLATE_PATH = Path(__file__).parent / "data" / "knee_template.npz"
#: Bones cut by the template scan's field of view: continued straight beyond their grid.
SHAFT_BONES = {"femur": +1, "tibia": -1, "fibula": -1}


@dataclass(frozen=True)
class _Grid:
    values: np.ndarray          # float32 (mm) or uint8 codes
    origin_mm: np.ndarray       # canonical mm of voxel (0, 0, 0)
    spacing_mm: float

    def sample(self, x, y, z, order: int = 1, where: np.ndarray | None = None, fill: float = 0.0) -> np.ndarray:
        """Values at canonical points (arrays broadcast together); nearest outside the grid.

        With a boolean ``where`` (the points' shape) only those points are interpolated
        and every other one holds ``fill``; interpolation of order 0 or 1 is pointwise,
        so the sampled points get exactly the values of a full pass.
        """
        x, y, z = np.broadcast_arrays(x, y, z)
        if where is not None:
            out = np.full(x.shape, fill, dtype=self.values.dtype if order == 0 else np.float32)
            out[where] = self.sample(x[where], y[where], z[where], order=order)
            return out
        inv = np.float32(1.0 / self.spacing_mm)
        coords = np.stack([(x - np.float32(self.origin_mm[0])) * inv,
                           (y - np.float32(self.origin_mm[1])) * inv,
                           (z - np.float32(self.origin_mm[2])) * inv])
        return ndimage.map_coordinates(self.values, coords, order=order, mode="nearest",
                                       output=self.values.dtype if order == 0 else np.float32)


@dataclass(frozen=True)
class KneeTemplate:
    """The loaded template (see the module docstring).

    Attributes
    ----------
    sdf : dict of str -> _Grid
        Signed distance (mm, negative inside, clipped at ``sdf_clip_mm``) per structure.
    space : dict of str -> str
        ``"f"`` (femoral space) or ``"t"`` (tibial space) per structure.
    box_mm : dict of str -> (ndarray, ndarray)
        Canonical extent (low and high corner, mm) of each structure's grid.
    cover_thickness, cover_region : dict of str -> _Grid
        Cartilage cover of ``femur``, ``tibia`` and ``patella``.
    landmarks_mm : dict of str -> ndarray, shape (3,)
    mean_thickness_mm : dict of str -> float
        Mean template cartilage thickness per region of ``CARTILAGE_REGIONS``.
    """

    sdf: dict
    space: dict
    box_mm: dict
    cover_thickness: dict
    cover_region: dict
    landmarks_mm: dict
    mean_thickness_mm: dict
    sdf_clip_mm: float

    def distance(self, name: str, x, y, z, where: np.ndarray | None = None) -> np.ndarray:
        """Signed distance (mm) to structure ``name`` at canonical points of its space.

        With ``where``, only those points are sampled; the others hold ``sdf_clip_mm``
        (as far as the grid stores).
        """
        return self.sdf[name].sample(x, y, z, where=where, fill=self.sdf_clip_mm)

    def inside_box(self, name: str, x, y, z) -> np.ndarray:
        """Whether canonical points lie in the grid box of structure ``name``.

        The grids end at the distance clip on every face, so outside this box a
        structure's signed distance is the clip: sampling ``where=inside_box(...)``
        changes no value.
        """
        low, high = self.box_mm[name]
        return ((x >= low[0]) & (x <= high[0]) & (y >= low[1]) & (y <= high[1])
                & (z >= low[2]) & (z <= high[2]))

    def cover(self, bone: str, x, y, z, where: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(thickness mm, region code) of the template cartilage over ``bone`` at points.

        With ``where``, only those points are sampled; the others hold (0, 0): no cover.
        """
        return (self.cover_thickness[bone].sample(x, y, z, order=1, where=where),
                self.cover_region[bone].sample(x, y, z, order=0, where=where))

    def max_cover_thickness_mm(self) -> float:
        """The thickest template cartilage over any bone (mm)."""
        return max(float(grid.values.max()) for grid in self.cover_thickness.values())


@lru_cache(maxsize=1)
def load_template(path: str | Path = TEMPLATE_PATH) -> KneeTemplate:
    """Load the knee template (cached; read-only arrays).

    Raises
    ------
    FileNotFoundError
        If the template file is missing (it ships with the package; re-create it with
        ``python -m kneelib.synth.derive_template <pymskt label map>``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: knee template missing; re-create it with "
                                "python -m kneelib.synth.derive_template <pymskt label map>")
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    grid = float(arrays["grid_mm"])
    step = float(arrays["sdf_step_mm"])
    t_step = float(arrays["thickness_step_mm"])
    sdf, space, box, cover_t, cover_r = {}, {}, {}, {}, {}
    for key in arrays:
        if not key.startswith("space_"):
            continue
        name = key[len("space_"):]
        origin = arrays[f"origin_{name}"].astype(np.float64)
        shape = arrays[f"shape_{name}"]
        space[name] = str(arrays[key])
        box[name] = (origin, origin + grid * (shape - 1))
        if f"sdf_{name}" in arrays:
            values = arrays[f"sdf_{name}"].astype(np.float32) * np.float32(step)
            values.setflags(write=False)
            sdf[name] = _Grid(values, origin, grid)
        if f"cover_thickness_{name}" in arrays:
            thickness = arrays[f"cover_thickness_{name}"].astype(np.float32) * np.float32(t_step)
            thickness.setflags(write=False)
            cover_t[name] = _Grid(thickness, origin, grid)
            cover_r[name] = _Grid(arrays[f"cover_region_{name}"], origin, grid)
    landmarks = {str(n): p.astype(np.float64) for n, p in zip(arrays["landmark_names"], arrays["landmarks_mm"])}
    means = dict(zip(CARTILAGE_REGIONS, (float(m) for m in arrays["mean_thickness_mm"])))
    clip = float(np.abs(arrays["sdf_femur"]).max()) * step
    return KneeTemplate(sdf=sdf, space=space, box_mm=box, cover_thickness=cover_t, cover_region=cover_r,
                        landmarks_mm=landmarks, mean_thickness_mm=means, sdf_clip_mm=clip)
