"""KL grading of a folder of knee images with a saved model: ``python -m kneelib grade-kl``.

Inference side of paper 004 (Tiulpin & Saarakkala 2020): a KL model trained by
:func:`kneelib.train.grading.train_kl_model` is saved with the preprocessing settings
it was trained with (:func:`save_kl_model`); :func:`grade_kl_folder` prepares every
image under a folder the same way (*Data Pre-processing*: histogram clipping, resize,
central crop, global contrast normalisation, mirroring of one side) and writes one CSV
row per file. A file that cannot be read or decoded (not an image, a truncated or
corrupt DICOM, a compressed transfer syntax no installed decoder handles) becomes a
row with its ``error`` and no grade; it never ends the run.

This module is independent of :mod:`kneelib.papers`; the command line imports it directly.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["model_path_for", "save_kl_model", "side_from_name", "candidate_files", "grade_kl_folder"]

#: Default study folder of saved KL models in the cache.
KL_MODEL_STUDY = "kl_real_radiographs"


def model_path_for(backbone: str, image_size: int, max_epochs: int, seed: int,
                   n_subjects: int | None = None, study: str = KL_MODEL_STUDY) -> Path:
    """``<cache>/models/<study>/kl_<backbone>_<size>px_<epochs>ep_<subjects>_seed<seed>.pt``."""
    from kneelib.config import cache_root

    subjects = "all" if n_subjects is None else f"{n_subjects}subj"
    return cache_root() / "models" / study / f"kl_{backbone}_{image_size}px_{max_epochs}ep_{subjects}_seed{seed}.pt"


def save_kl_model(model, path, image_size: int, mirror_side: str | None, extra: dict | None = None) -> Path:
    """Save the KL model with everything :func:`grade_kl_folder` needs to prepare images.

    Parameters
    ----------
    model : MultiTaskNet
        A network with a ``kl`` head.
    path : path
        Target ``.pt`` file.
    image_size : int
        Network input (the central crop of a ``resize_for_crop(image_size)`` image).
    mirror_side : {"L", "R", None}
        The side mirrored in training (paper 004 mirrors one side), or ``None``.
    extra : dict, optional
        More metadata (e.g. the chapter's parameters).
    """
    from kneelib.models.multitask import save_checkpoint
    from kneelib.train.multitask import resize_for_crop

    metadata = {"image_size": int(image_size), "resize_to": resize_for_crop(image_size),
                "mirror_side": mirror_side, "low_percentile": 5.0, "high_percentile": 99.0,
                "paper": "Tiulpin & Saarakkala 2020 (paper 004)", **(extra or {})}
    return save_checkpoint(model, path, metadata)


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


def _prepare_one(path: Path, metadata: dict, side: str | None, image_size: int) -> np.ndarray:
    """Read and prepare one file as in training (uint8); raises on anything unreadable."""
    from kneelib.preprocess.radiograph import prepare_knee_image, read_knee_image

    mirror_side = metadata.get("mirror_side")
    image = prepare_knee_image(read_knee_image(path), int(metadata.get("resize_to", image_size)),
                               side=side if mirror_side else None, mirror_side=mirror_side,
                               low_percentile=float(metadata.get("low_percentile", 5.0)),
                               high_percentile=float(metadata.get("high_percentile", 99.0)))
    if image.shape[0] < image_size:
        raise ValueError(f"prepared image {image.shape} smaller than the model input {image_size}")
    return np.round(image * 255).astype(np.uint8)


def grade_kl_folder(model_path, images_dir, out_csv=None, batch_size: int = 32) -> pd.DataFrame:
    """Grade every knee image (PNG/JPEG/TIFF or DICOM) under a folder with a saved KL model.

    The images must be knee-joint crops like the training data (no localisation is
    run). Each is prepared exactly as in training (histogram clipping, resize, central
    crop, global contrast normalisation; mirroring when the model was trained with
    it and the file name ends in L/R).

    A file that cannot be read gives a row with its ``error`` (exception type and
    message: a :class:`~kneelib.data.errors.KneelibDataError` from the reader for an
    undecodable, compressed-without-decoder or malformed DICOM, an image-library error
    for a broken PNG, or any other exception the decoders raise) and no grade; the
    run goes on with the next file. Only ``KeyboardInterrupt``/``SystemExit`` stop it.

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

    Returns
    -------
    DataFrame
        ``file`` (relative to ``images_dir``), ``kl_grade`` (nullable int),
        ``p_kl0`` ... ``p_kl4``, ``side``, ``error`` (empty when graded).

    Raises
    ------
    FileNotFoundError
        If the model file or the folder does not exist.
    ValueError
        If the model has no KL head.
    """
    import torch

    from kneelib.models.multitask import load_checkpoint
    from kneelib.train.multitask import predict_probabilities

    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise FileNotFoundError(f"image folder not found: {images_dir}")
    model, metadata = load_checkpoint(model_path)
    if "kl" not in model.tasks:
        raise ValueError(f"{model_path} has no KL head (heads: {list(model.tasks)})")
    image_size = int(metadata.get("image_size", 224))
    n_grades = model.task_classes["kl"]

    rows, stack, stack_rows = [], [], []
    for path in candidate_files(images_dir):
        side = side_from_name(path)
        row = {"file": str(path.relative_to(images_dir)), "kl_grade": pd.NA,
               **{f"p_kl{g}": np.nan for g in range(n_grades)},
               "side": side or "unknown", "error": ""}
        try:
            stack.append(_prepare_one(path, metadata, side, image_size))
        except Exception as err:  # noqa: BLE001 -- one bad file is one error row, never the end of the run
            row["error"] = f"{type(err).__name__}: {err}"
        else:
            stack_rows.append(len(rows))
        rows.append(row)
    if stack:
        with torch.no_grad():
            probabilities = predict_probabilities(model, np.stack(stack), image_size,
                                                  batch_size=batch_size)["kl"]
        for row_index, p in zip(stack_rows, probabilities):
            rows[row_index]["kl_grade"] = int(np.argmax(p))
            for g in range(n_grades):
                rows[row_index][f"p_kl{g}"] = float(p[g])
    table = pd.DataFrame(rows, columns=["file", "kl_grade", *[f"p_kl{g}" for g in range(n_grades)],
                                        "side", "error"])
    table["kl_grade"] = table["kl_grade"].astype("Int64")
    if out_csv is not None:
        out_csv = Path(out_csv)
        out_csv.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(out_csv, index=False)
    return table
