"""kneelib.qmri: quantitative MRI biomarkers of paper 001 (Morales et al.), stage modules.

- :mod:`kneelib.qmri.relaxometry`: the three-parameter mono-exponential T2 fit of every
  voxel at once (vectorised Levenberg-Marquardt) and deep/superficial/total cartilage T2.
- :mod:`kneelib.qmri.thickness`: cartilage thickness per sagittal slice (skeleton + distance
  transform, doubled) and an independent 3-D thickness along bone-surface normals.
- (planned) ``kneelib.qmri.surface``: bone/cartilage meshes and the projection onto the bone
  surface; a first version is in the history (commit dc55844), kept out of the tree until a
  crash of its KD-tree query inside the full test suite is understood.
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
