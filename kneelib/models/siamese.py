"""Convolutional Siamese network over paired sagittal knee MRI slices (paper 000).

Implements the architecture of Methods, "Deep learning architecture" and Fig. 2 of
the knee-pain paper (``/work/shared/papers/000_d93b7f18e86bf6c4.txt``):

* every slice position ``n`` (centre slice and its neighbours, indexed medial -> lateral)
  has its own 2D network; the *same* weights process the left and the right knee's
  slice ``n`` (the Siamese pair, Fig. 2A);
* a branch is a 7x7 stride-2 convolution with 64 channels, batch norm, ReLU and a
  max-pool, then 3x3 convolution blocks (conv, BN, ReLU) up to 512 channels with a
  second max-pool after the first block; "only the first convolutional layer and the
  two max pooling layers had a stride of 2", so a 224 px slice gives a
  512 x 28 x 28 final map (Fig. 2B);
* the final maps of both knees (``f_L,n`` and ``f_R,n``) are global-average pooled,
  concatenated and passed through the slice's fully connected layer ``FC_n``; the
  outputs of all slice models are concatenated into one binary prediction
  (label 0 = pain in the left knee, 1 = pain in the right knee, Methods "Data").

Everything between the pooled features and the logits is linear, so the class
activation maps of Zhou et al. (2016) are exact: :meth:`SiameseSliceNet.cam_weights`
folds ``FC_n`` and the final layer into one weight per class, slice, knee and channel,
and :mod:`kneelib.explain.cam` multiplies it into the feature maps.

Input size, channel widths, convolutions per block and slice count are
parameters. :data:`PAPER_WIDTHS` with 224 px and 23 slices is the paper's setting;
:data:`DEFAULT_WIDTHS`, :data:`DEFAULT_IMAGE_SIZE` and :data:`DEFAULT_N_SLICES` are
the reduced CPU setting of the book's ``default`` parameters (see
``benchmarks/bench_siamese.py`` for its measured throughput).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

__all__ = [
    "PAPER_WIDTHS",
    "PAPER_IMAGE_SIZE",
    "PAPER_N_SLICES",
    "DEFAULT_WIDTHS",
    "DEFAULT_IMAGE_SIZE",
    "DEFAULT_N_SLICES",
    "SliceBranch",
    "SiameseSliceNet",
    "siamese_pain_net",
    "model_factory",
]

#: Channel widths of the paper's branch: stem 64, then 3x3 blocks 128, 256, 512 (Fig. 2B).
PAPER_WIDTHS: tuple[int, ...] = (64, 128, 256, 512)
#: Input size of the paper (294 x 294 px crops resized to 224 x 224, Methods "Image pre-processing").
PAPER_IMAGE_SIZE: int = 224
#: Slices per knee in the paper: 11 medial + centre + 11 lateral.
PAPER_N_SLICES: int = 23

#: Reduced widths of the book's ``default`` run on 2 CPU cores (a quarter of the paper's).
DEFAULT_WIDTHS: tuple[int, ...] = (16, 32, 64, 128)
#: Reduced input size of the ``default`` run (final map 8 x 8 instead of 28 x 28; the same
#: input/8 ratio, so a CAM cell covers 105 / 8 = 13 mm instead of 3.75 mm).
DEFAULT_IMAGE_SIZE: int = 64
#: Reduced slice count of the ``default`` run: 3 medial + centre + 3 lateral (taken every
#: 3rd slice, :func:`kneelib.preprocess.registration.select_slices` ``step=3``, they span
#: about the same width of knee as the paper's 23 consecutive 3 mm slices).
DEFAULT_N_SLICES: int = 7


def _conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int, stride: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                  padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


class SliceBranch(nn.Module):
    """One 2D slice network of Fig. 2B, up to its final feature map.

    Parameters
    ----------
    in_channels : int
        Channels of the input slice (1 for a grey MRI slice).
    widths : sequence of int
        ``widths[0]`` is the 7x7 stride-2 stem; each further entry is a 3x3 block.
        The paper's branch is :data:`PAPER_WIDTHS` ``(64, 128, 256, 512)``.
    convs_per_block : int
        3x3 conv-BN-ReLU layers in each block (the paper does not give the count;
        one by default).
    second_pool_after : int
        Index of the 3x3 block after which the second 2x2 max-pool sits
        (0 = after the first block). The output stride is 8 either way.

    Notes
    -----
    The final map has ``widths[-1]`` channels and ``input_size / 8`` pixels a side
    (stride-2 stem, two 2x2 max-pools): 28 x 28 for 224 px as in the paper.
    """

    def __init__(self, in_channels: int = 1, widths: Sequence[int] = PAPER_WIDTHS,
                 convs_per_block: int = 1, second_pool_after: int = 0):
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if len(widths) < 2:
            raise ValueError(f"widths must hold a stem and at least one 3x3 block, got {widths}")
        if any(w <= 0 for w in widths):
            raise ValueError(f"widths must be positive, got {widths}")
        if convs_per_block < 1:
            raise ValueError(f"convs_per_block must be >= 1, got {convs_per_block}")
        if not 0 <= second_pool_after < len(widths) - 1:
            raise ValueError(
                f"second_pool_after={second_pool_after} must index one of the "
                f"{len(widths) - 1} 3x3 blocks")
        layers: list[nn.Module] = _conv_bn_relu(in_channels, widths[0], 7, 2)
        layers.append(nn.MaxPool2d(2, 2))
        previous = widths[0]
        for block_index, width in enumerate(widths[1:]):
            for _ in range(convs_per_block):
                layers += _conv_bn_relu(previous, width, 3, 1)
                previous = width
            if block_index == second_pool_after:
                layers.append(nn.MaxPool2d(2, 2))
        self.features = nn.Sequential(*layers)
        self.in_channels = in_channels
        self.out_channels = widths[-1]
        self.output_stride = 8

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Final feature maps, shape ``(N, widths[-1], H / 8, W / 8)``."""
        return self.features(images)


