import numpy as np
import pytest

from kneelib.preprocess.center_slice import CenterSliceNotFoundError, detect_pcl_center_slice, pcl_band_scores


def knee_phantom(n_slices=21, size=96, center=10, seed=0, pcl=True):
    """Sagittal stack at 1 mm: bright femur and tibia, a dark horizontal joint line in every
    slice (a distractor) beside a brighter intercondylar notch, and an oblique dark PCL band
    in the notch that is longest at ``center``."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:size, :size].astype(float)
    base = np.where(((rows - 48) / 46) ** 2 + ((cols - 48) / 40) ** 2 <= 1, 0.45, 0.02)
    base[(rows >= 15) & (rows <= 44) & (cols >= 20) & (cols <= 76)] = 0.9   # femur
    base[(rows >= 55) & (rows <= 85) & (cols >= 22) & (cols <= 74)] = 0.85  # tibia
    base[(rows >= 47) & (rows <= 50) & (cols >= 20) & (cols <= 76)] = 0.2   # joint line
    base[(rows >= 32) & (rows <= 82) & (cols >= 32) & (cols <= 68)] = 0.6   # intercondylar notch
    start, end = np.array([78.0, 62.0]), np.array([36.0, 38.0])  # posterior tibia -> femoral notch
    volume = np.repeat(base[None], n_slices, axis=0)
    for k in range(n_slices):
        completeness = {0: 1.0, 1: 0.7, 2: 0.4}.get(abs(k - center), 0.0) if pcl else 0.0
        if completeness == 0:
            continue
        a, b = start, start + completeness * (end - start)
        d = b - a
        t = np.clip(((rows - a[0]) * d[0] + (cols - a[1]) * d[1]) / (d @ d), 0, 1)
        dist = np.hypot(rows - (a[0] + t * d[0]), cols - (a[1] + t * d[1]))
        volume[k][dist <= 2.5] = 0.12
    return (volume + rng.normal(0, 0.03, volume.shape)).astype(np.float32)


@pytest.mark.parametrize("center", [8, 10, 13])
def test_detects_the_slice_with_the_most_complete_pcl(center):
    result = detect_pcl_center_slice(knee_phantom(center=center, seed=center), (1.0, 1.0))
    assert result.index == center
    assert result.scores_mm[center] > 35  # the full band is 49 mm long (ellipse major axis ~1.15x)
    assert result.scores_mm[center] > 1.2 * max(result.scores_mm[center - 1], result.scores_mm[center + 1])
    assert result.scores_mm.shape == (21,)


def test_horizontal_joint_line_alone_is_not_taken_for_a_pcl():
    volume = knee_phantom(pcl=False)
    scores, _ = pcl_band_scores(volume, (1.0, 1.0))
    assert scores.max() < 10
    with pytest.raises(CenterSliceNotFoundError, match="PCL"):
        detect_pcl_center_slice(volume, (1.0, 1.0))


def test_anisotropic_spacing_scales_lengths_and_bad_input_is_rejected():
    volume = knee_phantom()
    iso = detect_pcl_center_slice(volume, (1.0, 1.0))
    half = detect_pcl_center_slice(volume, (0.5, 0.5))
    assert half.index == iso.index
    assert half.scores_mm[iso.index] == pytest.approx(iso.scores_mm[iso.index] / 2, rel=0.25)
    with pytest.raises(ValueError, match="slices, rows, columns"):
        detect_pcl_center_slice(volume[0])


def test_solidity_filter_rejects_a_curved_condyle_outline():
    volume = knee_phantom(center=10, seed=4)
    rows, cols = np.mgrid[:96, :96].astype(float)
    radius = np.hypot(rows - 45, cols - 48)
    arc = (np.abs(radius - 24) <= 2.0) & (rows > 45)  # a dark half-ring (cortical outline)
    volume[5][arc] = 0.12
    result = detect_pcl_center_slice(volume, (1.0, 1.0))
    assert result.index == 10
    loose, _ = pcl_band_scores(volume, (1.0, 1.0), min_solidity=0.0)
    assert loose[5] > 20 and result.scores_mm[5] == 0  # found as a band, rejected as curved
