"""Tests of kneelib.synth.radiograph: layout, landmarks, JSW, osteophytes, determinism."""
from dataclasses import replace

import numpy as np
import pytest

from kneelib.synth.anatomy import build_knee
from kneelib.synth.protocols import xr_protocol
from kneelib.synth.radiograph import render_radiograph
from kneelib.synth.spec import KneeSpec

VOXEL_MM = 1.0
PROTOCOL = replace(xr_protocol("smoke"), alignment_sd_deg=0.0, noise_fraction=0.0)


def _spec(side, **kwargs) -> KneeSpec:
    return KneeSpec(participant_id="9000003", side=side, visit_month=0, seed=5, shape_seed=21, **kwargs)


def _measured_jsw_mm(image, landmarks, compartment, spacing):
    """Width of the dark gap between condyle and plateau along the compartment column."""
    row_f, col_f = landmarks[f"condyle_lowest_{compartment}"]
    row_t, col_t = landmarks[f"plateau_{compartment}"]
    col = int(round((col_f + col_t) / 2))
    centre = (row_f + row_t) / 2
    rows = np.arange(int(centre - 12 / spacing), int(centre + 12 / spacing))
    profile = image[rows, col - 1:col + 2].astype(float).mean(axis=1)
    fine = np.linspace(rows[0], rows[-1], len(rows) * 20)
    values = np.interp(fine, rows, profile)
    inside = np.abs(fine - centre) < 2.0 / spacing
    floor = values[inside].min()
    above = values[fine < centre].max()
    below = values[fine > centre].max()
    half = floor + 0.5 * (min(above, below) - floor)
    dark = values < half
    centre_i = int(np.argmin(np.where(inside, values, np.inf)))
    lo = centre_i
    while lo > 0 and dark[lo - 1]:
        lo -= 1
    hi = centre_i
    while hi < len(dark) - 1 and dark[hi + 1]:
        hi += 1
    return (fine[hi] - fine[lo]) * spacing


@pytest.fixture(scope="module")
def pair():
    right = build_knee(_spec("R", jsw_medial_mm=2.5, jsw_lateral_mm=6.0), voxel_mm=VOXEL_MM)
    left = build_knee(_spec("L", jsw_medial_mm=6.0, jsw_lateral_mm=6.0), voxel_mm=VOXEL_MM)
    return right, left


@pytest.fixture(scope="module")
def radiograph(pair):
    return render_radiograph(*pair, PROTOCOL, np.random.default_rng(0))


def test_layout_and_landmarks(radiograph):
    assert radiograph.pixels.shape == (PROTOCOL.rows, PROTOCOL.cols)
    assert radiograph.pixels.dtype == np.uint16
    right, left = radiograph.landmarks_px["R"], radiograph.landmarks_px["L"]
    assert right["joint_centre"][1] < PROTOCOL.cols / 2 < left["joint_centre"][1]   # right knee on image left
    # medial sides face each other (toward the image centre)
    assert right["plateau_medial"][1] > right["plateau_lateral"][1]
    assert left["plateau_medial"][1] < left["plateau_lateral"][1]
    # bone brighter than soft tissue beside the knee
    row, col = (int(v) for v in right["joint_centre"])
    assert radiograph.pixels[row - int(30 / PROTOCOL.pixel_spacing_mm), col] > radiograph.pixels[row, 5]


def test_jsw_on_radiograph_follows_spec(radiograph):
    spacing = PROTOCOL.pixel_spacing_mm
    narrow = _measured_jsw_mm(radiograph.pixels, radiograph.landmarks_px["R"], "medial", spacing)
    wide = _measured_jsw_mm(radiograph.pixels, radiograph.landmarks_px["L"], "medial", spacing)
    assert narrow == pytest.approx(2.5, abs=1.2)
    assert wide == pytest.approx(6.0, abs=1.2)
    assert wide - narrow > 2.0


