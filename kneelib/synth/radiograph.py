"""Bilateral PA fixed-flexion knee radiographs as Beer-Lambert projections of the anatomy.

Step 3 of "A synthetic knee from physics" (``DESIGN.md``; issue 3, section 2): the
radiograph of a knee is the line integral of the X-ray attenuation map of the *same*
label volume the MR series come from (:mod:`kneelib.synth.anatomy`), so joint space
width per compartment, osteophytes at the OARSI sites and subchondral sclerosis on
the radiograph agree with the MRI by construction.

Geometry: posterior-anterior projection (source behind the knees) of both knees side
by side, displayed as seen from the front (the participant's right knee on the image
left, rows running toward the feet). The fixed-flexion Synaflexer protocol tilts the
beam 10 degrees caudally so that it runs parallel to the tibial plateau (paper 004,
Methods; Kothari et al., Eur Radiol 2004); the synthetic plateau is modelled in that
aligned frame, so the residual tilt of the rays relative to the plateau is the
protocol's beam angle minus 10 degrees plus a per-exam misalignment
(``XRProtocol.alignment_sd_deg``). A misaligned beam projects the anterior and
posterior tibial rims apart and narrows the apparent joint space, as on real films.
The beam is parallel (no magnification) and the detector is the fixed coronal plane
through the knee, which the tilted beam crosses obliquely (as the Synaflexer film
cassette is vertical while the tube is angled): each ray is a sheared line
``(x0 + y dx/dy, y, z0 + y dz/dy)``, so the projection is a sum over ``y`` slices
shifted in-plane (:func:`project_knee`), not a 3-D resampling. Computed radiography
stores roughly the logarithm of the detected exposure, with edge enhancement and an
automatic window from the exposure histogram; the renderer does the same.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from kneelib.synth.anatomy import KneeModel
from kneelib.synth.protocols import XRProtocol
from kneelib.synth.spec import TISSUE_LABELS
from kneelib.synth.tissue import LESION_TISSUES, TISSUES, property_table

__all__ = ["RenderedRadiograph", "render_radiograph", "attenuation_volume", "project_knee", "ray_direction",
           "detector_coordinates", "bone_mask", "trabecular_texture"]

#: Labels whose ray path carries the trabecular texture (cortex and sclerosis are added).
BONE_TISSUES = ("femur", "tibia", "patella", "fibula")

#: Thickness of the epiphyseal cortex and subchondral bone plate (about 0.5-1 mm).
CORTEX_THICKNESS_MM = 0.8

#: Gaussian SD (mm) of the projected trabecular grain along the rows (superior-inferior,
#: the principal trabeculae) and across; the band-pass removes structure beyond one cell.
TRABECULAR_GRAIN_MM = (0.8, 0.25)
TRABECULAR_CELL_MM = 1.0

#: Landmarks reported per knee (pixel coordinates ``(row, col)``).
LANDMARK_NAMES = ("joint_centre", "condyle_lowest_medial", "condyle_lowest_lateral", "plateau_medial",
                  "plateau_lateral", "plateau_margin_medial", "plateau_margin_lateral")


@dataclass
class RenderedRadiograph:
    """A rendered bilateral PA radiograph.

    Attributes
    ----------
    pixels : ndarray of uint16, shape (rows, cols)
        ``MONOCHROME2`` (bone bright); the participant's right knee on the image left.
    pixel_spacing_mm : float
    landmarks_px : dict
        ``{"R": {...}, "L": {...}}``: per knee, ``(row, col)`` pixel coordinates of
        ``joint_centre`` (knee centre), ``condyle_lowest_medial/lateral``,
        ``plateau_medial/lateral`` (tibial plateau centres), ``plateau_margin_medial/
        lateral`` (outer plateau edges). The plateau line through the two margins
        gives the rotation that makes it horizontal; a 140 mm crop centred on
        ``joint_centre`` is the ROI of paper 004.
    beam_tilt_deg : dict
        Per knee, the residual tilt of the rays against the tibial plateau.
    header : dict
        DICOM keywords for :func:`kneelib.synth.oai_writer.write_radiograph`.
    protocol : XRProtocol
    """

    pixels: np.ndarray
    pixel_spacing_mm: float
    landmarks_px: dict
    beam_tilt_deg: dict
    header: dict
    protocol: XRProtocol
    extras: dict = field(default_factory=dict)


def attenuation_volume(knee: KneeModel) -> np.ndarray:
    """Linear attenuation (1/mm) on the knee's label grid, cortex and sclerosis denser.

    The cortex mask is a shell one voxel thick, while the epiphyseal cortex and the
    subchondral plate of the knee are only about ``CORTEX_THICKNESS_MM`` thick: a shell
    voxel holds that much cortical bone and trabecular bone for the rest (partial
    volume), so coarse grids do not project rims several times too bright.
    """
    table = property_table()
    mu = table["attenuation_per_mm"][knee.labels]
    share = min(1.0, CORTEX_THICKNESS_MM / float(knee.voxel_mm))
    trabecular = TISSUES["tibia"].attenuation_per_mm
    mu[knee.cortex] = share * LESION_TISSUES["cortex"].attenuation_per_mm + (1.0 - share) * trabecular
    mu[knee.sclerosis] = LESION_TISSUES["sclerosis"].attenuation_per_mm
    return mu


def ray_direction(tilt_deg: float, rotation_deg: float = 0.0) -> np.ndarray:
    """Unit direction of the (parallel) X-ray beam in knee-local mm.

    The PA beam runs along ``y``; the caudal tilt turns it about ``x`` and the limb's
    rotation about ``z``.
    """
    t, r = np.deg2rad(tilt_deg), np.deg2rad(rotation_deg)
    return np.array([-np.sin(r) * np.cos(t), np.cos(r) * np.cos(t), np.sin(t)])


def detector_coordinates(point_mm, tilt_deg: float, rotation_deg: float = 0.0) -> np.ndarray:
    """Where the ray through a knee-local point meets the detector: ``(x, z)`` at ``y = 0``.

    The detector is the fixed vertical (coronal) plane of the knee; a tilted beam
    crosses it obliquely, as in the Synaflexer geometry.
    """
    d = ray_direction(tilt_deg, rotation_deg)
    p = np.asarray(point_mm, float)
    return np.array([p[0] - p[1] * d[0] / d[1], p[2] - p[1] * d[2] / d[1]])


def _oblique_sum(volume, voxel_mm, y_mm, dxdy, dzdy, max_error_voxels=0.25):
    """Sum a (nx, ny, nz) volume along sheared rays ``(x0 + y dxdy, y, z0 + y dzdy)``.

    Slices of ``y`` whose ray offsets differ by less than ``max_error_voxels`` are
    summed first and shifted together (bilinear, edge values extended), so the cost is
    one pass over the volume plus a few 2-D shifts.
    """
    slope = max(abs(dxdy), abs(dzdy)) / voxel_mm * (y_mm[1] - y_mm[0] if y_mm.size > 1 else 1.0)
    group = int(max(1, min(y_mm.size, np.floor(max_error_voxels / slope) if slope > 0 else y_mm.size)))
    out = np.zeros((volume.shape[0], volume.shape[2]), np.float32)
    for start in range(0, y_mm.size, group):
        stop = min(start + group, y_mm.size)
        partial = volume[:, start:stop, :].sum(axis=1, dtype=np.float32)
        y_centre = float(y_mm[start:stop].mean())
        shift = (y_centre * dxdy / voxel_mm, y_centre * dzdy / voxel_mm)
        if abs(shift[0]) < 1e-3 and abs(shift[1]) < 1e-3:
            out += partial
        else:
            # value at detector (x0, z0) is the slice's value at (x0 + shift): shift by -shift
            out += ndimage.shift(partial, (-shift[0], -shift[1]), order=1, mode="nearest")
    return out


def project_knee(knee: KneeModel, tilt_deg: float, rotation_deg: float = 0.0):
    """Line integrals of attenuation along the tilted (and rotated) parallel beam.

    Returns
    -------
    line_integral : ndarray, shape (nx, nz)
        Sum of ``mu * path length`` along each ray, on the knee's ``x`` and ``z`` grid
        axes at the detector plane ``y = 0`` (see :func:`detector_coordinates`).
    bone_path_mm : ndarray, shape (nx, nz)
        Length of bone along each ray (drives trabecular texture).
    direction : ndarray, shape (3,)
        The unit ray direction in knee-local mm.
    """
    mu = attenuation_volume(knee)
    d = ray_direction(tilt_deg, rotation_deg)
    y_mm = knee.origin_mm[1] + knee.voxel_mm * np.arange(mu.shape[1])
    step = knee.voxel_mm / d[1]                     # path length per y-slice
    dxdy, dzdy = d[0] / d[1], d[2] / d[1]
    line = _oblique_sum(mu, knee.voxel_mm, y_mm, dxdy, dzdy) * np.float32(step)
    bone = _oblique_sum(bone_mask(knee).view(np.uint8), knee.voxel_mm, y_mm, dxdy, dzdy) * np.float32(step)
    return line, bone, d


def bone_mask(knee: KneeModel) -> np.ndarray:
    """Trabecular and cortical bone of the four bones (with sclerosis), the texture's support."""
    codes = [TISSUE_LABELS[name] for name in BONE_TISSUES]
    return np.isin(knee.labels, codes) | knee.cortex | knee.sclerosis


