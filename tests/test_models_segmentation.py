"""The segmentation networks and label sets of paper 001 (supplement 003)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from kneelib.data.errors import KneelibDataError
from kneelib.models.segmentation import (BONE_CLASSES, CARTILAGE_CLASSES, SegmentationInputError,
                                         build_segmentation_network, count_parameters, network_targets)
from kneelib.synth.spec import TISSUE_LABELS


def test_label_sets_are_the_papers():
    assert BONE_CLASSES == ("background", "femur", "tibia", "patella")
    assert CARTILAGE_CLASSES == ("background", "femoral_cartilage", "tibial_cartilage", "patellar_cartilage",
                                 "menisci")


def test_network_targets_merge_compartments_and_drop_other_tissues():
    codes = np.array(sorted(TISSUE_LABELS.values()))
    names = {v: k for k, v in TISSUE_LABELS.items()}
    bone = network_targets(codes, "bone")
    cartilage = network_targets(codes, "cartilage")
    expected_bone = {"femur": 1, "tibia": 2, "patella": 3}
    expected_cartilage = {"femoral_cartilage": 1, "tibial_cartilage_medial": 2, "tibial_cartilage_lateral": 2,
                          "patellar_cartilage": 3, "meniscus_medial": 4, "meniscus_lateral": 4}
    for code, b, c in zip(codes, bone, cartilage):
        assert b == expected_bone.get(names[code], 0), names[code]
        assert c == expected_cartilage.get(names[code], 0), names[code]
    assert network_targets(codes.reshape(1, 1, -1), "bone").shape == (1, 1, len(codes))
    assert network_targets(codes.astype(float), "bone").tolist() == bone.tolist()


@pytest.mark.parametrize("bad, task", [(np.array([0, 99]), "bone"), (np.array([0, -1]), "bone"),
                                       (np.array([0.5]), "bone"), (np.array([1]), "menisci")])
def test_network_targets_refuse_bad_input(bad, task):
    with pytest.raises(SegmentationInputError) as error:
        network_targets(bad, task)
    assert isinstance(error.value, KneelibDataError) and error.value.reason


@pytest.mark.parametrize("task, n_classes", [("bone", 4), ("cartilage", 5)])
def test_small_unet_shapes_and_size(task, n_classes):
    torch.manual_seed(0)
    model = build_segmentation_network(task, "unet")
    assert model.class_names[0] == "background" and len(model.class_names) == n_classes
    assert 100_000 < count_parameters(model) < 300_000
    with torch.no_grad():
        out = model(torch.randn(1, 1, 16, 24, 16))
    assert out.shape == (1, n_classes, 16, 24, 16)


def test_vnet_is_the_papers_size_and_refuses_bad_channels():
    model = build_segmentation_network("bone", "vnet")
    assert 40e6 < count_parameters(model) < 50e6
    assert model.divisor == 16
    with pytest.raises(SegmentationInputError):
        build_segmentation_network("bone", "vnet", in_channels=3)
    with pytest.raises(SegmentationInputError):
        build_segmentation_network("bone", "resnet")


def test_construction_is_seeded():
    torch.manual_seed(3)
    a = build_segmentation_network("bone")
    torch.manual_seed(3)
    b = build_segmentation_network("bone")
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_weights_are_xavier_uniform_with_zero_biases():
    torch.manual_seed(0)
    model = build_segmentation_network("bone", "unet")
    convolutions = [m for m in model.modules() if isinstance(m, (torch.nn.Conv3d, torch.nn.ConvTranspose3d))]
    assert convolutions
    for conv in convolutions:
        fan_in, fan_out = torch.nn.init._calculate_fan_in_and_fan_out(conv.weight)
        bound = (6.0 / (fan_in + fan_out)) ** 0.5
        assert conv.weight.abs().max() <= bound + 1e-6
        assert conv.weight.abs().max() > 0.8 * bound  # uniform over the whole range, not a narrower init
        if conv.bias is not None:
            assert torch.count_nonzero(conv.bias) == 0