BranchFactory = Callable[[], nn.Module]


class SiameseSliceNet(nn.Module):
    """The paper's Siamese network over ``n_slices`` slice positions of both knees (Fig. 2A).

    Parameters
    ----------
    n_slices : int
        Slice positions per knee (23 in the paper).
    branch_factory : callable
        ``branch_factory()`` returns a new 2D network mapping ``(N, C, H, W)`` to
        final feature maps and exposing ``out_channels``; called once per slice
        position (or once in all with ``share_across_slices``). Default: a
        :class:`SliceBranch` with :data:`DEFAULT_WIDTHS`.
    slice_outputs : int
        Width of each slice model's output ``FC_n`` before concatenation.
    n_classes : int
        Outputs of the final prediction (2: left vs right knee painful, for
        cross-entropy as in the paper).
    share_across_slices : bool
        Use one branch for all slice positions (not the paper's design; saves
        parameters, same compute).

    Notes
    -----
    Input is ``(batch, 2, n_slices, H, W)`` (knee axis: 0 = left, 1 = right, slice
    axis medial -> lateral after :mod:`kneelib.preprocess.registration`), or
    ``(batch, 2, n_slices, C, H, W)`` for multi-channel branches. Output is logits
    ``(batch, n_classes)``.
    """

    def __init__(self, n_slices: int = DEFAULT_N_SLICES, branch_factory: BranchFactory | None = None,
                 slice_outputs: int = 2, n_classes: int = 2, share_across_slices: bool = False):
        super().__init__()
        if n_slices < 1:
            raise ValueError(f"n_slices must be >= 1, got {n_slices}")
        if branch_factory is None:
            branch_factory = lambda: SliceBranch(1, DEFAULT_WIDTHS)  # noqa: E731
        n_branches = 1 if share_across_slices else n_slices
        self.branches = nn.ModuleList(branch_factory() for _ in range(n_branches))
        channels = getattr(self.branches[0], "out_channels", None)
        if channels is None:
            raise TypeError("branch_factory() must return a module with an 'out_channels' attribute")
        self.n_slices = n_slices
        self.n_classes = n_classes
        self.share_across_slices = share_across_slices
        self.feature_channels = int(channels)
        self.pool = nn.AdaptiveAvgPool2d(1)
        # FC_n of Fig. 2A: pooled [left, right] features of slice n -> slice output
        self.slice_heads = nn.ModuleList(nn.Linear(2 * channels, slice_outputs) for _ in range(n_slices))
        self.classifier = nn.Linear(n_slices * slice_outputs, n_classes)

    def _branch(self, slice_index: int) -> nn.Module:
        return self.branches[0 if self.share_across_slices else slice_index]

    def _check_input(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim == 5:
            images = images.unsqueeze(3)  # (B, 2, S, 1, H, W)
        if images.ndim != 6 or images.shape[1] != 2 or images.shape[2] != self.n_slices:
            raise ValueError(
                f"images must have shape (batch, 2 knees, {self.n_slices} slices, [channels,] H, W); "
                f"got {tuple(images.shape)}")
        return images

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """Final feature maps ``f_{L,n}``, ``f_{R,n}`` of every slice position.

        Returns
        -------
        torch.Tensor
            Shape ``(batch, 2, n_slices, channels, h, w)``.
        """
        images = self._check_input(images)
        batch = images.shape[0]
        maps = []
        for n in range(self.n_slices):
            pair = images[:, :, n].reshape(batch * 2, *images.shape[3:])  # left and right together
            fmap = self._branch(n)(pair)
            maps.append(fmap.reshape(batch, 2, *fmap.shape[1:]))
        return torch.stack(maps, dim=2)

    def head(self, feature_maps: torch.Tensor) -> torch.Tensor:
        """Logits from final feature maps ``(batch, 2, n_slices, C, h, w)``."""
        batch = feature_maps.shape[0]
        pooled = feature_maps.mean(dim=(-2, -1))  # GAP: (B, 2, S, C)
        outputs = [self.slice_heads[n](pooled[:, :, n].reshape(batch, -1)) for n in range(self.n_slices)]
        return self.classifier(torch.cat(outputs, dim=1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(images))

    def cam_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Classifier weights folded onto the final feature channels, for CAM.

        Because GAP, ``FC_n`` and the final layer are all linear,
        ``logit[c] = sum_{n,k,ch} W[c, n, k, ch] * mean(f_{k,n}[ch]) + b[c]``.

        Returns
        -------
        weights : torch.Tensor
            Shape ``(n_classes, n_slices, 2 knees, channels)``.
        bias : torch.Tensor
            Shape ``(n_classes,)``.
        """
        channels = self.feature_channels
        final = self.classifier.weight  # (classes, S * slice_outputs)
        slice_outputs = self.slice_heads[0].out_features
        weights, bias = [], self.classifier.bias.clone()
        for n, fc in enumerate(self.slice_heads):
            block = final[:, n * slice_outputs:(n + 1) * slice_outputs]  # (classes, slice_outputs)
            weights.append((block @ fc.weight).reshape(-1, 2, channels))  # (classes, 2, C)
            bias = bias + block @ fc.bias
        return torch.stack(weights, dim=1).detach(), bias.detach()


def siamese_pain_net(n_slices: int = DEFAULT_N_SLICES, widths: Sequence[int] = DEFAULT_WIDTHS,
                     in_channels: int = 1, convs_per_block: int = 1, slice_outputs: int = 2,
                     share_across_slices: bool = False) -> SiameseSliceNet:
    """The paper's network with :class:`SliceBranch` branches (Methods, Fig. 2).

    ``siamese_pain_net(23, PAPER_WIDTHS)`` at 224 px is the published size;
    the defaults are the reduced CPU setting.
    """
    widths = tuple(widths)
    return SiameseSliceNet(
        n_slices=n_slices,
        branch_factory=lambda: SliceBranch(in_channels, widths, convs_per_block),
        slice_outputs=slice_outputs,
        share_across_slices=share_across_slices,
    )


def model_factory(n_slices: int, widths: Sequence[int] | None = None,
                  architecture: str = "siamese") -> Callable[[], nn.Module]:
    """A callable returning a new, untrained network for paper 000's training loop.

    Parameters
    ----------
    n_slices : int
        Slices per knee.
    widths : sequence of int or None
        Branch widths of the Siamese net (default :data:`DEFAULT_WIDTHS`).
    architecture : {"siamese", "vgg16_cam"}
        The paper's Siamese network (Fig. 2) or the VGG16-CAM comparison
        (:func:`kneelib.models.vgg_cam.siamese_vgg16_cam`, Fig. 3A).

    Returns
    -------
    callable
        Called without arguments (after seeding) by :func:`kneelib.train.siamese.train_siamese`.
    """
    if architecture == "siamese":
        chosen = tuple(widths or DEFAULT_WIDTHS)
        return lambda: siamese_pain_net(n_slices=n_slices, widths=chosen)
    if architecture == "vgg16_cam":
        from kneelib.models.vgg_cam import siamese_vgg16_cam

        return lambda: siamese_vgg16_cam(n_slices=n_slices)
    raise ValueError(f"architecture must be 'siamese' or 'vgg16_cam', got {architecture!r}")
