"""Automatic knee localisation on bilateral PA radiographs and the 140 mm knee crop (paper 004).

Tiulpin & Saarakkala (2020), *Data Pre-processing*: BoneFinder landmarks locate each
knee; a 140 x 140 mm region is cut around the joint, rotated so that the tibial
plateau is horizontal, one side is mirrored, the histogram is clipped and the crop
resized to 310 x 310 px (0.45 mm). BoneFinder is not available here, so a small CNN
is trained on the synthetic landmark ground truth
(``ground_truth/radiograph_landmarks.csv`` of :mod:`kneelib.synth.cohort`) to predict,
per knee, the joint centre and the lateral and medial plateau points.

How it works
------------
1. Each bilateral image is split into its two halves (one knee each; the patient's
   right knee is on the image's left). Left-knee halves are mirrored so that both
   sides look alike (lateral on the image's left).
2. Each half is resampled to a fixed grid of ``grid_mm`` millimetres per pixel (default 3 mm)
   (:func:`half_image_on_grid`), so the localiser sees the same physical scale
   whatever the detector pixel size (the MOST-like cohort has other spacings).
3. :func:`LandmarkCNN` predicts one heat map per point and takes its centre of
   mass (soft-argmax) from the globally normalised half image; training shifts
   images and targets together at random (translation augmentation).
4. :func:`knee_crop` cuts the 140 mm square in one resampling step: an affine map
   (centre, plateau angle, mirroring, output pixel size) from output to input
   pixels, also used to carry any landmark into the crop (:func:`crop_points`).

Which subjects train the localiser
----------------------------------
The localiser is trained on a *localisation split* (:func:`localisation_split`): a
fixed share of the training cohort's subjects that takes no part in the grading
cross-validation. Every graded knee is then cropped by a localiser that never saw its
subject, so all folds are cropped alike and no fold's crops depend on its own
landmarks. :class:`KneeLocaliser` remembers its training subjects
(``trained_on``) and :meth:`KneeLocaliser.check_unseen` refuses to crop them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = [
    "LOCALISER_LANDMARKS",
    "KneeHalf",
    "split_knees",
    "half_image_on_grid",
    "landmark_table_to_points",
    "LandmarkCNN",
    "KneeLocaliser",
    "train_knee_localiser",
    "localisation_errors_mm",
    "LocaliserLeakError",
    "localisation_split",
    "fit_localiser",
    "localisation_error_table",
    "plateau_angle_deg",
    "knee_crop_matrix",
    "knee_crop",
    "crop_points",
    "LOCALISER_FORMAT",
    "LocaliserFileError",
    "save_knee_localiser",
    "load_knee_localiser",
]

#: Points the localiser predicts, in this order.
LOCALISER_LANDMARKS: tuple[str, ...] = ("joint_centre", "plateau_lateral", "plateau_medial")


@dataclass
class KneeHalf:
    """One knee's half of a bilateral radiograph.

    Attributes
    ----------
    side : str
        ``"R"`` (image left half) or ``"L"`` (image right half).
    col_offset : int
        Column of the bilateral image where the half starts.
    width : int
        Columns in the half.
    """

    side: str
    col_offset: int
    width: int


def split_knees(image_shape: tuple[int, int]) -> dict[str, KneeHalf]:
    """The two halves of a bilateral PA image (patient's right knee on the image's left)."""
    cols = int(image_shape[1])
    half = cols // 2
    return {"R": KneeHalf("R", 0, half), "L": KneeHalf("L", half, cols - half)}


def _grid_matrix(half: KneeHalf, spacing_mm: float, grid_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Affine (2x2, offset) from grid (row, col) to bilateral-image (row, col); left halves mirrored."""
    scale = grid_mm / spacing_mm
    if half.side == "L":  # mirror: grid col 0 is the half's last column
        matrix = np.array([[scale, 0.0], [0.0, -scale]])
        offset = np.array([0.0, half.col_offset + half.width - 1.0])
    else:
        matrix = np.array([[scale, 0.0], [0.0, scale]])
        offset = np.array([0.0, float(half.col_offset)])
    return matrix, offset


