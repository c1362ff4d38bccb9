"""Slice-feature extraction of the JSN-progression chapter (paper 002, 2.4.1): throughput and peak memory.

Slices per second through EfficientNet-Lite0 (offline ImageNet weights,
:class:`kneelib.preprocess.slice_features.SliceEncoder`) at the ``default`` input size
(112 px) and the paper-like 224 px, and the whole per-knee pipeline (N4 on a 16-slice window,
normalisation, resize, CNN) on a synthetic coronal series of the default cohort's geometry
(112 x 112 x 35), and :func:`kneelib.preprocess.slice_features.extract_cohort_features` on the
first knees of the default synthetic cohort (seed 0) with 1 and 2 worker processes, into an empty
cache (wall clock, worker start-up and each worker's encoder included, as in a first chapter
run; skipped when that cohort has not been generated). Peak memory is the largest resident set size sampled every 10 ms during the
measured calls, minus the size before them (the weights are loaded first). The 1-minute load
average is stored with each result: on a shared machine the rate falls when other jobs run.

Overrides: ``KNEELIB_BENCH_THREADS`` (default 1), ``KNEELIB_BENCH_SLICES`` (slices per call,
default 16), ``KNEELIB_BENCH_KNEES`` (knees of the worker benchmark, default 24). Run with::

    pytest benchmarks/bench_jsn_slice_features.py --benchmark-only -s
"""
import os

import numpy as np
import pytest
import torch

from kneelib.data.dicom import Volume
from kneelib.preprocess.slice_features import SliceEncoder, SliceFeatureConfig, prepare_slices

THREADS = int(os.environ.get("KNEELIB_BENCH_THREADS", 1))
N_SLICES = int(os.environ.get("KNEELIB_BENCH_SLICES", 16))
N_KNEES = int(os.environ.get("KNEELIB_BENCH_KNEES", 24))


from peak_rss import PeakRss as _PeakRss  # noqa: E402  (benchmarks/ is on sys.path)


@pytest.fixture(scope="module")
def encoder():
    torch.set_num_threads(THREADS)
    return SliceEncoder("efficientnet_lite0")


@pytest.mark.parametrize("size", [112, 224])
def test_encode_throughput(benchmark, encoder, size):
    images = np.random.default_rng(0).random((N_SLICES, size, size)).astype(np.float32)
    encoder.encode(images)  # warm-up
    with _PeakRss() as memory:
        vectors = benchmark.pedantic(encoder.encode, args=(images,), rounds=3, iterations=1)
    assert vectors.shape == (N_SLICES, 1280)
    rate = N_SLICES / benchmark.stats.stats.mean
    benchmark.extra_info.update({"slices_per_s": rate, "peak_extra_mib": memory.extra_mib, "threads": THREADS,
                                 "load_1min": os.getloadavg()[0]})
    print(f"\n{size} px: {rate:.1f} slices/s, peak +{memory.extra_mib:.0f} MiB, {THREADS} thread(s)")


def test_knee_pipeline_throughput(benchmark, encoder):
    rng = np.random.default_rng(1)
    x, y, z = np.mgrid[0:112, 0:35, 0:112]
    array = (400 + 300 * (((x - 56) ** 2 + (z - 56) ** 2) < 40 ** 2) * np.exp(0.005 * (x - 56))
             + rng.normal(0, 20, x.shape)).clip(0).astype(np.uint16)
    volume = Volume(array=array, affine=np.diag([1.25, 3.0, 1.25, 1.0]), laterality="R",
                    series_description="COR_IW_TSE_RIGHT")
    config = SliceFeatureConfig(n_slices=N_SLICES, image_size=112, n4_shrink=4)

    def knee():
        images, _ = prepare_slices(volume, config)
        return encoder.encode(images)

    knee()
    with _PeakRss() as memory:
        vectors = benchmark.pedantic(knee, rounds=3, iterations=1)
    assert vectors.shape == (N_SLICES, 1280)
    rate = N_SLICES / benchmark.stats.stats.mean
    benchmark.extra_info.update({"slices_per_s": rate, "knees_per_s": 1 / benchmark.stats.stats.mean,
                                 "peak_extra_mib": memory.extra_mib, "threads": THREADS,
                                 "load_1min": os.getloadavg()[0]})
    print(f"\nwhole knee (N4 + resize + CNN): {rate:.1f} slices/s, peak +{memory.extra_mib:.0f} MiB")


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_cohort_workers_throughput(benchmark, n_jobs, tmp_path):
    from kneelib.data.labels import jsn_progression_cohort
    from kneelib.preprocess.slice_features import extract_cohort_features
    from kneelib.synth.cohort import COMPLETE_MARKER, default_out_dir

    root = default_out_dir("default", 0)
    if not (root / COMPLETE_MARKER).is_file():
        pytest.skip(f"the default synthetic cohort is not generated ({root})")
    knees = jsn_progression_cohort(root)[0][["participant_id", "side"]].head(N_KNEES)
    config = SliceFeatureConfig(n_slices=N_SLICES, image_size=112, n4_shrink=4)
    caches = iter(tmp_path / f"cache{i}" for i in range(100))

    def empty_cache():
        return (root, knees, config), {"cache_dir": next(caches), "n_jobs": n_jobs}

    result = benchmark.pedantic(extract_cohort_features, setup=empty_cache, rounds=1, iterations=1)
    assert result.n_jobs == min(n_jobs, len(knees)) and (result.knees["status"] == "computed").any()
    wall = result.seconds["total"]
    rate = result.n_encoded / wall
    benchmark.extra_info.update({"slices_per_s": rate, "knees_per_s": len(knees) / wall, "workers": result.n_jobs,
                                 "encode_s": result.seconds["encode"], "preprocess_s": result.seconds["preprocess"],
                                 "load_1min": os.getloadavg()[0]})
    print(f"\n{len(knees)} knees, {result.n_jobs} worker(s): {rate:.1f} slices/s wall "
          f"(preprocess {result.seconds['preprocess']:.1f} s + CNN {result.seconds['encode']:.1f} s over the "
          f"workers, {wall:.1f} s wall)")
