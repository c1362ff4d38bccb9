"""Per-slice ImageNet features of knee MRI series, cached per series (paper 002, 2.3 and 2.4.1).

Schiratti et al. 2021: each acquisition is put in one orientation (right knees "mirrored"
to look like left ones, 2.3.2), bias-corrected with N4 (2.3.4) and intensity-normalised;
then "each slice of the input volume is passed to a pretrained model which will compute
1280 numerical descriptors" (2.4.1, Fig. 2), up to 30 slices for the 2D TSE series and 150
for SAG 3D DESS. The paper does not name the network; 1280 descriptors are what
EfficientNet-B0/Lite0 give, and the offline EfficientNet-Lite0 ImageNet weights of
:mod:`kneelib.models.pretrained` are the only ones installable here.

Steps, one function each:

1. :func:`series_slices` -- a :class:`kneelib.data.Volume` in the common orientation
   (:func:`kneelib.data.to_common_orientation`: RAS+, left knees mirrored so that every
   knee looks like a right knee; the paper mirrors the other side, which is the same
   normalisation), slices along the series' own slice axis, superior up;
2. :func:`central_window` -- ``n_slices`` consecutive slices centred on the middle slice
   (3.1: "8 consecutive slices (centered around the 'middle' slice)");
3. :func:`prepare_slices` -- N4 (:func:`kneelib.preprocess.bias_field.n4_bias_correct`)
   on the window, division by the 99.5th percentile, clipping to [0, 1], square resize;
4. :class:`SliceEncoder` -- EfficientNet-Lite0 without its classifier (global average
   pool of the last 1280-channel map), ImageNet mean/std on the grey slice copied to RGB;
5. :func:`extract_cohort_features` -- steps 1-4 per knee, one ``.npz`` per series under
   ``cache_root()/slice_features``, keyed by the content of the DICOM files and every
   parameter (:func:`kneelib.data.cache.series_cache_key`), written under a temporary name
   and renamed, so an interrupted run resumes and never reads a half-written entry. The
   uncached knees are spread over joblib worker processes (``n_jobs``), each with one torch
   and one SimpleITK thread and its own encoder, built once; one worker runs the same
   per-knee function in this process.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from kneelib.data.errors import exclusion_reason
from kneelib.executor import single_threaded

__all__ = [
    "SERIES", "FEATURE_VERSION", "SliceInputError", "SliceFeatureConfig", "series_slices", "central_window",
    "prepare_slices", "label_slices", "SliceEncoder", "SliceFeatures", "extract_cohort_features",
    "features_cache_dir", "exclusion_reason",
]

#: Series kinds -> (OAI series description template, slice axis in the common RAS+ orientation).
SERIES: dict[str, tuple[str, int]] = {
    "COR_IW_TSE": ("COR_IW_TSE_{side}", 1),
    "SAG_IW_TSE": ("SAG_IW_TSE_{side}", 0),
    "SAG_3D_DESS": ("SAG_3D_DESS_{side}", 0),
}
#: Bump when the features of the same files and parameters change.
FEATURE_VERSION = "2"  # 2: N4 on one SimpleITK thread per worker (float16 features differ slightly from 1)
_SIDE = {"R": "RIGHT", "L": "LEFT"}


class SliceInputError(ValueError):
    """A series or a parameter the slice pipeline cannot use (unknown series kind, bad sizes)."""


@dataclass(frozen=True)
class SliceFeatureConfig:
    """Parameters of the slice pipeline (each one enters the cache key).

    Attributes
    ----------
    series : str
        A key of :data:`SERIES`.
    n_slices : int or None
        Consecutive slices around the middle one; ``None`` keeps every slice.
    image_size : int
        Square side (pixels) the slices are resized to before the CNN.
    n4_shrink : int
        Shrink factor of the N4 fitting grid; 0 skips N4.
    n4_iterations : tuple of int
        N4 iterations per fitting level.
    arch : str
        timm architecture with offline ImageNet weights.
    """

    series: str = "COR_IW_TSE"
    n_slices: int | None = 16
    image_size: int = 112
    n4_shrink: int = 4
    n4_iterations: tuple[int, ...] = (20, 20)
    arch: str = "efficientnet_lite0"

    def __post_init__(self):
        if self.series not in SERIES:
            raise SliceInputError(f"unknown series {self.series!r}; known: {sorted(SERIES)}")
        if self.n_slices is not None and int(self.n_slices) < 1:
            raise SliceInputError(f"n_slices must be >= 1 or None, got {self.n_slices}")
        if int(self.image_size) < 32:
            raise SliceInputError(f"image_size must be >= 32 pixels, got {self.image_size}")
        object.__setattr__(self, "n4_iterations", tuple(int(i) for i in self.n4_iterations))

    def description(self, side: str) -> str:
        """OAI series description of this kind for knee ``side`` (``"R"``/``"L"``)."""
        if side not in _SIDE:
            raise SliceInputError(f"side must be 'R' or 'L', got {side!r}")
        return SERIES[self.series][0].format(side=_SIDE[side])


def series_slices(volume, series: str) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Slices of a series in the common orientation, ``(n, rows, cols)`` with superior up.

    Parameters
    ----------
    volume : kneelib.data.Volume
        As read (not yet in the common orientation); its laterality must be known.
    series : str
        A key of :data:`SERIES` (fixes the slice axis).

    Returns
    -------
    slices : ndarray, shape (n_slices, rows, cols), float32
        Coronal: rows inferior-superior flipped (superior first), columns medial to lateral
        of a right knee; sagittal: rows likewise, columns posterior to anterior.
    spacing : tuple of float
        ``(slice, row, col)`` spacing in mm.
    """
    from kneelib.data import to_common_orientation

    if series not in SERIES:
        raise SliceInputError(f"unknown series {series!r}; known: {sorted(SERIES)}")
    common = to_common_orientation(volume) if not volume.mirrored and volume.laterality else None
    if common is None:
        raise SliceInputError("volume needs a known laterality and must not be reoriented yet")
    axis = SERIES[series][1]
    array = np.asarray(common.array, dtype=np.float32)
    if array.ndim == 4:
        array = array[..., 0]
    spacing = common.spacing_mm
    moved = np.moveaxis(array, axis, 0)  # (slice, a, S) with S = superior axis last
    slices = np.ascontiguousarray(np.transpose(moved, (0, 2, 1))[:, ::-1, :])
    in_plane = [spacing[i] for i in range(3) if i != axis]
    return slices, (float(spacing[axis]), float(in_plane[1]), float(in_plane[0]))


