"""kneelib.data: read the OAI layout (real download or the synthetic default).

Modules
-------
errors        typed errors naming the file/variable and the reason
oai_layout    OAI conventions shared with the synthetic writers (visits, missing codes, names)
variables     the study-variable -> OAI name configuration ``oai_variables.yaml``
clinical      pipe-delimited / SAS clinical tables and the tidy per-knee table
image_index   ``contents.csv`` and series lookup
dicom         DICOM series -> :class:`Volume` (affine, laterality, echoes),
              left/right mirroring to a common orientation
radiograph    the one radiograph reader (DICOM with LUTs and calibrated spacing, PNG/JPEG)
cache         NIfTI cache of series volumes keyed on the files' content
cohort        cohort-level loading with a QC exclusion table
chen_kl       the public Chen 2019 KL radiograph set (separate module)

The writers that produce this layout live in :mod:`kneelib.synth.oai_writer`.
"""
from kneelib.data.cache import load_series_cached, load_volume, save_volume
from kneelib.data.clinical import (
    chronic_pain,
    find_table,
    knee_table,
    read_clinical_table,
    read_oai_table,
    widespread_pain,
)
from kneelib.data.cohort import QCLog, SeriesRequest, iter_series_volumes, requests_for
from kneelib.data.dicom import Volume, group_series_folders, read_dicom_series, to_common_orientation
from kneelib.data.errors import (
    AmbiguousSeriesError,
    DicomReadError,
    KneelibDataError,
    KneelibDataWarning,
    LateralityError,
    MissingTableError,
    MissingVariableError,
    MixedGeometryError,
    SliceGapError,
    RadiographReadError,
    TableFormatError,
    UnknownSeriesError,
)
from kneelib.data.image_index import ImageIndex, read_image_index
from kneelib.data.radiograph import Radiograph, read_knee_image, read_radiograph
from kneelib.data.variables import StudyVariable, load_variable_config

__all__ = [
    "load_series_cached", "load_volume", "save_volume",
    "chronic_pain", "find_table", "knee_table", "read_clinical_table", "read_oai_table", "widespread_pain",
    "QCLog", "SeriesRequest", "iter_series_volumes", "requests_for",
    "Radiograph", "Volume", "group_series_folders", "read_dicom_series", "read_radiograph",
    "read_knee_image", "to_common_orientation",
    "AmbiguousSeriesError", "DicomReadError", "KneelibDataError", "LateralityError", "MissingTableError",
    "MissingVariableError", "MixedGeometryError", "SliceGapError", "RadiographReadError", "KneelibDataWarning",
    "TableFormatError", "UnknownSeriesError",
    "ImageIndex", "read_image_index", "StudyVariable", "load_variable_config",
]