def half_image_on_grid(image: np.ndarray, side: str, spacing_mm: float, grid_mm: float = 3.0,
                       grid_shape: tuple[int, int] = (64, 64)) -> np.ndarray:
    """One knee's half of a bilateral image resampled to ``grid_mm`` per pixel (left mirrored).

    The grid starts at the half's top-left corner (after mirroring); rows or columns
    beyond the image are filled with the image minimum. Returns float32, shape ``grid_shape``.
    """
    from scipy import ndimage

    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D radiograph, got shape {image.shape}")
    if spacing_mm <= 0 or grid_mm <= 0:
        raise ValueError(f"spacings must be positive, got spacing_mm={spacing_mm}, grid_mm={grid_mm}")
    half = split_knees(image.shape)[_check_side(side)]
    matrix, offset = _grid_matrix(half, spacing_mm, grid_mm)
    return ndimage.affine_transform(image, matrix, offset=offset, output_shape=tuple(grid_shape),
                                    order=1, mode="constant", cval=float(image.min()))


def _check_side(side: str) -> str:
    side = str(side).upper()
    if side not in ("R", "L"):
        raise ValueError(f"side must be 'R' or 'L', got {side!r}")
    return side


def _image_to_grid(points_rc: np.ndarray, half: KneeHalf, spacing_mm: float, grid_mm: float) -> np.ndarray:
    matrix, offset = _grid_matrix(half, spacing_mm, grid_mm)
    return (np.asarray(points_rc, dtype=float) - offset) @ np.linalg.inv(matrix).T


def _grid_to_image(points_rc: np.ndarray, half: KneeHalf, spacing_mm: float, grid_mm: float) -> np.ndarray:
    matrix, offset = _grid_matrix(half, spacing_mm, grid_mm)
    return np.asarray(points_rc, dtype=float) @ matrix.T + offset


def landmark_table_to_points(landmarks: pd.DataFrame, names=LOCALISER_LANDMARKS) -> pd.DataFrame:
    """Ground-truth landmark rows -> one row per knee image with ``<name>_row``/``<name>_col``.

    Parameters
    ----------
    landmarks : DataFrame
        ``ground_truth/radiograph_landmarks.csv`` (columns ``participant_id``,
        ``visit_month``, ``side``, ``folder``, ``landmark``, ``row_px``, ``col_px``,
        ``pixel_spacing_mm``).

    Raises
    ------
    KeyError
        If a column or a requested landmark is missing.
    """
    needed = {"participant_id", "visit_month", "side", "folder", "landmark", "row_px", "col_px",
              "pixel_spacing_mm"}
    missing = needed - set(landmarks.columns)
    if missing:
        raise KeyError(f"landmark table lacks columns {sorted(missing)}")
    absent = set(names) - set(landmarks["landmark"])
    if absent:
        raise KeyError(f"landmark table has no {sorted(absent)}")
    keys = ["participant_id", "visit_month", "side", "folder", "pixel_spacing_mm"]
    wide = landmarks[landmarks["landmark"].isin(names)].pivot_table(
        index=keys, columns="landmark", values=["row_px", "col_px"], aggfunc="first")
    out = pd.DataFrame(index=wide.index)
    for name in names:
        out[f"{name}_row"] = wide[("row_px", name)]
        out[f"{name}_col"] = wide[("col_px", name)]
    return out.reset_index()


def _normalise(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, dtype=np.float32)
    return (image - image.mean()) / (image.std() + 1e-6)