def central_window(n_total: int, n_slices: int | None) -> np.ndarray:
    """Indices of ``n_slices`` consecutive slices centred on the middle one (all when ``None``
    or when the series has fewer)."""
    if n_total < 1:
        raise SliceInputError(f"a series needs at least one slice, got {n_total}")
    if n_slices is None or n_slices >= n_total:
        return np.arange(n_total)
    start = (n_total - int(n_slices)) // 2
    return np.arange(start, start + int(n_slices))


def _resize(stack: np.ndarray, size: int, order: int) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    tensor = torch.from_numpy(np.ascontiguousarray(stack, dtype=np.float32))[:, None]
    mode = "nearest" if order == 0 else "bilinear"
    kwargs = {} if order == 0 else {"align_corners": False, "antialias": True}
    return F.interpolate(tensor, size=(size, size), mode=mode, **kwargs)[:, 0].numpy()


def prepare_slices(volume, config: SliceFeatureConfig) -> tuple[np.ndarray, np.ndarray]:
    """Network-ready slices of one series (paper 002, 2.3.2-2.3.4): window, N4, normalise, resize.

    Returns
    -------
    images : ndarray, shape (n, image_size, image_size), float32 in [0, 1]
    indices : ndarray of int
        Index of each kept slice in the whole series.
    """
    from kneelib.preprocess.bias_field import n4_bias_correct

    slices, spacing = series_slices(volume, config.series)
    indices = central_window(len(slices), config.n_slices)
    window = slices[indices]
    if config.n4_shrink > 0:
        window = n4_bias_correct(window, shrink=config.n4_shrink, iterations=config.n4_iterations,
                                 spacing=spacing).corrected
    scale = float(np.percentile(window, 99.5))
    if not scale > 0:
        raise SliceInputError(f"series {volume.series_description!r} is empty (99.5th percentile {scale:g})")
    images = np.clip(window / scale, 0.0, 1.0)
    return _resize(images, config.image_size, order=1).astype(np.float32), indices


