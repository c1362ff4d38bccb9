"""Slice ordering, rigid registration to a template, 105 mm crop and resize (paper 000, Fig. 1B).

Paper 000, Methods "Image pre-processing": slices are indexed relative to the centre
(PCL) slice, "+" lateral and "-" medial; "for each 2D MRI slice of the knee for a
subject, we performed Euclidean transformation to align the slice with respect to a
template"; a 294 x 294 px (105 x 105 mm) region holding femur, tibia and patella is
cropped from every registered slice and resized to 224 x 224; 11 medial + centre +
11 lateral slices are kept per knee.

Steps here:

* :func:`order_slices_medial_to_lateral` -- mirroring: sort a knee's sagittal slices
  so that the index grows from medial to lateral in *both* knees (a right knee's
  lateral side is the patient's right, a left knee's the patient's left). With a
  :class:`kneelib.data.dicom.Volume`, :func:`sagittal_slices` uses the data layer's
  :func:`~kneelib.data.dicom.to_common_orientation`, which already mirrors left knees.
* :func:`select_slices` -- ``n_each_side`` slices each side of the centre, every
  ``step``-th slice (``step > 1`` spreads a reduced slice count over the same width of
  knee as the paper's 23 consecutive slices).
* :func:`register_slice` -- SimpleITK rigid 2D (``Euler2DTransform``: rotation +
  translation) registration of one slice to the template slice, Mattes mutual
  information, multi-resolution regular-step gradient descent.
* :func:`resample_square` -- one resampling through the transform onto a square
  grid of ``crop_mm`` around the template's joint centre at ``output_size`` pixels
  (crop and resize in one interpolation).
* :func:`preprocess_knee` -- all of the above for one knee, with per-slice QC values.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

__all__ = [
    "order_slices_medial_to_lateral",
    "sagittal_slices",
    "select_slices",
    "SliceRegistration",
    "register_slice",
    "resample_square",
    "KneePreprocessResult",
    "preprocess_knee",
]

#: Side length of the paper's crop (294 px x 0.357 mm).
PAPER_CROP_MM = 105.0


def order_slices_medial_to_lateral(slices, x_positions_mm, side: str) -> tuple[np.ndarray, np.ndarray]:
    """Sort sagittal slices so that the index grows from medial to lateral.

    Parameters
    ----------
    slices : array-like, shape (n_slices, rows, cols)
    x_positions_mm : array-like, shape (n_slices,)
        Slice position along the patient's left-right axis in DICOM LPS (``+x`` =
        patient's left), e.g. ``ImagePositionPatient[0]``.
    side : {"R", "L"}
        The knee. Lateral is ``-x`` (patient's right) for a right knee and ``+x`` for
        a left knee, so sorting mirrors one knee relative to the other.

    Returns
    -------
    ordered : ndarray, shape (n_slices, rows, cols)
    order : ndarray of int
        ``ordered[i] = slices[order[i]]``.
    """
    slices = np.asarray(slices)
    x = np.asarray(x_positions_mm, dtype=float)
    if slices.ndim != 3 or len(x) != len(slices):
        raise ValueError(f"need slices (n, rows, cols) and n x positions; got {slices.shape} and {x.shape}")
    side = str(side).strip().upper()[:1]
    if side not in ("R", "L"):
        raise ValueError(f"side must be 'R' or 'L', got {side!r}")
    order = np.argsort(-x if side == "R" else x, kind="stable")
    return slices[order], order


def sagittal_slices(volume) -> tuple[np.ndarray, tuple[float, float]]:
    """Slices of a sagittal :class:`~kneelib.data.dicom.Volume`, medial -> lateral.

    Uses :func:`kneelib.data.dicom.to_common_orientation` (RAS+, left knees mirrored so
    that lateral is ``+x`` in both knees) unless the volume is already in it.

    Returns
    -------
    slices : ndarray, shape (n_slices, rows, cols)
        Rows superior -> inferior, columns anterior -> posterior.
    pixel_spacing_mm : (float, float)
        (row, column) spacing.
    """
    from kneelib.data.dicom import to_common_orientation

    if "common_orientation" not in volume.metadata:
        volume = to_common_orientation(volume)
    data = volume.array if volume.array.ndim == 3 else volume.array[..., 0]
    # axes (x: medial->lateral, y: posterior->anterior, z: inferior->superior)
    slices = np.transpose(data, (0, 2, 1))[:, ::-1, ::-1]
    spacing = volume.spacing_mm
    return np.ascontiguousarray(slices), (spacing[2], spacing[1])


def select_slices(n_total: int, center_index: int, n_each_side: int, step: int = 1) -> np.ndarray:
    """Indices ``center - n*step, ..., center, ..., center + n*step`` (medial -> lateral).

    Raises
    ------
    ValueError
        When the stack is too short on one side (record the knee in the QC list).
    """
    offsets = np.arange(-n_each_side, n_each_side + 1) * int(step)
    indices = center_index + offsets
    if indices[0] < 0 or indices[-1] >= n_total:
        raise ValueError(
            f"centre slice {center_index} of {n_total} leaves too few slices for "
            f"{n_each_side} each side at step {step}")
    return indices


def _image(array: np.ndarray, spacing_mm: tuple[float, float]) -> sitk.Image:
    image = sitk.GetImageFromArray(np.asarray(array, dtype=np.float32))
    image.SetSpacing((float(spacing_mm[1]), float(spacing_mm[0])))  # SimpleITK: (x = column, y = row)
    return image


@dataclass(frozen=True)
class SliceRegistration:
    """Rigid transform of one slice onto the template.

    Attributes
    ----------
    transform : SimpleITK.Euler2DTransform
        Maps template (fixed) physical points to the moving slice.
    angle_deg, shift_mm : float, (float, float)
        Rotation and translation (x = columns, y = rows) of that transform.
    metric : float
        Final Mattes mutual information (lower is better; for QC).
    """

    transform: sitk.Euler2DTransform
    angle_deg: float
    shift_mm: tuple[float, float]
    metric: float


def register_slice(moving, template, spacing_mm: tuple[float, float] = (1.0, 1.0),
                   template_spacing_mm: tuple[float, float] | None = None, iterations: int = 50,
                   shrink_factors: tuple[int, ...] = (4, 2), seed: int = 0,
                   n_threads: int = 1) -> SliceRegistration:
    """Euclidean (rigid) 2D registration of ``moving`` to ``template`` (paper 000, Fig. 1B).

    Parameters
    ----------
    moving, template : array-like, shape (rows, cols)
    spacing_mm, template_spacing_mm : (float, float)
        (row, column) pixel spacing of each image (template defaults to moving's).
    iterations : int
        Gradient-descent iterations per resolution level.
    shrink_factors : tuple of int
        Multi-resolution pyramid (smoothing sigmas of half the factor, in pixels). The
        default stops at half resolution (about 25 ms per 144 x 144 slice, within
        0.1 degree and 0.2 mm of full resolution on synthetic slices); add a level 1
        for full resolution at 224 px output.
    seed : int
        Seeds the metric's random sampling.
    n_threads : int
        ITK threads. With more than one the metric's partial sums arrive in varying
        order and the result is no longer bit-reproducible; 1 (default) gives the same
        transform for the same seed. Parallelise over knees instead.

    Returns
    -------
    SliceRegistration
    """
    previous_threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(int(n_threads))  # pyramid filters too
    try:
        return _register(moving, template, spacing_mm, template_spacing_mm, iterations, shrink_factors, seed,
                         n_threads)
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(previous_threads)


def _register(moving, template, spacing_mm, template_spacing_mm, iterations, shrink_factors, seed,
              n_threads) -> SliceRegistration:
    fixed = _image(template, template_spacing_mm or spacing_mm)
    moving_image = _image(moving, spacing_mm)
    initial = sitk.CenteredTransformInitializer(fixed, moving_image, sitk.Euler2DTransform(),
                                                sitk.CenteredTransformInitializerFilter.MOMENTS)
    method = sitk.ImageRegistrationMethod()
    method.SetNumberOfThreads(int(n_threads))
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(0.25, int(seed) + 1)  # ITK reads seed 0 as "wall clock"
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=1e-3,
                                                    numberOfIterations=iterations,
                                                    gradientMagnitudeTolerance=1e-6)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel(list(shrink_factors))
    method.SetSmoothingSigmasPerLevel([f / 2 for f in shrink_factors])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    method.SetInitialTransform(initial, inPlace=False)
    transform = method.Execute(fixed, moving_image)
    if isinstance(transform, sitk.CompositeTransform):
        transform = transform.GetNthTransform(0)
    euler = sitk.Euler2DTransform(transform)
    return SliceRegistration(euler, float(np.rad2deg(euler.GetAngle())),
                             tuple(float(v) for v in euler.GetTranslation()),
                             float(method.GetMetricValue()))


def resample_square(moving, spacing_mm: tuple[float, float], transform: sitk.Transform | None,
                    center_mm: tuple[float, float], crop_mm: float = PAPER_CROP_MM,
                    output_size: int = 224, nearest: bool = False) -> np.ndarray:
    """Crop a ``crop_mm`` square around ``center_mm`` (template space) and resize, in one resampling.

    Parameters
    ----------
    moving : array-like, shape (rows, cols)
    spacing_mm : (float, float)
        (row, column) spacing of ``moving``.
    transform : SimpleITK transform or None
        Template -> moving (from :func:`register_slice`); ``None`` = identity.
    center_mm : (float, float)
        (row, column) of the joint centre in template physical coordinates (mm from
        the first pixel's centre).
    crop_mm : float
        Side of the square (105 mm in the paper).
    output_size : int
        Pixels a side (224 in the paper).
    nearest : bool
        Nearest-neighbour interpolation, for label images and lesion masks (which
        then keep their integer values).

    Returns
    -------
    ndarray, shape (output_size, output_size), float32
        Outside the moving image: 0.
    """
    if crop_mm <= 0 or output_size < 1:
        raise ValueError(f"crop_mm and output_size must be positive; got {crop_mm}, {output_size}")
    image = _image(moving, spacing_mm)
    step = crop_mm / output_size
    origin = (center_mm[1] - crop_mm / 2 + step / 2, center_mm[0] - crop_mm / 2 + step / 2)
    out = sitk.Resample(image, [output_size, output_size], transform or sitk.Transform(2, sitk.sitkIdentity),
                        sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear, origin, (step, step),
                        (1.0, 0.0, 0.0, 1.0), 0.0, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out)


@dataclass(frozen=True)
class KneePreprocessResult:
    """One knee after :func:`preprocess_knee`.

    Attributes
    ----------
    images : ndarray, shape (2 * n_each_side + 1, output_size, output_size), float32
        Registered, cropped and resized slices, medial -> lateral.
    slice_indices : ndarray of int
        Slices of the input stack used.
    qc : pandas.DataFrame
        One row per slice: index, offset from centre, angle_deg, shift_x_mm,
        shift_y_mm, metric.
    labels : dict of str to ndarray
        Each of ``label_volumes`` carried through the same transforms (nearest
        neighbour), shape like ``images``, uint16 -- e.g. the synthetic tissue labels and
        lesion masks, for scoring CAM hot spots.
    """

    images: np.ndarray
    slice_indices: np.ndarray
    qc: "object"
    labels: dict = field(default_factory=dict)


def preprocess_knee(slices, spacing_mm: tuple[float, float], center_index: int, template_slices,
                    template_spacing_mm: tuple[float, float], template_center_mm: tuple[float, float],
                    template_center_index: int, n_each_side: int = 11, step: int = 1,
                    crop_mm: float = PAPER_CROP_MM, output_size: int = 224, per_slice: bool = True,
                    iterations: int = 50, shrink_factors: tuple[int, ...] = (4, 2),
                    seed: int = 0, label_volumes: dict | None = None) -> KneePreprocessResult:
    """Register, crop and resize the slices of one knee around its centre slice (Fig. 1).

    Parameters
    ----------
    slices : array-like, shape (n_slices, rows, cols)
        Ordered medial -> lateral (:func:`order_slices_medial_to_lateral` /
        :func:`sagittal_slices`).
    spacing_mm : (float, float)
        (row, column) spacing.
    center_index : int
        Centre (PCL) slice, e.g. from
        :func:`kneelib.preprocess.center_slice.detect_pcl_center_slice`.
    template_slices : array-like, shape (n_template, rows_t, cols_t)
        The template knee, ordered the same way; slice ``template_center_index + o``
        is the template of this knee's slice ``center_index + o``.
    template_spacing_mm, template_center_mm, template_center_index
        The template's spacing, joint centre (row, column, mm) and centre slice.
    n_each_side, step : int
        Slices kept each side of the centre (11 and 1 in the paper).
    crop_mm, output_size
        As in :func:`resample_square`.
    per_slice : bool
        Register every slice (the paper). ``False`` registers the centre slice only
        and applies its transform to all slices (faster; a deviation).
    iterations, shrink_factors, seed
        As in :func:`register_slice`.
    label_volumes : dict of str to array-like, or None
        Label images on the grid of ``slices`` (same shape), resampled with the same
        transforms by nearest neighbour.

    Returns
    -------
    KneePreprocessResult
    """
    import pandas as pd

    slices = np.asarray(slices, dtype=np.float32)
    template_slices = np.asarray(template_slices, dtype=np.float32)
    if slices.ndim != 3 or template_slices.ndim != 3:
        raise ValueError("slices and template_slices must be (n_slices, rows, cols) stacks")
    indices = select_slices(len(slices), center_index, n_each_side, step)
    template_indices = select_slices(len(template_slices), template_center_index, n_each_side, step)
    label_volumes = {name: np.asarray(v) for name, v in (label_volumes or {}).items()}
    for name, volume in label_volumes.items():
        if volume.shape != slices.shape:
            raise ValueError(f"label volume {name!r} has shape {volume.shape}, slices have {slices.shape}")
    images, rows = [], []
    labels: dict[str, list] = {name: [] for name in label_volumes}
    shared = None
    if not per_slice:
        shared = register_slice(slices[center_index], template_slices[template_center_index], spacing_mm,
                                template_spacing_mm, iterations=iterations, shrink_factors=shrink_factors,
                                seed=seed)
    for offset, (k, t) in enumerate(zip(indices, template_indices)):
        result = shared or register_slice(slices[k], template_slices[t], spacing_mm, template_spacing_mm,
                                          iterations=iterations, shrink_factors=shrink_factors, seed=seed)
        images.append(resample_square(slices[k], spacing_mm, result.transform, template_center_mm,
                                      crop_mm, output_size))
        for name, volume in label_volumes.items():
            labels[name].append(resample_square(volume[k].astype(np.float32), spacing_mm, result.transform,
                                                template_center_mm, crop_mm, output_size, nearest=True))
        rows.append({"slice_index": int(k), "offset": int(offset - n_each_side) * step,
                     "angle_deg": result.angle_deg, "shift_x_mm": result.shift_mm[0],
                     "shift_y_mm": result.shift_mm[1], "metric": result.metric})
    return KneePreprocessResult(np.stack(images).astype(np.float32), indices, pd.DataFrame(rows),
                                {name: np.stack(v).astype(np.uint16) for name, v in labels.items()})
