"""Interactive and static viewers of both knees' slices with CAM overlays.

Paper 000 shows CAMs over MRI slices of the knee with pain (Fig. 3); the book's
chapters let a reader browse them. :class:`SubjectExplorer` is an ipywidgets viewer
for JupyterLab -- choose a subject, scroll the slices of both knees side by side,
toggle and fade the CAM overlay, read the prediction and the label -- and
:func:`render_subject_view` draws the same view as a static matplotlib figure, which
the book shows in place of the live widget (HTML pages have no kernel). Both take
plain arrays, so later chapters reuse them for any paired-knee model:

* ``images``: ``(n_subjects, 2 knees, n_slices, H, W)`` (knee 0 = left, 1 = right),
* ``cams``: ``(n_subjects, 2, n_slices, h, w)`` at any resolution (upsampled
  bilinearly and min-max scaled per map for display),
* ``probabilities``: P(class 1 = right knee painful), ``labels``: 0/1.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from kneelib.explain.cam import normalize_cam, upsample_cam

__all__ = ["render_subject_view", "SubjectExplorer", "KNEE_NAMES"]

KNEE_NAMES: tuple[str, str] = ("Left knee", "Right knee")


def _side(value: int) -> str:
    return "right" if int(value) == 1 else "left"


def _title(subject_id, probability, label) -> str:
    parts = [f"Subject {subject_id}"] if subject_id is not None else []
    if probability is not None:
        predicted = int(probability >= 0.5)
        parts.append(f"P(right painful) = {probability:.2f}: predicted {_side(predicted)}")
    if label is not None:
        parts.append(f"label: {_side(label)}")
        if probability is not None:
            parts.append("correct" if int(probability >= 0.5) == int(label) else "wrong")
    return " | ".join(parts)


def render_subject_view(images, cams=None, slice_index: int | Sequence[int] = 0, show_cam: bool = True,
                        alpha: float = 0.5, probability: float | None = None, label: int | None = None,
                        subject_id=None, knee_names: Sequence[str] = KNEE_NAMES, cmap_cam: str = "jet",
                        fig=None, panel_size: float = 2.6):
    """Both knees of one subject at one or more slices, with an optional CAM overlay.

    Parameters
    ----------
    images : array-like, shape (2, n_slices, H, W)
        One subject.
    cams : array-like, shape (2, n_slices, h, w) or None
    slice_index : int or sequence of int
        Slices to show (columns of the figure).
    show_cam : bool
        Draw the CAM overlay.
    alpha : float
        Opacity of the overlay (0 invisible .. 1 opaque).
    probability, label, subject_id
        Shown in the title; the painful knee's panels are framed in red.
    knee_names : (str, str)
    cmap_cam : str
    fig : matplotlib Figure or None
        Cleared and reused when given.
    panel_size : float
        Inches per panel.

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt

    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4 or images.shape[0] != 2:
        raise ValueError(f"images must be one subject's (2 knees, n_slices, H, W); got {images.shape}")
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    slices = [slice_index] if np.isscalar(slice_index) else list(slice_index)
    n_slices = images.shape[1]
    if any(not 0 <= int(s) < n_slices for s in slices):
        raise ValueError(f"slice_index {slice_index} outside 0..{n_slices - 1}")
    overlay = None
    if cams is not None and show_cam:
        cams = np.asarray(cams, dtype=np.float32)
        if cams.shape[:2] != images.shape[:2]:
            raise ValueError(f"cams {cams.shape} do not match images {images.shape} in knees and slices")
        overlay = normalize_cam(upsample_cam(cams, images.shape[-2:]))
    if fig is None:
        fig = plt.figure(figsize=(panel_size * 2, panel_size * len(slices) + 0.6))
    else:
        fig.clear()
    axes = fig.subplots(len(slices), 2, squeeze=False)
    low, high = np.percentile(images, [1, 99])
    for row, s in enumerate(slices):
        for knee in range(2):
            ax = axes[row, knee]
            ax.imshow(images[knee, s], cmap="gray", vmin=low, vmax=high)
            if overlay is not None:
                ax.imshow(overlay[knee, s], cmap=cmap_cam, alpha=alpha, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{knee_names[knee]}, slice {s}", fontsize="small")
            if label is not None and int(label) == knee:
                for spine in ax.spines.values():
                    spine.set_edgecolor("red")
                    spine.set_linewidth(2.5)
    fig.suptitle(_title(subject_id, probability, label), fontsize="small")
    fig.tight_layout()
    return fig


class SubjectExplorer:
    """ipywidgets explorer: subject, slice, CAM toggle and fade, prediction and label.

    Parameters
    ----------
    images : array-like, shape (n_subjects, 2, n_slices, H, W)
    cams : array-like, shape (n_subjects, 2, n_slices, h, w) or None
    probabilities : array-like, shape (n_subjects,) or None
        P(right knee painful).
    labels : array-like of {0, 1} or None
    subject_ids : sequence or None
        Names for the subject menu (default ``0 .. n-1``).
    start_at_top_slice : bool
        On choosing a subject, jump to the slice with the highest mean CAM on the knee
        the model predicts (paper 000's selected CAM).

    Examples
    --------
    >>> SubjectExplorer(images, cams, probabilities, labels).widget  # doctest: +SKIP
    """

    def __init__(self, images, cams=None, probabilities=None, labels=None, subject_ids=None,
                 start_at_top_slice: bool = True, knee_names: Sequence[str] = KNEE_NAMES):
        import ipywidgets as W

        self.images = np.asarray(images)
        if self.images.ndim != 5 or self.images.shape[1] != 2:
            raise ValueError(f"images must be (n_subjects, 2, n_slices, H, W); got {self.images.shape}")
        n = len(self.images)
        self.cams = None if cams is None else np.asarray(cams)
        if self.cams is not None and self.cams.shape[:3] != self.images.shape[:3]:
            raise ValueError(f"cams {self.cams.shape} do not match images {self.images.shape}")
        self.probabilities = None if probabilities is None else np.asarray(probabilities, dtype=float)
        self.labels = None if labels is None else np.asarray(labels, dtype=int)
        for name, values in (("probabilities", self.probabilities), ("labels", self.labels)):
            if values is not None and len(values) != n:
                raise ValueError(f"{name} has {len(values)} entries for {n} subjects")
        self.subject_ids = list(range(n)) if subject_ids is None else list(subject_ids)
        if len(self.subject_ids) != n:
            raise ValueError(f"subject_ids has {len(self.subject_ids)} entries for {n} subjects")
        self.start_at_top_slice = start_at_top_slice
        self.knee_names = tuple(knee_names)
        self.figure = None

        self.subject = W.Dropdown(options=[(str(s), i) for i, s in enumerate(self.subject_ids)], value=0,
                                  description="Subject")
        self.slice = W.IntSlider(value=self.images.shape[2] // 2, min=0, max=self.images.shape[2] - 1,
                                 description="Slice", continuous_update=False)
        self.show_cam = W.ToggleButton(value=self.cams is not None, description="CAM overlay",
                                       disabled=self.cams is None)
        self.alpha = W.FloatSlider(value=0.5, min=0.0, max=1.0, step=0.05, description="CAM opacity",
                                   continuous_update=False)
        self.info = W.HTML()
        self.output = W.Output()
        self.widget = W.VBox([W.HBox([self.subject, self.slice]), W.HBox([self.show_cam, self.alpha]),
                              self.info, self.output])
        self.subject.observe(self._on_subject, names="value")
        for control in (self.slice, self.show_cam, self.alpha):
            control.observe(lambda _change: self.update(), names="value")
        self._on_subject()

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)

    def top_slice(self, index: int) -> int:
        """Slice with the highest mean CAM on the predicted (else labelled) painful knee."""
        if self.cams is None:
            return self.images.shape[2] // 2
        if self.probabilities is not None:
            knee = int(self.probabilities[index] >= 0.5)
        elif self.labels is not None:
            knee = int(self.labels[index])
        else:
            knee = int(self.cams[index].mean(axis=(-2, -1)).max(axis=1).argmax())
        return int(self.cams[index, knee].mean(axis=(-2, -1)).argmax())

    def _on_subject(self, _change=None):
        if self.start_at_top_slice and self.cams is not None:
            with self.slice.hold_trait_notifications():
                self.slice.value = self.top_slice(self.subject.value)
        self.update()

    def update(self):
        """Redraw the view for the current control values."""
        import matplotlib.pyplot as plt
        from IPython.display import clear_output, display

        i = self.subject.value
        probability = None if self.probabilities is None else float(self.probabilities[i])
        label = None if self.labels is None else int(self.labels[i])
        self.info.value = f"<b>{_title(self.subject_ids[i], probability, label)}</b>"
        if self.figure is not None:
            plt.close(self.figure)
        self.figure = render_subject_view(
            self.images[i], None if self.cams is None else self.cams[i], self.slice.value,
            show_cam=self.show_cam.value, alpha=self.alpha.value, probability=probability, label=label,
            subject_id=self.subject_ids[i], knee_names=self.knee_names)
        with self.output:
            clear_output(wait=True)
            display(self.figure)
        return self.figure
