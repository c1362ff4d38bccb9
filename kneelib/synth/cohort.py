"""Generate a synthetic cohort in the exact OAI on-disk layout, with its ground truth (issue #3, part 2).

``generate_cohort`` draws every participant from the causal model
(:mod:`kneelib.synth.causal`), builds each knee's anatomy (:mod:`kneelib.synth.anatomy`),
renders the OAI MRI series and the bilateral PA fixed-flexion radiograph
(:mod:`kneelib.synth.mri`, :mod:`kneelib.synth.radiograph`, protocols of
:mod:`kneelib.synth.protocols`) and writes them with :mod:`kneelib.synth.oai_writer`::

    <root>/
      contents.csv                       image index (Folder, ParticipantID, StudyDate, Barcode, ...)
      Enrollees.txt                      ID, P02SEX, P02RACE, V00SITE
      AllClinical00.txt, AllClinical01.txt   age, BMI, height, weight, pain (WOMAC, frequent,
                                         past-12-month pain and its months), widespread-pain items
      kXR_SQ_BU00.txt, kXR_SQ_BU01.txt   per knee (ID, SIDE): KL, OARSI osteophytes, JSN, sclerosis
      kXR_QJSW_Duryea00.txt, ...01.txt   per knee: minimum medial JSW (V00MCMJSW, V01MCMJSW)
      0.C.2/<ID>/<StudyDate>/<series folder>/001 ...   baseline MRI series (DICOM; which
                                         series: ``mr_series``, see :data:`BOOK_MR_SERIES`)
      1.C.2/<ID>/...                     12-month MRI
      0.E.1/<ID>/<StudyDate>/<series folder>/001      baseline radiograph
      1.E.1/<ID>/...                     12-month radiograph
      ground_truth/                      what the causal model planted (see its README.md)

The layout follows the OAI image releases: one folder per series named by an eight-digit
number, listed in ``contents.csv``; the Barcode column is the exam barcode shared by the
series of one knee exam.

Streaming and determinism
-------------------------
Subjects are rendered by :func:`kneelib.executor.map_tasks` (one subject per task, written
and freed before the next: joblib processes on this machine, or the workers of a
dask.distributed cluster), so memory does not grow with the cohort. Each subject is
written into ``<root>/.work/<ID>`` and moved into place, then a per-subject record is
saved under ``<root>/.done/``; an interrupted run resumes at the first subject without
a record. The tables and the image index are written at the end from the records,
sorted, and a completion marker with the hash of the generation parameters makes a
second call return at once. Every random draw derives from the cohort seed through
``numpy.random.SeedSequence``; DICOM UIDs derive from the seeds; NIfTI files are gzipped
with mtime 0: the same seed and preset give byte-identical files.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kneelib.config import cache_root
from kneelib.data.oai_layout import SERIES_DESCRIPTIONS, SIDE_CODE, study_visit_words, visit_prefix
from kneelib.synth import causal
from kneelib.synth.spec import LESION_MASKS, OSTEOPHYTE_SITES, TISSUE_LABELS, KneeSpec, SubjectSpec

__all__ = ["CohortPreset", "PRESETS", "generate_cohort", "cohort_parameters", "default_out_dir",
           "GENERATOR_VERSION", "MR_SERIES_SETS", "BOOK_MR_SERIES", "default_mr_series", "written_mr_series",
           "expected_mr_descriptions_by_visit"]

#: Bump when the files a given parameter set produces change (invalidates cached cohorts).
GENERATOR_VERSION = "1"

#: Marker written last: the cohort under this root is complete.
COMPLETE_MARKER = ".kneelib_synth_complete.json"
#: Written first: the parameters the (possibly partial) cohort under this root was made with.
PARAMS_FILE = ".kneelib_synth_params.json"

#: OAI image folders by (modality, visit month).
VISIT_FOLDERS: dict[tuple[str, int], str] = {
    ("MR", 0): "0.C.2", ("MR", 12): "1.C.2", ("XR", 0): "0.E.1", ("XR", 12): "1.E.1",
}
_VISITS = (0, 12)
_SIDE_WORD = {"R": "RIGHT", "L": "LEFT"}
#: MRI series of each knee, in acquisition order (the T2 map exists for the right knee only).
_MR_SERIES_KEYS = ("sag_iw_tse", "cor_iw_tse", "sag_dess", "sag_t2_map")

#: Which MR series a cohort writes: ``"all"`` (the OAI knee protocol at both visits) or
#: ``"book"`` (what the book's chapters read at ``smoke`` and ``default``, issue 15: disk).
MR_SERIES_SETS = ("book", "all")
#: The ``"book"`` set, by variant and visit month: (series key, side) pairs. Who reads them:
#: baseline SAG IW TSE of both knees (Siamese pain, paper 000; the cohort chapter's gallery),
#: baseline COR IW TSE of both knees (JSN progression slice features, paper 002), the right
#: knee's SAG 3D DESS and MSME T2 map at both visits (qMRI chapters, paper 001; the cohort
#: chapter's synthetic-vs-real figures and MRI realism). The left DESS and the 12-month IW
#: TSE series are read by no chapter at these parameters; the independent 'most' cohort is
#: read for its radiographs only (OARSI grading, paper 004). Radiographs are always written.
BOOK_MR_SERIES: dict[str, dict[int, tuple[tuple[str, str], ...]]] = {
    "oai": {0: (("sag_iw_tse", "R"), ("sag_iw_tse", "L"), ("cor_iw_tse", "R"), ("cor_iw_tse", "L"),
                ("sag_dess", "R"), ("sag_t2_map", "R")),
            12: (("sag_dess", "R"), ("sag_t2_map", "R"))},
    "most": {0: (), 12: ()},
}


@dataclass(frozen=True)
class CohortPreset:
    """Size and resolution of a cohort.

    Attributes
    ----------
    name : str
        ``smoke``, ``default`` or ``paper``; also the protocol preset asked of
        :mod:`kneelib.synth.protocols` (matrix sizes, slice counts).
    n_subjects : int
        Participants (OAI baseline: 4,796).
    anatomy_voxel_mm : float
        Voxel size of the millimetre-space anatomy the series are rendered from.
    """

    name: str
    n_subjects: int
    anatomy_voxel_mm: float


PRESETS: dict[str, CohortPreset] = {
    "smoke": CohortPreset("smoke", n_subjects=8, anatomy_voxel_mm=2.0),
    "default": CohortPreset("default", n_subjects=300, anatomy_voxel_mm=1.25),
    "paper": CohortPreset("paper", n_subjects=4796, anatomy_voxel_mm=0.4),
}

_SEX_LABELS = {1: "Male", 2: "Female"}
_RACE_LABELS = {0: "Other Non-white", 1: "White or Caucasian", 2: "Black or African American", 3: "Asian"}
_YES_NO = {0: "No", 1: "Yes"}


# --------------------------------------------------------------------------------------------
# parameters, paths, markers
# --------------------------------------------------------------------------------------------
def default_mr_series(preset: str) -> str:
    """The MR series set a preset writes unless told: ``"all"`` for ``paper``, else ``"book"``."""
    return "all" if preset == "paper" else "book"


def written_mr_series(mr_series: str, variant: str = "oai") -> dict[int, tuple[tuple[str, str], ...]]:
    """(series key, side) pairs written at each visit month for an MR series set.

    ``"all"``: every series of :data:`_MR_SERIES_KEYS` for both knees (the MSME T2 map for
    the right knee only, as in the OAI); ``"book"``: :data:`BOOK_MR_SERIES` of ``variant``.
    """
    if mr_series not in MR_SERIES_SETS:
        raise ValueError(f"unknown mr_series {mr_series!r}; expected one of {list(MR_SERIES_SETS)}")
    if mr_series == "book":
        return dict(BOOK_MR_SERIES[variant])
    every = tuple((key, side) for side in ("R", "L") for key in _MR_SERIES_KEYS
                  if not (key == "sag_t2_map" and side != "R"))
    return {visit: every for visit in _VISITS}


def expected_mr_descriptions_by_visit(cohort_root: str | Path) -> dict[int, list[str]] | None:
    """The MR series descriptions a synthetic cohort was asked to write, per visit month.

    Read from the cohort's parameter file; ``None`` for a folder that is not a kneelib
    synthetic cohort (a real OAI download: every series of the protocol is expected).
    Cohorts made before the series sets existed wrote every series.
    """
    params_file = Path(cohort_root) / PARAMS_FILE
    if not params_file.is_file():
        return None
    parameters = json.loads(params_file.read_text())["parameters"]
    written = written_mr_series(parameters.get("mr_series", "all"), parameters.get("variant", "oai"))
    return {visit: [SERIES_DESCRIPTIONS[key].format(side=_SIDE_WORD[side]) for key, side in pairs]
            for visit, pairs in written.items()}


def cohort_parameters(preset: str = "default", seed: int = 0, n_subjects: int | None = None,
                      variant: str = "oai", dicom_compression: str = "jpeg-ls",
                      mr_series: str | None = None) -> dict[str, Any]:
    """Everything that determines the files of a cohort (hashed into the completion marker).

    ``mr_series``: :data:`MR_SERIES_SETS` (default :func:`default_mr_series` of the preset).
    """
    from kneelib.synth.oai_writer import DICOM_COMPRESSIONS

    if dicom_compression not in DICOM_COMPRESSIONS:
        raise ValueError(f"unknown dicom_compression {dicom_compression!r}; expected one of "
                         f"{sorted(DICOM_COMPRESSIONS)}")
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {sorted(PRESETS)}")
    if variant not in causal.VARIANT_SEED_OFFSET:
        raise ValueError(f"unknown variant {variant!r}; expected one of {sorted(causal.VARIANT_SEED_OFFSET)}")
    mr_series = default_mr_series(preset) if mr_series is None else mr_series
    written_mr_series(mr_series, variant)  # validates
    chosen = PRESETS[preset]
    n = chosen.n_subjects if n_subjects is None else int(n_subjects)
    if n < 1:
        raise ValueError(f"n_subjects must be >= 1, got {n}")
    return {
        "generator_version": GENERATOR_VERSION,
        "generator_code": _generator_code_hash(),
        "preset": asdict(chosen),
        "variant": variant,
        "seed": int(seed),
        "n_subjects": n,
        "dicom_compression": dicom_compression,
        "mr_series": mr_series,
        "effects": {name: value for name, value, _ in causal.DEFAULT_EFFECTS.documented()},
    }


def _code_without_docs(source: str) -> str:
    """The syntax tree of ``source`` with docstrings dropped (comments never reach the tree)."""
    import ast

    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)


#: Modules of :mod:`kneelib.synth` that read a generated cohort's ground truth and write nothing.
_READER_MODULES = frozenset({"ground_truth.py", "realism_stats.py", "derive_template.py"})


def _generator_code_hash() -> str:
    """Hash of the generator's code: a cached cohort made by other code is not reused.

    Docstrings and comments are left out, so documentation edits keep caches valid.
    Modules that only *read* a generated cohort, or derive the template offline
    (:data:`_READER_MODULES`), are not part of the generator and are left out too; the
    template file itself (``kneelib/synth/data/knee_template.npz``) is hashed.
    """
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        if path.name in _READER_MODULES:
            continue
        digest.update(path.name.encode())
        digest.update(_code_without_docs(path.read_text()).encode())
    # the anatomical template is data the generator builds every knee from
    from kneelib.synth.template import TEMPLATE_PATH
    digest.update(TEMPLATE_PATH.read_bytes())
    return digest.hexdigest()[:16]


def _parameters_hash(parameters: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parameters, sort_keys=True, default=list).encode()).hexdigest()


def default_out_dir(preset: str = "default", seed: int = 0, n_subjects: int | None = None,
                    variant: str = "oai", dicom_compression: str = "jpeg-ls", mr_series: str | None = None) -> Path:
    """``cache_root()/synthetic/<variant>_<preset>_seed<seed>[_n<n_subjects>][_uncompressed][_<mr_series>]``.

    The MR series set is named only when it is not the preset's default.
    """
    name = f"{variant}_{preset}_seed{int(seed)}"
    if n_subjects is not None and n_subjects != PRESETS[preset].n_subjects:
        name += f"_n{int(n_subjects)}"
    if dicom_compression == "none":
        name += "_uncompressed"
    if mr_series is not None and mr_series != default_mr_series(preset):
        name += f"_{mr_series}series"
    return cache_root() / "synthetic" / name


def _write_json_atomic(path: Path, payload: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, sort_keys=True, indent=1, default=_json_default))
    os.replace(tmp, path)


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, (np.bool_,)):
        return bool(value)
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"cannot serialise {type(value).__name__} to JSON")


# --------------------------------------------------------------------------------------------
# per-subject identifiers (dates, barcodes, folders): deterministic, no wall clock
# --------------------------------------------------------------------------------------------
def _study_date(subject: SubjectSpec, visit_month: int) -> str:
    """Baseline between February 2004 and May 2006 (OAI enrolment), 12 months later +/- weeks."""
    rng = np.random.default_rng(np.random.SeedSequence(subject.seed, spawn_key=(7,)))
    baseline = date(2004, 2, 1) + timedelta(days=int(rng.integers(0, 850)))
    follow_up_days = 365 + int(rng.integers(-30, 31))
    day = baseline if visit_month == 0 else baseline + timedelta(days=follow_up_days)
    return day.strftime("%Y%m%d")


def _barcode(index: int, visit_month: int, exam: int) -> str:
    """Twelve-digit exam barcode (OAI style ``0166...``), unique per subject, visit and exam."""
    return f"0166{index:05d}{visit_month // 12:1d}{exam:02d}"


def _series_folder_number(index: int, visit_month: int, number: int) -> str:
    """Eight-digit series folder name, unique in the cohort."""
    return f"{1 + index:05d}{visit_month // 12:1d}{number:02d}"


# --------------------------------------------------------------------------------------------
# NIfTI ground truth (deterministic gzip)
# --------------------------------------------------------------------------------------------
def _reader_slice_order(geometry) -> np.ndarray:
    """Slice order of the reader: ascending position along the slice normal (row x column)."""
    orientation = np.asarray(geometry.image_orientation_patient, dtype=float)
    normal = np.cross(orientation[:3], orientation[3:])
    positions = np.asarray(geometry.image_positions_patient, dtype=float)
    return np.argsort(positions @ normal, kind="stable")


def _affine_from_geometry(geometry, order: np.ndarray | None = None) -> np.ndarray:
    """RAS voxel-to-world affine (voxel axes column, row, slice) of a :class:`SliceGeometry`.

    ``order`` reorders the slices first (see :func:`_reader_slice_order`).
    """
    from kneelib.synth.oai_writer import LPS_TO_RAS

    orientation = np.asarray(geometry.image_orientation_patient, dtype=float)
    row_cosine, column_cosine = orientation[:3], orientation[3:]
    row_spacing, column_spacing = (float(v) for v in geometry.pixel_spacing_mm)
    positions = np.asarray(geometry.image_positions_patient, dtype=float)
    if order is not None:
        positions = positions[order]
    if len(positions) > 1:
        slice_step = (positions[-1] - positions[0]) / (len(positions) - 1)
    else:
        slice_step = np.cross(row_cosine, column_cosine) * float(geometry.slice_thickness_mm)
    affine_lps = np.eye(4)
    affine_lps[:3, 0] = row_cosine * column_spacing
    affine_lps[:3, 1] = column_cosine * row_spacing
    affine_lps[:3, 2] = slice_step
    affine_lps[:3, 3] = positions[0]
    return LPS_TO_RAS @ affine_lps


def write_nifti_deterministic(array: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    """Write ``array`` (voxel axes column, row, slice) as ``.nii.gz`` with gzip mtime 0 (level 3)."""
    import nibabel as nib

    image = nib.Nifti1Image(np.asarray(array), np.asarray(affine, dtype=float))
    image.header.set_xyzt_units("mm")
    image.set_qform(np.asarray(affine, dtype=float), code=1)
    image.set_sform(np.asarray(affine, dtype=float), code=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(image.to_bytes(), compresslevel=3, mtime=0))  # 3x faster than 6
    return path


def _to_nifti_axes(volume: np.ndarray) -> np.ndarray:
    """(slices, rows, columns) as rendered -> (columns, rows, slices) as NIfTI voxel axes."""
    return np.ascontiguousarray(np.transpose(np.asarray(volume), (2, 1, 0)))


def pcl_center_slice(labels: np.ndarray) -> int:
    """Index of the sagittal slice with the most PCL voxels (paper 000's centre slice).

    ``labels`` is (slices, rows, columns); returns -1 when no slice shows the PCL.
    """
    counts = (np.asarray(labels) == TISSUE_LABELS["pcl"]).reshape(labels.shape[0], -1).sum(axis=1)
    return int(np.argmax(counts)) if counts.max() > 0 else -1


# --------------------------------------------------------------------------------------------
# one subject
# --------------------------------------------------------------------------------------------
def _subject_task(args: tuple) -> dict:
    """Render and write one subject into its work folder, move it into place, return its record."""
    index, root, parameters = args
    root = Path(root)
    preset = PRESETS[parameters["preset"]["name"]]
    variant, seed = parameters["variant"], parameters["seed"]
    subject = causal.sample_subject(index, seed, variant)
    knees = causal.sample_knees(subject)
    done = root / ".done" / f"{subject.participant_id}.json"
    if done.is_file():
        return json.loads(done.read_text())
    work = root / ".work" / subject.participant_id
    targets = [Path(folder) / subject.participant_id for folder in VISIT_FOLDERS.values()] + [
        Path("ground_truth") / "series" / subject.participant_id]
    for relative in targets:  # leftovers of an interrupted run
        shutil.rmtree(root / relative, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    record = _render_subject(index, subject, knees, work, preset, variant,
                             parameters.get("dicom_compression", "none"), parameters.get("mr_series", "all"))
    for relative in targets:
        source = work / relative
        if source.exists():
            (root / relative).parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, root / relative)
    shutil.rmtree(work, ignore_errors=True)
    _write_json_atomic(done, record)
    return json.loads(json.dumps(record, sort_keys=True, default=_json_default))


def _render_subject(index: int, subject: SubjectSpec, knees: list[KneeSpec], work: Path,
                    preset: CohortPreset, variant: str, dicom_compression: str = "none",
                    mr_series: str = "all") -> dict:
    """Render the series of one subject into ``work`` (root-relative layout); return its record.

    ``dicom_compression``: pixel storage of every DICOM file
    (:data:`kneelib.synth.oai_writer.DICOM_COMPRESSIONS`). ``mr_series``: which MR series
    (:func:`written_mr_series`); a series left out is not rendered, and every written file
    is byte-identical to the one the full protocol writes (series numbers, folder names,
    UIDs and random streams do not depend on what else is written).
    """
    from kneelib.synth import anatomy, mri, protocols, radiograph
    from kneelib.synth.oai_writer import write_dicom_series, write_radiograph

    by_key = {(k.side, k.visit_month): k for k in knees}
    written = {visit: set(pairs) for visit, pairs in written_mr_series(mr_series, variant).items()}
    contents: list[dict] = []
    series_rows: list[dict] = []
    landmark_rows: list[dict] = []
    for visit_month in _VISITS:
        study_date = _study_date(subject, visit_month)
        visit_words = study_visit_words(visit_month)
        models = {}
        series_number = 0
        mr_protocols = protocols.mr_protocols(preset.name, site=variant)
        for exam, side in enumerate(("R", "L")):
            knee = by_key[(side, visit_month)]
            model = anatomy.build_knee(knee, preset.anatomy_voxel_mm)
            models[side] = model
            study_description = f"OAI^MR^{visit_words}^{_SIDE_WORD[side]}"
            barcode = _barcode(index, visit_month, exam)
            for key_number, key in enumerate(_MR_SERIES_KEYS):
                protocol = mr_protocols[key]
                if protocol.right_only and side != "R":
                    continue
                series_number += 1
                if (key, side) not in written[visit_month]:
                    continue
                description = SERIES_DESCRIPTIONS[key].format(side=_SIDE_WORD[side])
                rng = np.random.default_rng(np.random.SeedSequence(knee.seed, spawn_key=(key_number,)))
                rendered = mri.render_series(model, protocol, rng)
                folder_name = _series_folder_number(index, visit_month, series_number)
                relative = f"{VISIT_FOLDERS[('MR', visit_month)]}/{subject.participant_id}/{study_date}/{folder_name}"
                header = {
                    **dict(rendered.header),
                    "PatientID": subject.participant_id, "StudyDate": study_date,
                    "StudyDescription": study_description, "SeriesDescription": description,
                    "SeriesNumber": series_number, "Laterality": side,
                    "PatientSex": "F" if subject.sex == 2 else "M",
                    "PatientAge": f"{int(subject.age_years):03d}Y",
                }
                write_dicom_series(work / relative, rendered.pixels, rendered.geometry, header,
                                   uid_seed=f"{variant}-{knee.seed}-{key}", compression=dicom_compression)
                contents.append({"Folder": relative, "ParticipantID": subject.participant_id,
                                 "StudyDate": study_date, "Barcode": barcode,
                                 "StudyDescription": study_description, "SeriesDescription": description})
                series_rows.append(_write_series_truth(work, subject, knee, key, description, relative,
                                                       rendered))
                del rendered
        # the bilateral PA fixed-flexion radiograph of this visit
        xr_protocol = protocols.xr_protocol(preset.name, site=variant)
        rng = np.random.default_rng(np.random.SeedSequence(by_key[("R", visit_month)].seed, spawn_key=(99,)))
        film = radiograph.render_radiograph(models["R"], models["L"], xr_protocol, rng)
        folder_name = _series_folder_number(index, visit_month, 90)
        relative = f"{VISIT_FOLDERS[('XR', visit_month)]}/{subject.participant_id}/{study_date}/{folder_name}"
        description = SERIES_DESCRIPTIONS["xr_pa_knee"]
        study_description = f"OAI^XR^{visit_words}^BILATERAL"
        write_radiograph(work / relative / "001", film.pixels, film.pixel_spacing_mm,
                         {**dict(film.header), "PatientID": subject.participant_id, "StudyDate": study_date,
                          "StudyDescription": study_description, "SeriesDescription": description,
                          "SeriesNumber": 1, "PatientSex": "F" if subject.sex == 2 else "M"},
                         uid_seed=f"{variant}-{subject.seed}-xr-{visit_month}", compression=dicom_compression)
        contents.append({"Folder": relative, "ParticipantID": subject.participant_id, "StudyDate": study_date,
                         "Barcode": _barcode(index, visit_month, 9), "StudyDescription": study_description,
                         "SeriesDescription": description})
        for side in ("R", "L"):
            for name, (row, col) in sorted(film.landmarks_px[side].items()):
                landmark_rows.append({"participant_id": subject.participant_id, "visit_month": visit_month,
                                      "folder": relative, "side": side, "landmark": name,
                                      "row_px": round(float(row), 3), "col_px": round(float(col), 3),
                                      "pixel_spacing_mm": float(film.pixel_spacing_mm),
                                      "beam_tilt_deg": round(float(film.beam_tilt_deg[side]), 3)})
        del film, models
    return {
        "index": index,
        "subject": asdict(subject),
        "knees": [k.as_record() for k in knees],
        "contents": contents,
        "series": series_rows,
        "landmarks": landmark_rows,
    }


#: Columns of ``ground_truth/series.csv`` (one row per written MR series).
SERIES_TRUTH_COLUMNS = ("participant_id", "side", "visit_month", "series_key", "series_description", "folder",
                        "labels_path", "lesion_masks", "pcl_center_slice", "pcl_most_voxels_slice", "n_slices",
                        "artefact")


def _write_series_truth(work: Path, subject: SubjectSpec, knee: KneeSpec, key: str, description: str,
                        relative: str, rendered) -> dict:
    """Tissue labels and non-empty lesion masks of one series, on that series' grid."""
    truth = Path("ground_truth") / "series" / subject.participant_id / relative.split("/", 1)[0] / \
        relative.rsplit("/", 1)[1]
    # The reader (kneelib.data.read_dicom_series) sorts slices by their position along the
    # slice normal; the ground truth is written in that same order so that a label volume and
    # the DICOM volume share voxel indices and affine.
    order = _reader_slice_order(rendered.geometry)
    affine = _affine_from_geometry(rendered.geometry, order)
    labels = np.asarray(rendered.labels)[order]
    write_nifti_deterministic(_to_nifti_axes(labels.astype(np.uint8)), affine, work / truth / "labels.nii.gz")
    present = []
    for name in LESION_MASKS:
        mask = rendered.lesion_masks.get(name) if rendered.lesion_masks is not None else None
        if mask is None or not np.any(mask):
            continue
        write_nifti_deterministic(_to_nifti_axes(np.asarray(mask, dtype=np.uint8)[order]), affine,
                                  work / truth / f"lesion_{name}.nii.gz")
        present.append(name)
    rendered_pcl = rendered.pcl_slice_index
    if rendered_pcl is not None:
        rendered_pcl = int(np.flatnonzero(order == int(rendered_pcl))[0])
    return {
        "participant_id": subject.participant_id, "side": knee.side, "visit_month": knee.visit_month,
        "series_key": key, "series_description": description, "folder": relative,
        "labels_path": (truth / "labels.nii.gz").as_posix(),
        "lesion_masks": ";".join(present),
        "pcl_center_slice": (rendered_pcl if rendered_pcl is not None
                             else pcl_center_slice(labels)) if key.startswith("sag") else -1,
        "pcl_most_voxels_slice": pcl_center_slice(labels) if key.startswith("sag") else -1,
        "n_slices": int(labels.shape[0]), "artefact": knee.artefact,
    }


# --------------------------------------------------------------------------------------------
# cohort tables
# --------------------------------------------------------------------------------------------
def _widespread_items(subject: SubjectSpec, knees: dict, visit_month: int) -> dict[str, int]:
    """Items of the widespread-pain definition (paper 001) consistent with ``widespread_pain``.

    Widespread pain needs pain above the waist, below the waist and axially on more than
    half of the past 30 days; a participant without it lacks at least one of the three.
    Names follow ``kneelib/data/oai_variables.yaml``.
    """
    vv = visit_prefix(visit_month)
    rng = np.random.default_rng(np.random.SeedSequence(subject.seed, spawn_key=(11, visit_month)))
    knee_30d = {side: int(knees[(side, visit_month)]["frequent_pain"]) for side in ("R", "L")}
    if subject.widespread_pain:
        above, below, axial = True, True, True
    else:
        above, axial = bool(rng.random() < 0.3), bool(rng.random() < 0.35)
        below = bool(max(knee_30d.values()) or rng.random() < 0.25)
        if above and below and axial:
            above = False
    above_items = [f"{vv}OJPN{s}{j}" for s in ("R", "L") for j in ("S", "E", "W", "H")]
    items = {name: 0 for name in above_items}
    if above:
        items[above_items[int(rng.integers(len(above_items)))]] = 1
    hips = {f"{vv}HPR30CV": 0, f"{vv}HPL30CV": 0}
    feet = {f"{vv}OJPNRA": 0, f"{vv}OJPNLA": 0, f"{vv}OJPNRF": 0, f"{vv}OJPNLF": 0}
    knees_30 = {f"{vv}KPR30CV": knee_30d["R"], f"{vv}KPL30CV": knee_30d["L"]}
    if below and not any(knees_30.values()):
        pool = list(hips) + list(feet)
        choice = pool[int(rng.integers(len(pool)))]
        (hips if choice in hips else feet)[choice] = 1
    if not below:
        knees_30 = {k: 0 for k in knees_30}
    items.update(hips)
    items.update(knees_30)
    items.update(feet)
    items[f"{vv}BP30"] = int(axial and rng.random() < 0.8)
    items[f"{vv}OJPNNK"] = int(axial and not items[f"{vv}BP30"])
    return items


def _clinical_tables(records: list[dict]) -> dict[str, pd.DataFrame]:
    """The OAI clinical tables of a cohort from its per-subject records (rows sorted by ID)."""
    enrollees, clinical = [], {0: [], 12: []}
    xr = {0: [], 12: []}
    jsw = {0: [], 12: []}
    for record in sorted(records, key=lambda r: r["subject"]["participant_id"]):
        s = record["subject"]
        subject = SubjectSpec(**s)
        pid = subject.participant_id
        rng = np.random.default_rng(np.random.SeedSequence(subject.seed, spawn_key=(13,)))
        height_mm = round(1690.0 * subject.height_scale + float(rng.normal(0, 25)), 1)
        weight_kg = round(subject.bmi_kg_m2 * (height_mm / 1000.0) ** 2, 1)
        enrollees.append({"ID": pid, "P02SEX": subject.sex, "P02RACE": subject.race,
                          "V00SITE": "ABCDE"[int(rng.integers(5))]})
        knees = {(k["side"], k["visit_month"]): k for k in record["knees"]}
        for visit_month in _VISITS:
            vv = visit_prefix(visit_month)
            row: dict[str, Any] = {"ID": pid}
            if visit_month == 0:
                row.update({"V00AGE": int(subject.age_years), "P01BMI": subject.bmi_kg_m2,
                            "P01HEIGHT": height_mm, "P01WEIGHT": weight_kg,
                            "P01KPNREV": int(knees[("R", 0)]["frequent_pain"]),
                            "P01KPNLEV": int(knees[("L", 0)]["frequent_pain"])})
            else:
                row.update({"V01AGE": int(subject.age_years) + 1})
            for side, letter in (("R", "R"), ("L", "L")):
                knee = knees[(side, visit_month)]
                row[f"{vv}WOMKP{letter}"] = knee["womac_pain"]
                row[f"{vv}KPN{letter}12"] = int(knee["any_pain_past_12m"])
                row[f"{vv}KPN{letter}12M"] = int(knee["pain_months_past_12m"])
            row.update(_widespread_items(subject, knees, visit_month))
            clinical[visit_month].append(row)
            for side in ("R", "L"):
                knee = knees[(side, visit_month)]
                xr[visit_month].append({
                    "ID": pid, "SIDE": SIDE_CODE[side], "READPRJ": 15,
                    f"{vv}XRKL": knee["kl_grade"],
                    **{f"{vv}XROS{site}": knee[f"osteophyte_grade_{site}"] for site in OSTEOPHYTE_SITES},
                    f"{vv}XRJSL": knee["jsn_grade_lateral"], f"{vv}XRJSM": knee["jsn_grade_medial"],
                    f"{vv}XRSCFL": knee["sclerosis_lateral"], f"{vv}XRSCFM": knee["sclerosis_medial"],
                    f"{vv}XRSCTL": knee["sclerosis_lateral"], f"{vv}XRSCTM": knee["sclerosis_medial"],
                })
                jsw[visit_month].append({"ID": pid, "SIDE": SIDE_CODE[side],
                                         f"{vv}MCMJSW": knee["jsw_medial_measured_mm"]})
    tables = {"Enrollees": pd.DataFrame(enrollees)}
    for visit_month in _VISITS:
        code = visit_prefix(visit_month)[1:]
        tables[f"AllClinical{code}"] = pd.DataFrame(clinical[visit_month])
        tables[f"kXR_SQ_BU{code}"] = pd.DataFrame(xr[visit_month]).sort_values(["ID", "SIDE"], kind="stable")
        tables[f"kXR_QJSW_Duryea{code}"] = pd.DataFrame(jsw[visit_month]).sort_values(["ID", "SIDE"], kind="stable")
    return tables


def _value_labels() -> dict[str, dict[int, str]]:
    labels: dict[str, dict[int, str]] = {"P02SEX": _SEX_LABELS, "P02RACE": _RACE_LABELS,
                                         "P01KPNREV": _YES_NO, "P01KPNLEV": _YES_NO}
    for visit_month in _VISITS:
        vv = visit_prefix(visit_month)
        labels.update({f"{vv}KPNR12": _YES_NO, f"{vv}KPNL12": _YES_NO})
    return labels


def _write_tables_and_truth(root: Path, records: list[dict], parameters: dict) -> None:
    from kneelib.synth.oai_writer import write_image_index, write_oai_table

    labels = _value_labels()
    for stem, table in _clinical_tables(records).items():
        write_oai_table(table.reset_index(drop=True), root / f"{stem}.txt", value_labels=labels)
    contents = sorted((row for r in records for row in r["contents"]), key=lambda row: row["Folder"])
    write_image_index(contents, root / "contents.csv")
    truth = root / "ground_truth"
    truth.mkdir(exist_ok=True)
    ordered = sorted(records, key=lambda r: r["subject"]["participant_id"])
    pd.DataFrame([r["subject"] for r in ordered]).to_csv(truth / "subjects.csv", index=False, lineterminator="\n")
    knees = pd.DataFrame([k for r in ordered for k in r["knees"]])
    knees = knees.sort_values(["participant_id", "visit_month", "side"], ascending=[True, True, False], kind="stable")
    knees.to_csv(truth / "knees.csv", index=False, lineterminator="\n")
    series = pd.DataFrame([s for r in ordered for s in r["series"]], columns=SERIES_TRUTH_COLUMNS)
    if len(series):
        series = series.sort_values(["folder"], kind="stable")
    series.to_csv(truth / "series.csv", index=False, lineterminator="\n")
    landmarks = pd.DataFrame([row for r in ordered for row in r["landmarks"]])
    landmarks.to_csv(truth / "radiograph_landmarks.csv", index=False, lineterminator="\n")
    causal.effect_sizes_table().to_csv(truth / "effect_sizes.csv", index=False, lineterminator="\n")
    (truth / "README.md").write_text(_ground_truth_readme(parameters))


def _ground_truth_readme(parameters: dict) -> str:
    lesions = ", ".join(f"`{m}`" for m in LESION_MASKS)
    tissues = ", ".join(f"{v} {k}" for k, v in TISSUE_LABELS.items())
    return f"""# Ground truth of this synthetic OAI-format cohort

Made by `kneelib.synth.cohort.generate_cohort` (generator version {parameters['generator_version']},
preset `{parameters['preset']['name']}`, variant `{parameters['variant']}`, seed {parameters['seed']},
{parameters['n_subjects']} participants, MR series set `{parameters.get('mr_series', 'all')}`).
Everything here is what the causal model
(`kneelib.synth.causal`) planted; the OAI-format files beside this folder were rendered from it.
Nothing here exists in a real OAI download: a chapter uses it only to check methods
(saliency maps against lesion masks, segmentation against tissue labels).

## Files
- `subjects.csv`: one row per participant (`SubjectSpec`): participant_id, age_years, bmi_kg_m2,
  sex (1 male, 2 female), race (0 other, 1 white, 2 black, 3 asian), widespread_pain, seed,
  height_scale.
- `knees.csv`: one row per knee and visit (`KneeSpec.as_record()`): side R/L, visit_month 0/12,
  latent `oa_severity`, true minimum JSW per compartment (`jsw_medial_mm`, `jsw_lateral_mm`) and the
  measured medial JSW written to `kXR_QJSW_Duryea` (`jsw_medial_measured_mm`), cartilage thickness /
  focal loss / T2 elevation per region (FM, FL, TM, TL, P, TR), OARSI osteophyte grades per site
  (FL, FM, TL, TM), JSN and sclerosis per compartment, KL grade, MOAKS effusion-synovitis and
  Hoffa-synovitis grades, BMLs as `region:size` list, meniscal damage, pain (`frequent_pain`,
  `womac_pain`, `any_pain_past_12m`, `pain_months_past_12m`, `chronic_pain` = more than 6 months,
  latent `pain_liability`), pose, and the planted scan `artefact` (motion, missing_slices,
  foreign_object or empty).
- `series.csv`: one row per MRI series written (series set `book`: what the book's chapters read;
  `all`: the OAI knee protocol at both visits): its `folder` (as in `contents.csv`), knee and visit,
  `labels_path`, the lesion masks present, `pcl_center_slice` (sagittal series: the slice nearest
  the PCL plane as planned by the renderer, paper 000's centre slice; -1 otherwise),
  `pcl_most_voxels_slice` (the slice with the most PCL label voxels), slice count and artefact.
- `series/<ID>/<visit folder>/<series folder>/labels.nii.gz`: tissue labels (uint8) on the
  series' own grid (same affine as the DICOM series read by `kneelib.data`). Codes: {tissues}.
- `series/.../lesion_<name>.nii.gz`: binary lesion masks on the same grid, written only when
  non-empty; names among {lesions}.
- `radiograph_landmarks.csv`: landmarks of each bilateral PA radiograph (one row per knee and
  landmark: joint_centre, condyle_lowest_medial/lateral, plateau_medial/lateral,
  plateau_margin_medial/lateral) in pixel coordinates `row_px`, `col_px` of the DICOM image, with
  the pixel spacing and the knee's residual beam tilt against the plateau.
- `effect_sizes.csv`: the causal model's parameters with their meaning and source.

Gzipped NIfTI files carry mtime 0 and every draw derives from the seed: regenerating with the same
preset, variant and seed gives byte-identical files.
"""


# --------------------------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------------------------
def generate_cohort(preset: str = "default", out_dir: str | Path | None = None, seed: int = 0,
                    n_subjects: int | None = None, variant: str = "oai", n_workers: int | None = None,
                    progress: bool = True, dicom_compression: str = "jpeg-ls", mr_series: str | None = None,
                    scheduler: Any = None) -> Path:
    """Generate (or reuse) a synthetic OAI-format cohort and return its root folder.

    Parameters
    ----------
    preset : {'smoke', 'default', 'paper'}
        ``smoke``: 8 participants, tiny matrices (seconds); ``default``: 300 participants,
        reduced matrices (minutes on two cores); ``paper``: the OAI's 4,796 participants at
        full resolution.
    out_dir : str or Path, optional
        Root of the cohort; default :func:`default_out_dir`.
    seed : int
        Cohort seed: same seed and preset -> byte-identical files.
    n_subjects : int, optional
        Override the preset's participant count.
    variant : {'oai', 'most'}
        ``most``: an independent cohort with other seeds, IDs and the MOST-like acquisition
        settings of the renderers (paper 004's independent test set).
    n_workers : int, optional
        Local processes; default all cores (1: in this process). Ignored with a scheduler.
    progress : bool
        Show a tqdm bar.
    dicom_compression : {"jpeg-ls", "none"}
        Pixel storage of the DICOM files: lossless JPEG-LS (default; the readers decode
        the same pixel values from about 2.4 times fewer bytes) or uncompressed Explicit
        VR Little Endian, as the OAI distributes its images (a cohort of its own, in
        ``..._uncompressed`` by default).
    mr_series : {"book", "all"}, optional
        Which MR series to write (:data:`MR_SERIES_SETS`): ``"book"`` writes what the book's
        chapters read (:data:`BOOK_MR_SERIES`: at baseline the SAG and COR IW TSE of both
        knees and the right knee's DESS and T2 map, at 12 months the right knee's DESS and T2
        map; radiographs only for the 'most' variant), ``"all"`` the OAI knee protocol at
        both visits (about 1.6 times the images). Default :func:`default_mr_series`: ``"all"``
        for ``paper``, ``"book"`` otherwise. The files written are the same bytes either way.
    scheduler : str, distributed.Client or cluster, optional
        Render the participants on a dask.distributed cluster (an address such as
        ``"tcp://host:8786"``, a ``Client``, a ``LocalCluster`` or a ``dask_jobqueue`` cluster);
        default ``$KNEELIB_DASK_SCHEDULER``, else joblib processes on this machine
        (:func:`kneelib.executor.map_tasks`). The workers must see ``out_dir`` (a shared file
        system). The files are the same bytes whoever renders them.

    Returns
    -------
    Path
        The cohort root (holds ``contents.csv`` and the clinical tables).

    Raises
    ------
    FileExistsError
        If ``out_dir`` holds a cohort made with other parameters (a folder outside the
        cache is never wiped).

    Notes
    -----
    One participant is one task (:func:`_subject_task`): it renders into a work folder,
    moves the finished folders into place and leaves a ``.done`` record, so a killed worker
    or an interrupted run loses nothing and a rerun renders only the participants that are
    missing. Memory is one participant per worker, whatever the cohort size.
    """
    from kneelib.executor import map_tasks

    parameters = cohort_parameters(preset, seed, n_subjects, variant, dicom_compression, mr_series)
    digest = _parameters_hash(parameters)
    in_cache = out_dir is None
    root = Path(out_dir) if out_dir is not None else default_out_dir(preset, seed, n_subjects, variant,
                                                                     dicom_compression, parameters["mr_series"])
    root = root.expanduser().resolve()
    marker, params_file = root / COMPLETE_MARKER, root / PARAMS_FILE
    if marker.is_file() and json.loads(marker.read_text()).get("parameters_hash") == digest:
        return root
    if params_file.is_file() and json.loads(params_file.read_text()).get("parameters_hash") != digest:
        if not in_cache:
            raise FileExistsError(
                f"{root} holds a synthetic cohort made with other parameters ({params_file}); "
                f"remove the folder or choose another out_dir")
        shutil.rmtree(root)
    elif root.is_dir() and not params_file.is_file() and any(root.iterdir()):
        raise FileExistsError(f"{root} is not empty and holds no kneelib synthetic cohort; choose another out_dir")
    root.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)
    _write_json_atomic(params_file, {"parameters_hash": digest, "parameters": parameters})
    (root / ".done").mkdir(exist_ok=True)

    n = parameters["n_subjects"]
    tasks = [(i, str(root), parameters) for i in range(n)]
    records = [_slim(record) for record in map_tasks(_subject_task, tasks, n_jobs=n_workers, scheduler=scheduler,
                                                     progress=progress, desc=f"synth {variant}/{preset}",
                                                     unit="subject")]
    _write_tables_and_truth(root, records, parameters)
    shutil.rmtree(root / ".work", ignore_errors=True)
    shutil.rmtree(root / ".done", ignore_errors=True)
    _write_json_atomic(marker, {"parameters_hash": digest, "n_subjects": n})
    return root


def _slim(record: dict) -> dict:
    """Keep only what the tables need (records are small; images were written by the worker)."""
    return {k: record[k] for k in ("index", "subject", "knees", "contents", "series", "landmarks")}