def LandmarkCNN(n_points: int = len(LOCALISER_LANDMARKS), width: int = 16):
    """Heat-map CNN with a spatial soft-argmax: ``(batch, 1, H, W)`` -> ``(batch, 2 * n_points)``.

    Two conv/BN/ReLU/max-pool blocks (stride 4), four dilated 3x3 convolutions
    (dilation 1, 2, 4, 8: a receptive field of most of the grid), a 1x1 convolution to
    one heat map per point and a soft-argmax, so each output is the heat map's centre
    of mass as (row, col) fractions of the grid side (0..1). Soft-argmax regression is
    translation-equivariant and learns from few images, unlike a dense regression head.
    """
    import torch
    from torch import nn

    def conv(c_in, c_out, dilation=1):
        return [nn.Conv2d(c_in, c_out, 3, padding=dilation, dilation=dilation, bias=False),
                nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]

    class _SoftArgmax(nn.Module):
        def forward(self, maps):
            batch, points, height, width_ = maps.shape
            weights = maps.flatten(2).softmax(dim=2).view(batch, points, height, width_)
            rows = (torch.arange(height, dtype=maps.dtype) + 0.5) / height
            cols = (torch.arange(width_, dtype=maps.dtype) + 0.5) / width_
            row = (weights.sum(dim=3) * rows).sum(dim=2)
            col = (weights.sum(dim=2) * cols).sum(dim=2)
            return torch.stack([row, col], dim=2).flatten(1)

    layers = [*conv(1, width), nn.MaxPool2d(2), *conv(width, 2 * width), nn.MaxPool2d(2)]
    for dilation in (1, 2, 4, 8):
        layers += conv(2 * width if dilation == 1 else 4 * width, 4 * width, dilation)
    layers += [nn.Conv2d(4 * width, n_points, 1), _SoftArgmax()]
    return nn.Sequential(*layers)


@dataclass
class KneeLocaliser:
    """A trained landmark CNN with its grid settings.

    Attributes
    ----------
    network : torch.nn.Module
    grid_mm : float
        Millimetres per grid pixel.
    grid_shape : tuple of int
    names : tuple of str
        The predicted landmarks (:data:`LOCALISER_LANDMARKS`).
    history : DataFrame
        Training loss per epoch (mean squared error in grid fractions).
    trained_on : frozenset of str
        Subjects whose knees trained it (empty when not given to
        :func:`train_knee_localiser`).
    """

    network: object
    grid_mm: float
    grid_shape: tuple[int, int]
    names: tuple[str, ...]
    history: pd.DataFrame
    trained_on: frozenset = frozenset()

    def check_unseen(self, subjects) -> None:
        """Raise :class:`LocaliserLeakError` if any of ``subjects`` trained this localiser."""
        seen = sorted(set(map(str, subjects)) & self.trained_on)
        if seen:
            raise LocaliserLeakError(
                f"{len(seen)} subject(s) to be cropped trained the localiser, e.g. {seen[:3]}: "
                "crop only subjects outside its localisation split")

    def predict(self, image: np.ndarray, spacing_mm: float, sides=("R", "L")) -> dict[str, dict[str, tuple]]:
        """Landmarks in bilateral-image pixels: ``{side: {name: (row, col)}}``."""
        import torch

        halves = split_knees(np.shape(image))
        grids = np.stack([_normalise(half_image_on_grid(image, s, spacing_mm, self.grid_mm, self.grid_shape))
                          for s in sides])
        self.network.eval()
        with torch.no_grad():
            out = self.network(torch.from_numpy(grids[:, None])).numpy().reshape(len(sides), -1, 2)
        out = out * np.array(self.grid_shape, dtype=float)
        result = {}
        for index, side in enumerate(sides):
            points = _grid_to_image(out[index], halves[side], spacing_mm, self.grid_mm)
            result[side] = {name: (float(r), float(c)) for name, (r, c) in zip(self.names, points)}
        return result


