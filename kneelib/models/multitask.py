"""Multi-task CNN grading KL and OARSI features from one knee radiograph.

Paper 004 (Tiulpin & Saarakkala 2020), *Network Architecture*: a convolutional
backbone (ResNet-18/34/50, SE-ResNet-50, SE-ResNeXt50-32x4d) pre-trained on ImageNet,
an average-pooling layer, and 7 independent fully connected heads -- the KL grade
(0-4) and the OARSI grades (0-3) of femoral and tibial osteophytes in the lateral and
medial compartments and of lateral and medial joint space narrowing -- with dropout
0.5 before each head (*Training strategy*).

The network returns the logits of all its heads concatenated along dim 1, so that
fastai's learner, ``get_preds`` and metrics see one tensor;
:meth:`MultiTaskNet.split_logits` cuts it back into one tensor per task.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

__all__ = [
    "TASK_CLASSES",
    "KL_ONLY",
    "SUPPORTED_BACKBONES",
    "MultiTaskNet",
    "build_multitask_model",
    "save_checkpoint",
    "load_checkpoint",
]

#: The 7 tasks of paper 004 and their number of grades, in the paper's table order.
TASK_CLASSES: "OrderedDict[str, int]" = OrderedDict(
    [
        ("kl", 5),
        ("osteophyte_fl", 4),
        ("osteophyte_fm", 4),
        ("osteophyte_tl", 4),
        ("osteophyte_tm", 4),
        ("jsn_lateral", 4),
        ("jsn_medial", 4),
    ]
)

#: The head subset for data sets with KL grades only (e.g. the Chen KL radiographs).
KL_ONLY: tuple[str, ...] = ("kl",)

#: Backbones of paper 004 plus the EfficientNet-Lite family (offline ImageNet weights).
SUPPORTED_BACKBONES: tuple[str, ...] = (
    "resnet18", "resnet34", "resnet50", "seresnet50", "seresnext50_32x4d",
    "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2",
)


class MultiTaskNet(nn.Module):
    """Backbone, global average pooling, and one dropout + linear head per task.

    Parameters
    ----------
    backbone : str
        timm architecture name, one of :data:`SUPPORTED_BACKBONES`.
    tasks : sequence of str or mapping str -> int
        Head names (keys of :data:`TASK_CLASSES`) or an explicit name -> number of
        grades mapping. A subset (e.g. :data:`KL_ONLY`) builds only those heads.
    dropout : float
        Dropout before each head (0.5 in paper 004).
    in_chans : int
        Channels of the input. Radiographs are single-channel; a 1-channel input is
        repeated to the 3 channels the backbone was built with, so ImageNet weights
        stay usable.

    Notes
    -----
    ``forward`` returns ``(batch, sum of grades)`` logits in task order.
    """

    def __init__(self, backbone: str = "efficientnet_lite0", tasks=tuple(TASK_CLASSES),
                 dropout: float = 0.5, in_chans: int = 1):
        super().__init__()
        import timm

        if backbone not in SUPPORTED_BACKBONES:
            raise ValueError(f"backbone '{backbone}' not supported; choose from {SUPPORTED_BACKBONES}")
        if isinstance(tasks, str):
            tasks = (tasks,)
        if hasattr(tasks, "items"):
            task_classes = OrderedDict((str(k), int(v)) for k, v in tasks.items())
        else:
            unknown = [t for t in tasks if t not in TASK_CLASSES]
            if unknown:
                raise ValueError(f"unknown task(s) {unknown}; known tasks: {list(TASK_CLASSES)}")
            task_classes = OrderedDict((t, TASK_CLASSES[t]) for t in tasks)
        if not task_classes:
            raise ValueError("a multi-task model needs at least one head")
        self.backbone_name = backbone
        self.task_classes = task_classes
        self.in_chans = int(in_chans)
        self.dropout_p = float(dropout)
        # pretrained=False always: kneelib never downloads weights (see models.pretrained)
        self.backbone = timm.create_model(backbone, pretrained=False, num_classes=0, global_pool="avg")
        n_features = self.backbone.num_features
        self.heads = nn.ModuleDict(
            {task: nn.Sequential(nn.Dropout(dropout), nn.Linear(n_features, n_classes))
             for task, n_classes in task_classes.items()}
        )

    @property
    def tasks(self) -> tuple[str, ...]:
        """Head names in output order."""
        return tuple(self.task_classes)

    def _to_backbone_channels(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4:
            raise ValueError(f"expected images of shape (batch, channels, H, W), got {tuple(images.shape)}")
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        return images

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """Feature maps of the last convolutional block, ``(batch, C, h, w)``."""
        return self.backbone.forward_features(self._to_backbone_channels(images))

    def forward_heads(self, feature_maps: torch.Tensor) -> torch.Tensor:
        """Average pooling then every head, concatenated: ``(batch, sum of grades)``."""
        pooled = self.backbone.forward_head(feature_maps, pre_logits=True)
        return torch.cat([head(pooled) for head in self.heads.values()], dim=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_heads(self.forward_features(images))

    def task_slices(self) -> "OrderedDict[str, slice]":
        """Columns of each task in the concatenated logits."""
        slices, start = OrderedDict(), 0
        for task, n_classes in self.task_classes.items():
            slices[task] = slice(start, start + n_classes)
            start += n_classes
        return slices

    def split_logits(self, logits: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        """Cut concatenated logits into one ``(batch, n_grades)`` tensor per task."""
        return OrderedDict((task, logits[:, s]) for task, s in self.task_slices().items())

    def head_parameters(self):
        """Parameters of the heads only (trained alone in the first transfer epochs)."""
        return list(self.heads.parameters())

    def backbone_parameters(self):
        """Parameters of the convolutional part."""
        return list(self.backbone.parameters())


def build_multitask_model(backbone: str = "efficientnet_lite0", tasks=tuple(TASK_CLASSES),
                          imagenet: bool = False, dropout: float = 0.5) -> MultiTaskNet:
    """Build a :class:`MultiTaskNet`, optionally with offline ImageNet weights.

    Parameters
    ----------
    backbone : str
        timm architecture name.
    tasks : sequence of str or mapping
        Heads to build (all 7 of paper 004 by default; ``("kl",)`` for KL only).
    imagenet : bool
        Initialise the backbone from ImageNet (paper 004's transfer learning). Only
        the EfficientNet-Lite family has offline weights; others raise
        :class:`kneelib.models.pretrained.PretrainedWeightsUnavailable`.
    dropout : float
        Dropout before each head.
    """
    model = MultiTaskNet(backbone=backbone, tasks=tasks, dropout=dropout)
    if imagenet:
        from kneelib.models.pretrained import load_imagenet_weights

        load_imagenet_weights(model.backbone, backbone)
    return model


def save_checkpoint(model: MultiTaskNet, path: str | Path, metadata: dict | None = None) -> Path:
    """Save architecture, heads, weights and metadata to one ``.pt`` file (atomically).

    ``metadata`` should hold what inference needs to reproduce the input, e.g.
    ``image_size`` and the preprocessing settings; it must be plain Python data.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": "kneelib.multitask/1",
        "backbone": model.backbone_name,
        "task_classes": dict(model.task_classes),
        "dropout": model.dropout_p,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "metadata": dict(metadata or {}),
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def load_checkpoint(path: str | Path) -> tuple[MultiTaskNet, dict]:
    """Load a file written by :func:`save_checkpoint`; returns ``(model in eval mode, metadata)``.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file is not a kneelib multi-task checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle/zip errors of a foreign or damaged file
        raise ValueError(f"{path} is not a readable kneelib model file: {err}") from err
    if not isinstance(payload, dict) or payload.get("format") != "kneelib.multitask/1":
        raise ValueError(f"{path} is not a kneelib multi-task checkpoint (missing format tag)")
    model = MultiTaskNet(backbone=payload["backbone"], tasks=payload["task_classes"],
                         dropout=payload.get("dropout", 0.5))
    model.load_state_dict(payload["state_dict"])
    return model.eval(), dict(payload.get("metadata", {}))
