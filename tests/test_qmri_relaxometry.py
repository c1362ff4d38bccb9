"""kneelib.qmri.relaxometry: the vectorised three-parameter T2 fit and the deep/superficial split (paper 001)."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from scipy.optimize import OptimizeWarning, curve_fit

from kneelib.qmri import QmriInputError
from kneelib.qmri.relaxometry import (cartilage_depth, fit_t2_monoexponential, layer_t2, log_linear_t2,
                                      monoexponential, split_cartilage_layers)

#: the OAI MSME protocol of paper 001: 7 echoes, TE 10-70 ms
OAI_TE_MS = np.arange(1, 8) * 10.0


def _rician(clean, sigma, rng):
    return np.hypot(clean + rng.normal(0.0, sigma, clean.shape), rng.normal(0.0, sigma, clean.shape))


def _model(te, s0, t2, offset):
    return s0 * np.exp(-te / t2) + offset


def test_noise_free_phantom_recovers_every_parameter():
    rng = np.random.default_rng(0)
    t2 = rng.uniform(15.0, 80.0, (6, 7))
    s0 = rng.uniform(200.0, 3000.0, (6, 7))
    offset = rng.uniform(0.0, 60.0, (6, 7))
    signal = monoexponential(OAI_TE_MS, s0[..., None], t2[..., None], offset[..., None])
    fit = fit_t2_monoexponential(signal, OAI_TE_MS)
    assert fit.t2_ms.shape == (6, 7) and fit.converged.all()
    np.testing.assert_allclose(fit.t2_ms, t2, rtol=1e-6)
    np.testing.assert_allclose(fit.s0, s0, rtol=1e-6)
    np.testing.assert_allclose(fit.offset, offset, atol=1e-4 * s0.max())


def test_known_t2_phantom_with_rician_noise():
    """A 40 ms cartilage-like phantom, SNR 60 at TE 0, Rician noise: the median T2 within 1 ms."""
    rng = np.random.default_rng(1)
    n, true_t2, s0, sigma = 3000, 40.0, 1200.0, 20.0
    signal = _rician(np.broadcast_to(monoexponential(OAI_TE_MS, s0, true_t2, 0.0), (n, OAI_TE_MS.size)), sigma, rng)
    fit = fit_t2_monoexponential(signal, OAI_TE_MS)
    assert fit.converged.mean() > 0.98
    t2 = fit.t2_ms[fit.converged]
    assert abs(np.median(t2) - true_t2) < 1.0
    assert np.percentile(t2, 75) - np.percentile(t2, 25) < 10.0  # per-voxel spread at this SNR (about 8 ms)
    # The offset absorbs the Rician noise floor: positive on average.
    assert np.median(fit.offset[fit.converged]) > 0


def test_agrees_with_per_voxel_curve_fit():
    """Same voxels, same start: the vectorised LM and scipy's per-voxel LM reach the same T2 (< 0.1 ms)."""
    rng = np.random.default_rng(2)
    n = 150
    t2 = rng.uniform(20.0, 60.0, n)
    s0 = rng.uniform(500.0, 2500.0, n)
    offset = rng.uniform(0.0, 40.0, n)
    signal = monoexponential(OAI_TE_MS, s0[:, None], t2[:, None], offset[:, None])
    signal = signal + rng.normal(0.0, 0.5, signal.shape)  # noise-free-ish (SNR 1000-5000)
    fit = fit_t2_monoexponential(signal, OAI_TE_MS)
    assert fit.converged.all()
    s0_start, t2_start = log_linear_t2(signal, OAI_TE_MS)
    reference = np.empty(n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OptimizeWarning)
        for i in range(n):
            params, _ = curve_fit(_model, OAI_TE_MS, signal[i], p0=(s0_start[i], t2_start[i], 0.0), method="lm")
            reference[i] = params[1]
    assert np.max(np.abs(fit.t2_ms - reference)) < 0.1
    assert np.median(np.abs(fit.t2_ms - t2)) < 0.5  # and both near the truth