def _training_arrays(images, spacings, sides, points_rc, grid_mm, grid_shape):
    grids, targets = [], []
    for image, spacing, side, points in zip(images, spacings, sides, points_rc):
        half = split_knees(np.shape(image))[_check_side(side)]
        grids.append(_normalise(half_image_on_grid(image, side, spacing, grid_mm, grid_shape)))
        targets.append(_image_to_grid(points, half, spacing, grid_mm) / np.array(grid_shape, dtype=float))
    return np.stack(grids).astype(np.float32), np.stack(targets).astype(np.float32)


def train_knee_localiser(images, spacings, sides, points_rc, grid_mm: float = 3.0,
                         grid_shape: tuple[int, int] = (64, 64), n_epochs: int = 30, batch_size: int = 32,
                         lr: float = 3e-3, max_shift_px: int = 8, seed: int = 0,
                         progress: bool = True, subjects=None) -> KneeLocaliser:
    """Train the landmark CNN on knees with ground-truth landmarks.

    Parameters
    ----------
    images : sequence of 2-D arrays
        Bilateral radiographs (one entry per knee: the same image appears once per side).
    spacings : sequence of float
        Pixel spacing (mm) of each image.
    sides : sequence of {"R", "L"}
    points_rc : array, shape (n, n_points, 2)
        Ground-truth (row, col) in bilateral-image pixels, ordered as :data:`LOCALISER_LANDMARKS`.
    grid_mm, grid_shape : float, tuple
        The localiser's input grid (default 3 mm, 64 x 64 = 192 mm square per half).
    n_epochs, batch_size, lr : training settings (Adam, cosine-annealed LR).
    max_shift_px : int
        Random translation of image and targets (grid pixels) in training.
    seed : int
    progress : bool
    subjects : sequence, optional
        Subject of each knee, kept as ``trained_on`` so that crops of these subjects
        can be refused later (:meth:`KneeLocaliser.check_unseen`).

    Returns
    -------
    KneeLocaliser
    """
    import torch
    from tqdm.auto import tqdm

    points_rc = np.asarray(points_rc, dtype=float)
    if points_rc.ndim != 3 or points_rc.shape[2] != 2 or len(points_rc) != len(images):
        raise ValueError(f"points_rc must be (n_knees, n_points, 2) with n_knees={len(images)}, "
                         f"got {points_rc.shape}")
    grids, targets = _training_arrays(images, spacings, sides, points_rc, grid_mm, grid_shape)
    generator = torch.Generator().manual_seed(int(seed))
    torch.manual_seed(int(seed))
    network = LandmarkCNN(points_rc.shape[1])
    optimiser = torch.optim.Adam(network.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=max(1, n_epochs))
    x_all, y_all = torch.from_numpy(grids[:, None]), torch.from_numpy(targets)
    size = torch.tensor(grid_shape, dtype=torch.float32)
    history = []
    for epoch in tqdm(range(n_epochs), desc="knee localiser", disable=not progress):
        network.train()
        order = torch.randperm(len(x_all), generator=generator)
        losses = []
        for start in range(0, len(order), batch_size):
            index = order[start:start + batch_size]
            x, y = x_all[index].clone(), y_all[index].clone()
            if max_shift_px:
                shifts = torch.randint(-max_shift_px, max_shift_px + 1, (len(index), 2), generator=generator)
                for i, (dr, dc) in enumerate(shifts.tolist()):
                    x[i] = torch.roll(x[i], shifts=(dr, dc), dims=(1, 2))
                    y[i] = y[i] + torch.tensor([dr, dc], dtype=torch.float32) / size
            loss = torch.nn.functional.mse_loss(network(x).view_as(y), y)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(float(loss.detach()) * len(index))
        scheduler.step()
        history.append({"epoch": epoch + 1, "train_mse": sum(losses) / len(order)})
    network.eval()
    return KneeLocaliser(network, float(grid_mm), tuple(grid_shape), LOCALISER_LANDMARKS[:points_rc.shape[1]],
                         pd.DataFrame(history), frozenset(map(str, subjects)) if subjects is not None else frozenset())


