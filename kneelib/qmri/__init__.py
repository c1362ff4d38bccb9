"""kneelib.qmri: quantitative MRI biomarkers of paper 001 (Morales et al.), stage modules.

- :mod:`kneelib.qmri.relaxometry`: the three-parameter mono-exponential T2 fit of every
  voxel at once (vectorised Levenberg-Marquardt) and deep/superficial/total cartilage T2.
- :mod:`kneelib.qmri.thickness`: cartilage thickness per sagittal slice (skeleton + distance
  transform, doubled) and an independent 3-D thickness along bone-surface normals.
- :mod:`kneelib.qmri.surface`: marching-cubes bone and cartilage meshes with outward normals,
  shafts cropped to the mediolateral width, bone shape, and thickness/T2 projected onto the bone
  surface in a cylinder (0.729 mm) along each normal.
- :mod:`kneelib.qmri.spherical`: 224 x 224 spherical maps of per-vertex values and the inverse
  map from a 2-D map (e.g. a Grad-CAM) back onto the surface vertices.

Bad input raises :class:`QmriInputError` (a :class:`kneelib.data.errors.KneelibDataError`),
so callers that skip "bad data" catch one class.
"""
from __future__ import annotations

from kneelib.data.errors import KneelibDataError

__all__ = ["QmriInputError"]


class QmriInputError(KneelibDataError):
    """Input arrays of a qMRI stage cannot be used (shapes, echo times, masks), with the reason."""

    def __init__(self, reason: str, *, what: str = "qMRI input"):
        super().__init__(f"{what}: {reason}", reason=reason)
