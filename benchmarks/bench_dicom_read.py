"""DICOM series -> volume: kneelib's reader against dcm2niix on the same series (issue 15, item 6).

Series: the real DESS of ``$KNEELIB_DATA/pykneer_knee_mri/DESS_echo1`` (GE, 80 files of 512 x 512,
about the voxel count of an OAI DESS: 21 vs 24 million) and the SAG_3D_DESS_RIGHT of the smoke
synthetic cohort's first participant. Measured: :func:`kneelib.data.read_dicom_series` (to an array
in memory), the same plus writing an uncompressed ``.nii`` with nibabel (what dcm2niix does), and
the ``dcm2niix`` binary of the PyPI wheel (``-z n -b n``: uncompressed NIfTI, no JSON sidecar),
started as a process as a user would. Target: kneelib within 2x of dcm2niix (ratio of the minima,
printed at the end).

Run: ``pytest benchmarks/bench_dicom_read.py -o python_files='bench_*.py' --benchmark-only -s``.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import nibabel as nib
import pytest

from kneelib import config
from kneelib.data.dicom import read_dicom_series

RESULTS: dict[tuple[str, str], float] = {}


def _real_dess() -> Path:
    folder = config.data_root() / "pykneer_knee_mri" / "DESS_echo1"
    if not folder.is_dir():
        pytest.skip(f"real DESS not found at {folder} (set KNEELIB_DATA)")
    return folder


def _synthetic_dess() -> Path:
    from kneelib.data.image_index import read_image_index
    from kneelib.synth.cohort import generate_cohort

    index = read_image_index(generate_cohort("smoke", seed=0, progress=False))
    first = sorted(index.table["ParticipantID"].unique())[0]
    return index.find_series(first, 0, "SAG_3D_DESS_RIGHT")


SERIES = {"real DESS (pyKNEEr, 512x512x80)": _real_dess, "synthetic smoke DESS": _synthetic_dess}


@pytest.fixture(scope="module", params=list(SERIES))
def series(request):
    folder = SERIES[request.param]()
    read_dicom_series(folder)  # warm the page cache for both readers
    return request.param, folder


def _dcm2niix_binary() -> str:
    dcm2niix = pytest.importorskip("dcm2niix", reason="pip install dcm2niix (pinned in requirements.txt)")
    return str(dcm2niix.bin)


def _record(benchmark, series_name: str, reader: str) -> None:
    RESULTS[(series_name, reader)] = benchmark.stats.stats.min
    benchmark.extra_info["series"] = series_name


def test_bench_kneelib_read(benchmark, series):
    name, folder = series
    benchmark.pedantic(read_dicom_series, args=(folder,), rounds=5, iterations=1, warmup_rounds=1)
    _record(benchmark, name, "kneelib")


def test_bench_kneelib_read_and_write_nii(benchmark, series, tmp_path):
    name, folder = series

    def read_and_write():
        nib.save(read_dicom_series(folder).to_nifti(), str(tmp_path / "out.nii"))

    benchmark.pedantic(read_and_write, rounds=5, iterations=1, warmup_rounds=1)
    _record(benchmark, name, "kneelib + .nii")


def test_bench_dcm2niix(benchmark, series, tmp_path):
    name, folder = series
    binary = _dcm2niix_binary()

    def convert():
        for old in tmp_path.glob("*.nii"):
            old.unlink()
        subprocess.run([binary, "-z", "n", "-b", "n", "-f", "out", "-o", str(tmp_path), str(folder)],
                       check=True, capture_output=True)

    benchmark.pedantic(convert, rounds=5, iterations=1, warmup_rounds=1)
    assert sorted(nib.load(str(tmp_path / "out.nii")).shape[:3]) == sorted(read_dicom_series(folder).shape[:3])
    _record(benchmark, name, "dcm2niix")


@pytest.fixture(scope="module", autouse=True)
def report_ratio():
    """After the module: the ratios (printed; ``make bench`` runs with ``-s``)."""
    yield
    if not RESULTS:
        return
    print("\nDICOM series -> volume, best of 5 (s); ratio = kneelib / dcm2niix (target <= 2)")
    for name in SERIES:
        ours, written, theirs = (RESULTS.get((name, r)) for r in ("kneelib", "kneelib + .nii", "dcm2niix"))
        if ours is None or theirs is None or written is None:
            continue
        print(f"  {name}: kneelib {ours:.3f}, kneelib + .nii {written:.3f}, dcm2niix {theirs:.3f} "
              f"-> ratio {ours / theirs:.2f} (with the write {written / theirs:.2f})")