def localisation_errors_mm(localiser: KneeLocaliser, images, spacings, sides, points_rc) -> pd.DataFrame:
    """Euclidean error (mm) of every predicted landmark and of the plateau angle (degrees).

    Returns one row per knee with ``<name>_error_mm`` and ``plateau_angle_error_deg``.
    """
    rows = []
    names = localiser.names
    for image, spacing, side, truth in zip(images, spacings, sides, np.asarray(points_rc, dtype=float)):
        predicted = localiser.predict(image, spacing, sides=(side,))[side]
        predicted = np.array([predicted[name] for name in names])
        row = {f"{name}_error_mm": float(np.hypot(*(predicted[i] - truth[i])) * spacing)
               for i, name in enumerate(names)}
        if {"plateau_lateral", "plateau_medial"} <= set(names):
            lat, med = names.index("plateau_lateral"), names.index("plateau_medial")
            row["plateau_angle_error_deg"] = abs(
                plateau_angle_deg(predicted[lat], predicted[med], side)
                - plateau_angle_deg(truth[lat], truth[med], side))
        rows.append(row)
    return pd.DataFrame(rows)


def plateau_angle_deg(plateau_lateral_rc, plateau_medial_rc, side: str) -> float:
    """Inclination of the lateral->medial plateau line in the (unmirrored) image, degrees.

    Positive when the line runs downwards towards the image's right (row grows with
    column). Rotating the crop by this angle makes the plateau horizontal.
    """
    lateral = np.asarray(plateau_lateral_rc, dtype=float)
    medial = np.asarray(plateau_medial_rc, dtype=float)
    left, right = (lateral, medial) if _check_side(side) == "R" else (medial, lateral)
    d_row, d_col = right - left
    return float(np.degrees(np.arctan2(d_row, d_col)))


