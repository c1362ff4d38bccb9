import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from kneelib.models.siamese import PAPER_WIDTHS, SiameseSliceNet, SliceBranch, siamese_pain_net
from kneelib.models.vgg_cam import VGG16CAM, VGG16CAMTrunk, siamese_vgg16_cam
from kneelib.train.siamese import TrainConfig, cross_validate, predict_probability, train_siamese

torch.set_num_threads(1)


def toy_knees(n=64, n_slices=3, size=32, seed=0, signal_slice=1):
    """Noise pairs; the painful knee (label 0 = left, 1 = right) carries a bright blob."""
    rng = np.random.default_rng(seed)
    images = rng.normal(0.0, 1.0, size=(n, 2, n_slices, size, size)).astype(np.float32)
    labels = rng.integers(0, 2, n)
    yy, xx = np.mgrid[:size, :size]
    for i, label in enumerate(labels):
        cy, cx = rng.integers(6, size - 6, 2)
        images[i, label, signal_slice] += 3.0 * ((yy - cy) ** 2 + (xx - cx) ** 2 <= 9)
    return images, labels


def test_paper_branch_gives_28x28x512_map_at_224px():
    branch = SliceBranch(1, PAPER_WIDTHS)
    with torch.no_grad():
        out = branch(torch.zeros(1, 1, 224, 224))
    assert out.shape == (1, 512, 28, 28)
    strides = [m.stride for m in branch.modules() if isinstance(m, torch.nn.Conv2d)]
    assert strides[0] == (2, 2) and all(s == (1, 1) for s in strides[1:])  # only conv1 strides
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in branch.modules()) == 2
    first = branch.features[0]
    assert first.kernel_size == (7, 7) and first.out_channels == 64


def test_forward_shapes_and_shared_weights_between_knees():
    torch.manual_seed(0)
    model = siamese_pain_net(n_slices=3, widths=(4, 8, 8)).eval()
    x = torch.randn(5, 2, 3, 32, 32)
    assert model(x).shape == (5, 2)
    features = model.forward_features(x)
    assert features.shape == (5, 2, 3, 8, 4, 4)
    assert len(model.branches) == 3  # one branch per slice position
    # the same branch maps left and right: swapping knees swaps the feature maps
    swapped = model.forward_features(x.flip(1))
    torch.testing.assert_close(swapped, features.flip(1))


def test_cam_weights_reproduce_the_logits_exactly():
    torch.manual_seed(1)
    model = siamese_pain_net(n_slices=4, widths=(4, 8, 6), slice_outputs=3).eval()
    x = torch.randn(3, 2, 4, 24, 24)
    with torch.no_grad():
        features = model.forward_features(x)
        logits = model.head(features)
    weights, bias = model.cam_weights()
    assert weights.shape == (2, 4, 2, 6)
    pooled = features.mean(dim=(-2, -1))  # (B, 2, S, C)
    rebuilt = torch.einsum("bksc,nskc->bn", pooled, weights) + bias
    torch.testing.assert_close(rebuilt, logits, atol=1e-5, rtol=1e-5)


def test_bad_input_is_rejected_with_the_expected_shape():
    model = siamese_pain_net(n_slices=3, widths=(4, 8))
    with pytest.raises(ValueError, match="3 slices"):
        model(torch.zeros(2, 2, 5, 32, 32))
    with pytest.raises(ValueError, match="widths"):
        SliceBranch(1, (8,))


def test_vgg_trunk_halves_the_map_resolution_and_matches_torchvision_layout():
    trunk = VGG16CAMTrunk(in_channels=1, width_multiplier=0.0625, batch_norm=True)
    with torch.no_grad():
        assert trunk(torch.zeros(1, 1, 224, 224)).shape[-2:] == (14, 14)  # Zhou et al. 14 x 14
    convs = [m for m in trunk.features if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 13 and sum(isinstance(m, torch.nn.MaxPool2d) for m in trunk.features) == 4
    exact = VGG16CAMTrunk(in_channels=3, width_multiplier=1, batch_norm=False)
    assert [c.out_channels for c in exact.features if isinstance(c, torch.nn.Conv2d)][-1] == 512
    assert exact.out_channels == 1024
    single = VGG16CAM(n_classes=2, width_multiplier=0.0625)
    assert single(torch.zeros(2, 1, 64, 64)).shape == (2, 2)
    siamese = siamese_vgg16_cam(n_slices=2, width_multiplier=0.0625)
    assert isinstance(siamese, SiameseSliceNet) and len(siamese.branches) == 1
    assert siamese(torch.zeros(2, 2, 2, 32, 32)).shape == (2, 2)


def test_training_learns_a_separable_toy_task():
    images, labels = toy_knees(n=96, seed=0)
    config = TrainConfig(epochs=10, lr=0.1, batch_size=16, valid_fraction=0.0, seed=0)
    learner = train_siamese(images, labels, np.arange(64), lambda: siamese_pain_net(3, (8, 16, 16)),
                            config, show_progress=False)
    test = np.arange(64, 96)
    probability = predict_probability(learner.model, images, test, learner.dls.standardization)
    assert roc_auc_score(labels[test], probability) > 0.9


def test_same_seed_gives_identical_cross_validated_predictions():
    images, labels = toy_knees(n=24, size=16, seed=2)
    fold = np.arange(24) % 2
    config = TrainConfig(epochs=1, lr=0.05, batch_size=8, valid_fraction=0.0, seed=5)

    def run():
        return cross_validate(images, labels, fold, lambda: siamese_pain_net(3, (4, 8)), config,
                              show_progress=False)

    first, second = run(), run()
    assert np.isfinite(first.probability).all()
    np.testing.assert_array_equal(first.probability, second.probability)
    assert set(first.history["fold"]) == {0, 1}


def test_default_monitoring_set_is_a_disjoint_stratified_part_of_the_training_subjects():
    images, labels = toy_knees(n=60, size=16, seed=3)
    learner = train_siamese(images, labels, np.arange(50), lambda: siamese_pain_net(3, (4, 8)),
                            TrainConfig(epochs=1, batch_size=16, valid_fraction=0.2), show_progress=False)
    train, valid = learner.dls.train.dataset.indices, learner.dls.valid.dataset.indices
    assert len(valid) == 10 and len(train) == 40
    assert not np.intersect1d(train, valid).size and set(np.r_[train, valid]) == set(range(50))
    assert len(learner.recorder.values[0]) == 3  # train loss, monitoring loss, monitoring AUC