def test_mask_and_unusable_voxels():
    signal = np.broadcast_to(monoexponential(OAI_TE_MS, 1000.0, 35.0, 10.0), (4, 5, OAI_TE_MS.size)).copy()
    signal[0, 0] = 0.0  # no signal
    signal[0, 1, 3] = np.nan  # a broken echo
    mask = np.ones((4, 5), dtype=bool)
    mask[3, 4] = False
    fit = fit_t2_monoexponential(signal, OAI_TE_MS, mask=mask)
    assert not fit.converged[0, 0] and not fit.converged[0, 1] and not fit.converged[3, 4]
    assert np.isnan(fit.t2_ms[3, 4]) and np.isnan(fit.t2_ms[0, 0]) and fit.iterations[3, 4] == 0
    others = mask.copy()
    others[0, :2] = False
    np.testing.assert_allclose(fit.t2_ms[others], 35.0, rtol=1e-6)


def test_linear_echoes_are_not_converged():
    """Echoes that fall on a line have no finite T2: flagged, not reported as a huge T2."""
    signal = 1000.0 - 5.0 * OAI_TE_MS + np.array([0.0, 0.1, -0.1, 0.2, -0.2, 0.1, 0.0])
    fit = fit_t2_monoexponential(signal[None], OAI_TE_MS)
    assert not fit.converged[0]


@pytest.mark.parametrize("signal_shape, echo_times, match", [
    ((5, 7), [10, 20], "at least 3 echoes"),
    ((5, 7), [10, 20, 30, 40, 50, 60], "7 echoes"),
    ((5, 7), [10, 20, 30, 30, 50, 60, 70], "increase strictly"),
    ((5, 7), [10, 20, 30, 25, 50, 60, 70], "increase strictly"),
    ((5, 7), [-10, 20, 30, 40, 50, 60, 70], ">= 0"),
])
def test_bad_input_raises_typed_error(signal_shape, echo_times, match):
    with pytest.raises(QmriInputError, match=match):
        fit_t2_monoexponential(np.ones(signal_shape), echo_times)


def test_mask_shape_mismatch_raises():
    with pytest.raises(QmriInputError, match="mask shape"):
        fit_t2_monoexponential(np.ones((4, 5, 7)), OAI_TE_MS, mask=np.ones((4, 4), dtype=bool))


# -- deep / superficial ---------------------------------------------------------------------

def _slab(thickness_voxels=8):
    """Bone below (rows 0-9), cartilage slab above it, joint space above; axis 0 is the depth axis."""
    bone = np.zeros((30, 12, 6), dtype=bool)
    bone[:10] = True
    cartilage = np.zeros_like(bone)
    cartilage[10:10 + thickness_voxels] = True
    return cartilage, bone


def test_deep_superficial_split_of_a_slab():
    cartilage, bone = _slab(8)
    spacing = (0.3, 0.36, 0.7)  # anisotropic; the normal is along axis 0
    depth = cartilage_depth(cartilage, bone, spacing)
    np.testing.assert_allclose(depth[10:18, 5, 3], np.arange(1, 9) / 9.0)
    assert np.isnan(depth[~cartilage]).all()
    deep, superficial = split_cartilage_layers(cartilage, bone, spacing)
    assert deep[10:14].all() and not deep[14:].any() and not deep[:10].any()
    assert superficial[14:18].all() and not superficial[:14].any() and not superficial[18:].any()
    # 2-D per slice (MSME slices) gives the same split here
    deep_2d, _ = split_cartilage_layers(cartilage, bone, spacing, slice_axis=2)
    np.testing.assert_array_equal(deep_2d, deep)


def test_odd_thickness_middle_voxel_is_deep():
    cartilage, bone = _slab(7)
    deep, superficial = split_cartilage_layers(cartilage, bone, (0.5, 0.5, 0.5))
    assert deep[10:14].all() and superficial[14:17].all() and not superficial[13].any()


def test_layer_t2_of_a_two_layer_phantom():
    cartilage, bone = _slab(8)
    t2 = np.full(cartilage.shape, np.nan)
    t2[10:14] = 30.0  # deep
    t2[14:18] = 50.0  # superficial
    depth = cartilage_depth(cartilage, bone, (0.3, 0.3, 0.7))
    layers = layer_t2(t2, cartilage, depth)
    assert (layers.deep_ms, layers.superficial_ms, layers.total_ms) == (30.0, 50.0, 40.0)
    assert layers.n_deep == layers.n_superficial == layers.n_total // 2
    valid = np.ones_like(cartilage)
    valid[14:18] = False
    only_deep = layer_t2(t2, cartilage, depth, valid=valid)
    assert np.isnan(only_deep.superficial_ms) and only_deep.total_ms == 30.0


