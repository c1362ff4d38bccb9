"""Interactive and static viewers of both knees' slices with CAM overlays.

Paper 000 shows CAMs over MRI slices of the knee with pain (Fig. 3); the book's chapters let a
reader browse them. :class:`SubjectExplorer` is an ipywidgets viewer for JupyterLab -- choose a
subject, scroll the slices of both knees side by side, toggle and fade the CAM overlay, read the
prediction and the label. :class:`StaticExplorer` is the same explorer without a kernel, for the
HTML book: the slices are pre-rendered as small JPEG frames (downscaled, base64 inside the page,
under a size cap) behind a subject menu, a slice slider, a CAM toggle and an opacity slider driven
by a few lines of inline JavaScript (no CDN, no network; :class:`StaticSliceViewer` is the generic
core). Displaying a :class:`SubjectExplorer` outputs both (:class:`LiveOrStatic`): JupyterLab shows
the widget, the book the static twin. :func:`render_subject_view` draws one view as a matplotlib
figure (for saved figures). All take plain arrays, so later chapters reuse them for any paired-knee
model:

* ``images``: ``(n_subjects, 2 knees, n_slices, H, W)`` (knee 0 = left, 1 = right),
* ``cams``: ``(n_subjects, 2, n_slices, h, w)`` at any resolution (upsampled
  bilinearly and min-max scaled per map for display),
* ``probabilities``: P(class 1 = right knee painful), ``labels``: 0/1.
"""
from __future__ import annotations

import base64
import hashlib
import html
import io
import itertools
import json
from typing import Sequence

import numpy as np

from kneelib.explain.cam import normalize_cam, upsample_cam

__all__ = ["render_subject_view", "SubjectExplorer", "StaticSliceViewer", "StaticExplorer", "LiveOrStatic",
           "live_or_static_bundle", "KNEE_NAMES", "frame_size", "grey_frames", "encode_frame"]

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

    def _repr_mimebundle_(self, include=None, exclude=None):
        """The live widget for JupyterLab plus the kernel-free explorer as ``text/html`` for the book."""
        return live_or_static_bundle(self.widget, self.to_static(), include=include, exclude=exclude)

    def to_static(self, **kwargs) -> "StaticExplorer":
        """The same explorer as a kernel-free :class:`StaticExplorer` (for the HTML book)."""
        return StaticExplorer(self.images, self.cams, self.probabilities, self.labels, self.subject_ids,
                              knee_names=self.knee_names, start_at_top_slice=self.start_at_top_slice, **kwargs)

    def top_slice(self, index: int) -> int:
        """Slice with the highest mean CAM on the predicted (else labelled) painful knee."""
        return _top_slice(self.cams, self.probabilities, self.labels, index, self.images.shape[2])

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


def live_or_static_bundle(widget, static, include=None, exclude=None) -> dict:
    """One output for both readers: the widget's view (JupyterLab renders it first) and ``text/html``.

    The book's ``nb_mime_priority_overrides`` (book/_config.yml) puts ``text/html`` first, so the
    static page shows the kernel-free viewer where a live widget could not run.
    """
    bundle = dict(widget._repr_mimebundle_(include=include, exclude=exclude) or {})
    bundle["text/html"] = static.html
    return bundle


class LiveOrStatic:
    """An ipywidget and its kernel-free twin shown as one output (:func:`live_or_static_bundle`).

    Attributes
    ----------
    widget : ipywidgets.Widget
        What JupyterLab shows.
    static : StaticSliceViewer
        What the HTML book shows.
    """

    def __init__(self, widget, static):
        self.widget, self.static = widget, static

    def _repr_mimebundle_(self, include=None, exclude=None):
        return live_or_static_bundle(self.widget, self.static, include=include, exclude=exclude)


def _top_slice(cams, probabilities, labels, index: int, n_slices: int) -> int:
    """Slice with the highest mean CAM on the predicted (else labelled, else hottest) knee."""
    if cams is None:
        return n_slices // 2
    if probabilities is not None:
        knee = int(probabilities[index] >= 0.5)
    elif labels is not None:
        knee = int(labels[index])
    else:
        knee = int(cams[index].mean(axis=(-2, -1)).max(axis=1).argmax())
    return int(cams[index, knee].mean(axis=(-2, -1)).argmax())