def label_slices(labels: np.ndarray, volume, config: SliceFeatureConfig) -> np.ndarray:
    """A ground-truth label or mask volume on the slices :func:`prepare_slices` gives.

    ``labels`` is ``(slices, rows, cols)`` on the DICOM grid of ``volume`` (as
    :func:`kneelib.synth.ground_truth.load_series_with_truth` returns it); the result is
    ``(n, image_size, image_size)``, resized by nearest neighbour.
    """
    labels = np.asarray(labels)
    if labels.shape != volume.shape[:3][::-1]:
        raise SliceInputError(f"labels {labels.shape} are not on the grid of the series {volume.shape[:3][::-1]}")
    as_volume = replace(volume, array=np.ascontiguousarray(np.transpose(labels, (2, 1, 0))))
    stack, _ = series_slices(as_volume, config.series)
    indices = central_window(len(stack), config.n_slices)
    return _resize(stack[indices].astype(np.float32), config.image_size, order=0).round().astype(labels.dtype)


class SliceEncoder:
    """EfficientNet-Lite0 (offline ImageNet weights) mapping grey slices to 1280-d vectors (2.4.1).

    ``forward_features`` returns the last convolutional maps (for Grad-CAM) and
    :meth:`encode` their global average, as timm's headless model does.
    """

    MEAN = (0.485, 0.456, 0.406)
    STD = (0.229, 0.224, 0.225)

    def __init__(self, arch: str = "efficientnet_lite0"):
        import timm
        import torch

        from kneelib.models.pretrained import load_imagenet_weights

        self.arch = arch
        self.network = load_imagenet_weights(timm.create_model(arch, pretrained=False, num_classes=0), arch).eval()
        self._mean = torch.tensor(self.MEAN).view(1, 3, 1, 1)
        self._std = torch.tensor(self.STD).view(1, 3, 1, 1)

    @property
    def n_features(self) -> int:
        return int(self.network.num_features)

    def to_input(self, images):
        """``(n, H, W)`` grey images in [0, 1] -> normalised ``(n, 3, H, W)`` tensor."""
        import torch

        tensor = torch.as_tensor(np.asarray(images, dtype=np.float32))
        if tensor.ndim != 3:
            raise SliceInputError(f"images must be (n, H, W), got shape {tuple(tensor.shape)}")
        return (tensor[:, None].expand(-1, 3, -1, -1) - self._mean) / self._std

    def forward_features(self, inputs):
        """Last convolutional maps ``(n, 1280, h, w)`` of normalised inputs (gradients kept)."""
        return self.network.forward_features(inputs)

    def pool(self, maps):
        """Global average of the maps: the 1280-d slice vector."""
        return self.network.forward_head(maps, pre_logits=True)

    def encode(self, images, batch_size: int = 32) -> np.ndarray:
        """1280-d vector per slice, ``(n, 1280)`` float32."""
        import torch

        out = []
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                out.append(self.pool(self.forward_features(self.to_input(images[start:start + batch_size]))).numpy())
        return np.concatenate(out, axis=0) if out else np.zeros((0, self.n_features), np.float32)


def features_cache_dir() -> Path:
    """``cache_root()/slice_features``."""
    from kneelib.config import cache_root

    return cache_root() / "slice_features"


@dataclass
class SliceFeatures:
    """Slice features of a cohort's knees, padded to one slice count.

    Attributes
    ----------
    knees : DataFrame
        The requested knees (``participant_id``, ``side``) with ``status`` (``"cached"``,
        ``"computed"``, ``"missing"``: no such series, ``"unreadable"``: the reader or the
        pipeline refused it, e.g. a planted missing-slices artefact), ``n_slices`` and ``reason``.
        Unreadable knees are not cached, so they are retried on the next run.
    features : ndarray, shape (n_knees, max_slices, n_features), float32
    mask : ndarray of bool, shape (n_knees, max_slices)
        True where a slice exists (padding and missing knees False).
    slice_index : ndarray of int, shape (n_knees, max_slices)
        Index of each slice in its series (-1 for padding).
    config : SliceFeatureConfig
    seconds : dict
        ``total`` (wall clock of the call), ``encode`` (CNN only) and ``preprocess`` (read, N4,
        resize) of the knees computed in this call; ``encode`` and ``preprocess`` are summed over
        the worker processes, so with several workers they can exceed ``total``.
    n_encoded : int
        Slices passed through the CNN in this call.
    cache_bytes : int
        Size on disk of the cache entries of these knees.
    n_jobs : int
        Worker processes the uncached knees were spread over (1: in this process).
    """

    knees: pd.DataFrame
    features: np.ndarray
    mask: np.ndarray
    slice_index: np.ndarray
    config: SliceFeatureConfig
    seconds: dict = field(default_factory=dict)
    n_encoded: int = 0
    cache_bytes: int = 0
    n_jobs: int = 1

    @property
    def slices_per_second(self) -> float:
        """CNN throughput of one worker in this call (NaN when everything came from the cache)."""
        return self.n_encoded / self.seconds["encode"] if self.n_encoded and self.seconds.get("encode") else float("nan")