def knee_crop_matrix(centre_rc, angle_deg: float, side: str, pixel_spacing_mm: float,
                     size_mm: float = 140.0, out_size: int = 310, mirror_side: str | None = "L"
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Affine map from crop pixels (row, col) to radiograph pixels: ``input = M @ out + offset``.

    The crop is ``size_mm`` square around ``centre_rc``, its rows run along the plateau
    (rotated by ``angle_deg``), and a knee on ``mirror_side`` is mirrored left-right.
    """
    if pixel_spacing_mm <= 0 or size_mm <= 0 or out_size < 1:
        raise ValueError(f"need positive spacing/size, got {pixel_spacing_mm}, {size_mm}, {out_size}")
    scale = size_mm / out_size / pixel_spacing_mm        # input pixels per output pixel
    theta = np.radians(angle_deg)
    # unit vectors (row, col) of the crop's row and column axes in the input image
    col_axis = np.array([np.sin(theta), np.cos(theta)])
    row_axis = np.array([np.cos(theta), -np.sin(theta)])
    if mirror_side is not None and _check_side(side) == _check_side(mirror_side):
        col_axis = -col_axis
    matrix = scale * np.column_stack([row_axis, col_axis])
    half = (out_size - 1) / 2.0
    offset = np.asarray(centre_rc, dtype=float) - matrix @ np.array([half, half])
    return matrix, offset


def knee_crop(image: np.ndarray, centre_rc, angle_deg: float, side: str, pixel_spacing_mm: float,
              size_mm: float = 140.0, out_size: int = 310, mirror_side: str | None = "L") -> np.ndarray:
    """140 mm knee crop, plateau horizontal, mirrored side, in one bilinear resampling (float32).

    Paper 004 resamples to 310 x 310 px (0.45 mm). Pixels outside the radiograph take
    its minimum. Anti-aliasing: when shrinking by more than 1.5x the image is first
    Gaussian-smoothed (sigma = 0.4 x the shrink factor).
    """
    from scipy import ndimage

    image = np.asarray(image, dtype=np.float32)
    matrix, offset = knee_crop_matrix(centre_rc, angle_deg, side, pixel_spacing_mm, size_mm, out_size,
                                      mirror_side)
    shrink = size_mm / out_size / pixel_spacing_mm
    if shrink > 1.5:
        image = ndimage.gaussian_filter(image, sigma=0.4 * shrink)
    return ndimage.affine_transform(image, matrix, offset=offset, output_shape=(out_size, out_size),
                                    order=1, mode="constant", cval=float(image.min()))


def crop_points(points_rc, centre_rc, angle_deg: float, side: str, pixel_spacing_mm: float,
                size_mm: float = 140.0, out_size: int = 310, mirror_side: str | None = "L") -> np.ndarray:
    """Radiograph pixel coordinates -> coordinates in the crop of :func:`knee_crop`."""
    matrix, offset = knee_crop_matrix(centre_rc, angle_deg, side, pixel_spacing_mm, size_mm, out_size,
                                      mirror_side)
    points = np.atleast_2d(np.asarray(points_rc, dtype=float))
    return (points - offset) @ np.linalg.inv(matrix).T


class LocaliserLeakError(ValueError):
    """A knee to be cropped belongs to a subject that trained the localiser."""


def localisation_split(knees: pd.DataFrame, fraction: float = 0.2, seed: int = 0,
                       subject_column: str = "participant_id", grade_column: str = "kl_grade"
                       ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Hold out a share of subjects to train the localiser only: ``(localisation, grading)`` knees.

    Paper 004 used BoneFinder, trained on other data than its OAI/MOST grading sets.
    The stand-in localiser is trained here on a fixed, grade-stratified share of the
    training cohort's subjects (all their knees and visits) that is then left out of
    the grading cross-validation, so every fold is cropped by a localiser that saw
    none of its subjects, and all folds alike.

    Parameters
    ----------
    knees : DataFrame
        One row per knee image, with ``subject_column`` and ``grade_column``.
    fraction : float
        Share of subjects for localisation, in (0, 1).
    seed : int

    Returns
    -------
    localisation, grading : DataFrame
        Disjoint in subjects; together all rows of ``knees``.

    Raises
    ------
    ValueError
        If ``fraction`` is outside (0, 1) or either part would have no subject.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"localisation fraction must lie in (0, 1), got {fraction}")
    # a plain Series: the table's attrs (e.g. a QC DataFrame) must not ride along, since
    # pandas compares attrs when it formats or concatenates a long Series
    subjects = pd.Series(knees[subject_column].astype(str).to_numpy(), index=knees.index,
                         name=subject_column)
    n_subjects = subjects.nunique()
    n_localisation = int(round(fraction * n_subjects))
    if not 1 <= n_localisation < n_subjects:
        raise ValueError(f"a localisation fraction of {fraction} of {n_subjects} subjects leaves a part empty")
    # systematic sample of the subjects sorted by highest grade (random order within a grade):
    # exactly n_localisation subjects, every grade represented in proportion
    highest = knees.groupby(subjects)[grade_column].max()
    rng = np.random.default_rng(seed)
    order = highest.index.to_numpy()[rng.permutation(len(highest))]
    order = order[np.argsort(highest.loc[order].to_numpy(), kind="stable")]
    positions = np.floor((np.arange(n_localisation) + rng.uniform()) * n_subjects / n_localisation).astype(int)
    held = set(order[positions])
    in_localisation = subjects.isin(held).to_numpy()
    return (knees[in_localisation].reset_index(drop=True), knees[~in_localisation].reset_index(drop=True))


def _knee_points(knees: pd.DataFrame, names) -> np.ndarray:
    return np.stack([knees[[f"{n}_row", f"{n}_col"]].to_numpy(float) for n in names], axis=1)


def fit_localiser(knees: pd.DataFrame, radiographs: dict, n_epochs: int = 30, seed: int = 0,
                  progress: bool = True, subject_column: str = "participant_id") -> KneeLocaliser:
    """Train the localiser on the knees of a table (its localisation split).

    Parameters
    ----------
    knees : DataFrame
        ``path``, ``side``, ``<landmark>_row/_col`` for :data:`LOCALISER_LANDMARKS`, and
        ``subject_column`` (remembered as ``trained_on``).
    radiographs : dict
        ``path`` -> (pixels, pixel spacing mm), as read by
        :func:`kneelib.data.knee_radiographs.read_radiographs`.
    """
    return train_knee_localiser([radiographs[p][0] for p in knees["path"]],
                                [radiographs[p][1] for p in knees["path"]], knees["side"].tolist(),
                                _knee_points(knees, LOCALISER_LANDMARKS), n_epochs=n_epochs, seed=seed,
                                progress=progress, subjects=knees[subject_column].astype(str).tolist())


def localisation_error_table(localiser: KneeLocaliser, knees: pd.DataFrame, radiographs: dict,
                             subject_column: str = "participant_id") -> pd.DataFrame:
    """Per-knee localisation errors (mm, degrees) on knees the localiser never saw.

    Returns the knee keys (``subject_column``, ``visit_month``, ``side`` where present)
    beside the columns of :func:`localisation_errors_mm`.

    Raises
    ------
    LocaliserLeakError
        If a knee's subject trained the localiser (its error would be optimistic).
    """
    localiser.check_unseen(knees[subject_column])
    errors = localisation_errors_mm(localiser, [radiographs[p][0] for p in knees["path"]],
                                    [radiographs[p][1] for p in knees["path"]], knees["side"].tolist(),
                                    _knee_points(knees, localiser.names))
    keys = [c for c in (subject_column, "visit_month", "side") if c in knees.columns]
    return pd.concat([knees[keys].reset_index(drop=True), errors], axis=1)


#: Format tag of a saved localiser file (:func:`save_knee_localiser`).
LOCALISER_FORMAT = "kneelib-knee-localiser-1"


class LocaliserFileError(ValueError):
    """A knee-localiser file that cannot be used: not a localiser, or another version."""

    def __init__(self, path, reason: str):
        self.path, self.reason = path, reason
        super().__init__(f"{path}: {reason}")


def save_knee_localiser(localiser: KneeLocaliser, path) -> "Path":
    """Write a localiser (weights, grid, landmark names, training subjects) to one ``.pt`` file.

    Written by :func:`kneelib.cache.atomic_write`, so a reader never sees half a file.
    """
    import torch

    from kneelib.cache import atomic_write

    payload = {"format": LOCALISER_FORMAT, "state_dict": localiser.network.state_dict(),
               "grid_mm": float(localiser.grid_mm), "grid_shape": list(localiser.grid_shape),
               "names": list(localiser.names), "trained_on": sorted(localiser.trained_on),
               "history": localiser.history.to_dict(orient="list")}
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_knee_localiser(path) -> KneeLocaliser:
    """Read a file written by :func:`save_knee_localiser`.

    Raises
    ------
    FileNotFoundError
        If there is no such file.
    LocaliserFileError
        If it is not a localiser file of this version.
    """
    from pathlib import Path

    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"knee localiser file not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 -- any unpickling failure is an unusable file
        raise LocaliserFileError(path, f"not a readable torch file ({type(err).__name__}: {err})") from err
    if not isinstance(payload, dict) or payload.get("format") != LOCALISER_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise LocaliserFileError(path, f"not a knee localiser of this version: format {found!r}, "
                                       f"this kneelib reads {LOCALISER_FORMAT!r}")
    network = LandmarkCNN(len(payload["names"]))
    network.load_state_dict(payload["state_dict"])
    network.eval()
    return KneeLocaliser(network, float(payload["grid_mm"]), tuple(payload["grid_shape"]), tuple(payload["names"]),
                         pd.DataFrame(payload["history"]), frozenset(payload["trained_on"]))