def encode_frame(pixels: np.ndarray, size: tuple[int, int], fmt: str = "JPEG", quality: int = 80) -> str:
    """A data URI of one frame (grey, RGB or, as PNG, RGBA), resized to ``size`` (width, height)."""
    from PIL import Image

    image = Image.fromarray(pixels)
    if image.size != size:
        image = image.resize(size, Image.NEAREST if fmt == "PNG" else Image.BILINEAR)
    buffer = io.BytesIO()
    if fmt == "JPEG":
        image.save(buffer, format="JPEG", quality=quality, optimize=True)
    else:
        image.save(buffer, format="PNG", optimize=True)
    return f"data:image/{fmt.lower()};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"


def frame_size(shape: tuple[int, int], max_side: int) -> tuple[int, int]:
    """(width, height) of frames of a ``(H, W)`` slice downscaled to at most ``max_side`` pixels."""
    height, width = shape
    scale = min(1.0, max_side / max(height, width))
    return max(1, round(width * scale)), max(1, round(height * scale))


def grey_frames(stack: np.ndarray, size: tuple[int, int], low: float, high: float, quality: int = 80) -> list[str]:
    """JPEG data URIs of the slices ``stack[k]`` windowed to ``[low, high]``."""
    grey = np.clip((np.asarray(stack, dtype=np.float32) - low) / (high - low if high > low else 1.0), 0, 1)
    grey = (grey * 255).round().astype(np.uint8)
    return [encode_frame(frame, size, "JPEG", quality) for frame in grey]


_VIEWER_JS = """
(function () {
  var root = document.getElementById("%(id)s");
  var data = JSON.parse(root.querySelector("script.kx-data").textContent);
  var menu = root.querySelector(".kx-subject"), slice = root.querySelector(".kx-slice"),
      toggle = root.querySelector(".kx-cam-toggle"), alpha = root.querySelector(".kx-alpha");
  var panels = root.querySelectorAll(".kx-panel");
  function draw() {
    var view = data.views[+menu.value], k = +slice.value;
    root.querySelector(".kx-info").textContent = view.title;
    var number = data.slice_numbers ? data.slice_numbers[k] : k;
    root.querySelector(".kx-slice-value").textContent = number;
    for (var p = 0; p < panels.length; p++) {
      var spec = view.panels[p], panel = panels[p];
      if (!spec) { panel.style.display = "none"; continue; }
      panel.style.display = "inline-block";
      panel.querySelector("img.kx-base").src = data.stacks[spec.base][k];
      var over = panel.querySelector("img.kx-over"), has = spec.over !== null;
      over.style.display = (has && toggle.checked) ? "block" : "none";
      if (has) { over.src = data.stacks[spec.over][k]; }
      over.style.opacity = alpha.value / 100;
      panel.querySelector(".kx-caption").textContent = spec.caption.replace("{slice}", number);
      panel.style.outline = spec.outline ? "3px solid red" : "none";
    }
    root.dataset.frame = menu.value + ":" + k;
  }
  menu.addEventListener("change", function () { slice.value = data.views[+menu.value].start; draw(); });
  [slice, toggle, alpha].forEach(function (c) {
    c.addEventListener("input", draw); c.addEventListener("change", draw);
  });
  draw();
})();
"""


_VIEWER_NUMBERS = itertools.count()


