"""Whole-cohort quality control: load every expected series, record what fails and why.

:func:`load_every_series` walks every MR series and bilateral radiograph a cohort's
participants should have (the OAI knee-exam protocol, :data:`kneelib.data.oai_layout.SERIES_DESCRIPTIONS`)
through :func:`kneelib.data.iter_series_volumes`; what does not load is excluded with its
reason in one :class:`kneelib.data.QCLog` and loading carries on. :func:`planted_artefacts_vs_qc`
puts the scan artefacts a synthetic cohort's generator planted next to what the QC caught.

Paths in the returned tables are relative to the cohort root, so that a chapter page does
not show the folder it was built in.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from functools import lru_cache
from pathlib import Path

import pandas as pd

from kneelib.data.oai_layout import SERIES_DESCRIPTIONS

__all__ = ["RADIOGRAPH_DESCRIPTION", "expected_mr_descriptions", "load_every_series", "planted_artefacts_vs_qc",
           "relative_to_root", "qc_display_table"]

#: Description of the bilateral radiograph in the OAI image index.
RADIOGRAPH_DESCRIPTION = SERIES_DESCRIPTIONS["xr_pa_knee"]


def expected_mr_descriptions() -> list[str]:
    """Every MR series of one OAI knee-exam visit (both knees; MSME T2 right only)."""
    found = []
    for key, template in SERIES_DESCRIPTIONS.items():
        if key.startswith("xr"):
            continue
        for side in ("RIGHT", "LEFT"):
            description = template.format(side=side)
            if description not in found:
                found.append(description)
    return found


def relative_to_root(table: pd.DataFrame, root: str | Path, columns=("path", "reason"),
                     placeholder: str = "<cohort>") -> pd.DataFrame:
    """A copy of ``table`` whose text ``columns`` name files relative to ``root``.

    Every occurrence of the absolute ``root`` (resolved or as given) becomes
    ``placeholder``; a chapter page then shows ``<cohort>/1.C.2/...`` instead of the
    builder's local folder.
    """
    table = table.copy()
    prefixes = sorted({str(Path(root)), str(Path(root).resolve())}, key=len, reverse=True)
    for column in columns:
        if column not in table.columns:
            continue
        values = table[column].astype(str)
        for prefix in prefixes:
            values = values.str.replace(prefix, placeholder, regex=False)
        table[column] = values
    return table


def qc_display_table(qc: pd.DataFrame, max_reason_chars: int = 110) -> pd.DataFrame:
    """The QC table as a page shows it: one short reason per excluded series.

    A reason names its file and then the evidence (e.g. every slice position of a series
    with a gap); on a page that makes rows of many lines. The display keeps the reason up to
    its first ``"; "`` clause border, cut at a word border to at most ``max_reason_chars``
    characters (``" ..."`` marks a cut), and drops the ``path`` column, which the reason
    already names. The full table stays what :func:`load_every_series` returns.
    """
    if max_reason_chars < 20:
        raise ValueError(f"max_reason_chars must be at least 20, got {max_reason_chars}")

    def shorten(reason: str) -> str:
        head = reason.split("; ", 1)[0]
        cut = len(head) < len(reason)
        if len(head) > max_reason_chars:
            head = head[:max_reason_chars].rsplit(" ", 1)[0]
            cut = True
        return head + (" ..." if cut else "")

    table = qc.drop(columns=[c for c in ("path",) if c in qc.columns]).copy()
    if "reason" in table.columns:
        table["reason"] = table["reason"].astype(str).map(shorten)
    return table


@lru_cache(maxsize=2)
def _index(cohort_root: str):
    """The image index of a cohort, read once per process (workers reuse it across participants)."""
    from kneelib.data import read_image_index

    return read_image_index(cohort_root)


def _participant_series(job: tuple) -> tuple[list[dict], list[dict], list[tuple]]:
    """Load every expected series of one participant: (MR exclusions, radiograph exclusions, counts).

    Counts are ``(series description, (field, value))`` pairs of what loaded. A pure function
    of one participant, run by :func:`kneelib.executor.map_tasks`; one volume is held at a time.
    """
    from kneelib.data import QCLog, SeriesRequest, iter_series_volumes, read_dicom_series, read_radiograph, requests_for

    cohort_root, participant, visits, expected_mr = job
    index = _index(cohort_root)
    counts: list[tuple] = []
    mr_qc, xr_qc = QCLog(), QCLog()
    mr_requests = [SeriesRequest(str(participant), int(v), s) for v in visits for s in expected_mr[v]]
    for request, volume in iter_series_volumes(index, mr_requests, qc=mr_qc, loader=read_dicom_series):
        cols, rows, slices = volume.shape[:3]
        spacing = volume.spacing_mm
        counts += [(request.series_description, key) for key in (
            ("matrix", f"{rows}x{cols}x{slices}"),
            ("voxel mm", f"{spacing[1]:.3g}x{spacing[0]:.3g}x{spacing[2]:.3g}"),
            ("echo times ms", ", ".join(f"{t:g}" for t in volume.echo_times_ms)), ("loaded", ""))]
    for request, film in iter_series_volumes(index, requests_for([participant], visits, [RADIOGRAPH_DESCRIPTION]),
                                             qc=xr_qc, loader=read_radiograph):
        rows, cols = film.pixels.shape
        counts += [(request.series_description, key) for key in (
            ("matrix", f"{rows}x{cols}"),
            ("voxel mm", f"{film.pixel_spacing_mm[0]:.3g}x{film.pixel_spacing_mm[1]:.3g}"),
            ("echo times ms", ""), ("loaded", ""))]
    return mr_qc.rows, xr_qc.rows, counts


def load_every_series(cohort_root: str | Path, n_participants: int | None = None, visits=(0, 12),
                      progress: bool = True, n_jobs: int | None = None,
                      scheduler=None, expected_mr: dict | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Load every expected series of every participant; return the QC table and an inventory.

    MR series go through :func:`kneelib.data.iter_series_volumes` with
    :func:`kneelib.data.read_dicom_series`, the bilateral radiographs through the same
    iterator with :func:`kneelib.data.read_radiograph`. Whatever fails to load (series
    missing from the index, unreadable files, slice gaps, mixed geometry) is recorded in
    one :class:`kneelib.data.QCLog` and loading carries on. Participants are spread over
    workers by :func:`kneelib.executor.map_tasks` (one volume at a time per worker); the
    tables do not depend on the number of workers.

    Parameters
    ----------
    cohort_root : path
        OAI root (``contents.csv`` and the image folders).
    n_participants : int, optional
        Only the first participants of the index (sorted IDs); default all.
    visits : sequence of int
        Visit months.
    progress : bool
        A tqdm bar over participants.
    n_jobs : int, optional
        Local worker processes (None: every core; 1: in this process).
    scheduler : str or dask Client, optional
        A dask.distributed scheduler (default ``$KNEELIB_DASK_SCHEDULER``, see
        :mod:`kneelib.executor`).
    expected_mr : dict, optional
        MR series descriptions expected at each visit month (e.g. a synthetic cohort
        written with only the series the book reads,
        :func:`kneelib.synth.cohort.expected_mr_descriptions_by_visit`); default every
        series of the OAI knee-exam protocol (:func:`expected_mr_descriptions`) at every visit.

    Returns
    -------
    qc : pandas.DataFrame
        The QC exclusion table (:data:`kneelib.data.cohort.QC_COLUMNS`), file names
        relative to the cohort root (:func:`relative_to_root`).
    inventory : pandas.DataFrame
        Per series description: requested, loaded, excluded, matrix (rows x columns x
        slices), voxel size (mm), echo times.
    """
    from kneelib.data import QCLog, read_image_index, requests_for
    from kneelib.executor import map_tasks

    index = read_image_index(cohort_root)
    participants = sorted(index.table["ParticipantID"].unique())
    if n_participants is not None:
        participants = participants[:int(n_participants)]
    visits = tuple(int(v) for v in visits)
    expected_mr = {v: list(expected_mr[v]) if expected_mr is not None and v in expected_mr
                   else expected_mr_descriptions() for v in visits}
    outcomes = map_tasks(_participant_series, [(str(index.root), p, visits, expected_mr) for p in participants],
                         n_jobs=n_jobs,
                         scheduler=scheduler, progress=progress, desc="QC: every series", unit="participant")
    qc = QCLog()
    counts = defaultdict(Counter)
    for mr_rows, _, _ in outcomes:  # the table lists MR exclusions, then radiographs, each participant-major
        qc.rows += mr_rows
    for _, xr_rows, loaded in outcomes:
        qc.rows += xr_rows
        for description, key in loaded:
            counts[description][key] += 1
    mr_requests = [r for v in visits for r in requests_for(participants, [v], expected_mr[v])]
    xr_requests = requests_for(participants, visits, [RADIOGRAPH_DESCRIPTION])
    qc_frame = relative_to_root(qc.to_frame(), index.root)
    requested = Counter(r.series_description for r in mr_requests + xr_requests)
    inventory = []
    for description, n_requested in requested.items():
        seen = counts[description]

        def most_common(field):
            values = Counter({k[1]: v for k, v in seen.items() if k[0] == field})
            if not values:
                return "-"
            text = values.most_common(1)[0][0]
            return text if len(values) == 1 else f"{text} (+{len(values) - 1} other)"

        inventory.append({"series": description, "requested": n_requested,
                          "loaded": seen[("loaded", "")],
                          "excluded": int((qc_frame["series"] == description).sum()),
                          "matrix": most_common("matrix"), "voxel / pixel mm": most_common("voxel mm"),
                          "echo times ms": most_common("echo times ms")})
    return qc_frame, pd.DataFrame(inventory).set_index("series")


