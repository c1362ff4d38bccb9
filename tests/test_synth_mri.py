"""Tests of kneelib.synth.mri: shapes, geometry, PCL centre slice, lesions, artefacts, determinism."""
from dataclasses import replace

import numpy as np
import pytest

from kneelib.synth.anatomy import build_knee
from kneelib.synth.mri import dess_signal, render_series, spin_echo_signal
from kneelib.synth.protocols import mr_protocols
from kneelib.synth.spec import LESION_MASKS, TISSUE_LABELS, KneeSpec

PROTOCOLS = mr_protocols("smoke")


def _spec(**kwargs) -> KneeSpec:
    return KneeSpec(participant_id="9000002", side="R", visit_month=0, seed=3, shape_seed=9, **kwargs)


@pytest.fixture(scope="module")
def knee():
    return build_knee(_spec(effusion_grade=2, bml_sites=(("FM", 3),)), voxel_mm=2.0)


@pytest.mark.parametrize("key", sorted(PROTOCOLS))
def test_series_shapes_and_header(knee, key):
    protocol = PROTOCOLS[key]
    series = render_series(knee, protocol, np.random.default_rng(0))
    expected = (protocol.n_slices, protocol.rows, protocol.cols)
    if protocol.sequence == "msme":
        expected = (len(protocol.echo_times_ms),) + expected
        assert series.header["EchoTime"] == [10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0]
    assert series.pixels.shape == expected and series.pixels.dtype == np.uint16
    assert series.labels.shape == expected[-3:]
    assert set(series.lesion_masks) == set(LESION_MASKS)
    assert series.geometry.n_slices == protocol.n_slices
    assert series.header["Laterality"] == "R"
    assert series.header["SeriesDescription"].endswith("RIGHT")
    assert series.pixels.max() > 100


def test_sagittal_tse_keeps_23_slices_and_pcl_centre():
    assert all(mr_protocols(p)["sag_iw_tse"].n_slices >= 23 for p in ("smoke", "default", "paper"))
    model = build_knee(_spec(), voxel_mm=2.0)
    for seed in range(3):
        series = render_series(model, PROTOCOLS["sag_iw_tse"], np.random.default_rng(seed))
        index = series.pcl_slice_index
        assert 11 <= index <= series.pixels.shape[0] - 12
        # the PCL is labelled on the centre slice and on none of the far slices
        assert (series.labels[index] == TISSUE_LABELS["pcl"]).sum() > 0
        assert (series.labels[0] == TISSUE_LABELS["pcl"]).sum() == 0


def test_left_knee_positions_mirror_right():
    right = build_knee(_spec(), voxel_mm=2.0)
    left = build_knee(replace(_spec(), side="L"), voxel_mm=2.0)
    r = render_series(right, PROTOCOLS["sag_iw_tse"], np.random.default_rng(1))
    l = render_series(left, PROTOCOLS["sag_iw_tse"], np.random.default_rng(1))
    assert l.header["SeriesDescription"] == "SAG_IW_TSE_LEFT" and l.header["Laterality"] == "L"
    xr = np.array(r.geometry.image_positions_patient)[:, 0]
    xl = np.array(l.geometry.image_positions_patient)[:, 0]
    assert xr.mean() < 0 < xl.mean()                    # right knee at patient right (LPS -x)
    with pytest.raises(ValueError, match="right knee only"):
        render_series(left, PROTOCOLS["sag_t2_map"], np.random.default_rng(0))


def test_lesions_bright_on_fat_suppressed_tse(knee):
    series = render_series(knee, PROTOCOLS["sag_iw_tse"], np.random.default_rng(2))
    bml = series.lesion_masks["bml"]
    assert bml.sum() > 0
    marrow = (series.labels == TISSUE_LABELS["femur"]) & ~bml
    assert series.pixels[bml].mean() > 2 * series.pixels[marrow].mean()
    fluid = series.labels == TISSUE_LABELS["joint_fluid"]
    assert series.pixels[fluid].mean() > series.pixels[series.labels == TISSUE_LABELS["muscle"]].mean()


def test_t2_decays_and_cartilage_t2_rises_with_elevation():
    model = build_knee(_spec(cartilage_t2_elevation_ms={"FM": 25.0, "FL": 25.0}), voxel_mm=1.5)
    series = render_series(model, PROTOCOLS["sag_t2_map"], np.random.default_rng(4))
    means = series.pixels.reshape(7, -1).mean(axis=1)
    assert np.all(np.diff(means) < 0)
    assert spin_echo_signal(1.0, 1000.0, 80.0, 2700.0, 70.0) / spin_echo_signal(1.0, 1000.0, 80.0, 2700.0, 10.0) \
        > spin_echo_signal(1.0, 1000.0, 40.0, 2700.0, 70.0) / spin_echo_signal(1.0, 1000.0, 40.0, 2700.0, 10.0)
    assert dess_signal(1.0, 3000.0, 500.0, 16.3, 4.7, 25.0) > dess_signal(1.0, 1400.0, 30.0, 16.3, 4.7, 25.0)


def test_deterministic(knee):
    a = render_series(knee, PROTOCOLS["sag_dess"], np.random.default_rng(7))
    b = render_series(knee, PROTOCOLS["sag_dess"], np.random.default_rng(7))
    np.testing.assert_array_equal(a.pixels, b.pixels)
    c = render_series(knee, PROTOCOLS["sag_dess"], np.random.default_rng(8))
    assert (a.pixels != c.pixels).any()


def test_artefacts():
    gap = build_knee(_spec(artefact="missing_slices"), voxel_mm=2.0)
    series = render_series(gap, PROTOCOLS["sag_iw_tse"], np.random.default_rng(0))
    x = np.array(series.geometry.image_positions_patient)[:, 0]
    steps = np.diff(x)
    assert series.pixels.shape[0] < PROTOCOLS["sag_iw_tse"].n_slices
    assert steps.max() > 1.5 * np.median(steps)
    metal = build_knee(_spec(artefact="foreign_object"), voxel_mm=1.5)
    series = render_series(metal, PROTOCOLS["sag_iw_tse"], np.random.default_rng(0))
    void = series.lesion_masks["foreign_object"]
    assert void.sum() > 0
    clean = render_series(build_knee(_spec(), voxel_mm=1.5), PROTOCOLS["sag_iw_tse"], np.random.default_rng(0))
    assert series.pixels[void].mean() < 0.6 * clean.pixels[void].mean()     # same pixels, no metal