class StaticSliceViewer:
    """A kernel-free slice viewer: a menu of views, a slice slider, an overlay toggle and opacity.

    The frames are pre-rendered data URIs (small JPEG or PNG, base64 inside the page) and a few
    lines of inline JavaScript swap them, so the viewer works in a static HTML page without a
    kernel or a network (myst-nb shows a ``text/html`` output as is). Stacks of frames are stored
    once and shared by the views that show them. :class:`StaticExplorer` (both knees with CAMs)
    and :func:`kneelib.figures.qmri.static_segmentation_viewer` are built on it.

    Parameters
    ----------
    n_slices : int
        Frames per stack.
    display_size : (int, int)
        (width, height) of each panel on the page, CSS pixels.
    menu_label, overlay_label : str
        Names of the view menu and of the overlay controls.
    alpha : float
        Initial overlay opacity.
    slice_numbers : sequence of int, optional
        The slice each frame shows, for the captions (default ``0 .. n_slices - 1``; a viewer of
        every k-th slice passes them).
    """

    def __init__(self, n_slices: int, display_size: tuple[int, int], *, menu_label: str = "View",
                 overlay_label: str = "overlay", alpha: float = 0.5, slice_numbers: Sequence[int] | None = None):
        if not 0 <= alpha <= 1:
            raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
        if slice_numbers is not None and len(slice_numbers) != n_slices:
            raise ValueError(f"slice_numbers has {len(slice_numbers)} entries for {n_slices} slices")
        self.slice_numbers = None if slice_numbers is None else [int(k) for k in slice_numbers]
        self.n_slices, self.display_size, self.alpha = int(n_slices), display_size, alpha
        self.menu_label, self.overlay_label = menu_label, overlay_label
        self.stacks: list[list[str]] = []
        self.views: list[dict] = []
        self.note = ""
        self._number = next(_VIEWER_NUMBERS)  # element ids unique on a page, reproducible in a run

    def add_stack(self, frames: Sequence[str]) -> int:
        """Store one frame per slice; returns its id for :meth:`add_view`."""
        if len(frames) != self.n_slices:
            raise ValueError(f"a stack needs {self.n_slices} frames, got {len(frames)}")
        self.stacks.append(list(frames))
        return len(self.stacks) - 1

    def add_view(self, name: str, title: str, panels: Sequence[dict], start: int | None = None) -> None:
        """One menu entry: ``panels`` of ``{"base": id, "over": id or None, "caption": str with
        "{slice}", "outline": bool}`` shown side by side; the slider jumps to ``start`` on choosing it."""
        start = self.n_slices // 2 if start is None else int(start)
        self.views.append({"name": str(name), "title": title, "start": start,
                           "panels": [{"base": p["base"], "over": p.get("over"), "caption": p.get("caption", ""),
                                       "outline": bool(p.get("outline", False))} for p in panels]})

    @staticmethod
    def stack_bytes(frames: Sequence[str]) -> int:
        return sum(len(f) for f in frames)

    @property
    def html(self) -> str:
        """The viewer as one self-contained HTML fragment."""
        if not self.views:
            raise ValueError("the viewer has no view (add_view)")
        data = {"stacks": self.stacks, "views": self.views, "slice_numbers": self.slice_numbers}
        payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
        element = f"kx-{self._number}-{hashlib.sha1(payload.encode()).hexdigest()[:10]}"
        has_overlay = any(p["over"] is not None for v in self.views for p in v["panels"])
        options = "".join(f'<option value="{i}">{html.escape(v["name"])}</option>' for i, v in enumerate(self.views))
        start = self.views[0]["start"]
        width, height = self.display_size
        panel = (f'<figure class="kx-panel" style="margin:0 8px 0 0;display:inline-block">'
                 f'<div style="position:relative;width:{width}px;height:{height}px">'
                 f'<img class="kx-base" alt="slice" style="width:100%;height:100%">'
                 f'<img class="kx-over" alt="{html.escape(self.overlay_label)}" '
                 f'style="position:absolute;left:0;top:0;width:100%;height:100%">'
                 f'</div><figcaption class="kx-caption" style="font-size:small"></figcaption></figure>')
        n_panels = max(len(v["panels"]) for v in self.views)
        label = html.escape(self.overlay_label)
        overlay_controls = (
            f'<label style="margin-right:12px"><input type="checkbox" class="kx-cam-toggle" checked> {label}</label>'
            f'<label>{label} opacity <input type="range" class="kx-alpha" min="0" max="100" '
            f'value="{round(self.alpha * 100)}"></label>' if has_overlay else
            '<input type="checkbox" class="kx-cam-toggle" style="display:none">'
            '<input type="range" class="kx-alpha" style="display:none" value="0">')
        note = f'<div style="font-size:small">{html.escape(self.note)}</div>' if self.note else ""
        return (f'<div class="kneelib-explorer" id="{element}" style="font-family:sans-serif">'
                f'<div class="kx-controls" style="margin-bottom:6px">'
                f'<label style="margin-right:12px">{html.escape(self.menu_label)} '
                f'<select class="kx-subject">{options}</select></label>'
                f'<label style="margin-right:12px">Slice <input type="range" class="kx-slice" min="0" '
                f'max="{self.n_slices - 1}" value="{start}"> <span class="kx-slice-value">{start}</span></label>'
                f'{overlay_controls}</div>'
                f'<div class="kx-info" style="font-weight:bold;font-size:small;margin-bottom:4px"></div>{note}'
                f'<div class="kx-panels">{panel * n_panels}</div>'
                f'<script type="application/json" class="kx-data">{payload}</script>'
                f'<script>{_VIEWER_JS % {"id": element}}</script></div>')

    @property
    def n_bytes(self) -> int:
        """Size of the HTML in bytes."""
        return len(self.html.encode())

    def _repr_html_(self) -> str:
        return self.html

    def save(self, path) -> None:
        """Write a standalone HTML page holding the viewer."""
        from pathlib import Path

        Path(path).write_text(f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>kneelib viewer</title>"
                              f"</head><body>{self.html}</body></html>", encoding="utf-8")


