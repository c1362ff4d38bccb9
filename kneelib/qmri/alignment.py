"""Align the MSME T2 series to the DESS through the DICOM patient coordinates (paper 001, "Relaxometry").

Paper 001 (Morales et al.), Methods, "Relaxometry": the cartilage T2 is fitted on the
multi-echo spin-echo (MSME) echoes masked by the cartilage segmented on the 3-D DESS. The two
series are acquired in one session without moving the knee, so their voxels are related by the
scanner (patient) coordinates each DICOM file carries (``ImagePositionPatient``,
``ImageOrientationPatient``, ``PixelSpacing``, slice step), which :class:`kneelib.data.dicom.Volume`
keeps as its RAS affine. No intensity registration is done (the paper describes none).

Each volume becomes a SimpleITK image with the DICOM geometry (:func:`volume_to_sitk`: ITK works
in LPS, so the RAS affine is flipped in x and y; the array ``(columns, rows, slices)`` is ITK's
``(x, y, z)``), and :func:`resample_to_grid` resamples one onto the other's grid: linear
interpolation for images, nearest neighbour for labels, one echo at a time for a 4-D series.
:func:`align_msme_to_dess` is the composition for the T2 stage: every echo of the MSME on the
DESS grid, with the mask of DESS voxels the MSME actually covers (the 2-D MSME has fewer, thicker
slices with gaps: outside its slab the echoes are not data, they are the fill value).

Geometry checks: a non-orthonormal direction (a sheared affine), non-finite values, or two series
whose frames of reference differ (``FrameOfReferenceUID`` in the metadata, when both carry one)
raise :class:`kneelib.qmri.QmriInputError`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from kneelib.data.dicom import LPS_TO_RAS, Volume
from kneelib.qmri import QmriInputError

__all__ = ["AlignedEchoes", "volume_to_sitk", "grid_of", "resample_to_grid", "align_msme_to_dess"]

_INTERPOLATORS = {"linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor, "bspline": sitk.sitkBSpline}


def _geometry(affine: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(origin, spacing, direction) in LPS from a RAS voxel-to-world affine."""
    affine = np.asarray(affine, dtype=float)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise QmriInputError(f"needs a finite 4 x 4 affine, got shape {affine.shape}", what=what)
    lps = LPS_TO_RAS @ affine  # the same diagonal flips RAS back to LPS
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    if np.any(spacing <= 0):
        raise QmriInputError(f"the affine has a zero-length axis (spacing {spacing.tolist()})", what=what)
    direction = lps[:3, :3] / spacing
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
        raise QmriInputError("the affine's axes are not orthogonal (sheared geometry); ITK needs an "
                             "orthonormal direction", what=what)
    return lps[:3, 3], spacing, direction


def volume_to_sitk(volume: Volume, echo: int | None = None, *, array: np.ndarray | None = None,
                   what: str = "volume") -> sitk.Image:
    """A SimpleITK image of one 3-D volume (or one echo) with its DICOM patient geometry.

    Parameters
    ----------
    volume : Volume
        Its affine gives origin, spacing and direction (RAS, converted to ITK's LPS).
    echo : int, optional
        For a 4-D volume, the echo index.
    array : ndarray, optional
        Use this 3-D array ``(columns, rows, slices)`` on the volume's grid instead of the
        volume's pixels (e.g. a label volume segmented on it).
    what : str
        Name of the input in error messages.

    Raises
    ------
    QmriInputError
        4-D without an echo, echo out of range, array not on the grid, bad affine.
    """
    data = np.asarray(volume.array if array is None else array)
    if data.ndim == 4:
        if echo is None or not 0 <= echo < data.shape[3]:
            raise QmriInputError(f"4-D volume with {data.shape[3]} echoes: choose an echo index, got {echo}",
                                 what=what)
        data = data[..., echo]
    if data.ndim != 3:
        raise QmriInputError(f"needs a 3-D array, got shape {data.shape}", what=what)
    if data.shape != tuple(volume.array.shape[:3]):
        raise QmriInputError(f"array shape {data.shape} is not the volume's grid {tuple(volume.array.shape[:3])}",
                             what=what)
    origin, spacing, direction = _geometry(volume.affine, what)
    if data.dtype == bool:
        data = data.astype(np.uint8)
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(data, (2, 1, 0))))  # ITK (x, y, z)
    image.SetOrigin(tuple(float(v) for v in origin))
    image.SetSpacing(tuple(float(v) for v in spacing))
    image.SetDirection(tuple(float(v) for v in direction.reshape(-1)))
    return image


def grid_of(volume: Volume, what: str = "reference") -> sitk.Image:
    """An empty SimpleITK image carrying only ``volume``'s grid (size, origin, spacing, direction)."""
    origin, spacing, direction = _geometry(volume.affine, what)
    size = [int(n) for n in volume.array.shape[:3]]
    image = sitk.Image(size, sitk.sitkUInt8)
    image.SetOrigin(tuple(float(v) for v in origin))
    image.SetSpacing(tuple(float(v) for v in spacing))
    image.SetDirection(tuple(float(v) for v in direction.reshape(-1)))
    return image


