"""KL grading of a folder of knee images with a saved model: ``python -m kneelib grade-kl``.

Inference side of paper 004 (Tiulpin & Saarakkala 2020): a KL model or ensemble trained by
:func:`kneelib.train.grading.train_kl_folds` is saved with the preprocessing and inference
settings it was trained and calibrated with (:func:`save_kl_model`: mirroring, input size,
test-time augmentation, temperature, decoding, the out-of-distribution feature reference);
:func:`grade_kl_folder` prepares every
image under a folder the same way (*Data Pre-processing*: histogram clipping, resize,
central crop, global contrast normalisation, mirroring of one side) and writes one CSV
row per file. A file that cannot be read or decoded (not an image, a truncated or
corrupt DICOM, a compressed transfer syntax no installed decoder handles) becomes a
row with its ``error`` and no grade; it never ends the run.

Full bilateral radiographs (an image at least :data:`BILATERAL_ASPECT` times as wide as
it is tall) are cut into their two knees first, by a saved knee localiser
(:func:`kneelib.preprocess.knee_localisation.save_knee_localiser`; the OARSI chapter
writes one) and :func:`kneelib.preprocess.knee_crops.localised_knee_crop`, each knee
framed like the training crops (:data:`MARGINS_PER_PLATEAU_CENTRES`); each gives a row.

This module is independent of :mod:`kneelib.papers`; the command line imports it directly.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["KL_GRADER_FORMAT", "RADIOGRAPH_MODALITIES", "KLModelError", "model_path_for", "save_kl_model",
           "load_kl_grader", "side_from_name", "dicom_side_and_modality", "candidate_files", "grade_kl_folder",
           "BILATERAL_ASPECT", "MARGINS_PER_PLATEAU_CENTRES", "bilateral_crop_mm", "ood_scores", "tta_option"]

#: An image at least this many times as wide as tall is a full bilateral radiograph
#: (a knee crop is about square; an OAI bilateral PA view is about 1.7-2 : 1).
BILATERAL_ASPECT = 1.5

#: Distance of the outer tibial plateau margins over the distance of the two plateau centres
#: (the localiser's ``plateau_lateral``/``plateau_medial``): 1.58 (sd 0.005) on the 1,200 knees
#: of the default synthetic cohort, whose bones come from the real pymskt knee.
MARGINS_PER_PLATEAU_CENTRES = 1.58

#: Default study folder of saved KL models in the cache.
KL_MODEL_STUDY = "kl_real_radiographs"


def model_path_for(backbone: str, image_size: int, max_epochs: int, seed: int,
                   n_subjects: int | None = None, study: str = KL_MODEL_STUDY, n_models: int = 1) -> Path:
    """``<cache>/models/<study>/kl2_<backbone>_<size>px_<epochs>ep_<subjects>_x<models>_seed<seed>.pt``."""
    from kneelib.config import cache_root

    subjects = "all" if n_subjects is None else f"{n_subjects}subj"
    return (cache_root() / "models" / study
            / f"kl2_{backbone}_{image_size}px_{max_epochs}ep_{subjects}_x{n_models}_seed{seed}.pt")


#: Format tag of a KL grader file; :func:`load_kl_grader` refuses any other.
KL_GRADER_FORMAT = "kneelib.kl_grader/2"

#: Modalities of projection radiographs (DICOM Modality); any other DICOM is refused.
RADIOGRAPH_MODALITIES = ("CR", "DX", "RG")


class KLModelError(ValueError):
    """A KL grader file that cannot be used: not a grader, another version, no KL head.

    Attributes
    ----------
    path : Path
    reason : str
    """

    def __init__(self, path, reason: str):
        self.path, self.reason = Path(path), reason
        super().__init__(f"{self.path}: {reason}")


def save_kl_model(model, path, image_size: int, mirror_side: str | None, extra: dict | None = None) -> Path:
    """Save a KL model (or an ensemble) with everything :func:`grade_kl_folder` needs.

    Parameters
    ----------
    model : MultiTaskNet or list of MultiTaskNet
        Networks with a ``kl`` head and the same backbone; a list is an ensemble whose
        softmax outputs are averaged.
    path : path
        Target ``.pt`` file (written atomically).
    image_size : int
        Network input (the central crop of a ``resize_for_crop(image_size)`` image).
    mirror_side : {"L", "R", None}
        The side mirrored in training (paper 004 mirrors one side), or ``None``.
    extra : dict, optional
        More metadata: ``tta`` (a test-time augmentation option of
        :data:`kneelib.train.multitask.TTA_OPTIONS`), ``temperature`` (float), ``cutpoints`` (4
        floats or None), ``feature_density`` (:meth:`kneelib.stats.feature_density.FeatureDensity.to_dict`),
        the chapter's parameters ...
    """
    import torch

    from kneelib.train.multitask import resize_for_crop

    members = list(model) if isinstance(model, (list, tuple)) else [model]
    if not members:
        raise ValueError("save_kl_model needs at least one model")
    first = members[0]
    if "kl" not in first.tasks or any(m.backbone_name != first.backbone_name for m in members):
        raise ValueError("every member needs a 'kl' head and the same backbone")
    metadata = {"image_size": int(image_size), "resize_to": resize_for_crop(image_size),
                "mirror_side": mirror_side, "low_percentile": 5.0, "high_percentile": 99.0,
                "tta": "plain", "temperature": 1.0, "cutpoints": None, "feature_density": None,
                "paper": "Tiulpin & Saarakkala 2020 (paper 004)", **(extra or {})}
    payload = {"format": KL_GRADER_FORMAT, "backbone": first.backbone_name,
               "task_classes": dict(first.task_classes), "dropout": first.dropout_p,
               "members": [{k: v.detach().cpu() for k, v in m.state_dict().items()} for m in members],
               "metadata": metadata}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def load_kl_grader(path) -> tuple[list, dict]:
    """Load a file written by :func:`save_kl_model`: ``(models in eval mode, metadata)``.

    Raises
    ------
    FileNotFoundError
        If the file does not exist (the message says how to make one).
    KLModelError
        If it is not a KL grader file of this version (e.g. a model saved by an older
        kneelib, format ``kneelib.multitask/1``), or has no KL head.
    """
    import torch

    from kneelib.models.multitask import MultiTaskNet

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"model file not found: {path}; train one with `python -m kneelib run kl_real_radiographs "
            f"--params paper` (or default), which saves it under <KNEELIB_CACHE>/models/{KL_MODEL_STUDY}/")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 -- pickle/zip errors of a foreign or damaged file
        raise KLModelError(path, f"not a readable kneelib model file ({type(err).__name__}: {err})") from err
    found = payload.get("format") if isinstance(payload, dict) else None
    if found != KL_GRADER_FORMAT:
        raise KLModelError(path, f"model file of another version: format {found!r}, this kneelib reads "
                                 f"{KL_GRADER_FORMAT!r}; re-run the kl_real_radiographs chapter to write a new one")
    if "kl" not in payload["task_classes"]:
        raise KLModelError(path, f"no KL head (heads: {list(payload['task_classes'])})")
    models = []
    for state in payload["members"]:
        model = MultiTaskNet(backbone=payload["backbone"], tasks=payload["task_classes"],
                             dropout=payload.get("dropout", 0.5))
        model.load_state_dict(state)
        models.append(model.eval())
    metadata = dict(payload["metadata"])
    try:
        metadata["tta"] = tta_option(metadata)
    except ValueError as err:
        raise KLModelError(path, str(err)) from err
    return models, metadata


def tta_option(metadata: dict) -> str:
    """The test-time augmentation option a saved grader applies.

    Files written before the rotation options existed say ``tta_flip`` (bool) instead of
    ``tta``; both are read. Raises ValueError for an option this kneelib does not know.
    """
    from kneelib.train.multitask import TTA_OPTIONS

    option = metadata.get("tta") or ("flip TTA" if metadata.get("tta_flip") else "plain")
    if option not in TTA_OPTIONS:
        raise ValueError(f"unknown test-time augmentation {option!r} (known: {sorted(TTA_OPTIONS)})")
    return option


_SIDE_PATTERN = re.compile(r"(?:^|[^A-Za-z])([LR])$|\d([LR])$", re.IGNORECASE)


def side_from_name(path: str | Path) -> str | None:
    """Knee side from a file name ending in ``L``/``R`` (``9000001L.png``, ``knee_R.dcm``), else ``None``."""
    match = _SIDE_PATTERN.search(Path(path).stem)
    if not match:
        return None
    return (match.group(1) or match.group(2)).upper()


def candidate_files(images_dir: str | Path) -> list[Path]:
    """Image files under a folder (recursive): known image endings, ``.dcm``/``.dicom``, no ending, numbers."""
    from kneelib.preprocess.radiograph import IMAGE_SUFFIXES

    files = []
    for path in sorted(Path(images_dir).rglob("*")):
        if not path.is_file() or path.name.startswith("."):
            continue
        suffix = path.suffix.lower()
        if suffix in IMAGE_SUFFIXES or suffix in (".dcm", ".dicom", "") or suffix.isdigit():
            files.append(path)
    return files


def dicom_side_and_modality(path: Path) -> tuple[str | None, str]:
    """``(side, modality)`` from a DICOM header (read without the pixel data).

    The side is decided as for any DICOM knee series (:func:`kneelib.data.dicom.laterality_of`:
    ``Laterality``/``ImageLaterality`` tags, then RIGHT/LEFT in the descriptions); ``B``
    (bilateral), absent, or contradictory: ``None``. The modality is ``Modality`` (``""``
    when absent).

    Raises
    ------
    kneelib.data.radiograph.RadiographReadError
        If the header cannot be read.
    """
    import pydicom

    from kneelib.data.dicom import LateralityError, laterality_of
    from kneelib.data.radiograph import RadiographReadError

    try:
        header = pydicom.dcmread(str(path), stop_before_pixels=True, force=True)
    except Exception as err:  # noqa: BLE001 -- any parser failure is an unreadable file
        raise RadiographReadError(path, f"unreadable DICOM header ({type(err).__name__}: {err})") from err
    try:
        side, _ = laterality_of([header])
    except LateralityError:
        side = None
    return side, str(header.get("Modality", "") or "").strip().upper()


def _is_dicom_path(path: Path) -> bool:
    from kneelib.preprocess.radiograph import IMAGE_SUFFIXES

    return path.suffix.lower() not in IMAGE_SUFFIXES


def bilateral_crop_mm(landmarks: dict, spacing_mm: float) -> float:
    """Side (mm) of a knee crop framed like the training crops, from the localiser's plateau centres.

    The Chen et al. crops span :data:`kneelib.preprocess.knee_crops.CHEN_WIDTH_PER_PLATEAU`
    times the outer plateau margins' distance, which is :data:`MARGINS_PER_PLATEAU_CENTRES`
    times the plateau centres' distance.
    """
    from kneelib.preprocess.knee_crops import CHEN_WIDTH_PER_PLATEAU

    lateral = np.asarray(landmarks["plateau_lateral"], dtype=float)
    medial = np.asarray(landmarks["plateau_medial"], dtype=float)
    return float(CHEN_WIDTH_PER_PLATEAU * MARGINS_PER_PLATEAU_CENTRES * np.hypot(*(lateral - medial)) * spacing_mm)


def _bilateral_knees(pixels: np.ndarray, spacing_mm: float | None, localiser) -> dict:
    """``{side: crop}`` of both knees of a bilateral radiograph (raises when it cannot be cut)."""
    from kneelib.preprocess.knee_crops import localised_knee_crop

    if localiser is None:
        raise ValueError(f"a full bilateral radiograph ({pixels.shape[1]} x {pixels.shape[0]} px): pass a knee "
                         "localiser (--localiser) to cut its knees, or give knee crops")
    if not spacing_mm:
        raise ValueError("a full bilateral radiograph without pixel spacing (no DICOM PixelSpacing/"
                         "ImagerPixelSpacing): pass --pixel-spacing")
    crops = {}
    for side in ("R", "L"):
        crops[side], _, _ = localised_knee_crop(localiser, pixels, spacing_mm, side,
                                                lambda found: bilateral_crop_mm(found, spacing_mm),
                                                out_size=256, mirror_side=None)
    return crops


def ood_scores(density, model, images: np.ndarray, image_size: int, batch_size: int = 64) -> np.ndarray:
    """The out-of-distribution score of prepared images under a saved grader's feature reference.

    Scores the features ``density`` was fitted on: every stage
    (:func:`kneelib.train.multitask.layer_features`) for a
    :class:`~kneelib.stats.feature_density.LayeredDensity`, the pooled features for the
    single :class:`~kneelib.stats.feature_density.FeatureDensity` of older model files.
    ``model`` is the first ensemble member. Flagged: score above ``density.threshold``.
    """
    from kneelib.stats.feature_density import LayeredDensity
    from kneelib.train.multitask import layer_features, pooled_features

    extract = layer_features if isinstance(density, LayeredDensity) else pooled_features
    return density.score(extract(model, images, image_size, batch_size=batch_size))


def _prepare_pixels(pixels: np.ndarray, metadata: dict, side: str | None, image_size: int) -> np.ndarray:
    """Prepare one knee crop's pixels as in training (uint8)."""
    from kneelib.preprocess.radiograph import prepare_knee_image

    mirror_side = metadata.get("mirror_side")
    image = prepare_knee_image(pixels, int(metadata.get("resize_to", image_size)),
                               side=side if mirror_side else None, mirror_side=mirror_side,
                               low_percentile=float(metadata.get("low_percentile", 5.0)),
                               high_percentile=float(metadata.get("high_percentile", 99.0)))
    if image.shape[0] < image_size:
        raise ValueError(f"prepared image {image.shape} smaller than the model input {image_size}")
    return np.round(image * 255).astype(np.uint8)


