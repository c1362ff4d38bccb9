"""kneelib.qmri: quantitative MRI biomarkers of paper 001 (Morales et al.), stage modules.

- :mod:`kneelib.qmri.relaxometry`: the three-parameter mono-exponential T2 fit of every
  voxel at once (vectorised Levenberg-Marquardt) and deep/superficial/total cartilage T2.
- :mod:`kneelib.qmri.thickness`: cartilage thickness per sagittal slice (skeleton + distance
  transform, doubled) and an independent 3-D thickness along bone-surface normals.
- :mod:`kneelib.qmri.surface`: bone/cartilage meshes (marching cubes, outward normals), the
  shaft crop, bone shape, and the projection of cartilage thickness and per-voxel maps onto the
  bone surface in a 0.729 mm cylinder along each normal (a voxel lookup, no KD-tree).
- :mod:`kneelib.qmri.spherical`: 224 x 224 spherical maps of per-vertex values and the inverse
  map from a 2-D map (e.g. a Grad-CAM) back onto the surface vertices.
- :mod:`kneelib.qmri.cohort_maps`: every knee's maps from the cohort's files, cached under a key of
  the files' bytes (the chronic-pain chapter's inputs).
- :mod:`kneelib.qmri.correspondence`: rigid ICP between bone surfaces and values carried to a
  reference surface (Fig. 1's group maps).

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
