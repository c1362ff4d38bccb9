"""Render OAI MR series of a synthetic knee from tissue properties and signal equations.

Step 2 of "A synthetic knee from physics" (``DESIGN.md``; issue 3, section 2). Each
series is rendered on its own OAI grid (:mod:`kneelib.synth.protocols`):

1. Signal per voxel of the knee's label grid from its signal equation
   (:func:`spin_echo_signal`, :func:`dess_signal`; MSME: proton-density-weighted
   amplitude and T2 sampled once, one image per echo), with fat suppression removing
   the fat fraction's signal, cartilage T2 rising from deep to superficial plus the
   region's degeneration, lesion tissues overriding (BML, Hoffa-synovitis), cortex and
   sclerosis dark.
2. Partial volume from the slice profile (a box of the slice thickness along the
   slice normal), then trilinear sampling at every pixel centre of the series,
   through the knee's pose and the patient (LPS) placement of the knee.
3. A smooth coil sensitivity (bias) field, artefacts when the spec plants one
   (motion ghosting along phase encoding, missing slices leaving a real gap in slice
   positions, a metal object's signal void), Rician noise, uint16 storage.

Labels and lesion masks are resampled on the same grid (nearest neighbour), and for
sagittal series the index of the slice nearest the PCL plane is the ground-truth
centre slice of study 000 (Chang et al., Methods: 11 + 1 + 11 slices around the PCL).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from kneelib.synth.anatomy import KneeModel
from kneelib.synth.oai_writer import SliceGeometry
from kneelib.synth.protocols import MRProtocol
from kneelib.synth.spec import CARTILAGE_REGIONS, LESION_MASKS, TISSUE_LABELS
from kneelib.synth.tissue import (FAT_T1_MS, FAT_T2_MS, LESION_TISSUES, MARROW_T2STAR_MS, TRABECULAR_GRAIN_MM,
                                  cartilage_t2_ms, property_table, trabecular_contrast)

__all__ = ["RenderedSeries", "render_series", "spin_echo_signal", "dess_signal", "knee_centre_lps",
           "knee_to_lps_matrix"]

L = TISSUE_LABELS
_CARTILAGE_CODES = np.array([L["femoral_cartilage"], L["tibial_cartilage_medial"],
                             L["tibial_cartilage_lateral"], L["patellar_cartilage"]])
_BONE_CODES = np.array([L["femur"], L["tibia"], L["patella"], L["fibula"]])


@dataclass
class RenderedSeries:
    """One rendered MR series and its ground truth on the same grid.

    Attributes
    ----------
    pixels : ndarray of uint16
        ``(slices, rows, cols)`` or ``(echoes, slices, rows, cols)`` (MSME).
    geometry : SliceGeometry
        Orientation, per-slice ``ImagePositionPatient`` (LPS mm), pixel spacing,
        slice thickness (:class:`kneelib.synth.oai_writer.SliceGeometry`).
    header : dict
        DICOM keywords: ``SeriesDescription``, ``Laterality``, ``RepetitionTime``,
        ``EchoTime`` (a list for MSME), ``FlipAngle``, ``ScanningSequence``,
        ``SequenceName``, ``MRAcquisitionType``.
    labels : ndarray of uint8, shape (slices, rows, cols)
        ``TISSUE_LABELS`` codes at each pixel (nearest).
    lesion_masks : dict of str -> ndarray of bool
        Each of ``LESION_MASKS`` on the pixel grid.
    pcl_slice_index : int or None
        Index (into ``pixels``' slice axis) of the slice nearest the PCL plane, for
        sagittal series.
    protocol : MRProtocol
    """

    pixels: np.ndarray
    geometry: SliceGeometry
    header: dict
    labels: np.ndarray
    lesion_masks: dict[str, np.ndarray]
    pcl_slice_index: int | None
    protocol: MRProtocol
    extras: dict = field(default_factory=dict)


class _CroppedKnee:
    """The per-voxel arrays of a :class:`KneeModel` restricted to a block (views)."""

    def __init__(self, knee: KneeModel, block):
        self.spec = knee.spec
        self.labels = knee.labels[block]
        self.cartilage_region = knee.cartilage_region[block]
        self.cartilage_depth = knee.cartilage_depth[block]
        self.cortex = knee.cortex[block]
        self.sclerosis = knee.sclerosis[block]
        present = knee.extras.get("_present_masks")
        if present is None:          # which per-voxel masks are non-empty (cached on the model)
            present = {k: bool(m.any()) for k, m in knee.lesion_masks.items()}
            present.update(cortex=bool(knee.cortex.any()), sclerosis=bool(knee.sclerosis.any()))
            knee.extras["_present_masks"] = present
        self.present = present
        self.lesion_masks = {k: m[block] if present[k] else _EmptyMask(m[block].shape)
                             for k, m in knee.lesion_masks.items()}
        self.foreign_object = knee.foreign_object
        self.soft_tissue_gain = None if knee.soft_tissue_gain is None else knee.soft_tissue_gain[block]


def _label_code(knee: KneeModel) -> np.ndarray:
    """Labels (bits 0-4) and lesion masks (bit ``5 + i`` for ``LESION_MASKS[i]``), cached on the model."""
    code = knee.extras.get("_label_code")
    if code is None:
        code = knee.labels.astype(np.uint16)
        for i, name in enumerate(LESION_MASKS):
            mask = knee.lesion_masks[name]
            if mask.any():
                code |= mask.astype(np.uint16) << (5 + i)
        knee.extras["_label_code"] = code
    return code


class _EmptyMask:
    """Stand-in for an all-False mask block: ``any()`` is False without a pass over memory."""

    def __init__(self, shape):
        self.shape = shape

    def any(self):
        return False


# ----------------------------------------------------------------------------------------
# Signal equations
# ----------------------------------------------------------------------------------------

def spin_echo_signal(proton_density, t1_ms, t2_ms, tr_ms, te_ms):
    """Spin-echo (TSE) magnitude: ``PD (1 - exp(-TR/T1)) exp(-TE/T2)``."""
    return proton_density * (1.0 - np.exp(-tr_ms / t1_ms)) * np.exp(-te_ms / t2_ms)


def dess_signal(proton_density, t1_ms, t2_ms, tr_ms, te_ms, flip_deg):
    """Double-echo steady state: sum of the FISP (S+) and PSIF (S-) echoes.

    Steady-state expressions of Hänicke & Vogel (MRM 2003;49:771) / Bruder et al.
    (MRM 1988;7:35) with ``T2*`` approximated by ``T2``; the OAI DESS image is the sum
    of both echoes (Peterfy et al. 2008).
    """
    alpha = np.deg2rad(flip_deg)
    e1 = np.exp(-tr_ms / t1_ms)
    e2 = np.exp(-tr_ms / t2_ms)
    cos_a = np.cos(alpha)
    p = 1 - e1 * cos_a - e2 ** 2 * (e1 - cos_a)
    q = e2 * (1 - e1) * (1 + cos_a)
    root = np.sqrt(np.maximum(p * p - q * q, 1e-12))
    tan_half = np.tan(alpha / 2)
    s_plus = tan_half * (1 - (e1 - cos_a) * (1 - e2 ** 2) / root)
    s_minus = tan_half * (1 - (1 - e1 * cos_a) * (1 - e2 ** 2) / root)
    return proton_density * (s_plus * np.exp(-te_ms / t2_ms) + s_minus * np.exp(-(2 * tr_ms - te_ms) / t2_ms))


def _signal(protocol: MRProtocol, pd, t1, t2, te_ms):
    if protocol.sequence == "dess":
        return dess_signal(pd, t1, t2, protocol.repetition_time_ms, te_ms, protocol.flip_angle_deg)
    return spin_echo_signal(pd, t1, t2, protocol.repetition_time_ms, te_ms)


def _tissue_signal(protocol, pd, t1, t2, fat_fraction, te_ms):
    """Water plus (suppressed) fat signal of tissues with given properties."""
    water = _signal(protocol, pd * (1 - fat_fraction), t1, t2, te_ms)
    fat = _signal(protocol, pd * fat_fraction, FAT_T1_MS, FAT_T2_MS, te_ms)
    return water + (1.0 - protocol.fat_suppression) * fat


def _signal_volume(model: KneeModel, protocol: MRProtocol, te_ms: float, t2_map: bool = False):
    """Signal (or, with ``t2_map``, the (amplitude, T2) pair) on the knee's label grid."""
    table = property_table()
    codes = np.arange(table["t1_ms"].size)
    lut = _tissue_signal(protocol, table["proton_density"], table["t1_ms"], table["t2_ms"],
                         table["fat_fraction"], te_ms).astype(np.float32)
    if protocol.scanning_sequence == "GR":
        # gradient echo: the trabecular lattice dephases marrow (T2* far below T2), so
        # marrow is darker on DESS than on spin echo, as on real DESS
        bones = _BONE_CODES
        lut[bones] *= np.exp(-te_ms * (1.0 / MARROW_T2STAR_MS - 1.0 / table["t2_ms"][bones])).astype(np.float32)
    volume = lut[model.labels]
    if model.soft_tissue_gain is not None:
        volume *= model.soft_tissue_gain
    cart = model.cartilage_region > 0
    if cart.any():
        elevation = np.zeros(len(CARTILAGE_REGIONS) + 1, np.float32)
        for i, region in enumerate(CARTILAGE_REGIONS):
            elevation[i + 1] = float(model.spec.cartilage_t2_elevation_ms.get(region, 0.0))
        t2 = cartilage_t2_ms(model.cartilage_depth[cart], elevation[model.cartilage_region[cart]])
        tissue = table  # cartilage PD/T1 from the femoral cartilage entry
        c = L["femoral_cartilage"]
        volume[cart] = _signal(protocol, tissue["proton_density"][c], tissue["t1_ms"][c], t2, te_ms)
    for name, mask in (("sclerosis", model.sclerosis), ("bml", model.lesion_masks["bml"]),
                       ("hoffa_synovitis", model.lesion_masks["hoffa_synovitis"]), ("cortex", model.cortex)):
        if mask.any():
            t = LESION_TISSUES[name]
            volume[mask] = _tissue_signal(protocol, t.proton_density, t.t1_ms, t.t2_ms, t.fat_fraction, te_ms)
    if model.foreign_object is not None:
        void = model.lesion_masks["foreign_object"]
        rim = ndimage.binary_dilation(void, iterations=2) & ~void
        volume[rim] *= 2.5
        volume[void] = 0.0
    del codes
    return volume


# ----------------------------------------------------------------------------------------
# Geometry
# ----------------------------------------------------------------------------------------

def knee_centre_lps(side: str) -> np.ndarray:
    """Where the scanner frame's knee origin lies in patient LPS mm (right knee at -x)."""
    return np.array([-95.0 if side == "R" else 95.0, 0.0, 0.0])


def knee_to_lps_matrix(model: KneeModel) -> np.ndarray:
    """(4, 4) affine from knee-local mm (unposed) to patient LPS mm.

    Knee-local ``x`` is lateral for a right knee (patient right, LPS ``-x``) and the
    left knee is already mirrored (lateral at local ``-x``, LPS ``+x``), so both sides
    map with ``x_LPS = -x_local``; anterior ``+y`` becomes LPS ``-y``.
    """
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    place = np.eye(4)
    place[:3, 3] = knee_centre_lps(model.side)
    return place @ flip @ model.pose_matrix


def _series_frame(protocol: MRProtocol):
    """Unit row direction, column direction and slice normal (LPS)."""
    if protocol.orientation == "sagittal":
        # columns run anterior -> posterior (+y), rows superior -> inferior; slices right -> left
        return np.array([0.0, 1.0, 0.0]), np.array([0.0, 0.0, -1.0]), np.array([1.0, 0.0, 0.0])
    if protocol.orientation == "coronal":
        return np.array([1.0, 0.0, 0.0]), np.array([0.0, 0.0, -1.0]), np.array([0.0, 1.0, 0.0])
    raise ValueError(f"protocol {protocol.key}: unknown orientation {protocol.orientation!r}")


def _plan_geometry(model: KneeModel, protocol: MRProtocol, rng: np.random.Generator):
    """Place the field of view on the knee as a technologist would (with jitter).

    Returns the first-pixel position of slice 0, the three direction vectors, and the
    number of slices; sagittal stacks keep the PCL at least 11 slices from either end.
    """
    row_dir, col_dir, normal = _series_frame(protocol)
    to_lps = knee_to_lps_matrix(model)
    joint = (to_lps @ np.append(model.landmarks_mm["joint_centre"], 1.0))[:3]
    pcl = (to_lps @ np.append(model.landmarks_mm["pcl_centre"], 1.0))[:3]
    fov_v, fov_h = protocol.rows * protocol.row_spacing_mm, protocol.cols * protocol.col_spacing_mm
    centre = joint + rng.normal(scale=3.0, size=3)
    n = protocol.n_slices
    if protocol.orientation == "sagittal":
        margin = max(0, (n - 23) // 2)
        shift = int(np.clip(np.round(rng.normal(scale=1.5)), -min(margin, 3), min(margin, 3)))
        centre_slice_pos = float(pcl @ normal) + shift * protocol.slice_spacing_mm
        # put a slice centre close to (not exactly on) the PCL plane
        centre_slice_pos += rng.uniform(-0.3, 0.3) * protocol.slice_spacing_mm
    else:
        centre_slice_pos = float(joint @ normal) + rng.normal(scale=2.0)
    in_plane = centre - (centre @ normal) * normal
    first = (in_plane - row_dir * (fov_h / 2 - protocol.col_spacing_mm / 2)
             - col_dir * (fov_v / 2 - protocol.row_spacing_mm / 2)
             + normal * (centre_slice_pos - (n - 1) / 2 * protocol.slice_spacing_mm))
    return first, row_dir, col_dir, normal, pcl


def _sampling_affine(model, protocol, first, row_dir, col_dir, normal, n_slices):
    """Affine from output index (slice, row, col) to label-grid voxel index.

    Returns
    -------
    matrix : ndarray, shape (3, 3)
    offset : ndarray, shape (3,)
    normal_index : ndarray, shape (3,)
        The slice normal in label-grid index axes (for the slice-profile blur).
    """
    to_lps = knee_to_lps_matrix(model)
    lps_to_index = np.linalg.inv(to_lps @ model.index_to_mm())
    rot, trans = lps_to_index[:3, :3], lps_to_index[:3, 3]
    matrix = np.stack([rot @ normal * protocol.slice_spacing_mm, rot @ col_dir * protocol.row_spacing_mm,
                       rot @ row_dir * protocol.col_spacing_mm], axis=1)
    offset = rot @ first + trans
    del n_slices
    return matrix, offset, rot @ normal


def _crop_to_field(model, matrix, offset, output_shape, margin):
    """Label-grid slices covering every sample point of the series (plus ``margin`` voxels)."""
    corners = np.array([[i, j, k] for i in (0, output_shape[0] - 1) for j in (0, output_shape[1] - 1)
                        for k in (0, output_shape[2] - 1)], float)
    points = corners @ matrix.T + offset
    lo = np.floor(points.min(axis=0)).astype(int) - margin
    hi = np.ceil(points.max(axis=0)).astype(int) + margin + 1
    shape = model.labels.shape
    return tuple(slice(int(np.clip(l, 0, n - 1)), int(np.clip(h, 1, n))) for l, h, n in zip(lo, hi, shape))


def _slice_profile_blur(volume, slice_normal_index, thickness_mm, voxel_mm):
    """Partial volume: the slice profile along the slice normal, the in-plane PSF across.

    A box of the slice thickness along the label-grid axis nearest the slice normal,
    and a Gaussian of half a label voxel along the two other axes: the point-spread
    function of the truncated k-space (about one pixel wide) that a label grid's
    voxel steps would otherwise show as staircase edges.
    """
    axis = int(np.argmax(np.abs(slice_normal_index)))
    width = thickness_mm / voxel_mm
    if width > 1.2:
        volume = ndimage.uniform_filter1d(volume, size=max(1, int(round(width))), axis=axis, mode="nearest")
    for other in range(3):
        if other != axis:
            volume = ndimage.gaussian_filter1d(volume, 0.5, axis=other, mode="nearest", truncate=2.0)
    return volume


def _bias_field(shape, amplitude, rng):
    """Smooth multiplicative coil sensitivity on the image grid, as per-axis factors.

    ``exp`` of a sum of per-axis quadratics is a product of per-axis profiles; the
    three 1-D factors (broadcastable to ``shape``) are returned instead of the volume.
    """
    factors = []
    for axis, n in enumerate(shape):
        coords = np.linspace(-1, 1, n, dtype=np.float32)
        coeff = rng.normal(scale=amplitude / 2, size=2)
        profile = np.exp(coeff[0] * coords + coeff[1] * (coords ** 2 - 0.33)).astype(np.float32)
        shp = [1, 1, 1]
        shp[axis] = -1
        factors.append(profile.reshape(shp))
    return factors


def _apply_bias(image, factors):
    """Multiply an image in place by the separable bias field."""
    for factor in factors:
        image *= factor
    return image


def _trabecular_gain(labels, protocol, rng):
    """Mean-one multiplicative texture of trabecular marrow on the series' pixel grid.

    Marrow signal comes from the fat and water between trabeculae (plates and rods
    about 0.1-0.2 mm thick, 0.5-1.5 mm apart) that give no signal themselves; a voxel
    averages a few of them, so the marrow looks mottled at the millimetre scale, with
    a grain along the principal compressive trabeculae (superior-inferior, the image
    rows). Low-pass Gaussian noise per slice (:data:`TRABECULAR_GRAIN_MM`), its
    contrast falling with voxel volume (:func:`kneelib.synth.tissue.trabecular_contrast`).
    Returns None when the grid holds no bone.
    """
    bone = np.isin(labels, _BONE_CODES)
    if not bone.any():
        return None
    bounds = []
    for axis in range(3):
        present = np.flatnonzero(bone.any(axis=tuple(a for a in range(3) if a != axis)))
        bounds.append(slice(int(present[0]), int(present[-1]) + 1))
    block = tuple(bounds)
    along, across = TRABECULAR_GRAIN_MM
    sigma = (0.0, along / protocol.row_spacing_mm, across / protocol.col_spacing_mm)
    # low-passed white noise: its power sits at the trabecular scale already (no band-pass needed)
    band = ndimage.gaussian_filter(rng.standard_normal(bone[block].shape, dtype=np.float32), sigma, mode="wrap",
                                   truncate=2.5)
    band *= np.float32(trabecular_contrast(protocol.row_spacing_mm * protocol.col_spacing_mm
                                           * protocol.slice_thickness_mm) / max(float(band.std()), 1e-6))
    gain = np.ones(labels.shape, np.float32)
    gain[block] += np.where(bone[block], band, np.float32(0.0))
    return gain


def _motion_ghosts(image, rng, phase_axis):
    """Periodic motion: random phase errors on a fraction of phase-encode lines."""
    spectrum = np.fft.fft2(image, axes=(-2, -1))
    n = image.shape[phase_axis]
    lines = rng.random(n) < 0.35
    phase = np.zeros(n)
    phase[lines] = rng.normal(scale=1.2, size=int(lines.sum()))
    shape = [1] * image.ndim
    shape[phase_axis] = n
    spectrum *= np.exp(1j * phase).reshape(shape)
    return np.abs(np.fft.ifft2(spectrum, axes=(-2, -1))).astype(np.float32)


def _rician(signal, sigma, rng):
    """Magnitude of the signal plus complex Gaussian noise of SD ``sigma`` per channel."""
    sigma = np.float32(sigma)
    real = rng.standard_normal(signal.shape, dtype=np.float32)
    real *= sigma
    real += signal
    imag = rng.standard_normal(signal.shape, dtype=np.float32)
    imag *= sigma
    np.multiply(real, real, out=real)
    np.multiply(imag, imag, out=imag)
    real += imag
    return np.sqrt(real, out=real)


def render_series(knee: KneeModel, protocol: MRProtocol, rng: np.random.Generator) -> RenderedSeries:
    """Render one MR series of a knee on its OAI grid.

    Parameters
    ----------
    knee : KneeModel
        From :func:`kneelib.synth.anatomy.build_knee`.
    protocol : MRProtocol
        From :func:`kneelib.synth.protocols.mr_protocols`.
    rng : numpy.random.Generator
        Source of the placement jitter, bias field, artefacts and noise.

    Returns
    -------
    RenderedSeries

    Raises
    ------
    ValueError
        For a right-knee-only protocol (MSME T2) asked for a left knee.
    """
    if protocol.right_only and knee.side != "R":
        raise ValueError(f"protocol {protocol.key} is acquired on the right knee only; got side {knee.side!r}")
    first, row_dir, col_dir, normal, pcl_lps = _plan_geometry(knee, protocol, rng)
    n = protocol.n_slices
    slice_positions = np.arange(n) * protocol.slice_spacing_mm
    keep = np.ones(n, bool)
    if knee.spec.artefact == "missing_slices":
        gap = int(rng.integers(2, 4))
        start = int(rng.integers(1, n - gap - 1))
        keep[start:start + gap] = False
    matrix, offset, normal_index = _sampling_affine(knee, protocol, first, row_dir, col_dir, normal, n)
    output_shape = (n, protocol.rows, protocol.cols)
    blur_voxels = int(np.ceil(protocol.slice_thickness_mm / knee.voxel_mm)) + 2
    crop = _crop_to_field(knee, matrix, offset, output_shape, margin=blur_voxels)
    crop_offset = offset - np.array([q.start for q in crop], float)
    view = _CroppedKnee(knee, crop)

    def sample(volume, order=1, output=np.float32, cropped=True):
        """Sample a (cropped) label-grid volume at every pixel centre; drop missing slices."""
        image = ndimage.affine_transform(volume, matrix, offset=crop_offset if cropped else offset,
                                         output_shape=output_shape, order=order, mode="nearest", output=output,
                                         prefilter=False)
        return image if keep.all() else image[keep]

    slice_positions = slice_positions[keep]
    shape = (int(keep.sum()), protocol.rows, protocol.cols)
    bias = _bias_field(shape, protocol.bias_amplitude, rng)
    # labels (5 bits) and lesion masks (one bit each) in one nearest-neighbour pass
    code_img = sample(_label_code(knee), order=0, output=np.uint16, cropped=False)
    labels = (code_img & 31).astype(np.uint8)
    trabecular = _trabecular_gain(labels, protocol, rng)
    # noise and display scale are relative to the signal of free water in this sequence
    fluid = TISSUE_LABELS["joint_fluid"]
    table = property_table()
    reference = float(_tissue_signal(protocol, table["proton_density"][fluid], table["t1_ms"][fluid],
                                     table["t2_ms"][fluid], 0.0, protocol.echo_times_ms[0]))
    sigma = protocol.noise_fraction * reference
    phase_axis = -1
    blur = lambda v: _slice_profile_blur(v, normal_index, protocol.slice_thickness_mm, knee.voxel_mm)
    if protocol.sequence == "msme":
        # amplitude and rate sampled once, one image per echo
        amplitude = _signal_volume(view, protocol, te_ms=0.0)
        rate = (1.0 / table["t2_ms"])[view.labels]
        cart = view.cartilage_region > 0
        if cart.any():
            elevation = np.zeros(len(CARTILAGE_REGIONS) + 1, np.float32)
            for i, region in enumerate(CARTILAGE_REGIONS):
                elevation[i + 1] = float(knee.spec.cartilage_t2_elevation_ms.get(region, 0.0))
            rate[cart] = 1.0 / cartilage_t2_ms(view.cartilage_depth[cart], elevation[view.cartilage_region[cart]])
        for name, mask in (("bml", view.lesion_masks["bml"]), ("cortex", view.cortex)):
            if mask.any():
                rate[mask] = 1.0 / LESION_TISSUES[name].t2_ms
        fat = table["fat_fraction"][view.labels] > 0.5
        rate[fat] = 1.0 / FAT_T2_MS
        amp_img = _apply_bias(sample(blur(amplitude)), bias)
        if trabecular is not None:
            amp_img *= trabecular
        rate_img = sample(blur(rate.astype(np.float32)))
        echoes = []
        for te in protocol.echo_times_ms:
            image = amp_img * np.exp(-te * rate_img)
            if knee.spec.artefact == "motion":
                image = _motion_ghosts(image, np.random.default_rng(rng.integers(2 ** 32)), phase_axis)
            echoes.append(_rician(image, sigma, rng))
        signal = np.stack(echoes)
    else:
        volume = blur(_signal_volume(view, protocol, te_ms=protocol.echo_times_ms[0]))
        image = _apply_bias(sample(volume), bias)
        if trabecular is not None:
            image *= trabecular
        if knee.spec.artefact == "motion":
            image = _motion_ghosts(image, rng, phase_axis)
        signal = _rician(image, sigma, rng)
    pixels = np.clip(np.round(signal * (protocol.display_scale / reference)), 0, 65535).astype(np.uint16)

    masks = {name: ((code_img >> (5 + i) & 1).astype(bool) if view.present[name]
                    else np.zeros(code_img.shape, bool)) for i, name in enumerate(LESION_MASKS)}

    positions = tuple(tuple(float(v) for v in first + normal * p) for p in slice_positions)
    geometry = SliceGeometry(
        image_orientation_patient=tuple(float(v) for v in (*row_dir, *col_dir)),
        image_positions_patient=positions,
        pixel_spacing_mm=(float(protocol.row_spacing_mm), float(protocol.col_spacing_mm)),
        slice_thickness_mm=float(protocol.slice_thickness_mm),
        spacing_between_slices_mm=float(protocol.slice_spacing_mm),
    )
    side_word = "RIGHT" if knee.side == "R" else "LEFT"
    header = {
        "SeriesDescription": protocol.description.format(side=side_word),
        "Laterality": knee.side,
        "RepetitionTime": float(protocol.repetition_time_ms),
        "EchoTime": [float(t) for t in protocol.echo_times_ms] if protocol.sequence == "msme"
        else float(protocol.echo_times_ms[0]),
        "FlipAngle": float(protocol.flip_angle_deg),
        "ScanningSequence": protocol.scanning_sequence,
        "SequenceName": protocol.sequence_name,
        "MRAcquisitionType": protocol.acquisition_type,
    }
    pcl_index = None
    if protocol.orientation == "sagittal":
        distance = np.array([abs(float((pcl_lps - np.array(p)) @ normal)) for p in positions])
        pcl_index = int(np.argmin(distance))
    return RenderedSeries(pixels=pixels, geometry=geometry, header=header, labels=labels,
                          lesion_masks=masks, pcl_slice_index=pcl_index, protocol=protocol)
