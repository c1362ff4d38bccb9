"""Attention over slice features with clinical variables (paper 002, 2.4.2, Fig. 3).

Schiratti et al. 2021, 2.4.2, "Attention sub-model": from one feature vector per slice "a
1-dimensional convolution was applied ... followed by a Gated Recurrent Unit (GRU) layer ...
(with one scalar score per input slice). This score was then scaled in the [0, 1] interval
through the use of a softmax". "Classification sub-model": "a mean weighted by those scores
was computed from all feature vectors ... Clinical variables were standardized before being
concatenated to this vector ... fed into a multi layer neural network, followed by a softmax
activation, outputting final class probabilities."

Sizes the paper does not give (convolution width and kernel, GRU size, MLP width, dropout)
are constructor arguments. Padding slices (a series with fewer slices than the batch's
longest) are zeroed before the convolution, skipped by the GRU (packed sequences) and masked
out of the softmax, so they get exactly zero attention and change no prediction.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["masked_softmax", "SliceAttentionNet"]


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis where ``mask`` is True; masked entries get 0.

    Raises
    ------
    ValueError
        When shapes differ or a row has no unmasked entry (its attention is undefined).
    """
    if scores.shape != mask.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and mask {tuple(mask.shape)} differ")
    mask = mask.bool()
    if not bool(mask.any(dim=-1).all()):
        raise ValueError("a row of the mask has no slice: attention over nothing")
    filled = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(filled, dim=-1).masked_fill(~mask, 0.0)


class SliceAttentionNet(nn.Module):
    """Conv1d along slices -> GRU -> one score per slice -> masked softmax -> weighted mean
    of the slice features -> concatenated with clinical variables -> MLP -> two logits.

    Parameters
    ----------
    n_features : int
        Length of a slice vector (1280 for EfficientNet-Lite0).
    n_clinical : int
        Standardised clinical variables concatenated to the pooled vector (1 = BMI in the
        paper's best model; 0 = images only).
    conv_channels, kernel_size : int
        The Conv1d along the slice axis.
    gru_hidden : int
        Hidden size of the (bidirectional) GRU.
    mlp_hidden : int
        Width of the classifier's hidden layer.
    dropout : float
        Dropout on the pooled image vector and in the MLP.

    Attributes
    ----------
    last_attention : Tensor or None
        ``(batch, slices)`` attention of the last forward pass (detached).
    """

    def __init__(self, n_features: int = 1280, n_clinical: int = 1, conv_channels: int = 64, kernel_size: int = 3,
                 gru_hidden: int = 32, mlp_hidden: int = 64, dropout: float = 0.3):
        super().__init__()
        if n_features < 1 or n_clinical < 0 or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"need n_features >= 1, n_clinical >= 0 and an odd kernel_size; got "
                             f"{n_features}, {n_clinical}, {kernel_size}")
        self.n_features, self.n_clinical = int(n_features), int(n_clinical)
        self.conv = nn.Conv1d(n_features, conv_channels, kernel_size, padding=kernel_size // 2)
        self.gru = nn.GRU(conv_channels, gru_hidden, batch_first=True, bidirectional=True)
        self.score = nn.Linear(2 * gru_hidden, 1)
        self.drop = nn.Dropout(dropout)
        self.classifier = nn.Sequential(
            nn.Linear(n_features + n_clinical, mlp_hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(mlp_hidden, 2))
        self.last_attention: torch.Tensor | None = None

    def attention(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``(batch, slices)`` attention weights, summing to 1 over the unmasked slices."""
        if features.ndim != 3 or features.shape[-1] != self.n_features:
            raise ValueError(f"features must be (batch, slices, {self.n_features}), got {tuple(features.shape)}")
        if mask.shape != features.shape[:2]:
            raise ValueError(f"mask {tuple(mask.shape)} does not match features {tuple(features.shape[:2])}")
        lengths = mask.sum(dim=1)
        if bool((lengths == 0).any()) or not bool((torch.arange(mask.shape[1]) < lengths[:, None]).eq(mask).all()):
            raise ValueError("mask must mark a non-empty run of leading slices per knee (padding at the end)")
        keep = mask[..., None].to(features.dtype)
        hidden = torch.relu(self.conv((features * keep).transpose(1, 2))).transpose(1, 2) * keep
        packed = nn.utils.rnn.pack_padded_sequence(hidden, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.gru(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=mask.shape[1])
        return masked_softmax(self.score(out).squeeze(-1), mask)

    def forward(self, features: torch.Tensor, mask: torch.Tensor, clinical: torch.Tensor) -> torch.Tensor:
        """Two logits per knee (non-progressor, progressor)."""
        if clinical.ndim != 2 or clinical.shape[1] != self.n_clinical or clinical.shape[0] != features.shape[0]:
            raise ValueError(f"clinical must be (batch, {self.n_clinical}), got {tuple(clinical.shape)}")
        weights = self.attention(features, mask)
        self.last_attention = weights.detach()
        pooled = torch.bmm(weights[:, None, :], features).squeeze(1)
        return self.classifier(torch.cat([self.drop(pooled), clinical.to(pooled.dtype)], dim=1))
