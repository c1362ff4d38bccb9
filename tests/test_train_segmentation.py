"""The supplement's loss family, training, ensembling and inference (paper 001, supplement 003)."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from torch import nn

from kneelib.data.errors import KneelibDataError
from kneelib.models.segmentation import SegmentationInputError, UNetSettings, build_segmentation_network
from kneelib.stats.segmentation import dice_coefficient
from kneelib.train.segmentation import (SegmentationEnsemble, SegmentationTrainConfig, normalise_intensity,
                                        predict_volume, resample_to_spacing, train_ensemble, train_segmentation)
from kneelib.train.segmentation_losses import (SEGMENTATION_LOSSES, class_weights_from_labels, distance_weight_map,
                                               segmentation_loss)


def two_spheres(seed: int, n: int = 24):
    """Image and labels of a bright sphere (class 1) and a grey sphere (class 2) in noise."""
    rng = np.random.default_rng(seed)
    grid = np.indices((n, n, n)).astype(float)
    labels = np.zeros((n, n, n), np.int64)
    for cls, low, high in ((1, 7, 10), (2, 14, 17)):
        centre = rng.uniform(low, high, 3)
        labels[((grid - centre[:, None, None, None]) ** 2).sum(0) < rng.uniform(4, 6) ** 2] = cls
    image = np.array([0.5, 1.3, 0.9])[labels] + rng.normal(0, 0.1, labels.shape)
    return image.astype(np.float32), labels


# ---------------------------------------------------------------- losses
def test_loss_names_are_the_supplements_five():
    assert SEGMENTATION_LOSSES == ("weighted_dice", "weighted_cross_entropy", "mixed", "penalised_confidence", "dice")
    with pytest.raises(KneelibDataError):
        segmentation_loss("focal")


@pytest.mark.parametrize("name", SEGMENTATION_LOSSES)
def test_each_loss_is_finite_and_decreases(name):
    torch.manual_seed(0)
    image, labels = two_spheres(0, n=16)
    x = torch.from_numpy(image)[None, None]
    y = torch.from_numpy(labels)[None]
    w = torch.from_numpy(distance_weight_map(labels))[None]
    loss_fn = segmentation_loss(name, class_weight=class_weights_from_labels([labels], 3))
    model = nn.Sequential(nn.Conv3d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv3d(8, 3, 1))
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    values = []
    for _ in range(25):
        optimiser.zero_grad()
        loss = loss_fn(model(x), y, w)
        assert torch.isfinite(loss)
        loss.backward()
        optimiser.step()
        values.append(loss.item())
    assert values[-1] < values[0] - 0.02 * abs(values[0])


def test_unit_weight_map_reproduces_monai_and_torch():
    from monai.losses import DiceCELoss, DiceLoss

    torch.manual_seed(1)
    logits = torch.randn(2, 4, 6, 7, 5)
    target = torch.randint(0, 4, (2, 6, 7, 5))
    ones = torch.ones(2, 6, 7, 5)
    weight = [0.5, 1.0, 2.0, 3.0]
    cw = torch.tensor(weight)
    y = target[:, None]
    expected = {
        "weighted_dice": DiceLoss(to_onehot_y=True, softmax=True, weight=cw)(logits, y),
        "mixed": DiceCELoss(to_onehot_y=True, softmax=True, weight=cw, lambda_ce=0.1)(logits, y),
        "dice": DiceLoss(to_onehot_y=True, softmax=True)(logits, y),
        "weighted_cross_entropy": nn.CrossEntropyLoss(weight=cw)(logits, target),
    }
    for name, value in expected.items():
        loss = segmentation_loss(name, class_weight=weight)
        assert loss(logits, target, ones).item() == pytest.approx(value.item(), rel=1e-5), name
        assert loss(logits, target).item() == pytest.approx(value.item(), rel=1e-5), name
    p = torch.softmax(logits, 1)
    entropy = -(p * p.log()).sum(1).mean()
    pco = segmentation_loss("penalised_confidence", class_weight=weight, confidence_penalty=0.3)
    assert pco(logits, target, ones).item() == pytest.approx((expected["weighted_cross_entropy"] - 0.3 * entropy).item(),
                                                             rel=1e-5)


def test_distance_weights_favour_the_boundary():
    labels = np.zeros((12, 12, 12), int)
    labels[3:9, 3:9, 3:9] = 1
    weight = distance_weight_map(labels, (1, 1, 1))
    assert weight[3, 5, 5] == pytest.approx(2.0) and weight[2, 5, 5] == pytest.approx(2.0)
    assert weight.min() == pytest.approx(1.0) and weight[0, 0, 0] == pytest.approx(1.0)
    assert 1 < weight[5, 5, 5] < 2
    assert (distance_weight_map(np.zeros((4, 4, 4), int)) == 1).all()
    # the weight map makes boundary errors cost more than the same error far from it
    logits = torch.zeros(1, 2, 12, 12, 12)
    logits[:, 1] = torch.from_numpy(np.where(labels == 1, 4.0, -4.0))
    wrong_at_boundary, wrong_inside = logits.clone(), logits.clone()
    wrong_at_boundary[0, 1, 3, 5, 5] = -4.0
    wrong_inside[0, 1, 5, 5, 5] = -4.0
    loss = segmentation_loss("weighted_cross_entropy")
    w = torch.from_numpy(weight)[None]
    y = torch.from_numpy(labels)[None]
    assert loss(wrong_at_boundary, y, w) > loss(wrong_inside, y, w)
    assert loss(wrong_at_boundary, y) == pytest.approx(loss(wrong_inside, y).item())


def test_class_weights_favour_rare_classes():
    labels = np.array([0] * 90 + [1] * 9 + [2])
    weights = class_weights_from_labels([labels], 4, power=1.0)
    assert weights.mean() == pytest.approx(1.0)
    assert weights[0] < weights[1] < weights[2]
    assert weights[1] / weights[0] == pytest.approx(10.0)
    assert weights[3] == pytest.approx(weights[2])  # an absent class counts as one voxel (class 2 has one)
    with pytest.raises(KneelibDataError):
        class_weights_from_labels([labels], 2)


# ---------------------------------------------------------------- training and inference
def test_tiny_unet_learns_two_spheres():
    data = [two_spheres(seed) for seed in range(4)]
    torch.manual_seed(0)
    model = build_segmentation_network("bone", "unet")
    config = SegmentationTrainConfig(loss="mixed", n_steps=40, patch_size=(24, 24, 24), batch_size=2,
                                     learning_rate=1e-2, seed=0)
    start = time.perf_counter()
    result = train_segmentation(model, [d[0] for d in data], [d[1] for d in data], (1, 1, 1), config,
                                show_progress=False)
    assert time.perf_counter() - start < 20
    assert result.history["train_loss"].iloc[-5:].mean() < result.history["train_loss"].iloc[:5].mean()
    image, labels = two_spheres(99)
    predicted, probabilities = predict_volume(result, image)
    assert probabilities.shape == (4, 24, 24, 24) and np.allclose(probabilities.sum(0), 1, atol=1e-5)
    for cls in (1, 2):
        assert dice_coefficient(predicted == cls, labels == cls) > 0.8


def test_training_is_deterministic_with_a_seed_and_validates():
    data = [two_spheres(seed, n=16) for seed in range(2)]
    config = SegmentationTrainConfig(loss="dice", n_steps=6, patch_size=(16, 16, 16), batch_size=1,
                                     learning_rate=1e-2, validate_every=2, patience=100, seed=5)
    settings = UNetSettings(channels=(4, 8), strides=(2,))
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = build_segmentation_network("bone", "unet", unet=settings)
        runs.append(train_segmentation(model, [d[0] for d in data], [d[1] for d in data], (1, 1, 1), config,
                                       valid_images=[data[0][0]], valid_labels=[data[0][1]], show_progress=False))
    assert runs[0].history["train_loss"].tolist() == runs[1].history["train_loss"].tolist()
    assert runs[0].history["valid_loss"].notna().sum() == 3
    valid = runs[0].history.dropna()
    assert runs[0].best_step == int(valid.loc[valid["valid_loss"].idxmin(), "step"])


def test_early_stopping_restores_the_best_validation_weights(monkeypatch):
    import kneelib.train.segmentation as training

    scripted = iter([0.5, 0.3, 0.4, 0.6, 0.1])
    states = {}

    def fake_validation(model, loss_fn, images, labels, weights, config):
        value = next(scripted)
        states[value] = {k: v.clone() for k, v in model.state_dict().items()}
        return value

    monkeypatch.setattr(training, "_validation_loss", fake_validation)
    image, labels = two_spheres(0, n=16)
    config = SegmentationTrainConfig(loss="dice", n_steps=20, patch_size=(16, 16, 16), batch_size=1,
                                     learning_rate=1e-2, validate_every=2, patience=2)
    torch.manual_seed(0)
    model = build_segmentation_network("bone", "unet", unet=UNetSettings(channels=(4, 8), strides=(2,)))
    result = train_segmentation(model, [image], [labels], (1, 1, 1), config, valid_images=[image],
                                valid_labels=[labels], show_progress=False)
    assert result.best_step == 4
    assert len(result.history) == 8          # 0.4 and 0.6 did not improve on 0.3: stop at step 8
    for key, value in result.model.state_dict().items():
        assert torch.equal(value, states[0.3][key]), key


def test_training_refuses_bad_input():
    image, labels = two_spheres(0, n=16)
    model = build_segmentation_network("bone", "unet")
    config = SegmentationTrainConfig(n_steps=1, patch_size=(16, 16, 16))
    with pytest.raises(KneelibDataError):
        train_segmentation(model, [image], [labels + 5], (1, 1, 1), config, show_progress=False)
    with pytest.raises(KneelibDataError):
        train_segmentation(model, [image], [labels[:8]], (1, 1, 1), config, show_progress=False)
    with pytest.raises(KneelibDataError):
        train_segmentation(model, [image], [labels], (1, 1, 1), SegmentationTrainConfig(patch_size=(12, 12, 12)),
                           show_progress=False)
    with pytest.raises(KneelibDataError):
        normalise_intensity(np.zeros((4, 4, 4)))


def test_ensemble_is_the_mean_of_member_softmaxes():
    torch.manual_seed(0)
    members = [build_segmentation_network("cartilage", "unet") for _ in range(2)]
    for m in members:
        m.eval()
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        expected = (torch.softmax(members[0](x), 1) + torch.softmax(members[1](x), 1)) / 2
        got = SegmentationEnsemble(members)(x)
    assert torch.allclose(got, expected, atol=1e-6)
    assert not torch.allclose(got, torch.softmax(members[0](x), 1), atol=1e-3)
    image = np.random.default_rng(0).normal(1, 0.2, (16, 16, 16)).astype(np.float32) + 1
    labels, probabilities = predict_volume(members, image)
    x = torch.from_numpy(normalise_intensity(image))[None, None]
    with torch.no_grad():
        expected = (torch.softmax(members[0](x), 1) + torch.softmax(members[1](x), 1)) / 2
    assert np.allclose(probabilities, expected[0].numpy(), atol=1e-5)
    assert (labels == expected[0].argmax(0).numpy()).all()
    with pytest.raises(KneelibDataError):
        SegmentationEnsemble([members[0], build_segmentation_network("bone", "unet")])


def test_train_ensemble_gives_one_member_per_loss():
    data = [two_spheres(seed, n=16) for seed in range(2)]
    config = SegmentationTrainConfig(n_steps=2, patch_size=(16, 16, 16), batch_size=1)
    members = train_ensemble("bone", [d[0] for d in data], [d[1] for d in data], (1, 1, 1), ("mixed", "dice"),
                             config=config, show_progress=False)
    assert [m.loss for m in members] == ["mixed", "dice"]
    assert [m.config.seed for m in members] == [0, 1]


def test_resample_to_spacing_roundtrip_of_labels():
    labels = np.zeros((20, 30, 10), np.uint8)
    labels[5:15, 10:20, 2:8] = 2
    small, spacing = resample_to_spacing(labels, (0.7, 0.5, 1.4), 1.4, order=0)
    assert small.shape == (10, 11, 10) and spacing[2] == pytest.approx(1.4)
    assert set(np.unique(small)) == {0, 2}


def test_anatomical_components_drop_islands_and_keep_both_tibial_plates():
    from kneelib.models.segmentation import CARTILAGE_CLASSES
    from kneelib.train.segmentation import keep_anatomical_components

    labels = np.zeros((20, 20, 20), dtype=np.uint8)
    femoral, tibial, patellar = (CARTILAGE_CLASSES.index(n) for n in
                                 ("femoral_cartilage", "tibial_cartilage", "patellar_cartilage"))
    labels[2:8, 2:18, 2:6] = femoral          # the sheet
    labels[15:17, 15:17, 15:17] = femoral     # an island of 8 voxels
    labels[2:6, 2:8, 10:13] = tibial          # medial plate
    labels[10:14, 2:8, 10:13] = tibial        # lateral plate, not touching the medial one
    labels[17, 2, 2] = tibial                 # a one-voxel island: the third component
    labels[12:14, 12:14, 2:4] = patellar
    cleaned = keep_anatomical_components(labels, CARTILAGE_CLASSES)
    assert cleaned.dtype == np.uint8 and cleaned.shape == labels.shape
    assert (cleaned == femoral).sum() == 6 * 16 * 4            # island gone, sheet whole
    assert (cleaned == tibial).sum() == 2 * 4 * 6 * 3          # both plates, not the island
    assert cleaned[17, 2, 2] == 0 and cleaned[15, 15, 15] == 0
    assert (cleaned == patellar).sum() == 8
    # a class told to keep more components keeps the island
    kept = keep_anatomical_components(labels, CARTILAGE_CLASSES, components={"femoral_cartilage": 2})
    assert (kept == femoral).sum() == 6 * 16 * 4 + 8 and (kept == tibial).sum() == (labels == tibial).sum()
    # a patella the network split in two keeps both halves (each >= 25% of the largest)
    halves = np.zeros((10, 10, 10), dtype=np.uint8)
    halves[1:4, 1:9, 1:9] = 3
    halves[6:8, 1:9, 1:9] = 3
    halves[9, 9, 9] = 3
    from kneelib.models.segmentation import BONE_CLASSES
    cleaned_bone = keep_anatomical_components(halves, BONE_CLASSES)
    assert (cleaned_bone == 3).sum() == (3 + 2) * 64 and cleaned_bone[9, 9, 9] == 0


def test_cartilage_components_must_touch_their_bone():
    from kneelib.models.segmentation import CARTILAGE_CLASSES
    from kneelib.train.segmentation import keep_anatomical_components

    patellar = CARTILAGE_CLASSES.index("patellar_cartilage")
    labels = np.zeros((30, 30, 30), dtype=np.uint8)
    labels[1:10, 1:10, 1:10] = patellar      # the larger blob, far from the patella (the small one is < 25% of it)
    labels[20:24, 20:26, 20:26] = patellar   # on the patella
    patella = np.zeros(labels.shape, dtype=bool)
    patella[20:28, 20:26, 26:29] = True      # one voxel beyond the cartilage blob's face
    cleaned = keep_anatomical_components(labels, CARTILAGE_CLASSES, hosts={"patellar_cartilage": patella})
    assert (cleaned == patellar).sum() == 4 * 6 * 6 and cleaned[5, 5, 5] == 0
    ungated = keep_anatomical_components(labels, CARTILAGE_CLASSES)
    assert (ungated == patellar).sum() == 9 ** 3  # without the host: the largest blob
    empty_host = keep_anatomical_components(labels, CARTILAGE_CLASSES, hosts={"patellar_cartilage": np.zeros_like(patella)})
    assert (empty_host == patellar).sum() == 9 ** 3
    with pytest.raises(SegmentationInputError, match="host mask"):
        keep_anatomical_components(labels, CARTILAGE_CLASSES, hosts={"patellar_cartilage": patella[:5]})


def test_anatomical_components_refuse_bad_input():
    from kneelib.models.segmentation import BONE_CLASSES
    from kneelib.train.segmentation import keep_anatomical_components

    with pytest.raises(SegmentationInputError, match="3-D integer"):
        keep_anatomical_components(np.zeros((4, 4)), BONE_CLASSES)
    with pytest.raises(SegmentationInputError, match="beyond"):
        keep_anatomical_components(np.full((3, 3, 3), 7, dtype=np.uint8), BONE_CLASSES)
