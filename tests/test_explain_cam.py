import numpy as np
import pytest
import torch
from scipy import ndimage

from kneelib.explain.cam import (class_activation_map, normalize_cam, painful_knee_cams, siamese_cams,
                                 top_cam_slice, upsample_cam)
from kneelib.explain.pointing import pointing_hit
from kneelib.models.siamese import siamese_pain_net
from kneelib.models.vgg_cam import siamese_vgg16_cam
from kneelib.train.siamese import TrainConfig, train_siamese

torch.set_num_threads(1)


def toy_blob_knees(n, size=48, n_slices=3, signal_slice=1, seed=0):
    """Noise pairs; the painful knee's ``signal_slice`` has a bright disc at a random place."""
    rng = np.random.default_rng(seed)
    images = rng.normal(0, 1, (n, 2, n_slices, size, size)).astype(np.float32)
    labels = rng.integers(0, 2, n)
    masks = np.zeros((n, size, size), dtype=bool)
    yy, xx = np.mgrid[:size, :size]
    for i, label in enumerate(labels):
        cy, cx = rng.integers(8, size - 8, 2)
        masks[i] = (yy - cy) ** 2 + (xx - cx) ** 2 <= 16
        images[i, label, signal_slice] += 2.5 * masks[i]
    return images, labels, masks


def test_cam_is_the_channel_weighted_sum():
    features = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    weights = torch.tensor([1.0, 0.0, -1.0])
    cam = class_activation_map(features, weights)
    torch.testing.assert_close(cam, features[:, 0] - features[:, 2])
    with pytest.raises(ValueError, match="channels"):
        class_activation_map(features, torch.ones(4))


def test_cams_have_one_map_per_knee_and_slice_and_their_means_give_the_logit():
    torch.manual_seed(0)
    model = siamese_pain_net(n_slices=4, widths=(4, 8, 8))
    images = np.random.default_rng(0).normal(size=(3, 2, 4, 32, 32)).astype(np.float32)
    result = siamese_cams(model, images, target_class=1)
    assert result.cams.shape == (3, 2, 4, 4, 4)
    assert model.training  # mode restored
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(images))
    _, bias = model.cam_weights()
    rebuilt = result.cams.mean(axis=(-2, -1)).sum(axis=(1, 2)) + bias[1].item()
    np.testing.assert_allclose(rebuilt, logits[:, 1].numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(result.probability_right, torch.softmax(logits, 1)[:, 1].numpy(), rtol=1e-5)
    vgg = siamese_vgg16_cam(n_slices=4, width_multiplier=0.0625)
    assert siamese_cams(vgg, images).cams.shape == (3, 2, 4, 2, 2)  # input / 16


def test_top_slice_painful_knee_and_upsampling():
    cams = np.zeros((2, 2, 3, 4, 4), dtype=np.float32)
    cams[0, 1, 2] = 1.0
    cams[1, 0, 0] = 1.0
    chosen = painful_knee_cams(cams, [1, 0])
    assert chosen.shape == (2, 3, 4, 4)
    np.testing.assert_array_equal(top_cam_slice(chosen), [2, 0])
    up = upsample_cam(chosen, 16)
    assert up.shape == (2, 3, 16, 16)
    peak = np.zeros((4, 4), np.float32)
    peak[1, 2] = 1
    assert np.unravel_index(upsample_cam(peak, (16, 16)).argmax(), (16, 16)) in {(6, 10), (5, 9), (5, 10), (6, 9)}
    norm = normalize_cam(np.stack([peak * 5 - 1, np.zeros_like(peak)]))
    assert norm[0].max() == 1 and norm[0].min() == 0 and not norm[1].any()
    with pytest.raises(ValueError):
        painful_knee_cams(cams, [2, 0])


def test_cam_localises_the_discriminative_blob_on_a_toy_task():
    images, labels, masks = toy_blob_knees(128, seed=0)
    learner = train_siamese(images, labels, np.arange(96), lambda: siamese_pain_net(3, (8, 16, 16)),
                            TrainConfig(epochs=10, lr=0.1, batch_size=16, valid_fraction=0.0, seed=0),
                            show_progress=False)
    test = np.arange(96, 128)
    result = siamese_cams(learner.model, images[test], target_class=labels[test],
                          standardization=learner.dls.standardization)
    painful = painful_knee_cams(result.cams, labels[test])
    # the slice that carries the signal has the highest mean CAM for every test subject
    assert (top_cam_slice(painful) == 1).all()
    hits = [pointing_hit(painful[j, 1], masks[i], tolerance_px=4) for j, i in enumerate(test)]
    # a hot spot at a uniformly random pixel hits the dilated disc with this probability
    chance = np.mean([ndimage.binary_dilation(masks[i], iterations=4).mean() for i in test])
    assert np.mean(hits) >= 0.6
    assert np.mean(hits) > 5 * chance
