"""3-D segmentation networks of paper 001 (Morales et al.) and their label sets.

Supplement 003, *Bone segmentation network implementation* and *Cartilage segmentation
networks implementation*: two ensembles of V-Nets (Milletari et al. 2016), one for the
bones (background, femur, tibia, patella; five 3-D V-Nets) and one for cartilage and
menisci (background, femoral, tibial, patellar cartilage, menisci; three 2-D and three
3-D V-Nets), ReLU activations, dropout 0.05, softmax output.

The networks come from MONAI:

- ``architecture="vnet"`` (the ``paper`` setting): :class:`monai.networks.nets.VNet`,
  ReLU, dropout 0.05, 45.6 M parameters (45,605,916 for one input channel and the four
  bone classes).
  It needs every spatial side divisible by 16 and a GPU to train at the OAI grid.
- ``architecture="unet"`` (the CPU ``default``): a small :class:`monai.networks.nets.UNet`
  with channels ``(8, 16, 32, 64)``, strides ``(2, 2, 2)``, one residual unit per level,
  instance norm and dropout 0.05 (:data:`SMALL_UNET`): 151,825 parameters for the bone
  and 152,502 for the cartilage classes (:func:`count_parameters`), so that two members train in minutes on two CPU
  cores at a ~64^3 grid. Every spatial side must be divisible by 8.

:func:`network_targets` maps a tissue label volume of the synthetic ground truth
(:data:`kneelib.synth.spec.TISSUE_LABELS`, read by
:func:`kneelib.synth.ground_truth.load_series_with_truth`) onto the class indices of each
network: medial and lateral tibial cartilage become one class, medial and lateral menisci
one class, as in the paper's classes; every other tissue is background.

Bad input raises :class:`SegmentationInputError` (a
:class:`kneelib.data.errors.KneelibDataError`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import nn

from kneelib.data.errors import KneelibDataError
from kneelib.synth.spec import TISSUE_LABELS

__all__ = [
    "SegmentationInputError",
    "BONE_CLASSES",
    "CARTILAGE_CLASSES",
    "NETWORK_CLASSES",
    "ANATOMICAL_COMPONENTS",
    "CARTILAGE_BONE",
    "TISSUES_OF_CLASS",
    "ARCHITECTURES",
    "UNetSettings",
    "SMALL_UNET",
    "PAPER_DROPOUT",
    "network_classes",
    "network_targets",
    "build_segmentation_network",
    "count_parameters",
    "required_divisor",
]

#: Dropout rate of the supplement's V-Nets ("randomly turning off activations at a rate of 5%").
PAPER_DROPOUT = 0.05

#: Classes of the bone network (supplement 003, bone segmentation), index = class code.
BONE_CLASSES: tuple[str, ...] = ("background", "femur", "tibia", "patella")

#: Classes of the cartilage and menisci network (supplement 003, cartilage segmentation).
CARTILAGE_CLASSES: tuple[str, ...] = ("background", "femoral_cartilage", "tibial_cartilage",
                                      "patellar_cartilage", "menisci")

#: Class names of each network (``"bone"``, ``"cartilage"``).
NETWORK_CLASSES: dict[str, tuple[str, ...]] = {"bone": BONE_CLASSES, "cartilage": CARTILAGE_CLASSES}

#: Tissues of :data:`kneelib.synth.spec.TISSUE_LABELS` that make up each network class.
TISSUES_OF_CLASS: dict[str, tuple[str, ...]] = {
    "femur": ("femur",),
    "tibia": ("tibia",),
    "patella": ("patella",),
    "femoral_cartilage": ("femoral_cartilage",),
    "tibial_cartilage": ("tibial_cartilage_medial", "tibial_cartilage_lateral"),
    "patellar_cartilage": ("patellar_cartilage",),
    "menisci": ("meniscus_medial", "meniscus_lateral"),
}

#: Connected components each class has in a knee: one bone, one femoral and one patellar
#: cartilage sheet, two tibial cartilage plates and two menisci (medial and lateral).
ANATOMICAL_COMPONENTS: dict[str, int] = {"femur": 1, "tibia": 1, "patella": 1, "femoral_cartilage": 1,
                                         "tibial_cartilage": 2, "patellar_cartilage": 1, "menisci": 2}

#: The bone each cartilage class covers.
CARTILAGE_BONE: dict[str, str] = {"femoral_cartilage": "femur", "tibial_cartilage": "tibia",
                                  "patellar_cartilage": "patella"}

#: Architectures :func:`build_segmentation_network` builds.
ARCHITECTURES: tuple[str, ...] = ("unet", "vnet")


class SegmentationInputError(KneelibDataError):
    """Input of a segmentation stage cannot be used (unknown network, bad shape or labels)."""

    def __init__(self, reason: str, *, what: str = "segmentation input"):
        super().__init__(f"{what}: {reason}", reason=reason)


@dataclass(frozen=True)
class UNetSettings:
    """Configuration of a MONAI UNet (the CPU stand-in for the supplement's V-Net).

    Attributes
    ----------
    channels : tuple of int
        Feature channels per level (the first is the full-resolution level).
    strides : tuple of int
        Down-sampling factor between levels (one fewer than ``channels``).
    num_res_units : int
        Residual units per level (short shortcuts, as the V-Net's element-wise additions).
    dropout : float
        Dropout rate (0.05, the supplement's).
    """

    channels: tuple[int, ...] = (8, 16, 32, 64)
    strides: tuple[int, ...] = (2, 2, 2)
    num_res_units: int = 1
    dropout: float = PAPER_DROPOUT


#: The small UNet of the CPU ``default`` (about 0.15 M parameters).
SMALL_UNET = UNetSettings()


def network_classes(task: str) -> tuple[str, ...]:
    """Class names of the ``"bone"`` or ``"cartilage"`` network (index = class code).

    Raises
    ------
    SegmentationInputError
        ``task`` is neither.
    """
    if task not in NETWORK_CLASSES:
        raise SegmentationInputError(f"unknown segmentation task {task!r}; expected one of "
                                     f"{sorted(NETWORK_CLASSES)}", what="network_classes")
    return NETWORK_CLASSES[task]


def network_targets(tissue_labels, task: str) -> np.ndarray:
    """Class indices of the ``task`` network for a tissue label volume.

    Parameters
    ----------
    tissue_labels : array of int
        Codes of :data:`kneelib.synth.spec.TISSUE_LABELS` (a ground-truth label volume).
    task : {"bone", "cartilage"}

    Returns
    -------
    numpy.ndarray of uint8, same shape
        0 for background (every tissue the network does not segment), else the index
        of the class in :func:`network_classes`. Medial and lateral tibial cartilage map
        to ``tibial_cartilage``, both menisci to ``menisci`` (supplement 003).

    Raises
    ------
    SegmentationInputError
        Unknown task, non-integer labels or codes outside :data:`TISSUE_LABELS`.
    """
    classes = network_classes(task)
    labels = np.asarray(tissue_labels)
    if labels.dtype.kind not in "iub":
        if labels.dtype.kind == "f" and np.all(np.isfinite(labels)) and np.all(labels == np.round(labels)):
            labels = labels.astype(np.int64)
        else:
            raise SegmentationInputError(f"tissue labels must be integer codes, got dtype {labels.dtype}",
                                         what="network_targets")
    known = np.array(sorted(TISSUE_LABELS.values()))
    if labels.size and (labels.min() < 0 or not np.isin(np.unique(labels), known).all()):
        unknown = sorted(set(np.unique(labels).tolist()) - set(known.tolist()))
        raise SegmentationInputError(f"codes {unknown[:10]} are not tissue labels of kneelib.synth.spec",
                                     what="network_targets")
    lookup = np.zeros(int(known.max()) + 1, dtype=np.uint8)
    for index, name in enumerate(classes[1:], start=1):
        for tissue in TISSUES_OF_CLASS[name]:
            lookup[TISSUE_LABELS[tissue]] = index
    return lookup[labels.astype(np.int64)]


def build_segmentation_network(task: str, architecture: str = "unet", in_channels: int = 1,
                               unet: UNetSettings = SMALL_UNET, dropout: float = PAPER_DROPOUT) -> nn.Module:
    """A 3-D segmentation network for the bone or the cartilage/menisci classes.

    Parameters
    ----------
    task : {"bone", "cartilage"}
        Output classes (:data:`BONE_CLASSES`: 4, :data:`CARTILAGE_CLASSES`: 5).
    architecture : {"unet", "vnet"}
        ``"vnet"``: MONAI's V-Net with ReLU and dropout ``dropout`` (supplement 003;
        ``paper``); ``"unet"``: the small MONAI UNet ``unet`` (CPU ``default``).
    in_channels : int
        Image channels (one DESS volume).
    unet : UNetSettings
        Configuration of the UNet.
    dropout : float
        Dropout of the V-Net (0.05 in the supplement).

    Returns
    -------
    torch.nn.Module
        Maps ``(batch, in_channels, D, H, W)`` to logits ``(batch, n_classes, D, H, W)``;
        weights initialised with a Xavier (Glorot) uniform distribution as in the
        supplement (biases zero). Seed torch before calling for reproducible weights.

    Raises
    ------
    SegmentationInputError
        Unknown task or architecture, or a V-Net with ``16 % in_channels != 0``.
    """
    n_classes = len(network_classes(task))
    if architecture == "vnet":
        from monai.networks.nets import VNet

        if in_channels < 1 or 16 % in_channels:
            raise SegmentationInputError(f"MONAI's V-Net needs 16 divisible by in_channels, got {in_channels}",
                                         what="build_segmentation_network")
        model = VNet(spatial_dims=3, in_channels=in_channels, out_channels=n_classes, act=("relu", {"inplace": True}),
                     dropout_prob_down=dropout, dropout_prob_up=(dropout, dropout))
    elif architecture == "unet":
        from monai.networks.nets import UNet

        if len(unet.strides) != len(unet.channels) - 1:
            raise SegmentationInputError(f"UNet needs one stride fewer than channels, got {unet}",
                                         what="build_segmentation_network")
        model = UNet(spatial_dims=3, in_channels=in_channels, out_channels=n_classes, channels=unet.channels,
                     strides=unet.strides, num_res_units=unet.num_res_units, dropout=unet.dropout, norm="instance")
    else:
        raise SegmentationInputError(f"unknown architecture {architecture!r}; expected one of {ARCHITECTURES}",
                                     what="build_segmentation_network")
    _xavier_uniform(model)
    model.segmentation_task = task
    model.class_names = network_classes(task)
    model.divisor = required_divisor(architecture, unet)
    return model


def _xavier_uniform(model: nn.Module) -> None:
    """Xavier uniform weights and zero biases for every convolution (supplement 003)."""
    for module in model.modules():
        if isinstance(module, (nn.Conv3d, nn.ConvTranspose3d, nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


def required_divisor(architecture: str, unet: UNetSettings = SMALL_UNET) -> int:
    """Every spatial side of a network input must be a multiple of this number."""
    if architecture == "vnet":
        return 16
    return int(np.prod(unet.strides))


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad))
