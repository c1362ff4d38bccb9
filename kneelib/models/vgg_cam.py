"""VGG16 class-activation-mapping network (Zhou et al. 2016), the comparison of paper 000 Fig. 3A.

Paper 000 (Methods, "Class activation mapping and radiologist review"): "We used the
16-layer VGGNet, and removed the final convolutional layer as in Zhou et al. [31],
and fine-tuned the network using the same images". Zhou et al. (2016, Sec. 2)
removed the layers after conv5_3 (pool5 to the softmax), giving a 14 x 14 map at
224 px, and added a 3 x 3 convolution with 1024 units, global average pooling and a
fully connected softmax layer; the CAM is that last map weighted by the FC weights.

Deviation: the paper fine-tuned ImageNet weights. **No VGG16 ImageNet weights are
available offline** in this project (code that downloads weights is forbidden), so
the torchvision ``vgg16`` architecture is built without weights (from torchvision's
own layer configuration "D", as ``vgg16(weights=None)`` does) and trained from
scratch. For the same reason batch normalisation (torchvision's ``vgg16_bn`` layout)
is on by default -- a 13-layer VGG without BN rarely trains from scratch on a
few hundred subjects -- and a ``width_multiplier`` below 1 shrinks every layer so that
the comparison runs on 2 CPU cores. ``VGG16CAMTrunk(in_channels=3,
width_multiplier=1, batch_norm=False)`` is exactly torchvision's ``vgg16().features``
without pool5, plus Zhou's added layer.

The map has ``input_size / 16`` pixels a side (14 x 14 at 224 px), half the Siamese
network's ``input_size / 8`` (:mod:`kneelib.models.siamese`), which is the point of the
paper's comparison.
"""
from __future__ import annotations

import torch
from torch import nn
from torchvision.models.vgg import cfgs, make_layers

from .siamese import DEFAULT_N_SLICES, SiameseSliceNet

__all__ = ["VGG16CAMTrunk", "VGG16CAM", "siamese_vgg16_cam", "DEFAULT_VGG_WIDTH_MULTIPLIER"]

#: Width of the CPU ``default`` comparison: an eighth of VGG16's channels (64 -> 8 ... 512 -> 64).
DEFAULT_VGG_WIDTH_MULTIPLIER: float = 0.125


class VGG16CAMTrunk(nn.Module):
    """VGG16 conv1_1 .. conv5_3 (no pool5) plus Zhou et al.'s 3x3, 1024-unit CAM layer.

    Parameters
    ----------
    in_channels : int
        Input channels (1 for MRI slices; 3 for torchvision's exact layout).
    width_multiplier : float
        Scales every channel count of VGG16 configuration "D" and the 1024-unit layer.
    batch_norm : bool
        Use the ``vgg16_bn`` layout (BN after every convolution).

    Attributes
    ----------
    out_channels : int
        Channels of the CAM layer (``1024 * width_multiplier``).
    output_stride : int
        16: four max-pools remain after removing pool5.
    """

    def __init__(self, in_channels: int = 1, width_multiplier: float = DEFAULT_VGG_WIDTH_MULTIPLIER,
                 batch_norm: bool = True):
        super().__init__()
        if width_multiplier <= 0:
            raise ValueError(f"width_multiplier must be positive, got {width_multiplier}")
        # torchvision builds vgg16 / vgg16_bn features as make_layers(cfgs["D"], batch_norm);
        # building them the same way skips the 100M-parameter classifier we would discard
        config = [v if v == "M" else max(1, int(round(v * width_multiplier))) for v in cfgs["D"]]
        features = make_layers(config, batch_norm=batch_norm)
        layers = list(features.children())[:-1]  # drop pool5 (Zhou et al. 2016, Sec. 2)
        if in_channels != 3:
            first: nn.Conv2d = layers[0]
            layers[0] = nn.Conv2d(in_channels, first.out_channels, 3, padding=1)
        self.features = nn.Sequential(*layers)
        conv5_channels = [m for m in layers if isinstance(m, nn.Conv2d)][-1].out_channels
        cam_channels = max(1, int(round(1024 * width_multiplier)))
        self.cam_layer = nn.Sequential(nn.Conv2d(conv5_channels, cam_channels, 3, padding=1), nn.ReLU(inplace=True))
        self.in_channels = in_channels
        self.out_channels = cam_channels
        self.output_stride = 16

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Final CAM-layer maps, shape ``(N, out_channels, H / 16, W / 16)``."""
        return self.cam_layer(self.features(images))


class VGG16CAM(nn.Module):
    """Single-image VGG16-GAP classifier of Zhou et al. (2016): trunk, GAP, FC.

    ``forward_features`` gives the CAM-layer maps; ``cam_weights`` gives the FC
    weights ``(n_classes, channels)`` and bias.
    """

    def __init__(self, n_classes: int = 2, in_channels: int = 1,
                 width_multiplier: float = DEFAULT_VGG_WIDTH_MULTIPLIER, batch_norm: bool = True):
        super().__init__()
        self.trunk = VGG16CAMTrunk(in_channels, width_multiplier, batch_norm)
        self.fc = nn.Linear(self.trunk.out_channels, n_classes)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.trunk(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(images).mean(dim=(-2, -1)))

    def cam_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.fc.weight.detach(), self.fc.bias.detach()


def siamese_vgg16_cam(n_slices: int = DEFAULT_N_SLICES, in_channels: int = 1,
                      width_multiplier: float = DEFAULT_VGG_WIDTH_MULTIPLIER, batch_norm: bool = True,
                      share_across_slices: bool = True) -> SiameseSliceNet:
    """VGG16-CAM trunks inside the paper's Siamese pair head, for Fig. 3A vs 3B.

    The same inputs ``(batch, 2, n_slices, H, W)``, labels, head and CAM code as the
    Siamese network, so the two models' maps differ only in the trunk. One VGG
    trunk serves all slice positions by default (one fine-tuned VGGNet in the
    paper).
    """
    return SiameseSliceNet(
        n_slices=n_slices,
        branch_factory=lambda: VGG16CAMTrunk(in_channels, width_multiplier, batch_norm),
        share_across_slices=share_across_slices,
    )