def _write_overlay(path: Path, image: np.ndarray, cam: np.ndarray, title: str) -> None:
    """A PNG of the network input with its Grad-CAM (jet, 45% opacity) and a one-line title."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from kneelib.explain.gradcam import upsample_cams

    heat = upsample_cams(cam[None], image.shape)[0]
    fig, ax = plt.subplots(figsize=(3.2, 3.4))
    ax.imshow(image, cmap="gray")
    ax.imshow(heat, cmap="jet", alpha=0.45, vmin=0, vmax=1)
    ax.set_title(title, fontsize=8)
    ax.axis("off")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def grade_kl_folder(model_path, images_dir, out_csv=None, batch_size: int = 32, gradcam_dir=None,
                    grade_out_of_distribution: bool = False, progress: bool = False, localiser_path=None,
                    pixel_spacing_mm: float | None = None) -> pd.DataFrame:
    """Grade every knee image (PNG/JPEG/TIFF or DICOM) under a folder with a saved KL grader.

    Knee-joint crops like the training data are graded as they are. A full bilateral
    radiograph (width at least :data:`BILATERAL_ASPECT` times the height) is cut into its
    right and left knee by the localiser of ``localiser_path``, at the DICOM pixel
    spacing or ``pixel_spacing_mm``, each crop framed like the training crops
    (:func:`bilateral_crop_mm`); each knee gets a row (``knee`` ``R``/``L``, side from its
    position). Without a localiser such an image is an error row. Each crop is prepared
    exactly as in training (histogram clipping, resize, central crop, global contrast
    normalisation; mirroring when the model was trained with it and the side is known) and
    graded by the saved model or ensemble with its saved inference settings (test-time augmentation,
    temperature, arg-max or cut-points on the expected grade).

    - **Side**: the DICOM ``ImageLaterality``/``Laterality`` when it says L or R, else the
      file name (ending in L/R), else ``unknown``.
    - **Not a radiograph**: a DICOM file whose ``Modality`` is not CR, DX or RG (an MRI
      slice, a CT) is refused with an error row.
    - **Out of distribution**: when the model file holds a feature reference
      (:mod:`kneelib.stats.feature_density`), every image gets an ``ood_score`` (distance
      of its features from the training knees'); above the saved threshold it is flagged
      (``out_of_distribution``) and left ungraded unless ``grade_out_of_distribution``.
    - **Unreadable files**: a row with its ``error`` (exception type and message) and no
      grade; the run goes on. Only ``KeyboardInterrupt``/``SystemExit`` stop it.

    Parameters
    ----------
    model_path : path
        A ``.pt`` file written by :func:`save_kl_model`.
    images_dir : path
        Folder searched recursively (``.png .jpg .jpeg .tif .tiff .bmp .dcm`` and
        extension-less files, tried as DICOM).
    out_csv : path, optional
        Where to write the table (parent folders are created).
    batch_size : int
    gradcam_dir : path, optional
        Write a Grad-CAM overlay of the KL head (first ensemble member, explained grade =
        the reported grade) per graded image, as ``<file>.gradcam.png`` mirroring the folder tree.
    grade_out_of_distribution : bool
        Also grade flagged images (the flag stays).
    progress : bool
        Progress bar over the files.
    localiser_path : path, optional
        A knee localiser (:func:`kneelib.preprocess.knee_localisation.save_knee_localiser`)
        for full bilateral radiographs.
    pixel_spacing_mm : float, optional
        Pixel spacing of bilateral images that carry none (PNG/JPEG).

    Returns
    -------
    DataFrame
        ``file`` (relative to ``images_dir``), ``knee`` (``R``/``L`` for a knee cut from a
        bilateral radiograph, else empty), ``kl_grade`` (nullable int),
        ``p_kl0`` ... ``p_kl4``, ``side``, ``ood_score``, ``out_of_distribution``
        (nullable bool), ``error`` (empty when graded).

    Raises
    ------
    FileNotFoundError
        If the model file or the folder does not exist.
    KLModelError
        If the model file is not a KL grader of this version.
    kneelib.preprocess.knee_localisation.LocaliserFileError
        If ``localiser_path`` is not a knee localiser of this version.
    """
    import torch
    from tqdm.auto import tqdm

    from kneelib.data.radiograph import read_radiograph
    from kneelib.preprocess.knee_localisation import load_knee_localiser

    from kneelib.stats.feature_density import density_from_dict
    from kneelib.stats.ordinal import decode_grades
    from kneelib.train.grading import ensemble_kl_probabilities

    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise FileNotFoundError(f"image folder not found: {images_dir}")
    models, metadata = load_kl_grader(model_path)
    image_size = int(metadata.get("image_size", 224))
    n_grades = models[0].task_classes["kl"]
    density = density_from_dict(metadata["feature_density"]) if metadata.get("feature_density") else None
    localiser = load_knee_localiser(localiser_path) if localiser_path is not None else None

    rows, stack, stack_rows = [], [], []
    for path in tqdm(candidate_files(images_dir), desc="reading images", disable=not progress):
        side = side_from_name(path)
        row = {"file": str(path.relative_to(images_dir)), "knee": "", "kl_grade": pd.NA,
               **{f"p_kl{g}": np.nan for g in range(n_grades)},
               "side": side or "unknown", "ood_score": np.nan, "out_of_distribution": pd.NA, "error": ""}
        try:
            if _is_dicom_path(path):
                dicom_side, modality = dicom_side_and_modality(path)
                if modality not in RADIOGRAPH_MODALITIES:
                    raise ValueError(f"DICOM Modality {modality or '(missing)'!r} is not a radiograph "
                                     f"({'/'.join(RADIOGRAPH_MODALITIES)}); not graded")
                side = dicom_side or side
                row["side"] = side or "unknown"
            radiograph = read_radiograph(path, require_spacing=False)
            pixels = np.asarray(radiograph.pixels, dtype=np.float32)
            if pixels.shape[1] >= BILATERAL_ASPECT * pixels.shape[0]:
                spacing = radiograph.pixel_spacing_mm[0] if radiograph.pixel_spacing_mm else pixel_spacing_mm
                knees = {knee: _prepare_pixels(crop, metadata, knee, image_size)
                         for knee, crop in _bilateral_knees(pixels, spacing, localiser).items()}
            else:
                knees = {"": _prepare_pixels(pixels, metadata, side, image_size)}
        except Exception as err:  # noqa: BLE001 -- one bad file is one error row, never the end of the run
            row["error"] = f"{type(err).__name__}: {err}"
            rows.append(row)
            continue
        for knee, image in knees.items():
            knee_row = dict(row, knee=knee, side=knee or row["side"])
            stack.append(image)
            stack_rows.append(len(rows))
            rows.append(knee_row)
    if stack:
        images = np.stack(stack)
        with torch.no_grad():  # metadata["tta"] was checked by load_kl_grader
            probabilities = ensemble_kl_probabilities(models, images, image_size, tta=metadata["tta"],
                                                      temperature=float(metadata.get("temperature") or 1.0),
                                                      batch_size=batch_size, progress=progress)
        grades = decode_grades(probabilities, metadata.get("cutpoints"))
        flagged = np.zeros(len(images), dtype=bool)
        if density is not None:
            scores = ood_scores(density, models[0], images, image_size, batch_size=batch_size)
            flagged = scores > density.threshold
        for k, (row_index, p) in enumerate(zip(stack_rows, probabilities)):
            row = rows[row_index]
            for g in range(n_grades):
                row[f"p_kl{g}"] = float(p[g])
            if density is not None:
                row["ood_score"] = float(scores[k])
                row["out_of_distribution"] = bool(flagged[k])
            if not flagged[k] or grade_out_of_distribution:
                row["kl_grade"] = int(grades[k])
        if gradcam_dir is not None:
            _write_grad_cams(models[0], images, image_size, [rows[i] for i in stack_rows], Path(gradcam_dir))
    table = pd.DataFrame(rows, columns=["file", "knee", "kl_grade", *[f"p_kl{g}" for g in range(n_grades)],
                                        "side", "ood_score", "out_of_distribution", "error"])
    table["kl_grade"] = table["kl_grade"].astype("Int64")
    table["out_of_distribution"] = table["out_of_distribution"].astype("boolean")
    if out_csv is not None:
        out_csv = Path(out_csv)
        out_csv.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(out_csv, index=False)
    return table


def _write_grad_cams(model, images: np.ndarray, image_size: int, rows: list, out_dir: Path,
                     batch_size: int = 16) -> None:
    """Grad-CAM overlays of the graded rows (explained grade: the reported one, else the arg-max)."""
    import torch

    from kneelib.explain.gradcam import grad_cam
    from kneelib.train.multitask import RadiographDataset

    dataset = RadiographDataset(images, np.zeros((len(images), 1), dtype=np.int64), image_size, augment=False)
    for start in range(0, len(images), batch_size):
        chunk = range(start, min(start + batch_size, len(images)))
        batch = torch.stack([dataset.image_tensor(i) for i in chunk])
        targets = [int(rows[i]["kl_grade"]) if not pd.isna(rows[i]["kl_grade"]) else
                   int(np.argmax([rows[i][f"p_kl{g}"] for g in range(5)])) for i in chunk]
        cams, explained = grad_cam(model, batch, "kl", target_grades=targets)
        for i, cam, grade, tensor in zip(chunk, cams, explained, batch):
            row = rows[i]
            name = Path(row["file"]).name + (f" {row['knee']}" if row.get("knee") else "")
            title = f"{name}: KL {grade}" + (" (out of distribution)" if row["out_of_distribution"] is True else "")
            knee = f".{row['knee']}" if row.get("knee") else ""
            _write_overlay(out_dir / f"{row['file']}{knee}.gradcam.png", tensor[0].numpy(), cam, title)
