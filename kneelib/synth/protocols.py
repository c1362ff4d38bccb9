"""OAI acquisition protocols (and a second site's) for the synthetic renderers, per preset.

The ``paper`` preset follows the OAI knee MRI protocol of Peterfy, Schneider & Nevitt,
Osteoarthritis Cartilage 2008;16:1433-41 (Table 1) and the bilateral PA fixed-flexion
radiograph with a 10 degree caudal beam (Synaflexer frame; paper 004, Methods):

=====================  =======================================================
SAG IW TSE fat-sat     37 slices x 3.0 mm (no gap), 0.357 x 0.511 mm, TR/TE 3200/30 ms
COR IW TSE             35 slices x 3.0 mm, 0.365 x 0.456 mm, TR/TE 3700/29 ms, no fat-sat
SAG 3D DESS WE         160 slices x 0.7 mm, 0.365 x 0.456 mm, TR/TE 16.3/4.7 ms, flip 25 deg
SAG 2D MSME T2 (right) 7 echoes TE 10-70 ms, TR 2700 ms, 3.0 mm slices + 0.5 mm gap,
                       0.313 x 0.446 mm
PA fixed flexion       10 deg caudal beam, both knees, about 0.14 mm detector pixels
=====================  =======================================================

Values not printed in the papers at hand (COR TSE slice count and TR, MSME slice
count, radiograph pixel size) are typical OAI values and marked as such here.
``default`` keeps every geometry (orientation, slice thickness, field of view,
>= 23 sagittal TSE slices for the 11 + 1 + 11 slices of chapter 000) but reduces the
matrices so a CPU renders a few hundred subjects in minutes; ``smoke`` is smaller
still. ``site="most"`` gives the protocols of another site (the MOST study, the
independent test set of paper 004): other pixel spacing, noise, contrast and beam
alignment.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

__all__ = ["MRProtocol", "XRProtocol", "mr_protocols", "xr_protocol", "PRESETS", "SITES"]

PRESETS = ("smoke", "default", "paper")
SITES = ("oai", "most")


@dataclass(frozen=True)
class MRProtocol:
    """One MR series' acquisition.

    Attributes
    ----------
    key : str
        ``sag_iw_tse``, ``cor_iw_tse``, ``sag_dess`` or ``sag_t2_map`` (keys of
        :data:`kneelib.data.oai_layout.SERIES_DESCRIPTIONS`).
    description : str
        ``SeriesDescription`` with ``{side}`` for ``RIGHT``/``LEFT``.
    orientation : str
        ``"sagittal"`` or ``"coronal"``.
    sequence : str
        ``"tse"`` (spin echo), ``"dess"`` or ``"msme"``.
    n_slices : int
    slice_thickness_mm, slice_spacing_mm : float
        Spacing is centre to centre (thickness + gap).
    rows, cols : int
        Matrix; rows run superior to inferior.
    row_spacing_mm, col_spacing_mm : float
        DICOM ``PixelSpacing`` (between rows, between columns).
    repetition_time_ms : float
    echo_times_ms : tuple of float
        One per echo (MSME: 7).
    flip_angle_deg : float
    fat_suppression : float
        Fraction of the fat signal removed (0 none, 0.95 water excitation).
    noise_fraction : float
        Gaussian noise SD per channel relative to the signal of free water, in this
        protocol's voxel (:func:`mr_protocols` scales the OAI voxel's value to the
        preset's voxel volume).
    bias_amplitude : float
        Peak relative change of the smooth coil sensitivity.
    display_scale : float
        Stored pixel value of a unit signal.
    right_only : bool
        Acquired on the right knee only (OAI MSME T2).
    scanning_sequence, sequence_name, acquisition_type : str
        DICOM ``ScanningSequence``, ``SequenceName``, ``MRAcquisitionType``.
    """

    key: str
    description: str
    orientation: str
    sequence: str
    n_slices: int
    slice_thickness_mm: float
    slice_spacing_mm: float
    rows: int
    cols: int
    row_spacing_mm: float
    col_spacing_mm: float
    repetition_time_ms: float
    echo_times_ms: tuple[float, ...]
    flip_angle_deg: float
    fat_suppression: float
    noise_fraction: float = 0.03
    bias_amplitude: float = 0.18
    display_scale: float = 1000.0
    right_only: bool = False
    scanning_sequence: str = "SE"
    sequence_name: str = "*tse2d1"
    acquisition_type: str = "2D"

    @property
    def field_of_view_mm(self) -> tuple[float, float]:
        """(superior-inferior, in-plane horizontal) extent in mm."""
        return self.rows * self.row_spacing_mm, self.cols * self.col_spacing_mm


@dataclass(frozen=True)
class XRProtocol:
    """Bilateral PA fixed-flexion knee radiograph.

    Attributes
    ----------
    beam_angle_deg : float
        Caudal beam angle of the protocol (10 deg in OAI and MOST).
    alignment_sd_deg : float
        SD of the per-exam misalignment between beam and tibial plateau.
    pixel_spacing_mm : float
    rows, cols : int
    knee_separation_mm : float
        Distance between the two knee centres.
    tube_kvp : float
        Written as ``KVP``; scales the bone/soft-tissue contrast (``contrast``).
    contrast : float
        Multiplies attenuation differences (lower kVp = more contrast).
    noise_fraction : float
        Quantum noise SD relative to the unattenuated signal.
    scatter_fraction : float
        Smooth scatter added to the primary beam.
    display_max : int
        Maximum stored value (12-bit CR: 4095).
    trabecular_contrast : float
        SD of the projected trabecular attenuation texture per square root of mm of
        bone along the ray (independent trabecular cells add in quadrature).
    detector_blur_mm : float
        Gaussian SD of the detector's light spread (MTF); applied when it exceeds
        0.3 pixel.
    edge_enhancement, edge_enhancement_mm : float
        Unsharp-mask gain and Gaussian SD of the computed-radiography processing.
    equalisation, equalisation_mm : float
        Gain and Gaussian SD of the large-kernel unsharp mask (dynamic range
        compression) of computed radiography, applied to the log signal.

    The noise, texture and sharpening defaults were set so that 100 mm knee crops
    match the real OAI crops of ``chen_kl_radiographs`` in high-frequency energy,
    noise SD and edge gradients (:func:`kneelib.synth.realism_stats.radiograph_crop_stats`;
    issue 10, section 3), and the equalisation so that the radial power spectrum and
    grey-level percentiles of 90 mm crops (prepared as the realism measures prepare
    them) come close to those of the real ``train`` crops.
    """

    beam_angle_deg: float
    alignment_sd_deg: float
    pixel_spacing_mm: float
    rows: int
    cols: int
    knee_separation_mm: float = 190.0
    tube_kvp: float = 70.0
    contrast: float = 1.0
    noise_fraction: float = 0.016
    scatter_fraction: float = 0.15
    display_max: int = 4095
    description: str = "Bilateral PA Fixed Flexion Knee"
    trabecular_contrast: float = 0.026
    detector_blur_mm: float = 0.1
    edge_enhancement: float = 1.0
    edge_enhancement_mm: float = 1.5
    equalisation: float = 1.2
    equalisation_mm: float = 10.0


# (n_slices, rows, cols) per preset; geometry (FOV, thickness) is fixed per series
_MATRIX = {
    "sag_iw_tse": {"smoke": (23, 64, 64), "default": (37, 144, 144), "paper": (37, 448, 313)},
    "cor_iw_tse": {"smoke": (12, 48, 48), "default": (35, 112, 112), "paper": (35, 384, 307)},
    "sag_dess": {"smoke": (24, 64, 64), "default": (64, 128, 128), "paper": (160, 384, 307)},
    "sag_t2_map": {"smoke": (10, 48, 48), "default": (21, 112, 112), "paper": (27, 384, 269)},
}
# field of view (superior-inferior, horizontal) in mm and native slice thickness / spacing
_FOV = {"sag_iw_tse": (160.0, 160.0), "cor_iw_tse": (140.0, 140.0), "sag_dess": (140.0, 140.0),
        "sag_t2_map": (120.0, 120.0)}
_SLAB = {"sag_iw_tse": (3.0, 3.0), "cor_iw_tse": (3.0, 3.0), "sag_dess": (0.7, 0.7), "sag_t2_map": (3.0, 3.5)}


def _geometry(key: str, preset: str) -> dict:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {PRESETS}")
    n_slices, rows, cols = _MATRIX[key][preset]
    fov_si, fov_h = _FOV[key]
    thickness, spacing = _SLAB[key]
    if preset != "paper":
        # keep the slab: fewer, thicker slices where the matrix shrinks (DESS, MSME)
        native_n = _MATRIX[key]["paper"][0]
        scale = native_n / n_slices
        if key == "sag_iw_tse":
            scale = max(1.0, 30.0 * 3.0 / (n_slices * spacing)) if preset == "smoke" else 1.0
        thickness, spacing = thickness * scale, spacing * scale
    return dict(n_slices=n_slices, rows=rows, cols=cols, row_spacing_mm=fov_si / rows,
                col_spacing_mm=fov_h / cols, slice_thickness_mm=round(thickness, 4),
                slice_spacing_mm=round(spacing, 4))


def _voxel_mm3(geometry: dict) -> float:
    return geometry["row_spacing_mm"] * geometry["col_spacing_mm"] * geometry["slice_thickness_mm"]


def _noise_at_voxel(protocol: MRProtocol, key: str, preset: str) -> MRProtocol:
    """Noise of the preset's (larger) voxels: ``noise_fraction`` is set for the OAI voxel.

    Thermal noise per voxel is the same while the signal grows with voxel volume, so
    a coarser matrix over the same field of view has ``sqrt(V / V_paper)`` times the
    SNR, as a real scan averaged down to that grid would (issue 10, section 3: the
    default-preset DESS had a muscle SNR of 8 where the real DESS averaged to the same
    pixel size has over 100).
    """
    ratio = _voxel_mm3(_geometry(key, preset)) / _voxel_mm3(_geometry(key, "paper"))
    return replace(protocol, noise_fraction=protocol.noise_fraction / float(ratio) ** 0.5)


def mr_protocols(preset: str = "default", site: str = "oai") -> dict[str, MRProtocol]:
    """The four MR series of the OAI knee protocol at a preset.

    Parameters
    ----------
    preset : {"smoke", "default", "paper"}
    site : {"oai", "most"}
        ``"most"``: another site's acquisition (1.0 T-like lower SNR, other pixel
        spacing and contrast), for independent-test-set experiments.

    Returns
    -------
    dict of key -> MRProtocol
    """
    if site not in SITES:
        raise ValueError(f"unknown site {site!r}; expected one of {SITES}")
    out = {
        "sag_iw_tse": MRProtocol(
            key="sag_iw_tse", description="SAG_IW_TSE_{side}", orientation="sagittal", sequence="tse",
            repetition_time_ms=3200.0, echo_times_ms=(30.0,), flip_angle_deg=180.0, fat_suppression=0.92,
            sequence_name="*tse2d1_5", **_geometry("sag_iw_tse", preset)),
        "cor_iw_tse": MRProtocol(
            key="cor_iw_tse", description="COR_IW_TSE_{side}", orientation="coronal", sequence="tse",
            repetition_time_ms=3700.0, echo_times_ms=(29.0,), flip_angle_deg=180.0, fat_suppression=0.0,
            sequence_name="*tse2d1_7", **_geometry("cor_iw_tse", preset)),
        "sag_dess": MRProtocol(
            key="sag_dess", description="SAG_3D_DESS_{side}", orientation="sagittal", sequence="dess",
            repetition_time_ms=16.3, echo_times_ms=(4.7,), flip_angle_deg=25.0, fat_suppression=0.95,
            scanning_sequence="GR", sequence_name="*de3d1", acquisition_type="3D", noise_fraction=0.012,
            **_geometry("sag_dess", preset)),
        "sag_t2_map": MRProtocol(
            key="sag_t2_map", description="SAG_T2_MAP_RIGHT", orientation="sagittal", sequence="msme",
            repetition_time_ms=2700.0, echo_times_ms=tuple(float(te) for te in range(10, 71, 10)),
            flip_angle_deg=180.0, fat_suppression=0.0, right_only=True, sequence_name="*se2d7",
            noise_fraction=0.02, **_geometry("sag_t2_map", preset)),
    }
    out = {key: _noise_at_voxel(protocol, key, preset) for key, protocol in out.items()}
    if site == "most":
        changed = {}
        for key, protocol in out.items():
            changed[key] = replace(
                protocol, row_spacing_mm=protocol.row_spacing_mm * 1.08, col_spacing_mm=protocol.col_spacing_mm * 1.08,
                noise_fraction=protocol.noise_fraction * 1.8, bias_amplitude=0.35,
                repetition_time_ms=protocol.repetition_time_ms * (0.8 if protocol.sequence != "dess" else 1.0),
                fat_suppression=min(protocol.fat_suppression, 0.85), display_scale=1600.0)
        out = changed
    return out


def xr_protocol(preset: str = "default", site: str = "oai") -> XRProtocol:
    """The bilateral PA fixed-flexion radiograph at a preset.

    ``paper``: 0.14 mm pixels (typical of OAI computed radiography); ``default``
    0.35 mm; ``smoke`` 0.7 mm. ``site="most"``: the MOST acquisition (same 10 deg beam
    per paper 004, Methods, but larger alignment scatter, other pixel spacing, kVp,
    noise and scatter).
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {PRESETS}")
    if site not in SITES:
        raise ValueError(f"unknown site {site!r}; expected one of {SITES}")
    spacing = {"smoke": 0.7, "default": 0.35, "paper": 0.14}[preset]
    width_mm, height_mm = 380.0, 180.0     # within the anatomy grid (z +-96 mm)
    protocol = XRProtocol(beam_angle_deg=10.0, alignment_sd_deg=1.0, pixel_spacing_mm=spacing,
                          rows=int(round(height_mm / spacing)), cols=int(round(width_mm / spacing)))
    if site == "most":
        spacing_most = spacing * 1.1
        protocol = replace(protocol, alignment_sd_deg=1.5, pixel_spacing_mm=spacing_most,
                           rows=int(round(height_mm / spacing_most)), cols=int(round(width_mm / spacing_most)),
                           tube_kvp=65.0, contrast=1.08, noise_fraction=0.015, scatter_fraction=0.19)
    return protocol
