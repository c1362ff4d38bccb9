"""Spherical-image classifiers (paper 001): initialisations, freezing, Grad-CAM hooks, fastai training."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from kneelib.explain.gradcam import grad_cam
from kneelib.models.spherical_resnet import FREEZE_VARIANTS, set_frozen, spherical_classifier
from kneelib.train.spherical import (SphericalTrainConfig, class_weights, predict_probability, prepare_images,
                                     train_spherical, validation_scores)


def _images(n=48, seed=0):
    """Class 1 has a bright blob on the left half of the map, class 0 on the right."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    images = rng.integers(0, 60, (n, 32, 32, 3)).astype(np.uint8)
    for i, y in enumerate(labels):
        c = 8 if y else 24
        images[i, 12:20, c - 4:c + 4] = 250
    return images, labels


def test_oa_initialisation_copies_and_freezing_stops_gradients():
    torch.manual_seed(0)
    oa = spherical_classifier("resnet18", "random")
    model = spherical_classifier("resnet18", "oa", oa)
    assert all(torch.equal(a, b) for a, b in zip(oa.state_dict().values(), model.state_dict().values()))
    with pytest.raises(ValueError):
        spherical_classifier("resnet34", "oa", oa)
    set_frozen(model, "first two layers")
    assert not any(p.requires_grad for p in model.stages[1].parameters())
    assert all(p.requires_grad for p in model.stages[2].parameters()) and model.fc.weight.requires_grad
    set_frozen(model, "all layers")
    assert not any(p.requires_grad for s in model.stages for p in s.parameters())
    assert set(FREEZE_VARIANTS) == {"none", "first layer", "first two layers", "all layers"}


def test_imagenet_substitute_has_the_offline_weights():
    model = spherical_classifier("resnet18", "imagenet")
    assert model.arch == "efficientnet_lite0"
    fresh = spherical_classifier("efficientnet_lite0", "random")
    stem = lambda m: m.stages[0][0].weight
    assert not torch.allclose(stem(model), stem(fresh))


def test_training_learns_a_planted_pattern_and_grad_cam_finds_it():
    images, labels = _images()
    x = prepare_images(images)
    assert x.shape == (48, 3, 32, 32)
    assert class_weights([0, 0, 0, 1]).tolist() == pytest.approx([2 / 3, 2.0])
    model = spherical_classifier("resnet18", "random")
    model.cam_stage = -2
    learner = train_spherical(model, x, labels, np.arange(32), np.arange(32, 48),
                              SphericalTrainConfig(epochs=8, lr=3e-3, batch_size=8, patience=8, seed=0))
    probability = predict_probability(learner.model, x, np.arange(32, 48))
    assert validation_scores(labels[32:], probability)["auc"] > 0.9
    cams, classes = grad_cam(learner.model, x[32:40], "class", target_grades=1)
    assert cams.shape == (8, 2, 2) and (classes == 1).all()
    positives = np.flatnonzero(labels[32:40] == 1)
    assert np.mean(cams[positives][:, :, 0].sum(axis=1) >= cams[positives][:, :, 1].sum(axis=1)) >= 0.75


def test_grid_search_chooses_on_validation_tpn_and_counts_images():
    from kneelib.train.spherical import grid_search

    images, labels = _images(32)
    x = prepare_images(images)
    factory = lambda c: set_frozen(spherical_classifier(c["arch"], c["init"]), c["freeze"])
    table, model = grid_search(factory, x, labels, np.arange(24), np.arange(24, 32),
                               {"lr": [3e-3], "arch": ["resnet18", "resnet34"], "init": ["random", "imagenet"],
                                "freeze": ["all layers"]},
                               SphericalTrainConfig(epochs=1, batch_size=8, patience=1))
    assert len(table) == 3  # the ImageNet substitute collapses the two depths
    assert table["chosen"].sum() == 1 and table.loc[table["chosen"], "tpn"].iloc[0] == table["tpn"].max()
    assert (table["images"] == 32).all() and isinstance(model, torch.nn.Module)


def test_frozen_stages_keep_weights_and_batch_norm_statistics():
    images, labels = _images(24)
    x = prepare_images(images)
    model = set_frozen(spherical_classifier("resnet18", "random"), "first two layers")
    before = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(("stages.0", "stages.1"))}
    learner = train_spherical(model, x, labels, np.arange(16), np.arange(16, 24),
                              SphericalTrainConfig(epochs=1, batch_size=8, patience=1))
    after = learner.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # running means included
    assert not torch.equal(after["stages.2.0.bn1.running_mean"], torch.zeros_like(after["stages.2.0.bn1.running_mean"]))


def test_early_stopping_is_recorded_not_printed(capsys):
    # learning rate 0 and no batch norm: the validation loss stays that of epoch 0, never lower
    images, labels = _images(24)
    x = prepare_images(images)
    frozen = lambda: torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(x[0].numel(), 2))
    learner = train_spherical(frozen(), x, labels, np.arange(16), np.arange(16, 24),
                              SphericalTrainConfig(epochs=6, batch_size=8, patience=2, lr=0.0))
    assert learner.stopped_after_epoch == 2 and learner.best_epoch == 0
    assert "early stopping" not in capsys.readouterr().out
    ran_out = train_spherical(frozen(), x, labels, np.arange(16), np.arange(16, 24),
                              SphericalTrainConfig(epochs=2, batch_size=8, patience=3, lr=0.0))
    assert ran_out.stopped_after_epoch is None