class StaticExplorer(StaticSliceViewer):
    """Kernel-free explorer for the HTML book: pre-rendered frames behind a slice slider.

    Takes the arrays of :class:`SubjectExplorer`; renders, per subject, knee and slice, the slice
    (grey, 1st-99th percentile window per subject) and its CAM (upsampled and min-max scaled as in
    :func:`render_subject_view`, coloured with ``cmap_cam``) as small JPEG frames. The page shows
    them with a subject menu, a slice slider, a CAM toggle and an opacity slider (the CAM frame lies
    over the slice with CSS opacity, the same blend as matplotlib's ``alpha``), the title line of the
    live explorer and the painful knee outlined in red (:class:`StaticSliceViewer`).

    Parameters
    ----------
    images, cams, probabilities, labels, subject_ids, knee_names, start_at_top_slice
        As :class:`SubjectExplorer`.
    max_side : int
        Frames are downscaled so that their longer side is at most this many pixels.
    max_bytes : int
        Size cap of the frames: subjects are added in order while the total stays under it (at
        least one); :attr:`n_shown` tells how many made it and the page says so.
    quality : int
        JPEG quality.
    cmap_cam : str
        Matplotlib colormap of the CAM.
    alpha : float
        Initial CAM opacity.
    display_side : int
        Longer side of each knee's panel on the page, in CSS pixels.

    Examples
    --------
    >>> StaticExplorer(images, cams, probabilities, labels)  # doctest: +SKIP
    """

    def __init__(self, images, cams=None, probabilities=None, labels=None, subject_ids=None, *,
                 knee_names: Sequence[str] = KNEE_NAMES, start_at_top_slice: bool = True, max_side: int = 160,
                 max_bytes: int = 1_500_000, quality: int = 80, cmap_cam: str = "jet", alpha: float = 0.5,
                 display_side: int = 300):
        from matplotlib import colormaps

        images = np.asarray(images, dtype=np.float32)
        if images.ndim != 5 or images.shape[1] != 2:
            raise ValueError(f"images must be (n_subjects, 2, n_slices, H, W); got {images.shape}")
        n, _, n_slices, height, width = images.shape
        cams = None if cams is None else np.asarray(cams, dtype=np.float32)
        if cams is not None and cams.shape[:3] != images.shape[:3]:
            raise ValueError(f"cams {cams.shape} do not match images {images.shape}")
        probabilities = None if probabilities is None else np.asarray(probabilities, dtype=float)
        labels = None if labels is None else np.asarray(labels, dtype=int)
        for name, values in (("probabilities", probabilities), ("labels", labels)):
            if values is not None and len(values) != n:
                raise ValueError(f"{name} has {len(values)} entries for {n} subjects")
        subject_ids = list(range(n)) if subject_ids is None else list(subject_ids)
        if len(subject_ids) != n:
            raise ValueError(f"subject_ids has {len(subject_ids)} entries for {n} subjects")
        longer = max(height, width)
        super().__init__(n_slices, (round(display_side * width / longer), round(display_side * height / longer)),
                         menu_label="Subject", overlay_label="CAM", alpha=alpha)
        self.knee_names, self.n_subjects = tuple(knee_names), n
        size = frame_size((height, width), max_side)
        colour = colormaps[cmap_cam]
        total = 0
        for i in range(n):
            low, high = np.percentile(images[i], [1, 99])
            base = [grey_frames(images[i, knee], size, low, high, quality) for knee in range(2)]
            over = [None, None]
            if cams is not None:
                maps = normalize_cam(upsample_cam(cams[i], (height, width)))
                rgb = (colour(maps)[..., :3] * 255).round().astype(np.uint8)
                over = [[encode_frame(frame, size, "JPEG", quality) for frame in rgb[knee]] for knee in range(2)]
            cost = sum(self.stack_bytes(f) for f in base + over if f is not None)
            if self.views and total + cost > max_bytes:
                break
            total += cost
            probability = None if probabilities is None else float(probabilities[i])
            label = None if labels is None else int(labels[i])
            panels = [{"base": self.add_stack(base[knee]),
                       "over": None if over[knee] is None else self.add_stack(over[knee]),
                       "caption": f"{self.knee_names[knee]}, slice {{slice}}", "outline": label == knee}
                      for knee in range(2)]
            start = _top_slice(cams, probabilities, labels, i, n_slices) if start_at_top_slice else n_slices // 2
            self.add_view(str(subject_ids[i]), _title(subject_ids[i], probability, label), panels, start)
        self.n_shown = len(self.views)
        if self.n_shown < n:
            self.note = f"first {self.n_shown} of {n} subjects (size cap)"
