"""Knee anatomy from a real knee, with the planted findings as label edits.

Implements step 1 of "A synthetic knee from physics" (``DESIGN.md``) for the synthetic
OAI cohort (issue 3, section 2; issue 10, items 1-2). The bones (femur, tibia, patella,
fibula), the cartilage cover of each bone (where cartilage lies, its regional thickness
pattern) and the menisci come from a real right knee, the pymskt segmentation at OAI DESS
geometry kept as a compact template (:mod:`kneelib.synth.template`). Each knee bends the
template by a smooth random deformation drawn from ``KneeSpec.shape_seed`` (a sum of
separable smooth terms; its Jacobian stays positive, tested), scales it by
``size_scale`` (sex and height) and by a few per cent in width and depth, and mirrors it
for a left knee. The cartilage thickness is the template's pattern scaled so that each
region's mean is the planted one. Soft tissues the segmentation lacks (cruciate and
collateral ligaments, patellar and quadriceps tendons, Hoffa's fat pad, joint fluid and
its recesses, popliteal vessels, muscle, subcutaneous fat and skin) are smooth implicit
shapes placed relative to the template's bones and landmarks. Findings of the causal model
(bone marrow lesions, effusion-synovitis, Hoffa-synovitis, focal cartilage loss, meniscal
damage, osteophytes per OARSI site at the template's articular margins, joint space width
per compartment, subchondral sclerosis) are edits of these labels, so their ground-truth
masks are exact.

Frames
------
*Shape space* is the template's canonical right knee: ``x`` lateral (+), ``y`` anterior
(+), ``z`` superior (+), ``x = 0`` midway between the femoral condyles' low points. The
femur and patella live in the *femoral space*, where both condyle low points lie on
``z = 0``; the tibia, fibula and menisci in the *tibial space*, where, at the
medio-lateral position of each compartment's minimum joint space width (as a radiograph
sees it), the tibia's highest point is level with the femur's lowest. *Knee-local*
millimetres (:mod:`kneelib.synth.spec`) are shape space scaled by ``size_scale``,
deformed, and with the joint opened to ``jsw_medial_mm`` / ``jsw_lateral_mm`` (a
vertical shift of the two spaces, linear in ``x`` between the compartments). A left knee
is the mirror image in ``x`` (lateral at ``-x``). The label volume of a :class:`KneeModel`
lives in knee-local millimetres *without* the scanner pose; the pose (``flexion_deg``,
``rotation_deg``, ``varus_deg``, ``offset_mm``) is the rigid transform
:attr:`KneeModel.pose_matrix` that the renderers apply when they sample the volume
(:mod:`kneelib.synth.mri`), so one anatomy serves the MRI pose and the fixed-flexion
radiograph pose (:mod:`kneelib.synth.radiograph`).

This module is over 600 lines because the label painting is one ordered sequence (each
tissue overwrites the ones before it) that shares the articular block's distance fields;
split, every part would need the whole state.

References
----------
Peterfy CG, Schneider E, Nevitt M. The osteoarthritis initiative: report on the design
rationale for the magnetic resonance imaging protocol for the knee. Osteoarthritis
Cartilage 2008;16:1433-41. Hunter DJ et al. Evolution of semi-quantitative whole joint
assessment of knee OA: MOAKS. Osteoarthritis Cartilage 2011;19:990-1002.
Altman RD, Gold GE. Atlas of individual radiographic features in osteoarthritis,
revised. Osteoarthritis Cartilage 2007;15 Suppl A:A1-56.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from scipy import ndimage

from kneelib.synth.spec import CARTILAGE_REGIONS, LESION_MASKS, TISSUE_LABELS, KneeSpec
from kneelib.synth.template import SHAFT_BONES, load_template

__all__ = ["KneeModel", "build_knee", "pose_matrix", "DEFAULT_VOXEL_MM", "GRID_HALF_EXTENT_MM"]

#: Voxel size of the label volume for the ``default`` preset (mm): at the default series' pixel
#: sizes (1.1-1.25 mm in plane) 1.25 mm renders indistinguishably from 1.0 mm at half the cost.
DEFAULT_VOXEL_MM = 1.25
#: Half extent of the label volume in knee-local mm (x, y, z); the limb fills x and y.
GRID_HALF_EXTENT_MM = (78.0, 82.0, 96.0)

L = TISSUE_LABELS
#: Relative standard deviation of the per-knee width (x) and depth (y) scaling of the template.
SHAPE_ASPECT_SD = 0.03
#: Size grades -> osteophyte length (mm) beyond the articular margin (OARSI atlas grades 1-3),
#: large enough that a grade-1 lip reaches about two pixels beyond the margin in the
#: `default` grading crops (140 mm at 64 px, 2.2 mm per pixel); at 3.5 mm most grade-1
#: osteophytes were graded 0 and KL 2 knees graded KL 0.
OSTEOPHYTE_LENGTH_MM = {0: 0.0, 1: 4.5, 2: 6.5, 3: 9.5}
#: BML size grade -> radius (mm) of the edema-like region (MOAKS grades: <10%, 10-33%, >33%).
BML_RADIUS_MM = {1: 4.0, 2: 7.0, 3: 10.5}


@dataclass
class KneeModel:
    """A built knee: tissue labels, lesion masks and landmarks in knee-local mm.

    Attributes
    ----------
    spec : KneeSpec
        The spec it was built from.
    labels : ndarray of uint8, shape (nx, ny, nz)
        ``TISSUE_LABELS`` codes; axis order ``(x, y, z)``; voxel ``(i, j, k)`` is
        centred at ``origin_mm + voxel_mm * (i, j, k)`` in knee-local mm.
    voxel_mm : float
    origin_mm : ndarray, shape (3,)
    lesion_masks : dict of str -> ndarray of bool
        One mask per name in ``LESION_MASKS`` (same grid as ``labels``).
    landmarks_mm : dict of str -> ndarray, shape (3,)
        Knee-local mm: ``condyle_lowest_medial/lateral``, ``plateau_medial/lateral``
        (tibial plateau centres), ``plateau_margin_medial/lateral`` (outer edges),
        ``joint_centre``, ``pcl_centre`` (a point on the PCL plane), ``pcl_normal``
        (unit normal of the PCL plane), ``patella_centre``.
    cartilage_depth : ndarray of float16
        Relative depth in articular cartilage, 0 at the bone, 1 at the surface (0
        outside cartilage); drives the deep-to-superficial T2 gradient.
    cartilage_region : ndarray of uint8
        ``1 + CARTILAGE_REGIONS.index(region)`` in cartilage, 0 elsewhere.
    cortex : ndarray of bool
        Cortical / subchondral bone plate (thin shell of every bone).
    sclerosis : ndarray of bool
        Subchondral sclerosis (denser bone) below the tibio-femoral surfaces.
    foreign_object : tuple or None
        ``(centre_mm (3,), radius_mm)`` of a planted metal object, or None.
    pose_matrix : ndarray, shape (4, 4)
        Maps knee-local mm to the scanner's knee frame (after flexion, rotation,
        varus and offset); see :func:`pose_matrix`.
    side : str
        ``"R"`` or ``"L"`` (a left knee is mirrored in ``x``).
    soft_tissue_gain : ndarray of float32 or None
        Multiplicative MR signal texture of muscle and fat (1 elsewhere): smooth
        heterogeneity elongated along the limb and thin dark fascial / fibrous septa
        (zero crossings of a smooth random field). Shared (read-only) between visits
        of the same knee.
    """

    spec: KneeSpec
    labels: np.ndarray
    voxel_mm: float
    origin_mm: np.ndarray
    lesion_masks: dict[str, np.ndarray]
    landmarks_mm: dict[str, np.ndarray]
    cartilage_depth: np.ndarray
    cartilage_region: np.ndarray
    cortex: np.ndarray
    sclerosis: np.ndarray
    foreign_object: tuple | None
    pose_matrix: np.ndarray
    side: str
    extras: dict = field(default_factory=dict)
    soft_tissue_gain: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.labels.shape)

    def index_to_mm(self) -> np.ndarray:
        """(4, 4) affine from voxel index ``(i, j, k)`` to knee-local mm."""
        affine = np.eye(4)
        affine[:3, :3] *= self.voxel_mm
        affine[:3, 3] = self.origin_mm
        return affine

    def volume_ml(self, label: str) -> float:
        """Volume of one tissue label in millilitres."""
        return float((self.labels == L[label]).sum() * self.voxel_mm ** 3 / 1000.0)


# ----------------------------------------------------------------------------------------
# Pose
# ----------------------------------------------------------------------------------------

def _rotation(axis: str, degrees: float) -> np.ndarray:
    t = np.deg2rad(degrees)
    c, s = np.cos(t), np.sin(t)
    if axis == "x":
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    if axis == "y":
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def pose_matrix(flexion_deg: float, rotation_deg: float, varus_deg: float,
                offset_mm=(0.0, 0.0, 0.0), side: str = "R") -> np.ndarray:
    """Rigid transform from knee-local mm to the scanner's knee frame.

    Flexion turns about ``x`` (the shank swinging posteriorly), rotation about ``z``
    and varus about ``y``; for a left knee the rotation and varus senses are mirrored
    so that the same spec values mean the same clinical pose on either side.

    Returns
    -------
    ndarray, shape (4, 4)
    """
    sign = 1.0 if side == "R" else -1.0
    rot = _rotation("y", sign * varus_deg) @ _rotation("z", sign * rotation_deg) @ _rotation("x", -flexion_deg)
    matrix = np.eye(4)
    matrix[:3, :3] = rot
    matrix[:3, 3] = np.asarray(offset_mm, dtype=float)
    return matrix


# ----------------------------------------------------------------------------------------
# Signed distance primitives (approximate where noted; only the zero set and the
# near-surface distance matter, the latter is re-normalised by the gradient)
# ----------------------------------------------------------------------------------------

def _sd_ellipsoid(x, y, z, centre, radii):
    """Approximate signed distance to an ellipsoid (Quilez' bound, exact zero set)."""
    cx, cy, cz = (float(c) for c in centre)
    rx, ry, rz = (float(r) for r in radii)
    px, py, pz = (x - cx) * (1 / rx), (y - cy) * (1 / ry), (z - cz) * (1 / rz)
    k0 = np.sqrt(px * px + py * py + pz * pz)
    k1 = np.sqrt((px * (1 / rx)) ** 2 + (py * (1 / ry)) ** 2 + (pz * (1 / rz)) ** 2)
    return k0 * (k0 - 1.0) / np.maximum(k1, 1e-6)


def _sd_capsule(x, y, z, a, b, radius, squash=(1.0, 1.0, 1.0)):
    """Signed distance to a capsule from ``a`` to ``b`` (optionally squashed per axis)."""
    return _sd_tapered_capsule(x, y, z, a, b, radius, radius, squash=squash)


def _sd_tapered_capsule(x, y, z, a, b, radius_a, radius_b, squash=(1.0, 1.0, 1.0)):
    """Approximate signed distance to a capsule whose radius tapers from ``a`` to ``b``."""
    sx, sy, sz = (float(q) for q in squash)
    a = [float(q) / w for q, w in zip(a, (sx, sy, sz))]
    b = [float(q) / w for q, w in zip(b, (sx, sy, sz))]
    px, py, pz = x * (1 / sx) - a[0], y * (1 / sy) - a[1], z * (1 / sz) - a[2]
    ba = [b[i] - a[i] for i in range(3)]
    inv = 1.0 / (ba[0] ** 2 + ba[1] ** 2 + ba[2] ** 2)
    h = np.clip((px * ba[0] + py * ba[1] + pz * ba[2]) * inv, 0.0, 1.0)
    dx, dy, dz = px - h * ba[0], py - h * ba[1], pz - h * ba[2]
    radius = float(radius_a) + (float(radius_b) - float(radius_a)) * h
    return np.sqrt(dx * dx + dy * dy + dz * dz) * min(sx, sy, sz) - radius


def _smin(a, b, k):
    """Polynomial smooth minimum (smooth union) with blend radius ``k`` mm."""
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b * (1 - h) + a * h - k * h * (1 - h)


def _smax(a, b, k):
    """Smooth maximum (smooth intersection / subtraction with ``-b``)."""
    return -_smin(-a, -b, k)


def _normalised_distance(sdf, voxel_mm):
    """``f / |grad f|``: a near-surface Euclidean distance from an implicit function."""
    gx, gy, gz = np.gradient(sdf, voxel_mm)
    norm = np.sqrt(gx * gx + gy * gy + gz * gz)
    norm = np.maximum(norm, 1e-3)
    # far from the surface (and at the edges of evaluation boxes) keep the raw value
    distance = np.where(np.abs(sdf) < 8.0, sdf / norm, sdf)
    return distance, gx / norm, gy / norm, gz / norm


# ----------------------------------------------------------------------------------------
# Smooth random deformation (keeps vertical gaps exact: d_z depends on x, y only)
# ----------------------------------------------------------------------------------------

def _random_1d(rng, coords, amplitude_mm, wavelengths=(90.0, 160.0)):
    out = np.zeros_like(coords)
    for wavelength in wavelengths:
        w = 2 * np.pi / (wavelength * rng.uniform(0.8, 1.25))
        out += amplitude_mm * rng.normal() * np.sin(w * coords + rng.uniform(0, 2 * np.pi))
    return out


def _deformation(rng, x1, y1, z1, amplitude_mm=1.6):
    """1-D profiles of the displacements as sums of separable smooth terms.

    ``dx = dx_y(y) + dx_z(z) + dx_x(x) dx_zx(z)``, ``dy = dy_x(x) + dy_z(z) + dy_y(y) dy_zy(z)``,
    ``dz = dz_x(x) + dz_y(y)`` (``dz`` independent of ``z`` keeps vertical gaps exact).
    """
    p = {}
    p["dx_y"] = _random_1d(rng, y1, amplitude_mm)
    p["dx_z"] = _random_1d(rng, z1, amplitude_mm)
    p["dx_x"] = _random_1d(rng, x1, 0.5)
    p["dx_zx"] = _random_1d(rng, z1, 0.6)
    p["dy_x"] = _random_1d(rng, x1, amplitude_mm)
    p["dy_z"] = _random_1d(rng, z1, amplitude_mm)
    p["dy_y"] = _random_1d(rng, y1, 0.5)
    p["dy_zy"] = _random_1d(rng, z1, 0.6)
    p["dz_x"] = _random_1d(rng, x1, amplitude_mm)
    p["dz_y"] = _random_1d(rng, y1, amplitude_mm)
    return {k: q.astype(np.float32) for k, q in p.items()}


# ----------------------------------------------------------------------------------------
# The builder
# ----------------------------------------------------------------------------------------

def _grid_axes(voxel_mm: float):
    axes = []
    for half in GRID_HALF_EXTENT_MM:
        n = int(np.floor(half / voxel_mm)) * 2 + 1          # odd: a voxel centred on 0
        axes.append(((np.arange(n) - n // 2) * voxel_mm).astype(np.float32))
    return axes


def _jsw_x() -> tuple[float, float]:
    """Shape-space x (mm) of the template's medial and lateral minimum joint space width."""
    land = load_template().landmarks_mm
    return float(land["jsw_femur_medial"][0]), float(land["jsw_femur_lateral"][0])


def _gap_profile(x_mm, jsw_medial_mm, jsw_lateral_mm):
    """Joint space width along x: medial value medially, lateral laterally, linear between.

    The values hold at the template's minimum joint space width positions (landmarks
    ``jsw_femur_*``), where the femur's lowest and the tibia's highest points over all
    antero-posterior positions are level in their two spaces.
    """
    x_medial, x_lateral = _jsw_x()
    t = np.clip((x_mm - x_medial) / (x_lateral - x_medial), 0.0, 1.0)
    return jsw_medial_mm + (jsw_lateral_mm - jsw_medial_mm) * t


class _Frame:
    """Shape-space coordinates of any block of the label grid.

    The smooth deformation is a sum of separable terms (``_deformation``), so the
    coordinates of a block are broadcasts of 1-D profiles: no full-volume coordinate
    arrays are kept, and each block costs only its own voxels.
    """

    def __init__(self, rng, ax, ay, az, mirror, size_scale, jsw_medial_mm, jsw_lateral_mm):
        self.ax, self.ay, self.az = ax, ay, az
        self.mirror, self.s = mirror, size_scale
        self.jsw = (jsw_medial_mm, jsw_lateral_mm)
        self.profiles = _deformation(rng, ax * mirror, ay, az)
        self.shape = (ax.size, ay.size, az.size)

    def dz_columns(self) -> np.ndarray:
        """Vertical displacement per (x, y) column, shape (nx, ny, 1)."""
        p = self.profiles
        return (p["dz_x"][:, None] + p["dz_y"][None, :])[:, :, None]

    def coords(self, block, which=("x", "y", "f", "t", "m")):
        """``Xs, Ys, Zf, Zt, Zm`` (shape space, float32) of a block of index slices."""
        i, j, k = block
        p = self.profiles
        s = self.s
        xm = (self.mirror * self.ax[i])[:, None, None]
        X = (xm + p["dx_y"][j][None, :, None] + p["dx_z"][k][None, None, :]
             + p["dx_x"][i][:, None, None] * p["dx_zx"][k][None, None, :])
        out = {"x": X * (1.0 / s)}
        if "y" in which:
            Y = (self.ay[j][None, :, None] + p["dy_x"][i][:, None, None] + p["dy_z"][k][None, None, :]
                 + p["dy_y"][j][None, :, None] * p["dy_zy"][k][None, None, :])
            out["y"] = Y * (1.0 / s)
        Zd = self.az[k][None, None, :] + (p["dz_x"][i][:, None] + p["dz_y"][j][None, :])[:, :, None]
        if "m" in which:
            out["m"] = Zd * (1.0 / s)
        if "f" in which or "t" in which:
            half_gap = 0.5 * _gap_profile(X, *self.jsw)
            if "f" in which:
                out["f"] = (Zd - half_gap) * (1.0 / s)     # femoral shape space: condyles touch z = 0
            if "t" in which:
                out["t"] = (Zd + half_gap) * (1.0 / s)     # tibial shape space: plateau centres at z = 0
        return tuple(out.get(w) for w in ("x", "y", "f", "t", "m"))


class _BoneField:
    """A bone's signed distance on a coarse grid over its box, read at full resolution.

    The implicit function is evaluated every ``step`` voxels (about 2 mm), turned
    into a near-surface Euclidean distance there (``f / |grad f|``), and linearly
    interpolated (separably) onto any full-resolution block; outside its box the bone
    is far (``FAR_MM``). Normals come from the same coarse gradient.
    """

    FAR_MM = 1e3

    def __init__(self, block, step, distance, normals):
        self.block, self.step = block, step
        self.distance, self.normals = distance, normals

    def _positions(self, block):
        out = []
        for q, b, n in zip(block, self.block, self.distance.shape):
            offset = np.arange(q.start, q.stop) - b.start
            valid = (offset >= 0) & (offset < b.stop - b.start)
            offset = np.clip(offset, 0, (n - 1) * self.step)
            out.append((offset // self.step, offset % self.step, valid))
        return out

    def read(self, block, array=None, far=FAR_MM):
        """Full-resolution values of ``array`` (default: the distance) on ``block``."""
        values = self.distance if array is None else array
        positions = self._positions(block)
        for axis, (lower, remainder, _) in enumerate(positions):
            values = _lerp_axis(values, axis, lower, remainder, self.step)
        valid = (positions[0][2][:, None, None] & positions[1][2][None, :, None]
                 & positions[2][2][None, None, :])
        if not valid.all():
            values = np.where(valid, values, np.float32(far))
        return values

    def normal(self, block, axis):
        return self.read(block, self.normals[axis], far=0.0)


def _lerp_axis(values, axis, lower, remainder, step):
    """Linear interpolation along ``axis`` at positions ``lower + remainder / step``.

    Both weights come from integers (``(step - r) / step`` and ``r / step``), so a
    mirrored grid gives bitwise mirrored values (left knee = mirror of right).
    """
    if step == 1:
        if lower.size == values.shape[axis] and np.array_equal(lower, np.arange(lower.size)):
            return values
        return np.take(values, lower, axis=axis)
    offset = lower * step + remainder
    if step == 2 and offset.size > 2 and offset[-1] - offset[0] == offset.size - 1:
        # contiguous 2x upsampling with slices (same arithmetic as the general path)
        src = np.moveaxis(values, axis, 0)
        out_shape = list(src.shape)
        out_shape[0] = offset.size
        out = np.empty(out_shape, np.float32)
        o0 = int(offset[0])
        even = o0 % 2
        n_even = len(range(even, offset.size, 2))
        out[even::2] = src[(o0 + even) // 2:(o0 + even) // 2 + n_even]
        odd = 1 - even
        n_odd = len(range(odd, offset.size, 2))
        k = (o0 + odd) // 2
        half = np.float32(0.5)
        out[odd::2] = half * src[k:k + n_odd] + half * src[k + 1:k + 1 + n_odd]
        return np.moveaxis(out, 0, axis)
    upper = np.minimum(lower + 1, values.shape[axis] - 1)
    shape = [1, 1, 1]
    shape[axis] = -1
    w_upper = (remainder / step).astype(np.float32).reshape(shape)
    w_lower = ((step - remainder) / step).astype(np.float32).reshape(shape)
    return w_lower * np.take(values, lower, axis=axis) + w_upper * np.take(values, upper, axis=axis)


#: Spacing (mm) of the coarse grid on which the bones' implicit functions are evaluated.
COARSE_SDF_MM = 2.0


def build_knee(spec: KneeSpec, voxel_mm: float = DEFAULT_VOXEL_MM) -> KneeModel:
    """Build the tissue label volume, lesion masks and landmarks of one knee.

    Parameters
    ----------
    spec : KneeSpec
        Geometry, pose and planted findings (``kneelib.synth.spec``).
    voxel_mm : float
        Isotropic voxel size of the label grid (``DEFAULT_VOXEL_MM`` for the default
        preset, ``0.4``-``0.5`` for paper-size renders, ``2.0`` for smoke tests).

    Returns
    -------
    KneeModel

    Raises
    ------
    ValueError
        If ``spec.side`` is not ``"R"``/``"L"`` or a planted finding is out of range.

    Notes
    -----
    Deterministic: every random draw comes from ``numpy.random.default_rng`` seeded
    with ``spec.shape_seed`` (shape) or ``spec.seed`` (lesion texture), never from a
    global generator.

    Cost is kept proportional to where tissue detail is: the limb outline is the only
    full-volume field; bones are implicit functions evaluated on a coarse (about 2 mm)
    grid and interpolated; cartilage, menisci, the fluid film and the lesions are
    evaluated only in the articular block around the joint; every other soft-tissue
    shape only in its own bounding box.
    """
    _validate(spec, voxel_mm)
    shape_rng = np.random.default_rng(spec.shape_seed)
    lesion_rng = np.random.default_rng([spec.seed, 7])
    v = shape_rng.normal(size=8).clip(-2, 2)
    template = load_template()
    # per-knee proportions: width (x) and depth (y) of the template scaled independently
    aspect = np.array([1.0 + SHAPE_ASPECT_SD * v[1], 1.0 + SHAPE_ASPECT_SD * v[2], 1.0])
    inv_aspect = (np.float32(1.0 / aspect[0]), np.float32(1.0 / aspect[1]))

    def landmark(name):
        """A template landmark in this knee's shape space (aspect applied)."""
        return template.landmarks_mm[name] * aspect

    def template_distance(name):
        """Implicit function of a template structure in shape space (aspect applied)."""
        return lambda x, y, z: template.distance(name, x * inv_aspect[0], y * inv_aspect[1], z)

    def template_cover(bone_name, x, y, z, where):
        return template.cover(bone_name, x * inv_aspect[0], y * inv_aspect[1], z, where=where)

    ax, ay, az = _grid_axes(voxel_mm)
    # a left knee is the mirror image: evaluate the right-knee shapes at -x
    mirror = -1.0 if spec.side == "L" else 1.0
    s = float(spec.size_scale)
    frame = _Frame(shape_rng, ax, ay, az, mirror, s, spec.jsw_medial_mm, spec.jsw_lateral_mm)
    shape = frame.shape
    full = tuple(slice(0, n) for n in shape)
    step = max(1, int(round(COARSE_SDF_MM / voxel_mm)))
    n_x, centre_x = ax.size, (ax.size - 1) // 2

    def region(lo, hi, step=1, margin=10.0):
        """Index slices of a right-knee shape-space box, mirrored for a left knee.

        The x range is made parity-aligned about the centre voxel (for ``step > 1``)
        and then mirrored, so that left = mirror(right) voxel for voxel.
        """
        sl = _block(ax, ay, az, (lo[0] * s, hi[0] * s), (lo[1] * s, hi[1] * s), (lo[2] * s, hi[2] * s), margin)
        x0, x1 = sl[0].start, sl[0].stop
        x0 -= (x0 - centre_x) % step
        x1 += (centre_x - (x1 - 1)) % step
        x0, x1 = max(x0, 0), min(x1, n_x)
        if mirror < 0:
            x0, x1 = n_x - x1, n_x - x0
        return (slice(x0, x1), sl[1], sl[2])

    def evaluate(fn, which, block):
        """``fn(Xs, Ys, Z) * s`` on a full-resolution block (Z: 'f', 't' or 'm' space)."""
        Xs_, Ys_, Zf_, Zt_, Zm_ = frame.coords(block, which=("x", "y", which))
        z = {"f": Zf_, "t": Zt_, "m": Zm_}[which]
        return (fn(Xs_, Ys_, z) * s).astype(np.float32)

    def evaluate_smooth(fn, which, block):
        """:func:`evaluate` of a smooth field on a coarse lattice, interpolated to ``block``.

        The lattice is the indices congruent to the centre voxel modulo ``step`` (a
        mirror-symmetric set), extended one node beyond the block where the grid allows.
        """
        if step == 1:
            return evaluate(fn, which, block)
        lattice = []
        for axis, (q, n) in enumerate(zip(block, shape)):
            anchor = centre_x if axis == 0 else 0
            first = q.start - ((q.start - anchor) % step)
            if first < 0:
                first += step
            last = q.stop - 1 + ((anchor - (q.stop - 1)) % step)
            if last > n - 1:
                last -= step
            lattice.append(slice(first, last + 1, step))
        values = evaluate(fn, which, tuple(lattice))
        for axis, (q, c) in enumerate(zip(block, lattice)):
            m = values.shape[axis]
            offset = np.clip(np.arange(q.start, q.stop) - c.start, 0, (m - 1) * step)
            values = _lerp_axis(values, axis, offset // step, offset % step, step)
        return values

    def bone(fn, which, lo, hi):
        block = region(lo, hi, step)
        coarse = tuple(slice(q.start, q.stop, step) for q in block)
        raw = evaluate(fn, which, coarse)
        distance, gx, gy, gz = _normalised_distance(raw, voxel_mm * step)
        normals = (gx * np.float32(mirror), gy, gz)       # normals in shape-space sense
        return _BoneField(block, step, distance.astype(np.float32),
                          tuple(n.astype(np.float32) for n in normals))

    def sub(block, within):
        """``block`` expressed relative to ``within`` (both global index slices)."""
        return tuple(slice(q.start - w.start, q.stop - w.start) for q, w in zip(block, within))

    def intersect(a, b):
        out = tuple(slice(max(p.start, q.start), min(p.stop, q.stop)) for p, q in zip(a, b))
        return None if any(q.stop <= q.start for q in out) else out

    # --- soft tissue: the limb outline (the only full-volume field) ---------------------
    fat_mm = float(getattr(spec, "subcutaneous_fat_mm", 9.0))

    def limb_depth(x, y, z):
        """Depth below the skin (mm, > 0 inside the limb) of a smooth elliptic limb."""
        limb_ax = 46.0 + 4.0 * np.tanh(z / 60.0) ** 2 + 6.0 * np.clip(z / 90.0, 0, 1)
        limb_ay = 50.0 + 6.0 * np.clip(z / 80.0, 0, 1) + 5.0 * np.clip(-z / 80.0, 0, 1)
        limb_core = np.sqrt(((x - 1.0) / limb_ax) ** 2 + ((y - 2.0) / limb_ay) ** 2)
        return (fat_mm / s - (limb_core - 1.0) * np.minimum(limb_ax, limb_ay))

    # smooth: evaluated every ~2 mm and interpolated
    depth_from_skin = evaluate_smooth(limb_depth, "m", full)
    # skin (1.6 mm) over subcutaneous fat (fat_mm) over muscle, by depth below the skin
    layer = (depth_from_skin > 0).view(np.uint8)
    layer += (depth_from_skin >= 1.6).view(np.uint8)
    layer += (depth_from_skin >= max(fat_mm, 1.6)).view(np.uint8)
    labels = np.array([0, L["skin"], L["subcutaneous_fat"], L["muscle"]], np.uint8)[layer]
    del layer

    # --- bones (coarse implicit functions) -------------------------------------------
    def template_bone(name):
        lo, hi = (corner * aspect for corner in template.box_mm[name])
        if SHAFT_BONES.get(name) == +1:       # cut by the template's field of view: a shaft
            hi[2] = 400.0
        elif SHAFT_BONES.get(name) == -1:
            lo[2] = -400.0
        return bone(template_distance(name), template.space[name], lo, hi)

    fields = {name: template_bone(name) for name in ("femur", "tibia", "patella", "fibula")}
    # dense full-resolution distance of each bone over its own box
    dense = {name: f.read(f.block) for name, f in fields.items()}

    def bone_distance(name, block):
        """Full-resolution distance to a bone on any block (far outside its box)."""
        f = fields[name]
        out = np.full(tuple(q.stop - q.start for q in block), np.float32(_BoneField.FAR_MM), np.float32)
        both = intersect(block, f.block)
        if both is not None:
            out[sub(both, block)] = dense[name][sub(both, f.block)]
        return out

    # --- osteophytes: bony outgrowths at the articular margins (OARSI sites) ---------
    osteophyte_mask = np.zeros(shape, bool)
    for site in ("FM", "FL", "TM", "TL"):
        grade = int(spec.osteophyte_grade.get(site, 0))
        length = OSTEOPHYTE_LENGTH_MM[grade]
        if length <= 0:
            continue
        side_sign = -1.0 if site[1] == "M" else 1.0
        name = "femur" if site[0] == "F" else "tibia"
        mx, my, mz = landmark(f"{name}_margin_{'medial' if site[1] == 'M' else 'lateral'}")
        # a lip (beak) at the template's articular margin: thick where it grows out of the
        # bone, tapering to its tip; femoral lips point obliquely outward and down along the
        # condyle toward the joint line, tibial lips obliquely outward and up (a horizontal
        # lip projects as a shelf on the radiograph, which real marginal osteophytes are not)
        if site[0] == "F":
            a, b = (mx - side_sign * 4.0, my, mz + 2.0), (mx + side_sign * 0.8 * length, my, mz - 3.0 - 0.5 * length)
            which = "f"
        else:
            a, b = (mx - side_sign * 4.0, my, mz - 3.0), (mx + side_sign * 0.8 * length, my, mz + 0.5 + 0.5 * length)
            which = "t"
        base_radius = 2.2 + 0.6 * grade
        ridge = 2.0 + 0.5 * grade  # the lip runs along the margin (antero-posterior)
        lo = np.minimum(a, b) - np.array([base_radius + 2, base_radius * ridge + 2, base_radius + 2])
        hi = np.maximum(a, b) + np.array([base_radius + 2, base_radius * ridge + 2, base_radius + 2])
        block = intersect(region(lo, hi), fields[name].block)
        spur = evaluate(lambda x, y, z: _sd_tapered_capsule(x, y, z, a, b, base_radius, 0.8,
                                                             squash=(1.0, ridge, 1.0)), which, block)
        target = dense[name][sub(block, fields[name].block)]
        grown = _smin(target, spur, 2.0).astype(np.float32)
        osteophyte_mask[block] |= (grown < 0) & (target >= 0)
        target[...] = grown

    # --- articular block: cartilage, menisci, fluid film, subchondral lesions ------------
    articular = [template.box_mm[n] for n in ("meniscus_medial", "meniscus_lateral")]
    articular += [template.box_mm[n] for n in ("femoral_cartilage", "tibial_cartilage_medial",
                                               "tibial_cartilage_lateral", "patellar_cartilage")]
    a_lo = np.min([b[0] for b in articular], axis=0) * aspect * s
    a_hi = np.max([b[1] for b in articular], axis=0) * aspect * s
    A = _block(ax, ay, az, (a_lo[0], a_hi[0]), (a_lo[1], a_hi[1]), (a_lo[2], a_hi[2]), 0.0)
    A = (slice(min(A[0].start, n_x - A[0].stop), n_x - min(A[0].start, n_x - A[0].stop)), A[1], A[2])
    Xs, Ys, Zf, Zt, Zm = frame.coords(A)            # symmetric in x (mirroring) ^
    shape_a = Xs.shape
    fd, td, pd_ = (bone_distance(n, A) for n in ("femur", "tibia", "patella"))

    # cartilage: the template's cover of each bone (where and how thick, by region), its
    # thickness scaled so that each region's mean is the planted one
    thick = {r: float(spec.cartilage_thickness_mm.get(r, 2.0)) for r in CARTILAGE_REGIONS}
    ratio_lut = np.zeros(len(CARTILAGE_REGIONS) + 1, np.float32)
    for i, r in enumerate(CARTILAGE_REGIONS):
        ratio_lut[i + 1] = thick[r] / template.mean_thickness_mm[r]
    # The cover is sampled only where a voxel can be cartilage or joint film: within
    # `reach` outside the femur or tibia (tibio-femoral) or the patella. Farther out
    # every test below is false whatever the cover holds (cartilage needs 0 < distance <
    # thickness, the film fd + td < fem_t + tib_t + 1), so the labels are unchanged.
    reach = 2.0 * template.max_cover_thickness_mm() * float(ratio_lut.max()) + 1.5
    near_tf = ((fd > 0) & (fd < reach)) | ((td > 0) & (td < reach))
    fem_t, femoral_region = template_cover("femur", Xs, Ys, Zf, near_tf)
    fem_t *= ratio_lut[femoral_region]
    tib_t, tibial_region = template_cover("tibia", Xs, Ys, Zt, near_tf)
    tib_t *= ratio_lut[tibial_region]
    pat_t, patellar_region = template_cover("patella", Xs, Ys, Zf, (pd_ > 0) & (pd_ < reach))
    pat_t *= ratio_lut[patellar_region]
    del near_tf

    gap_total = np.maximum(fd, 0) + np.maximum(td, 0) + 1e-3
    fem_share = fem_t / np.maximum(fem_t + tib_t, 1e-3)
    femoral_cart = ((fd > 0) & (fd < fem_t) & (femoral_region > 0)
                    & ((fd / gap_total < fem_share) | (fd + td > fem_t + tib_t) | (tibial_region == 0)))
    tibial_cart = ((td > 0) & (td < tib_t) & (tibial_region > 0)
                   & ((td / gap_total < 1 - fem_share) | (fd + td > fem_t + tib_t) | (femoral_region == 0)))
    patellar_cart = (pd_ > 0) & (pd_ < pat_t) & (patellar_region > 0) & (fd > 0.3)
    femoral_cart &= pd_ > 0.3

    cartilage_depth = np.zeros(shape_a, np.float16)
    cartilage_depth[femoral_cart] = np.clip(fd[femoral_cart] / fem_t[femoral_cart], 0, 1)
    cartilage_depth[tibial_cart] = np.clip(td[tibial_cart] / tib_t[tibial_cart], 0, 1)
    cartilage_depth[patellar_cart] = np.clip(pd_[patellar_cart] / pat_t[patellar_cart], 0, 1)
    cartilage_region = np.zeros(shape_a, np.uint8)
    cartilage_region[femoral_cart] = femoral_region[femoral_cart]
    cartilage_region[tibial_cart] = tibial_region[tibial_cart]
    cartilage_region[patellar_cart] = CARTILAGE_REGIONS.index("P") + 1

    # --- menisci: the template's, on the tibia; a narrower joint squeezes them -----------
    Xt, Yt = Xs * inv_aspect[0], Ys * inv_aspect[1]

    def meniscus(name):
        """The template meniscus ``name`` (sampled only in its grid box, where it is)."""
        where = (fd > 0.0) & ~femoral_cart & template.inside_box(name, Xt, Yt, Zt)
        return template.distance(name, Xt, Yt, Zt, where=where) < 0

    meniscus_m, meniscus_l = meniscus("meniscus_medial"), meniscus("meniscus_lateral")
    del Xt, Yt
    tibiofemoral = (tibial_region > 0) | (((femoral_region == CARTILAGE_REGIONS.index("FM") + 1)
                                           | (femoral_region == CARTILAGE_REGIONS.index("FL") + 1)) & (Zt > -4.0))
    film = (fd > 0) & (td > 0) & (fd + td < np.maximum(fem_t + tib_t, 1.0) + 1.0) & tibiofemoral
    fluid_film = film & ~femoral_cart & ~tibial_cart & ~meniscus_m & ~meniscus_l
    del fem_t, tib_t, pat_t, gap_total, fem_share, tibiofemoral, film

    # --- soft tissue shapes, each in its own box ---------------------------------------
    def shape_mask(fn, lo, hi, which="m"):
        """(block, mask) of ``fn < 0`` evaluated in the shape-space box ``lo``-``hi``."""
        block = region(lo, hi)
        return block, evaluate(fn, which, block) < 0

    def paint(block, mask, code, only_inside=False, where=None):
        target = labels[block]
        if only_inside:
            mask = mask & (depth_from_skin[block] > 0)
        if where is not None:
            mask = mask & where
        target[mask] = code

    # peri-articular and popliteal fat (knee is mostly tendon, fat and capsule, not muscle)
    for lo, hi, fn, extra in (
            ((-42, 28, -48), (46, 96, 56), lambda x, y, z: _sd_ellipsoid(x, y, z, (2.0, 62.0, 4.0), (44.0, 34.0, 52.0)), None),
            ((-22, -84, -26), (22, -32, 54), lambda x, y, z: _sd_ellipsoid(x, y, z, (0.0, -58.0, 14.0), (22.0, 26.0, 40.0)), None),
            # medial and lateral peri-articular fat: lenses beside the joint, thin front to
            # back and tall, so their projected thickness fades over centimetres (a tall,
            # deep block cut at fixed heights drew sharp horizontal bands on the radiograph)
            ((-90, -26, -42), (-34, 26, 42), lambda x, y, z: _sd_ellipsoid(x, y, z, (-64.0, 0.0, 0.0), (30.0, 24.0, 40.0)), None),
            ((34, -26, -42), (90, 26, 42), lambda x, y, z: _sd_ellipsoid(x, y, z, (64.0, 0.0, 0.0), (30.0, 24.0, 40.0)), None)):
        block, mask = shape_mask(fn, lo, hi)
        paint(block, mask & (depth_from_skin[block] >= 1.6), L["subcutaneous_fat"])
    block, mask = shape_mask(lambda x, y, z: _sd_ellipsoid(x, y, z, (0.0, -4.0, 12.0), (16.0, 32.0, 18.0)),
                             (-16, -36, -6), (16, 28, 30))
    paint(block, mask, L["hoffa_fat_pad"], only_inside=True)
    block, mask = shape_mask(lambda x, y, z: _sd_ellipsoid(x, y, z, (0.0, 25.0, -4.0), (24.0, 12.0, 15.0)),
                             (-25, 12, -20), (25, 38, 12))
    mask &= frame.coords(block, which=("x", "y"))[1] > 12.0
    paint(block, mask, L["hoffa_fat_pad"])
    # popliteal vessels (bright fluid-like) in the fat
    block, mask = shape_mask(lambda x, y, z: _sd_capsule(x, y, z, (-3.0, -45.0, 90.0), (2.0, -40.0, -60.0), 3.0),
                             (-8, -50, -200), (8, -35, 200))
    paint(block, mask, L["joint_fluid"], only_inside=True)

    # joint fluid: physiological film, suprapatellar recess (grows with effusion), posterior recesses
    eff = int(spec.effusion_grade)
    fluid_parts = [shape_mask(lambda x, y, z: _sd_ellipsoid(x, y, z, (2.0, 33.0, 58.0 + 4.0 * eff),
                                                            (20.0 + 2.5 * eff, 1.4 + 2.2 * eff, 11.0 + 6.0 * eff)),
                              (-30, 20, 30), (34, 46, 120))]
    if eff >= 1:
        fluid_parts.append(shape_mask(lambda x, y, z: np.minimum(
            _sd_ellipsoid(x, y, z, (-21.0, -36.0, 22.0), (9.0, 1.0 + 2.0 * eff, 9.0 + 3 * eff)),
            _sd_ellipsoid(x, y, z, (21.0, -34.0, 22.0), (8.0, 1.0 + 1.5 * eff, 8.0 + 3 * eff))),
            (-32, -46, 0), (32, -24, 44)))
        block, mask = shape_mask(lambda x, y, z: _sd_ellipsoid(x, y, z, (0.0, 36.0, 20.0),
                                                               (30.0 + 2 * eff, 2.0 + 1.5 * eff, 10.0 + 3 * eff)),
                                 (-38, 24, 2), (38, 48, 38))
        mask &= np.abs(frame.coords(block, which=("x",))[0] - 4) > 14.0
        fluid_parts.append((block, mask))
    for block, mask in fluid_parts:
        paint(block, mask, L["joint_fluid"])
    labels[A][fluid_film] = L["joint_fluid"]

    # tendons and ligaments, anchored to the template's bones
    def capsule(a, b, radius, squash=(1.0, 1.0, 1.0)):
        """(fn, lo, hi) of a capsule and its shape-space box."""
        a, b = np.asarray(a, float), np.asarray(b, float)
        reach = radius * max(squash) + 2.0
        return (lambda x, y, z: _sd_capsule(x, y, z, a, b, radius, squash=squash),
                np.minimum(a, b) - reach, np.maximum(a, b) + reach)

    pole, tuberosity = landmark("patella_inferior_pole"), landmark("tibial_tuberosity")
    top, patella_c = landmark("patella_superior_pole"), landmark("patella_centre")
    for fn, lo, hi in (
            capsule(pole + (0.0, 1.0, 4.0), tuberosity + (0.0, 2.0, -2.0), 2.6, squash=(4.5, 1.0, 1.0)),
            capsule((patella_c[0], patella_c[1] + 3.0, top[2] - 2.0), (patella_c[0] - 3.0, patella_c[1] - 9.0, top[2] + 68.0),
                    3.0, squash=(5.0, 1.0, 1.0))):
        block, mask = shape_mask(fn, lo, hi)
        paint(block, mask, L["patellar_tendon"], only_inside=True)
    block, mask = shape_mask(lambda x, y, z: _sd_capsule(x, y, z, (10.0, -16.0, 21.0), (-2.0, 11.0, -1.0), 3.0),
                             (-6, -20, -5), (14, 15, 25))
    paint(block, mask, L["acl"])
    block, mask = shape_mask(lambda x, y, z: np.minimum(
        _sd_capsule(x, y, z, (-1.0, 4.0, 20.0), (0.0, -12.0, 10.0), 3.8),
        _sd_capsule(x, y, z, (0.0, -12.0, 10.0), (0.0, -27.0, -10.0), 3.8)), (-6, -32, -15), (6, 9, 25))
    paint(block, mask, L["pcl"])
    # medial collateral: along the medial margins; lateral: epicondyle to the fibular head
    mcl_x = min(landmark("femur_margin_medial")[0], landmark("tibia_margin_medial")[0]) - 5.0
    lcl_x = landmark("femur_margin_lateral")[0] + 3.0
    for fn, lo, hi in (
            capsule((mcl_x, -4.0, 30.0), (mcl_x + 3.5, 0.0, -45.0), 1.4, squash=(1.0, 5.0, 1.0)),
            capsule((lcl_x, -6.0, 28.0), (34.0, -20.0, -30.0), 1.8)):
        block, mask = shape_mask(fn, lo, hi)
        paint(block, mask, L["collateral_ligament"],
              where=(bone_distance("femur", block) > 0) & (bone_distance("tibia", block) > 0))

    lab_a = labels[A]
    lab_a[meniscus_m] = L["meniscus_medial"]
    lab_a[meniscus_l] = L["meniscus_lateral"]
    lab_a[femoral_cart] = L["femoral_cartilage"]
    lab_a[tibial_cart & (tibial_region == CARTILAGE_REGIONS.index("TM") + 1)] = L["tibial_cartilage_medial"]
    lab_a[tibial_cart & (tibial_region == CARTILAGE_REGIONS.index("TL") + 1)] = L["tibial_cartilage_lateral"]
    lab_a[patellar_cart] = L["patellar_cartilage"]
    cortex = np.zeros(shape, bool)
    for name in ("fibula", "tibia", "femur", "patella"):
        f = fields[name]
        d = dense[name]
        inside_bone = d < 0
        labels[f.block][inside_bone] = L[name]
        thickness = 1.3 * s if name == "fibula" else 1.3
        cortex[f.block] |= inside_bone & (d > -thickness)
    # a later bone overwrites an earlier one: the cortex belongs to the bone that is labelled
    bone_codes = np.array([L["femur"], L["tibia"], L["patella"], L["fibula"]])
    bone_a = np.isin(lab_a, bone_codes)

    masks = {name: np.zeros(shape, bool) for name in LESION_MASKS}
    masks["osteophyte"] = osteophyte_mask & np.isin(labels, bone_codes) if osteophyte_mask.any() else osteophyte_mask

    # --- subchondral sclerosis (denser bone under the weight-bearing surfaces) -----------
    sclerosis = np.zeros(shape, bool)
    for grade, medial in ((spec.sclerosis_medial, True), (spec.sclerosis_lateral, False)):
        if grade <= 0:
            continue
        depth = 2.0 + 2.5 * grade
        comp = (Xs < -8.0) if medial else (Xs > 8.0)
        compx = landmark("condyle_low_medial" if medial else "condyle_low_lateral")[0]
        near = np.abs(Xs - compx) < 15.0
        sclerosis[A] |= comp & near & (((fd < 0) & (fd > -depth) & (Zf < 8.0))
                                       | ((td < 0) & (td > -depth) & (Zt > -depth - 2))) & bone_a

    # --- bone marrow lesions ------------------------------------------------------------
    bml_centres = {"FM": (landmark("condyle_low_medial"), "femur"),
                   "FL": (landmark("condyle_low_lateral"), "femur"),
                   "TM": (landmark("plateau_centre_medial"), "tibia"),
                   "TL": (landmark("plateau_centre_lateral"), "tibia"),
                   "P": (landmark("patella_centre"), "patella")}
    for region_name, grade in spec.bml_sites:
        centre, bone_name = bml_centres[region_name]
        radius = BML_RADIUS_MM[int(grade)]
        jitter = lesion_rng.normal(scale=3.0, size=3) * np.array([1.0, 1.5, 0.3])
        c = np.asarray(centre) + jitter
        if bone_name == "femur":
            c[2] = radius * 0.7
        elif bone_name == "tibia":
            c[2] = -radius * 0.7
        radii = (radius * 1.1, radius * 1.3, radius * 0.8)
        which = {"femur": "f", "tibia": "t", "patella": "f"}[bone_name]
        block = region(c - 1.6 * np.array(radii), c + 1.6 * np.array(radii), margin=4.0)
        blob = evaluate(lambda x, y, z: _sd_ellipsoid(x, y, z, c, radii), which, block)
        blob = blob + 1.5 * _noise_field(lesion_rng, blob.shape, sigma=2.0 / voxel_mm, where=blob < 5.0)
        owner = labels[block] == L[bone_name]
        masks["bml"][block] |= (blob < 0) & owner

    # --- Hoffa-synovitis: hyperintense strands in the fat pad ---------------------------
    if spec.hoffa_synovitis_grade > 0:
        block, core = shape_mask(lambda x, y, z: _sd_ellipsoid(x, y, z, (0.0, 22.0, -6.0), (16.0, 8.0, 11.0)),
                                 (-18, 12, -19), (18, 32, 7))
        texture = _noise_field(lesion_rng, core.shape, sigma=1.8 / voxel_mm, where=core)
        threshold = {1: 1.4, 2: 0.9, 3: 0.4}[int(spec.hoffa_synovitis_grade)]
        masks["hoffa_synovitis"][block] = (labels[block] == L["hoffa_fat_pad"]) & core & (texture > threshold)

    # --- focal cartilage loss: defects filled with fluid ---------------------------------
    # centres (x, y) on the tibiofemoral surfaces, (x, z) on the patella and trochlea
    defect_centres = {"FM": landmark("condyle_low_medial")[:2], "FL": landmark("condyle_low_lateral")[:2],
                      "TM": landmark("plateau_centre_medial")[:2], "TL": landmark("plateau_centre_lateral")[:2],
                      "P": landmark("patella_centre")[[0, 2]], "TR": landmark("trochlea_centre")[[0, 2]]}
    loss_a = masks["cartilage_loss"][A]
    for region_name, fraction in spec.cartilage_loss_fraction.items():
        if fraction <= 0:
            continue
        code = CARTILAGE_REGIONS.index(region_name) + 1
        radius = 4.0 + 9.0 * fraction
        cx, cy = defect_centres[region_name]
        cx += lesion_rng.normal(scale=2.0)
        cy += lesion_rng.normal(scale=3.0)
        if region_name in ("P", "TR"):
            disc = ((Xs - cx) ** 2 + (Zf - cy) ** 2) < radius ** 2
        else:
            disc = ((Xs - cx) ** 2 + (Ys - cy) ** 2) < radius ** 2
        lost = (cartilage_region == code) & disc & (cartilage_depth.astype(np.float32) > 1.0 - fraction - 0.02)
        loss_a |= lost
        lab_a[lost] = L["joint_fluid"]
        cartilage_depth[lost] = 0
        cartilage_region[lost] = 0

    # --- meniscal damage: tears (fluid clefts) and maceration ---------------------------
    damage_a = masks["meniscal_damage"][A]
    for grade, medial in ((spec.meniscal_damage_medial, True), (spec.meniscal_damage_lateral, False)):
        if grade <= 0:
            continue
        code = L["meniscus_medial"] if medial else L["meniscus_lateral"]
        this = lab_a == code
        cx, cy = landmark("plateau_centre_medial" if medial else "plateau_centre_lateral")[:2]
        posterior_horn = this & (Ys < cy - 4.0)
        if grade == 1:     # intrasubstance horizontal signal
            cleft = posterior_horn & (np.abs(td - 2.2) < 0.6)
            damaged = posterior_horn & (np.abs(td - 2.2) < 1.6)
        elif grade == 2:   # horizontal/oblique tear reaching the surface
            radial_mm = np.sqrt((Xs - cx) ** 2 + (Ys - cy) ** 2)
            cleft = posterior_horn & (np.abs(td - 1.2 - 0.12 * radial_mm) < 0.7)
            damaged = posterior_horn
        else:              # maceration: posterior horn and body largely gone
            cleft = this & (Ys < cy + 6.0) & (lesion_rng.random(shape_a) < 0.6)
            damaged = this & (Ys < cy + 6.0)
        lab_a[cleft] = L["joint_fluid"]
        damage_a |= damaged

    # --- effusion-synovitis mask: the effusion's fluid as finally labelled ---------------
    if eff >= 1:
        for block, mask in fluid_parts:
            masks["effusion_synovitis"][block] |= mask & (labels[block] == L["joint_fluid"])

    # --- foreign object (QC artefact): a small metal sphere in the anterior soft tissue --
    foreign = None
    if spec.artefact == "foreign_object":
        centre_shape = np.array([lesion_rng.uniform(-25, 25), 52.0 + lesion_rng.uniform(0, 6), lesion_rng.uniform(-40, -10)])
        centre_mm = centre_shape * s
        centre_mm[0] *= mirror
        radius = float(lesion_rng.uniform(1.5, 3.0))
        foreign = (centre_mm, radius)
        reach = 4.0 * radius          # susceptibility signal void on MRI
        block = _block(ax, ay, az, *((c - reach, c + reach) for c in centre_mm), margin=1.0)
        rr = ((ax[block[0], None, None] - centre_mm[0]) ** 2 + (ay[None, block[1], None] - centre_mm[1]) ** 2
              + (az[None, None, block[2]] - centre_mm[2]) ** 2)
        masks["foreign_object"][block] = rr < reach ** 2

    depth_full = np.zeros(shape, np.float16)
    depth_full[A] = cartilage_depth
    region_full = np.zeros(shape, np.uint8)
    region_full[A] = cartilage_region
    # --- landmarks (knee-local mm; the deformation of z is a function of x, y) ---------
    landmarks = _landmarks(spec, landmark, s, mirror, ax, ay, az, frame.dz_columns())
    gain = _soft_tissue_gain(labels, _texture_field(int(spec.shape_seed), spec.side, float(voxel_mm), s))
    origin = np.array([ax[0], ay[0], az[0]], dtype=float)
    return KneeModel(
        spec=spec, labels=labels, voxel_mm=float(voxel_mm), origin_mm=origin,
        lesion_masks=masks, landmarks_mm=landmarks, cartilage_depth=depth_full,
        cartilage_region=region_full, cortex=cortex & np.isin(labels, bone_codes), sclerosis=sclerosis,
        foreign_object=foreign,
        pose_matrix=pose_matrix(spec.flexion_deg, spec.rotation_deg, spec.varus_deg, spec.offset_mm, spec.side),
        side=spec.side, soft_tissue_gain=gain,
    )


@lru_cache(maxsize=2)   # right and left knee of the subject being rendered
def _texture_field(shape_seed: int, side: str, voxel_mm: float, size_scale: float) -> np.ndarray:
    """MR gain texture of a knee's muscle and fat from a smooth random field (read-only, cached).

    Drawn on a lattice of about 2.5 mm with correlation lengths of about 2.5 mm across
    and 9 mm along the limb (muscle fibres and fascia run along ``z``), interpolated to
    the label grid. Depends only on the knee's shape seed, side and grid, so the
    12-month visit reuses the baseline's field. The left knee's field is the mirror of
    the right knee's (same seed).
    """
    ax, ay, az = _grid_axes(voxel_mm)
    step = max(1, int(round(2.5 / voxel_mm)))
    centre_x = (ax.size - 1) // 2
    lattice = []
    for axis, n in enumerate((ax.size, ay.size, az.size)):
        anchor = centre_x if axis == 0 else 0
        first = anchor % step
        last = first + ((n - 1 - first) // step) * step     # nodes symmetric about the centre in x
        lattice.append((first, (last - first) // step + 1))
    rng = np.random.default_rng([int(shape_seed), 11])
    coarse = rng.standard_normal(tuple(m for _, m in lattice), dtype=np.float32)
    sigma = (1.0 / size_scale, 1.0 / size_scale, 3.6 / size_scale)
    coarse = ndimage.gaussian_filter(coarse, sigma=sigma, mode="mirror")
    coarse /= max(float(coarse.std()), 1e-6)
    if side == "L":
        coarse = coarse[::-1]
    values = coarse
    for axis, ((first, m), n) in enumerate(zip(lattice, (ax.size, ay.size, az.size))):
        offset = np.clip(np.arange(n) - first, 0, (m - 1) * step)
        values = _lerp_axis(values, axis, offset // step, offset % step, step)
    # MR gain: heterogeneity (+-10 %) and thin dark septa (fascia) along the field's zero set
    septa = values * np.float32(1.0 / 0.12)
    np.square(septa, out=septa)
    np.negative(septa, out=septa)
    np.exp(septa, out=septa)
    gain = np.float32(1.0) + np.float32(0.10) * values
    gain *= np.float32(1.0) - np.float32(0.55) * septa
    out = gain
    out.setflags(write=False)
    return out


def _soft_tissue_gain(labels: np.ndarray, gain_field: np.ndarray) -> np.ndarray:
    """The texture gain on muscle and fat voxels, 1 elsewhere."""
    tissue = (labels == L["muscle"]) | (labels == L["subcutaneous_fat"])
    return np.where(tissue, gain_field, np.float32(1.0))


def _block(ax, ay, az, xr, yr, zr, margin=6.0):
    """Index slices of the grid covering a knee-local box (ranges in mm, plus a margin)."""
    def rng_(a, r):
        lo = int(np.searchsorted(a, r[0] - margin))
        hi = int(np.searchsorted(a, r[1] + margin))
        return slice(max(lo, 0), min(hi, a.size))
    return (rng_(ax, xr), rng_(ay, yr), rng_(az, zr))


def _noise_field(rng, shape, sigma, where=None):
    """Smooth unit-variance Gaussian random field (for lesion outlines and texture).

    With ``where`` (a boolean array of ``shape``) the field is drawn only on the
    bounding box of ``where`` (zero elsewhere), which keeps small lesions cheap.
    """
    out = np.zeros(shape, np.float32)
    if where is not None:
        idx = np.nonzero(where)
        if idx[0].size == 0:
            return out
        sl = tuple(slice(max(int(i.min()) - 4, 0), int(i.max()) + 5) for i in idx)
    else:
        sl = tuple(slice(0, n) for n in shape)
    sub_shape = tuple(q.stop - q.start if q.stop <= n else n - q.start for q, n in zip(sl, shape))
    field_ = ndimage.gaussian_filter(rng.standard_normal(sub_shape).astype(np.float32), sigma)
    out[sl] = field_ / max(float(field_.std()), 1e-6)
    return out


def _landmarks(spec, landmark, s, mirror, ax, ay, az, dz):
    """Landmarks in knee-local mm (deformation of z is a function of x, y: look it up).

    ``landmark(name)`` gives a template landmark in the knee's shape space.
    """
    def dz_at(x, y):
        i = int(np.clip(np.searchsorted(ax, x), 0, ax.size - 1))
        j = int(np.clip(np.searchsorted(ay, y), 0, ay.size - 1))
        return float(dz[i, j, 0])

    out = {}
    def put(name, x_shape, y_shape, z_local_fn):
        x, y = x_shape * s, y_shape * s
        z = z_local_fn(x) - dz_at(x * mirror, y)
        out[name] = np.array([x * mirror, y, z])

    gm, gl = spec.jsw_medial_mm, spec.jsw_lateral_mm
    margin_m, margin_l = landmark("tibia_margin_medial"), landmark("tibia_margin_lateral")
    # the end points of each compartment's minimum joint space width (radiographic mJSW):
    # the femur's lowest and the tibia's highest point at that medio-lateral position
    for side, gap in (("medial", gm), ("lateral", gl)):
        femur_pt, tibia_pt = landmark(f"jsw_femur_{side}"), landmark(f"jsw_tibia_{side}")
        put(f"condyle_lowest_{side}", femur_pt[0], femur_pt[1], lambda x, h=femur_pt[2], g=gap: h * s + g / 2)
        put(f"plateau_{side}", tibia_pt[0], tibia_pt[1], lambda x, h=tibia_pt[2], g=gap: h * s - g / 2)
    put("plateau_margin_medial", margin_m[0], margin_m[1], lambda x: margin_m[2] * s - gm / 2)
    put("plateau_margin_lateral", margin_l[0], margin_l[1], lambda x: margin_l[2] * s - gl / 2)
    put("joint_centre", 0.0, 0.0, lambda x: 0.0)
    put("pcl_centre", 0.0, -12.0, lambda x: 10.0 * s)
    patella = landmark("patella_centre")
    put("patella_centre", patella[0], patella[1], lambda x: patella[2] * s + (gm + gl) / 4)
    out["pcl_normal"] = np.array([1.0, 0.0, 0.0])
    return out


def _validate(spec: KneeSpec, voxel_mm: float) -> None:
    if spec.side not in ("R", "L"):
        raise ValueError(f"KneeSpec.side must be 'R' or 'L', got {spec.side!r} ({spec.participant_id})")
    if not 0.2 <= voxel_mm <= 4.0:
        raise ValueError(f"voxel_mm must be in [0.2, 4] mm, got {voxel_mm}")
    for name in ("jsw_medial_mm", "jsw_lateral_mm"):
        value = getattr(spec, name)
        if not 0.0 <= value <= 12.0:
            raise ValueError(f"KneeSpec.{name} must be in [0, 12] mm, got {value} ({spec.participant_id})")
    for site, grade in spec.osteophyte_grade.items():
        if int(grade) not in OSTEOPHYTE_LENGTH_MM:
            raise ValueError(f"KneeSpec.osteophyte_grade[{site!r}] must be 0-3, got {grade}")
    for region, grade in spec.bml_sites:
        if region not in ("FM", "FL", "TM", "TL", "P") or int(grade) not in BML_RADIUS_MM:
            raise ValueError(f"KneeSpec.bml_sites entry ({region!r}, {grade}) is not (FM|FL|TM|TL|P, 1-3)")
    if spec.artefact not in ("", "motion", "missing_slices", "foreign_object"):
        raise ValueError(f"KneeSpec.artefact must be '', 'motion', 'missing_slices' or 'foreign_object', got {spec.artefact!r}")