def test_osteophytes_add_bone_at_the_margin(pair):
    right, left = pair
    spurs = build_knee(replace(right.spec, osteophyte_grade={"FM": 3, "TM": 3, "FL": 0, "TL": 0}), voxel_mm=VOXEL_MM)
    plain = render_radiograph(right, left, PROTOCOL, np.random.default_rng(1))
    grown = render_radiograph(spurs, left, PROTOCOL, np.random.default_rng(1))
    row, col = (int(round(v)) for v in plain.landmarks_px["R"]["plateau_margin_medial"])
    window = (slice(row - 15, row + 10), slice(col + 2, col + int(12 / PROTOCOL.pixel_spacing_mm)))
    assert grown.pixels[window].astype(float).mean() > plain.pixels[window].astype(float).mean() + 20


def test_deterministic(pair):
    a = render_radiograph(*pair, xr_protocol("smoke"), np.random.default_rng(3))
    b = render_radiograph(*pair, xr_protocol("smoke"), np.random.default_rng(3))
    np.testing.assert_array_equal(a.pixels, b.pixels)
    with pytest.raises(ValueError, match="right, left"):
        render_radiograph(pair[1], pair[0], PROTOCOL, np.random.default_rng(0))


def test_attenuation_at_the_knee_beams_effective_energy():
    """Bone/soft-tissue ratios of a ~40 keV effective energy (NIST XCOM); the table before issue 10
    had cortex/water 3.7 (50 keV), too flat a film; the one-voxel cortex shell holds ~0.8 mm cortex."""
    from kneelib.synth.radiograph import CORTEX_THICKNESS_MM, attenuation_volume
    from kneelib.synth.tissue import LESION_TISSUES, TISSUES

    water = TISSUES["joint_fluid"].attenuation_per_mm
    assert LESION_TISSUES["cortex"].attenuation_per_mm / water == pytest.approx(4.8, abs=0.3)
    assert 1.5 < TISSUES["tibia"].attenuation_per_mm / TISSUES["muscle"].attenuation_per_mm < 1.9
    assert TISSUES["subcutaneous_fat"].attenuation_per_mm < TISSUES["muscle"].attenuation_per_mm
    knee = build_knee(_spec("R"), voxel_mm=2.0)
    mu = attenuation_volume(knee)
    share = CORTEX_THICKNESS_MM / 2.0
    expected = share * LESION_TISSUES["cortex"].attenuation_per_mm + (1 - share) * TISSUES["tibia"].attenuation_per_mm
    cortex_only = knee.cortex & ~knee.sclerosis
    np.testing.assert_allclose(mu[cortex_only], expected, rtol=1e-5)


def test_trabecular_texture_grows_as_the_square_root_of_the_bone_path():
    """Independent trabecular cells add in quadrature: 4x the bone path, 2x the texture SD; on a
    64 mm thick bone it stays a small part of the bone/soft-tissue step (the renderer before issue
    10 let it grow linearly: 0.29 at 64 mm, 43% of its bone/soft-tissue step)."""
    from kneelib.synth.radiograph import trabecular_texture
    from kneelib.synth.tissue import TISSUES

    protocol = xr_protocol("default")
    path = np.full((200, 200), 16.0, np.float32)
    path[:, 100:] = 64.0
    texture = trabecular_texture(path, protocol.pixel_spacing_mm, protocol.trabecular_contrast,
                                 np.random.default_rng(0))
    thin, thick = texture[:, 10:90].std(), texture[:, 110:190].std()
    assert thick / thin == pytest.approx(2.0, rel=0.15)
    step = 64.0 * (TISSUES["tibia"].attenuation_per_mm - TISSUES["muscle"].attenuation_per_mm)
    assert thick / step < 0.25
    assert np.all(trabecular_texture(np.zeros((20, 20), np.float32), 0.35, 0.02, np.random.default_rng(0)) == 0)
