"""Attention and Grad-CAM checks against planted drivers (paper 002, 3.4) on tiny data."""
import numpy as np
import pytest
import torch

from kneelib.explain.slice_attention import (attention_on_drivers, attention_summary, pain_driver_mask,
                                             progression_driver_mask, slice_grad_cams)


def test_driver_mask_keeps_medial_compartment_lesions_and_effusion_anywhere():
    labels = np.zeros((4, 20, 20), np.uint8)
    labels[:, 10, 2:6] = 6  # medial tibial cartilage
    labels[:, 10, 14:18] = 7  # lateral tibial cartilage
    loss = np.zeros(labels.shape, bool)
    loss[1, 9, 3] = True  # next to medial cartilage
    loss[2, 9, 15] = True  # lateral: not a driver
    bml = np.ones(labels.shape, bool)  # not a progression driver in the causal model
    drivers = progression_driver_mask(labels, {"cartilage_loss": loss, "bml": bml})
    assert drivers[1, 9, 3] and not drivers[2, 9, 15] and drivers.sum() == 1
    effusion = np.zeros(labels.shape, bool)
    effusion[3, 1:3, 1:3] = True  # far from the medial compartment: a whole-joint driver
    with_effusion = progression_driver_mask(labels, {"cartilage_loss": loss, "effusion_synovitis": effusion})
    assert with_effusion.sum() == 1 + 4 and with_effusion[3, 1, 1] and not with_effusion[2, 9, 15]
    with pytest.raises(ValueError):
        progression_driver_mask(labels, {"cartilage_loss": loss[:2]})


def test_attention_on_drivers_mass_and_informative_knees():
    attention = np.array([[0.7, 0.1, 0.2, 0.0], [0.25, 0.25, 0.25, 0.25], [0.5, 0.5, 0.0, 0.0]])
    mask = np.array([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0]], bool)
    table = attention_on_drivers(attention, mask, [np.array([1, 0, 0], bool), np.ones(4, bool), None])
    assert table.loc[0, "attention_mass"] == pytest.approx(0.7) and table.loc[0, "slice_share"] == pytest.approx(1 / 3)
    assert list(table["informative"]) == [True, False, False]
    summary = attention_summary(table, groups=[1, 2, 3])
    assert summary["n"] == 1 and np.isnan(summary["difference"])  # one informative knee: no CI
    with pytest.raises(ValueError):
        attention_on_drivers(attention, mask, [np.ones(2, bool), None, None])


def test_attention_summary_detects_preference():
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(30):
        flags = np.zeros(8, bool)
        flags[rng.integers(0, 8)] = True
        weights = np.where(flags, 0.5, 0.5 / 7)
        rows.append((weights, flags))
    table = attention_on_drivers(np.array([w for w, _ in rows]), np.ones((30, 8), bool), [f for _, f in rows])
    summary = attention_summary(table, groups=np.arange(30), n_boot=200)
    assert summary["difference"] == pytest.approx(0.5 - 1 / 8) and summary["ci_low"] > 0


class _ToyEncoder:
    """A two-layer CNN with the SliceEncoder interface (no ImageNet weights needed)."""

    def __init__(self):
        torch.manual_seed(0)
        self.network = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
                                           torch.nn.AvgPool2d(4))

    def to_input(self, images):
        return torch.as_tensor(np.asarray(images, np.float32))[:, None].expand(-1, 3, -1, -1)

    def forward_features(self, inputs):
        return self.network(inputs)

    def pool(self, maps):
        return maps.mean(dim=(2, 3))


def test_slice_grad_cams_shapes_and_range():
    from kneelib.models.slice_attention import SliceAttentionNet
    from kneelib.train.slice_attention import FoldStandardisation

    encoder = _ToyEncoder()
    model = SliceAttentionNet(n_features=4, n_clinical=1, conv_channels=4, gru_hidden=2, mlp_hidden=4).eval()
    standard = FoldStandardisation(np.zeros(4), np.ones(4), np.zeros(1), np.ones(1))
    images = np.random.default_rng(0).random((3, 16, 16)).astype(np.float32)
    cams = slice_grad_cams(encoder, model, standard, images, [0.5])
    assert cams.shape == (3, 4, 4) and cams.min() >= 0 and cams.max() <= 1 + 1e-6


def test_pain_driver_mask_is_the_union_of_the_pain_lesions():
    labels = np.zeros((3, 8, 8), np.uint8)
    bml, osteophyte = np.zeros(labels.shape, bool), np.zeros(labels.shape, bool)
    bml[0, 1, 1] = True
    osteophyte[2, 5, 5] = True  # not a pain driver in the causal model
    hoffa = np.zeros(labels.shape, bool)
    hoffa[1, 2:4, 2] = True
    mask = pain_driver_mask(labels, {"bml": bml, "osteophyte": osteophyte, "hoffa_synovitis": hoffa})
    assert mask.sum() == 3 and mask[0, 1, 1] and not mask[2, 5, 5]
    with pytest.raises(ValueError):
        pain_driver_mask(labels, {"bml": bml[:1]})


def test_knee_driver_and_network_slices_match_a_direct_read_in_workers():
    """Per-knee reading in worker processes gives what reading in this process gives."""
    from kneelib.data import read_dicom_series, read_image_index
    from kneelib.explain.slice_attention import KneeSeries, knee_driver_slices, knee_network_slices
    from kneelib.preprocess.slice_features import SliceFeatureConfig, label_slices, prepare_slices
    from kneelib.synth.cohort import generate_cohort
    from kneelib.synth.ground_truth import load_series_with_truth, series_truth_table

    root = generate_cohort("smoke", seed=0, progress=False)
    index, truth = read_image_index(root), series_truth_table(root)
    config = SliceFeatureConfig(series="SAG_3D_DESS", n_slices=6, image_size=32, n4_shrink=0)
    baseline = index.table[(index.table["VISIT"] == 0)
                           & index.table["SeriesDescription"].str.startswith("SAG_3D_DESS_")]
    pairs = list(baseline[["ParticipantID", "SeriesDescription"]].itertuples(index=False, name=None))[:3]
    knees = [KneeSeries.of(root, index, truth, pid, description) for pid, description in pairs]
    assert all(len(knee.truth) == 1 and set(knee.index.table["ParticipantID"]) == {pid}
               for knee, (pid, _) in zip(knees, pairs))

    in_process = knee_driver_slices(knees, config, pain_driver_mask, n_jobs=1)
    in_workers = knee_driver_slices(knees, config, pain_driver_mask, n_jobs=2)
    for (pid, description), one, two in zip(pairs, in_process, in_workers):
        volume, labels, masks = load_series_with_truth(root, index, truth, pid, 0, description)
        direct = label_slices(pain_driver_mask(labels, masks).astype(np.uint8), volume, config) > 0
        assert one.dtype == bool and one.shape == (6, 32, 32)
        np.testing.assert_array_equal(one, direct)
        np.testing.assert_array_equal(two, direct)

    images = knee_network_slices(knees, config, n_jobs=2)
    for (pid, description), got in zip(pairs, images):
        expected, _ = prepare_slices(read_dicom_series(index.find_series(pid, 0, description)), config)
        np.testing.assert_array_equal(got, expected)

    from kneelib.data.errors import KneelibDataError

    with pytest.raises(KneelibDataError, match="NOPE"):
        KneeSeries.of(root, index, truth, pairs[0][0], "NOPE_RIGHT")