def planted_artefacts_vs_qc(truth_knees: pd.DataFrame, qc: pd.DataFrame, participants=None) -> pd.DataFrame:
    """Each planted scan artefact next to what the QC caught.

    One row per knee visit with a planted artefact and one per QC exclusion of a knee
    visit without one: participant, side, visit, planted artefact, MR series excluded by
    the loader and the error types.

    Parameters
    ----------
    truth_knees : pandas.DataFrame
        ``ID``, ``SIDE`` (1/2), ``VISIT`` and ``artefact`` per knee visit
        (:func:`kneelib.synth.ground_truth.truth_knee_table` of a synthetic cohort).
    qc : pandas.DataFrame
        From :func:`load_every_series`.
    participants : iterable of str, optional
        Restrict the planted list to these participants (those that were loaded).
    """
    side_letter = {1: "R", 2: "L"}
    planted = truth_knees[truth_knees["artefact"].fillna("") != ""]
    if participants is not None:
        planted = planted[planted["ID"].isin(set(map(str, participants)))]
    keys = {(str(r.ID), side_letter[int(r.SIDE)], int(r.VISIT)): r.artefact for r in planted.itertuples()}
    mr = qc[qc["side"].isin(["R", "L"])]
    for row in mr.itertuples():
        keys.setdefault((str(row.participant_id), row.side, int(row.visit_month)), "")
    rows = []
    for (pid, side, visit), artefact in sorted(keys.items()):
        hits = mr[(mr["participant_id"].astype(str) == pid) & (mr["side"] == side) & (mr["visit_month"] == visit)]
        rows.append({"participant_id": pid, "side": side, "visit_month": visit,
                     "planted artefact": artefact or "(none)",
                     "series excluded": ", ".join(hits["series"]) or "none",
                     "QC reason": "; ".join(sorted(set(hits["error_type"]))) or "loaded: not caught by the reader"})
    return pd.DataFrame(rows, columns=["participant_id", "side", "visit_month", "planted artefact",
                                       "series excluded", "QC reason"])