def _resample_separable(image, index_rows_of_cols, index_cols_of_rows, order):
    """Sample ``image`` (nx, nz) at ``image[iu[col], iv[row]]`` for a (rows, cols) output.

    ``iu`` and ``iv`` are evenly spaced, so this is an axis-aligned zoom (scipy's
    separable fast path) of the transposed image.
    """
    iu, iv = np.asarray(index_rows_of_cols, float), np.asarray(index_cols_of_rows, float)
    source = image.T                                  # (nz, nx): rows follow z, columns follow x
    step_v = (iv[-1] - iv[0]) / max(iv.size - 1, 1)
    step_u = (iu[-1] - iu[0]) / max(iu.size - 1, 1)
    flip_v, flip_u = step_v < 0, step_u < 0
    if flip_v:
        source = source[::-1]
        iv = source.shape[0] - 1 - iv
        step_v = -step_v
    if flip_u:
        source = source[:, ::-1]
        iu = source.shape[1] - 1 - iu
        step_u = -step_u
    out = ndimage.affine_transform(np.ascontiguousarray(source), np.array([step_v, step_u]),
                                   offset=(iv[0], iu[0]), output_shape=(iv.size, iu.size), order=order,
                                   mode="nearest")
    return out


def _smooth_coarse(image, sigma_px, factor=8):
    """Wide Gaussian blur on a ``factor``-times smaller image (scatter is very smooth)."""
    rows, cols = image.shape
    pad_r, pad_c = (-rows) % factor, (-cols) % factor
    padded = np.pad(image, ((0, pad_r), (0, pad_c)), mode="edge")
    small = padded.reshape(padded.shape[0] // factor, factor, padded.shape[1] // factor, factor).mean(axis=(1, 3))
    small = ndimage.gaussian_filter(small, sigma=sigma_px / factor, mode="nearest")
    zoom = ndimage.zoom(small, factor, order=1, mode="nearest", grid_mode=True)
    return zoom[:rows, :cols].astype(np.float32)


def trabecular_texture(bone_path_mm: np.ndarray, spacing_mm: float, amplitude: float,
                       rng: np.random.Generator) -> np.ndarray:
    """Projected trabecular texture (attenuation units) for a map of bone path lengths.

    A band-pass random network of plates and rods (spacing about 0.5-1 mm) with a
    vertical grain (the principal compressive trabeculae; ``TRABECULAR_GRAIN_MM``). A
    ray crosses about one trabecular cell per mm of bone, so the projected fluctuation
    is a sum of independent cells: its SD is ``amplitude * sqrt(bone path in mm)``.
    (The renderer before issue 10 let it grow linearly with the path, which made the
    texture of a 70 mm thick condyle coarse and as loud as the bone/soft-tissue
    contrast itself.)
    """
    grain_rows, grain_cols = TRABECULAR_GRAIN_MM
    noise = rng.standard_normal(bone_path_mm.shape, dtype=np.float32)
    fine = ndimage.gaussian_filter(noise, sigma=(grain_rows / spacing_mm, grain_cols / spacing_mm))
    coarse = ndimage.gaussian_filter(fine, sigma=TRABECULAR_CELL_MM / spacing_mm)
    texture = fine - coarse
    texture /= max(float(texture.std()), 1e-6)
    return np.float32(amplitude) * texture * np.sqrt(np.clip(bone_path_mm, 0, None)).astype(np.float32)


def render_radiograph(right: KneeModel, left: KneeModel, protocol: XRProtocol,
                      rng: np.random.Generator) -> RenderedRadiograph:
    """Render the bilateral PA fixed-flexion radiograph of a participant's two knees.

    Parameters
    ----------
    right, left : KneeModel
        The right and left knee of one participant at one visit.
    protocol : XRProtocol
        From :func:`kneelib.synth.protocols.xr_protocol`.
    rng : numpy.random.Generator
        Source of beam misalignment, placement jitter, texture and noise.

    Returns
    -------
    RenderedRadiograph

    Raises
    ------
    ValueError
        If ``right``/``left`` are not a right and a left knee.
    """
    if right.side != "R" or left.side != "L":
        raise ValueError(f"render_radiograph needs (right, left) knees, got ({right.side!r}, {left.side!r})")
    rows, cols, spacing = protocol.rows, protocol.cols, protocol.pixel_spacing_mm
    line_integral = np.zeros((rows, cols), np.float32)
    bone_path = np.zeros((rows, cols), np.float32)
    landmarks, tilts = {}, {}
    centre_row = rows / 2.0 + rng.normal(scale=4.0 / spacing)
    for knee, sign in ((right, -1.0), (left, 1.0)):
        tilt = (protocol.beam_angle_deg - 10.0) + float(rng.normal(scale=protocol.alignment_sd_deg))
        rotation_deg = 0.5 * float(knee.spec.rotation_deg) * (1 if knee.side == "R" else -1)
        projection, bone_mm, _ = project_knee(knee, tilt, rotation_deg)
        tilts[knee.side] = tilt
        centre_col = cols / 2.0 + sign * protocol.knee_separation_mm / 2.0 / spacing + rng.normal(scale=3.0 / spacing)
        # detector pixels of this knee's window; column grows toward the patient's left (-x local)
        half_w = (projection.shape[0] - 1) / 2.0 * knee.voxel_mm
        c0 = int(max(0, np.floor(centre_col - half_w / spacing)))
        c1 = int(min(cols, np.ceil(centre_col + half_w / spacing) + 1))
        col_idx = np.arange(c0, c1)
        row_idx = np.arange(rows)
        u = -(col_idx - centre_col) * spacing            # knee-local x of each column
        v = -(row_idx - centre_row) * spacing            # knee-local z of each row
        iu = (u - knee.origin_mm[0]) / knee.voxel_mm
        iv = (v - knee.origin_mm[2]) / knee.voxel_mm
        # separable detector sampling: rows follow z, columns follow x (scales are diagonal)
        line_integral[:, c0:c1] += _resample_separable(projection, iu, iv, order=3)
        bone_path[:, c0:c1] += _resample_separable(bone_mm, iu, iv, order=1)
        marks = {}
        for name in LANDMARK_NAMES:
            u_mm, v_mm = detector_coordinates(knee.landmarks_mm[name], tilt, rotation_deg)
            marks[name] = (float(centre_row - v_mm / spacing), float(centre_col - u_mm / spacing))
        landmarks[knee.side] = marks

    line_integral = line_integral + trabecular_texture(bone_path, spacing, protocol.trabecular_contrast, rng)
    attenuation = np.clip(line_integral * protocol.contrast, 0, None)
    primary = np.exp(-attenuation)
    scatter = protocol.scatter_fraction * _smooth_coarse(primary, sigma_px=25.0 / spacing)
    exposure = primary + scatter
    exposure = exposure + protocol.noise_fraction * np.sqrt(exposure) * rng.standard_normal(exposure.shape, dtype=np.float32)
    log_signal = -np.log(np.clip(exposure, 1e-4, None) / (1.0 + protocol.scatter_fraction))
    # detector MTF (phosphor light spread), then the edge enhancement (unsharp mask) of
    # computed-radiography processing; both fixed in mm, so presets differ only in sampling
    if protocol.detector_blur_mm / spacing > 0.3:
        log_signal = ndimage.gaussian_filter(log_signal, sigma=protocol.detector_blur_mm / spacing)
    enhanced = log_signal + protocol.edge_enhancement * (
        log_signal - ndimage.gaussian_filter(log_signal, sigma=protocol.edge_enhancement_mm / spacing))
    # dynamic range compression / equalisation of computed radiography (large-kernel
    # unsharp mask): lifts structure of a few mm to cm (condyles, notch, patella, tibial
    # rims) against the wide bone/soft-tissue range, as on the real OAI films
    if protocol.equalisation > 0:
        enhanced = enhanced + protocol.equalisation * (
            log_signal - _smooth_coarse(log_signal, sigma_px=protocol.equalisation_mm / spacing, factor=4))
    # automatic windowing as computed radiography does: from the exposure histogram of the
    # body (thin soft tissue dark grey, thick bone near white)
    body = log_signal > 0.5
    if body.sum() > 100:
        window_low = float(np.percentile(enhanced[body], 4.0))
        window_high = float(np.percentile(enhanced[body], 99.9)) + 0.15
    else:
        window_low, window_high = 0.3, 5.0
    display = np.clip((enhanced - window_low) / max(window_high - window_low, 1e-3), 0.0, 1.0)
    pixels = np.round(display * protocol.display_max).astype(np.uint16)
    header = {"SeriesDescription": protocol.description, "KVP": float(protocol.tube_kvp)}
    return RenderedRadiograph(pixels=pixels, pixel_spacing_mm=float(spacing), landmarks_px=landmarks,
                              beam_tilt_deg=tilts, header=header, protocol=protocol)