def test_layer_inputs_checked():
    cartilage, bone = _slab()
    with pytest.raises(QmriInputError, match="differs from bone"):
        cartilage_depth(cartilage, bone[:, :, :3], (1, 1, 1))
    with pytest.raises(QmriInputError, match="overlap"):
        cartilage_depth(cartilage | bone, bone, (1, 1, 1))
    with pytest.raises(QmriInputError, match="bone mask is empty"):
        cartilage_depth(cartilage, np.zeros_like(bone), (1, 1, 1))
    with pytest.raises(QmriInputError, match="spacing_mm"):
        cartilage_depth(cartilage, bone, (1, 1))
    with pytest.raises(QmriInputError, match="shapes differ"):
        layer_t2(np.zeros((2, 2)), cartilage, np.zeros(cartilage.shape))


# -- real MSME series ------------------------------------------------------------------------

MESE_T2 = Path(os.environ.get("KNEELIB_DATA", "")) / "pymskt_knee_mri" / "MESE_T2"
#: a region of the posterior calf muscle (gastrocnemius) on the middle slice (12 of 24), voxel
#: indices of the (columns, rows) grid that kneelib.data.dicom reads: 40 x 60 = 2,400 voxels
MUSCLE_ROI = (slice(170, 210), slice(180, 240), 12)


@pytest.mark.skipif(not MESE_T2.is_dir(), reason="real MSME series not present ($KNEELIB_DATA/pymskt_knee_mri)")
def test_real_msme_muscle_t2_is_plausible():
    """The 8-echo GE MSME of pymskt (TE 6.3-50.5 ms): skeletal muscle T2 at 3 T is about 25-40 ms."""
    from kneelib.data.dicom import read_dicom_series

    volume = read_dicom_series(MESE_T2)
    assert volume.n_echoes == 8 and len(volume.echo_times_ms) == 8
    roi = volume.array[MUSCLE_ROI].astype(float)  # (40, 60, 8)
    fit = fit_t2_monoexponential(roi, volume.echo_times_ms)
    assert fit.converged.mean() > 0.95
    median_t2 = float(np.median(fit.t2_ms[fit.converged]))
    assert 25.0 < median_t2 < 40.0, median_t2


@pytest.mark.parametrize("echo_times", [OAI_TE_MS, OAI_TE_MS + 3.0, np.array([8.0, 15.0, 30.0, 41.0, 60.0])])
def test_residual_rms_is_the_rms_of_the_fitted_model(echo_times):
    """The reported residual is that of the returned parameters, whatever the echo spacing."""
    rng = np.random.default_rng(3)
    signal = monoexponential(echo_times, 1000.0, rng.uniform(20, 60, (50, 1)), 20.0) + rng.normal(0, 8.0, (50, echo_times.size))
    fit = fit_t2_monoexponential(signal, echo_times)
    model = monoexponential(echo_times, fit.s0[:, None], fit.t2_ms[:, None], fit.offset[:, None])
    np.testing.assert_allclose(fit.residual_rms, np.sqrt(((signal - model) ** 2).mean(1)), rtol=1e-8)


def test_distance_on_a_box_around_the_cartilage_equals_the_whole_volume_transform():
    """cartilage_depth transforms a box around the cartilage: same values, bit for bit, as the whole volume."""
    from scipy import ndimage

    from kneelib.qmri.relaxometry import _distance_at

    rng = np.random.default_rng(0)
    fallbacks = 0
    for _ in range(120):
        shape = tuple(int(n) for n in rng.integers(5, 30, size=3))
        sampling = tuple(rng.uniform(0.3, 3.0, size=3))
        smooth = ndimage.gaussian_filter(rng.random(shape), 2)
        where = smooth > np.quantile(smooth, rng.uniform(0.5, 0.99))
        nonzero = rng.random(shape) > rng.uniform(0.0, 1.0) ** 0.2
        margin = int(rng.integers(0, 6))
        whole = ndimage.distance_transform_edt(nonzero, sampling=sampling)[where]
        np.testing.assert_array_equal(_distance_at(nonzero, where, sampling, margin_voxels=margin), whole)
        fallbacks += bool(whole.max() > margin * min(sampling))
    assert 0 < fallbacks < 120  # both the box and the whole-volume path were taken