def _check_frames(moving: Volume, reference: Volume) -> None:
    a = (moving.metadata or {}).get("FrameOfReferenceUID")
    b = (reference.metadata or {}).get("FrameOfReferenceUID")
    if a and b and a != b:
        raise QmriInputError(f"the series have different frames of reference ({a} vs {b}): their patient "
                             "coordinates do not relate their voxels", what="alignment")


def resample_to_grid(moving: Volume, reference: Volume, *, interpolation: str = "linear",
                     array: np.ndarray | None = None, fill_value: float = 0.0) -> np.ndarray:
    """Resample ``moving`` onto ``reference``'s voxel grid through the patient coordinates.

    Parameters
    ----------
    moving : Volume
        3-D or 4-D (echoes on the last axis, resampled one by one).
    reference : Volume
        Gives the output grid.
    interpolation : {"linear", "nearest", "bspline"}
        ``"linear"`` for images, ``"nearest"`` for labels (codes stay codes).
    array : ndarray, optional
        Resample this array (3-D or 4-D on ``moving``'s grid) instead of ``moving.array``.
    fill_value : float
        Value of reference voxels outside the moving volume.

    Returns
    -------
    ndarray
        ``reference.array.shape[:3]`` (plus the echo axis for 4-D input); float32 for
        linear/bspline, the input dtype for nearest.

    Raises
    ------
    QmriInputError
        Unknown interpolation, bad geometry, different frames of reference.
    """
    if interpolation not in _INTERPOLATORS:
        raise QmriInputError(f"interpolation must be one of {sorted(_INTERPOLATORS)}, got {interpolation!r}",
                             what="alignment")
    _check_frames(moving, reference)
    data = np.asarray(moving.array if array is None else array)
    target = grid_of(reference)
    echoes = [None] if data.ndim == 3 else list(range(data.shape[3]))
    out = []
    for echo in echoes:
        source = data if echo is None else data[..., echo]
        if interpolation != "nearest":
            source = source.astype(np.float32)
        image = volume_to_sitk(moving, array=source, what="moving volume")
        resampled = sitk.Resample(image, target, sitk.Transform(), _INTERPOLATORS[interpolation],
                                  float(fill_value), image.GetPixelID())
        out.append(np.transpose(sitk.GetArrayFromImage(resampled), (2, 1, 0)))
    return out[0] if echo is None else np.stack(out, axis=-1)


@dataclass(frozen=True)
class AlignedEchoes:
    """MSME echoes on the DESS grid (paper 001, "Relaxometry").

    Attributes
    ----------
    echoes : ndarray, float32, ``(columns, rows, slices, n_echoes)``
        On the DESS grid.
    echo_times_ms : tuple of float
    covered : ndarray of bool, ``(columns, rows, slices)``
        DESS voxels inside the MSME's field of view and slab (only these are data).
    """

    echoes: np.ndarray
    echo_times_ms: tuple[float, ...]
    covered: np.ndarray


def align_msme_to_dess(msme: Volume, dess: Volume, *, interpolation: str = "linear") -> AlignedEchoes:
    """Every echo of an MSME series resampled onto the DESS grid, with the covered-voxel mask.

    Paper 001, Methods "Relaxometry" (T2 of the cartilage segmented on the DESS).

    Parameters
    ----------
    msme : Volume
        4-D multi-echo series (echoes on the last axis) with its echo times.
    dess : Volume
        The reference grid (the segmentation's).
    interpolation : {"linear", "bspline"}

    Returns
    -------
    AlignedEchoes

    Raises
    ------
    QmriInputError
        MSME not 4-D, echo times missing or not one per echo, nearest interpolation asked for an
        image, bad geometry.
    """
    if msme.array.ndim != 4:
        raise QmriInputError(f"the MSME series must be 4-D (echoes last), got shape {msme.array.shape}",
                             what="MSME alignment")
    if len(msme.echo_times_ms) != msme.array.shape[3]:
        raise QmriInputError(f"{len(msme.echo_times_ms)} echo times for {msme.array.shape[3]} echoes",
                             what="MSME alignment")
    if interpolation == "nearest":
        raise QmriInputError("echo images are resampled with linear or bspline interpolation; nearest is for "
                             "labels", what="MSME alignment")
    echoes = resample_to_grid(msme, dess, interpolation=interpolation).astype(np.float32)
    ones = np.ones(msme.array.shape[:3], dtype=np.uint8)
    covered = resample_to_grid(msme, dess, interpolation="nearest", array=ones).astype(bool)
    return AlignedEchoes(echoes=echoes, echo_times_ms=tuple(float(t) for t in msme.echo_times_ms), covered=covered)