@dataclass(frozen=True)
class _KneeJob:
    """What :func:`_compute_knee` needs for one uncached series (small and picklable)."""

    folder: Path
    entry_path: Path
    config: SliceFeatureConfig
    root: Path


@dataclass(frozen=True)
class _KneeOutcome:
    """One series' features as stored (float16) or the reason it was refused, and the time it took."""

    features: np.ndarray | None
    indices: np.ndarray | None
    reason: str = ""
    preprocess_seconds: float = 0.0
    encode_seconds: float = 0.0


#: Encoders built in this process, by architecture: a worker builds its network once, not per knee.
_ENCODERS: dict[str, SliceEncoder] = {}


def _process_encoder(arch: str) -> SliceEncoder:
    """This process's :class:`SliceEncoder` of ``arch``, built on first use (paper 002, 2.4.1)."""
    encoder = _ENCODERS.get(arch)
    if encoder is None:
        encoder = _ENCODERS[arch] = SliceEncoder(arch)
    return encoder


def _compute_knee(job: _KneeJob) -> _KneeOutcome:
    """Read one series, N4, window, normalise, encode and cache it (paper 002, 2.3.2-2.3.4, 2.4.1).

    The work of one knee and nothing else, the same in this process (``n_jobs=1``) and in a
    worker: the cache entry (float16 features, int16 slice indices) is written under a
    temporary name and renamed, so an interrupted run leaves no half-written entry. A series
    the reader or the pipeline refuses returns its :func:`exclusion_reason` and is not cached.
    """
    from kneelib.data import read_dicom_series
    from kneelib.cache import atomic_write
    from kneelib.data.errors import KneelibDataError
    from kneelib.preprocess.bias_field import BiasFieldInputError

    with single_threaded():
        start = time.perf_counter()
        try:
            volume = read_dicom_series(job.folder)
            images, indices = prepare_slices(volume, job.config)
        except (KneelibDataError, SliceInputError, BiasFieldInputError) as error:  # QC exclusion
            return _KneeOutcome(None, None, exclusion_reason(error, job.root))
        preprocessed = time.perf_counter()
        encoder = _process_encoder(job.config.arch)
        encode_start = time.perf_counter()  # building the network is neither preprocessing nor encoding
        features = encoder.encode(images).astype(np.float16)
        encoded = time.perf_counter()
    indices = indices.astype(np.int16)
    job.entry_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(job.entry_path, lambda tmp: np.savez(tmp, features=features, indices=indices), suffix=".tmp.npz")
    return _KneeOutcome(features, indices, "", preprocessed - start, encoded - encode_start)


def _resolve_n_jobs(n_jobs: int | None) -> int:
    """``None``: every core this process may use; negative: joblib's convention (-1 every core)."""
    if n_jobs is None:
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if int(n_jobs) == 0:
        raise SliceInputError("n_jobs must be a positive number of workers, negative (joblib) or None, got 0")
    from joblib import effective_n_jobs

    return int(effective_n_jobs(int(n_jobs)))


def _map_knees(jobs: list[_KneeJob], n_jobs: int, progress: bool = False, scheduler=None) -> list[_KneeOutcome]:
    """:func:`_compute_knee` over ``jobs`` in order, through :func:`kneelib.executor.map_tasks`.

    One worker runs in this process; more run as joblib's loky processes (or on a dask
    cluster when a scheduler is given), each keeping its encoder (:func:`_process_encoder`)
    for every knee it is given.
    """
    from kneelib.executor import map_tasks

    return map_tasks(_compute_knee, jobs, n_jobs=n_jobs, scheduler=scheduler, progress=progress,
                     desc="slice features", unit="knee")


