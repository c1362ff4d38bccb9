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
The beam is parallel (no magnification). Computed radiography stores roughly the
logarithm of the detected exposure, with edge enhancement; the renderer does the
same.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from kneelib.synth.anatomy import KneeModel
from kneelib.synth.protocols import XRProtocol
from kneelib.synth.tissue import LESION_TISSUES, property_table

__all__ = ["RenderedRadiograph", "render_radiograph", "attenuation_volume", "project_knee"]

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
    """Linear attenuation (1/mm) on the knee's label grid, cortex and sclerosis denser."""
    table = property_table()
    mu = table["attenuation_per_mm"][knee.labels]
    mu[knee.cortex] = LESION_TISSUES["cortex"].attenuation_per_mm
    mu[knee.sclerosis] = LESION_TISSUES["sclerosis"].attenuation_per_mm
    return mu


def _rotation_matrix(tilt_deg: float, rotation_deg: float) -> np.ndarray:
    t, r = np.deg2rad(tilt_deg), np.deg2rad(rotation_deg)
    tilt = np.array([[1, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]])
    rot = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
    return rot @ tilt


def project_knee(knee: KneeModel, tilt_deg: float, rotation_deg: float = 0.0):
    """Line integrals of attenuation along rays tilted by ``tilt_deg`` about ``x``.

    Returns
    -------
    line_integral : ndarray, shape (nx, nz)
        Sum of ``mu * step`` over each ray, on the knee's ``x`` and ``z`` grid axes.
    bone_path_mm : ndarray, shape (nx, nz)
        Length of bone along each ray (drives trabecular texture).
    ray_to_knee : ndarray, shape (3, 3)
        Rotation from (u, t, v) ray coordinates to knee-local mm.
    """
    mu = attenuation_volume(knee)
    rotation = _rotation_matrix(tilt_deg, rotation_deg)
    if abs(tilt_deg) < 1e-6 and abs(rotation_deg) < 1e-6:
        resampled = mu
        bone = (mu >= 0.035).astype(np.float32)
    else:
        # output voxel (i, j, k) in ray coordinates -> input voxel index; rotation about the grid centre
        centre = (np.array(mu.shape) - 1) / 2.0
        offset = centre - rotation @ centre
        resampled = ndimage.affine_transform(mu, rotation, offset=offset, order=1, mode="nearest")
        bone = (resampled >= 0.035).astype(np.float32)
    step = knee.voxel_mm
    return resampled.sum(axis=1) * step, bone.sum(axis=1) * step, rotation


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
        projection, bone_mm, ray_to_knee = project_knee(knee, tilt, rotation_deg)
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
        grid_u, grid_v = np.meshgrid(iu, iv)             # (rows, window cols)
        coords = np.stack([grid_u, grid_v])
        line_integral[:, c0:c1] += ndimage.map_coordinates(projection, coords, order=3, mode="nearest")
        bone_path[:, c0:c1] += ndimage.map_coordinates(bone_mm, coords, order=1, mode="nearest")
        knee_to_ray = ray_to_knee.T
        marks = {}
        for name in LANDMARK_NAMES:
            p = knee_to_ray @ knee.landmarks_mm[name]
            marks[name] = (float(centre_row - p[2] / spacing), float(centre_col - p[0] / spacing))
        landmarks[knee.side] = marks

    # trabecular texture: vertical streaks within bone, proportional to the bone path
    texture = ndimage.gaussian_filter(rng.standard_normal((rows, cols)).astype(np.float32),
                                      sigma=(1.6 / spacing, 0.5 / spacing))
    texture /= max(float(texture.std()), 1e-6)
    line_integral = line_integral + 0.0012 * protocol.contrast * texture * np.sqrt(bone_path + 1.0) * bone_path ** 0.5
    attenuation = np.clip(line_integral * protocol.contrast, 0, None)
    primary = np.exp(-attenuation)
    scatter = protocol.scatter_fraction * ndimage.gaussian_filter(primary, sigma=25.0 / spacing)
    exposure = primary + scatter
    exposure = exposure + protocol.noise_fraction * np.sqrt(exposure) * rng.standard_normal(exposure.shape).astype(np.float32)
    log_signal = -np.log(np.clip(exposure, 1e-4, None) / (1.0 + protocol.scatter_fraction))
    # edge enhancement (unsharp mask) as computed-radiography processing does
    enhanced = log_signal + 0.6 * (log_signal - ndimage.gaussian_filter(log_signal, sigma=2.0 / spacing))
    window_low, window_high = 0.3, 5.0
    display = np.clip((enhanced - window_low) / (window_high - window_low), 0.0, 1.0)
    pixels = np.round(display * protocol.display_max).astype(np.uint16)
    header = {"SeriesDescription": protocol.description, "KVP": float(protocol.tube_kvp)}
    return RenderedRadiograph(pixels=pixels, pixel_spacing_mm=float(spacing), landmarks_px=landmarks,
                              beam_tilt_deg=tilts, header=header, protocol=protocol)
