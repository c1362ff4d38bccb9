"""Per-subject throughput of the executor with 1 and 2 workers, and the full-OAI projection (issue 15).

The per-subject stage is the DICOM -> NIfTI volume cache (:func:`kneelib.data.cache.cache_series_volumes`)
of every baseline MRI series of the smoke cohort's subjects (7 per subject), into a fresh
cache folder each round, run

- in this process (1 worker), with joblib (2 local processes) and on a dask ``LocalCluster`` of 2
  single-threaded workers: the scaling ratio is the 1-worker time over the 2-worker time (2.0 is
  perfect; on a machine whose cores are busy with other jobs it is lower);
- once for the real DESS (512 x 512 x 80, the size of an OAI DESS within 12 %), whose measured cost is
  projected on paper onto the full OAI: 4,796 participants, about 47,000 DESS volumes (and as many
  other MRI series again), on N workers with the measured 2-worker efficiency.

Run: ``pytest benchmarks/bench_executor.py -o python_files='bench_*.py' --benchmark-only -s``.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from kneelib import config
from kneelib.data.cache import cache_series_volumes, cached_series_path, mri_series_folders

OAI_PARTICIPANTS = 4796
OAI_DESS_VOLUMES = 47_000
RESULTS: dict[str, float] = {}


@pytest.fixture(scope="module")
def smoke():
    from kneelib.data.image_index import read_image_index
    from kneelib.synth.cohort import generate_cohort

    index = read_image_index(generate_cohort("smoke", seed=0, progress=False))
    baseline = index.table[index.table["VISIT"] == 0]
    folders = [f for f in mri_series_folders(index) if str(f) in set(baseline["path"])]
    return folders, baseline["ParticipantID"].nunique()


def _convert(folders, **executor):
    with tempfile.TemporaryDirectory() as cache_dir:
        rows = cache_series_volumes(folders, cache_dir=cache_dir, progress=False, **executor)
    assert all(r["error"] == "" for r in rows)


def _record(benchmark, name: str, subjects: int) -> None:
    RESULTS[name] = benchmark.stats.stats.min
    benchmark.extra_info["subjects_per_s"] = subjects / benchmark.stats.stats.min


def test_bench_one_worker(benchmark, smoke):
    folders, subjects = smoke
    benchmark.pedantic(_convert, args=(folders,), kwargs={"n_jobs": 1}, rounds=2, iterations=1)
    _record(benchmark, "1 worker", subjects)


def test_bench_two_joblib_workers(benchmark, smoke):
    folders, subjects = smoke
    benchmark.pedantic(_convert, args=(folders,), kwargs={"n_jobs": 2}, rounds=2, iterations=1, warmup_rounds=1)
    _record(benchmark, "2 joblib workers", subjects)


def test_bench_two_dask_workers(benchmark, smoke):
    distributed = pytest.importorskip("distributed")
    folders, subjects = smoke
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None,
                                  silence_logs=40) as cluster:
        benchmark.pedantic(_convert, args=(folders,), kwargs={"scheduler": cluster}, rounds=2, iterations=1,
                           warmup_rounds=1)
    _record(benchmark, "2 dask workers", subjects)


def test_bench_real_dess_volume(benchmark):
    folder = config.data_root() / "pykneer_knee_mri" / "DESS_echo1"
    if not folder.is_dir():
        pytest.skip(f"real DESS not found at {folder} (set KNEELIB_DATA)")

    def convert():
        with tempfile.TemporaryDirectory() as cache_dir:
            cached_series_path(folder, cache_dir=cache_dir)

    benchmark.pedantic(convert, rounds=2, iterations=1, warmup_rounds=1)
    RESULTS["real DESS volume"] = benchmark.stats.stats.min


@pytest.fixture(scope="module", autouse=True)
def report(smoke):
    yield
    _folders, subjects = smoke
    one = RESULTS.get("1 worker")
    if one is None:
        return
    print(f"\nDICOM -> NIfTI cache of {len(_folders)} series of {subjects} smoke subjects (best of 2):")
    efficiency = None
    for name in ("1 worker", "2 joblib workers", "2 dask workers"):
        if name in RESULTS:
            ratio = one / RESULTS[name]
            print(f"  {name}: {RESULTS[name]:.2f} s = {subjects / RESULTS[name]:.2f} subjects/s, scaling x{ratio:.2f}")
            if name != "1 worker":
                efficiency = max(efficiency or 0.0, ratio / 2)
    dess = RESULTS.get("real DESS volume")
    if dess is None or efficiency is None:
        return
    # every other MRI series of an OAI exam is smaller than the DESS: count them as one more DESS each
    volumes = 2 * OAI_DESS_VOLUMES
    print(f"Projection for the full OAI ({OAI_PARTICIPANTS} participants, {OAI_DESS_VOLUMES} DESS + as many other "
          f"MRI series, each at the real DESS's cost of {dess:.2f} s per worker), wall time in hours at the "
          f"measured 2-worker efficiency {efficiency:.2f} and at perfect scaling (workers on free cores):")
    for workers in (1, 2, 16, 64, 256):
        measured = volumes * dess / (workers * (1.0 if workers == 1 else efficiency)) / 3600
        ideal = volumes * dess / workers / 3600
        print(f"  {workers:4d} workers: {measured:8.1f} h measured efficiency, {ideal:8.1f} h perfect")