def extract_cohort_features(root, knees: pd.DataFrame, config: SliceFeatureConfig = SliceFeatureConfig(),
                            visit_month: int = 0, cache_dir=None, progress: bool = False,
                            n_jobs: int | None = None, scheduler=None) -> SliceFeatures:
    """Slice features of every knee in ``knees`` (paper 002, 2.3 and 2.4.1, Fig. 2), from the cache when possible.

    This process finds each knee's series and looks its entry up in the cache; the uncached
    knees go to :func:`_compute_knee` (read, N4, window, normalise, encode, cache), in this
    process or spread over ``n_jobs`` worker processes. Every worker gives the same features as
    the sequential path (one thread each for torch and SimpleITK), and the table keeps the
    order of ``knees``.

    Parameters
    ----------
    root : path
        OAI root (real or synthetic); series are found through its ``contents.csv``.
    knees : DataFrame
        ``participant_id`` and ``side`` (``"R"``/``"L"``) per row.
    config : SliceFeatureConfig
    visit_month : int
        0 for the baseline MRI.
    cache_dir : path, optional
        Default :func:`features_cache_dir`.
    progress : bool
        Show tqdm bars: one over the cache look-ups, then one over the knees computed.
    n_jobs : int, optional
        Worker processes for the uncached knees; ``None`` (default): every core, 1: in this
        process, negative: joblib's convention. Never more workers than uncached knees.
    scheduler : str or dask Client, optional
        Send the uncached knees to a dask.distributed cluster instead (default
        ``$KNEELIB_DASK_SCHEDULER``; :mod:`kneelib.executor`).

    Returns
    -------
    SliceFeatures

    Raises
    ------
    SliceInputError
        When ``knees`` lacks the ``participant_id`` / ``side`` columns, or ``n_jobs`` is 0.
    """
    from kneelib.data import read_image_index
    from kneelib.data.cache import series_cache_key
    from kneelib.data.errors import UnknownSeriesError

    missing_columns = {"participant_id", "side"} - set(knees.columns)
    if missing_columns:
        raise SliceInputError(f"knees table lacks columns {sorted(missing_columns)}")
    requested_jobs = _resolve_n_jobs(n_jobs)
    start_all = time.perf_counter()
    cache = Path(cache_dir) if cache_dir is not None else features_cache_dir()
    index = read_image_index(root)
    params = {**asdict(config), "visit_month": int(visit_month), "version": FEATURE_VERSION}
    rows = list(knees[["participant_id", "side"]].itertuples(index=False))
    entries: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(rows)
    status, reasons = [""] * len(rows), [""] * len(rows)
    entry_paths: list[Path | None] = [None] * len(rows)
    jobs, job_rows = [], []
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(rows), desc=f"{config.series} slice features: cache look-up", leave=False)
    for row, (participant_id, side) in enumerate(rows):
        try:
            folder = index.find_series(str(participant_id), visit_month, config.description(side))
        except UnknownSeriesError:
            status[row], reasons[row] = "missing", f"no {config.description(side)} series"
        else:
            key = series_cache_key(folder, **params)
            entry_paths[row] = path = cache / key[:2] / f"{key}.npz"
            if path.is_file():
                with np.load(path) as stored:
                    entries[row] = (stored["features"].astype(np.float32), stored["indices"])
                status[row] = "cached"
            else:
                jobs.append(_KneeJob(Path(folder), path, config, Path(root)))
                job_rows.append(row)
        if bar is not None:
            bar.update()
    n_workers = max(1, min(requested_jobs, len(jobs)))
    seconds = {"total": 0.0, "encode": 0.0, "preprocess": 0.0}
    n_encoded = 0
    if bar is not None:
        bar.close()
    for row, outcome in zip(job_rows, _map_knees(jobs, n_workers, progress=progress, scheduler=scheduler)):
        if outcome.features is None:
            status[row], reasons[row], entry_paths[row] = "unreadable", outcome.reason, None
        else:
            entries[row] = (outcome.features.astype(np.float32), outcome.indices.astype(int))
            status[row] = "computed"
            seconds["preprocess"] += outcome.preprocess_seconds
            seconds["encode"] += outcome.encode_seconds
            n_encoded += len(outcome.indices)
    cache_bytes = sum(path.stat().st_size for path in entry_paths if path is not None)
    seconds["total"] = time.perf_counter() - start_all
    n_features = next((e[0].shape[1] for e in entries if e is not None), 1280)
    max_slices = max((len(e[1]) for e in entries if e is not None), default=1)
    features = np.zeros((len(entries), max_slices, n_features), np.float32)
    mask = np.zeros((len(entries), max_slices), bool)
    slice_index = np.full((len(entries), max_slices), -1, int)
    for i, entry in enumerate(entries):
        if entry is not None:
            n = len(entry[1])
            features[i, :n], mask[i, :n], slice_index[i, :n] = entry[0], True, entry[1]
    table = knees[["participant_id", "side"]].reset_index(drop=True).assign(status=status, n_slices=mask.sum(axis=1),
                                                                      reason=reasons)
    return SliceFeatures(table, features, mask, slice_index, config, seconds, n_encoded, cache_bytes, n_workers)
