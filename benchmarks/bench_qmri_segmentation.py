"""Segmentation inference of the qMRI chapter (issue 11): knee volumes per minute at the default grid.

One knee = both ensembles of ``params/qmri_biomarkers/default.yaml`` on one DESS volume of the
``default`` synthetic preset (64 x 128 x 128 voxels, 1.75 x 1.09 x 1.09 mm): the bone ensemble on
its 2 mm grid (resampling included), the cartilage ensemble on the DESS grid, two members each
(the small MONAI UNet of :data:`kneelib.models.segmentation.SMALL_UNET`), softmax averaged, labels
back on the DESS grid (:func:`kneelib.papers.qmri_biomarkers.segment_knee`). The weights are
random: inference cost does not depend on them. Also one training step of a batch of two 32^3
patches (the chapter's training cost per step).

Overrides: ``KNEELIB_BENCH_THREADS``. The 1-minute load average is stored with the result (a
shared machine runs several-fold slower under load). Run with::

    pytest benchmarks/bench_qmri_segmentation.py --benchmark-only -s
"""
import os

import numpy as np
import pytest
import torch

from kneelib.models.segmentation import build_segmentation_network
from kneelib.papers.qmri_biomarkers import SegmentationSettings, segment_knee
from kneelib.train.segmentation import SegmentationTrainConfig, train_segmentation

THREADS = int(os.environ.get("KNEELIB_BENCH_THREADS", torch.get_num_threads()))
#: The default synthetic DESS grid (kneelib.synth.protocols, preset "default").
SHAPE, SPACING = (64, 128, 128), (1.75, 1.09375, 1.09375)


def _volume():
    rng = np.random.default_rng(0)
    return (rng.random(SHAPE, dtype=np.float32) * 100 + 10).astype(np.float32)


def _ensembles():
    torch.manual_seed(0)
    return {task: [build_segmentation_network(task).eval() for _ in range(2)] for task in ("bone", "cartilage")}


@pytest.mark.benchmark(group="qmri segmentation")
def test_segmentation_inference_volumes_per_minute(benchmark):
    torch.set_num_threads(THREADS)
    settings, ensembles, volume = SegmentationSettings(), _ensembles(), _volume()
    labels = benchmark.pedantic(segment_knee, args=(ensembles, volume, SPACING, settings), rounds=3, iterations=1)
    assert labels["bone"].shape == SHAPE and labels["cartilage"].shape == SHAPE
    per_volume = benchmark.stats.stats.mean
    benchmark.extra_info.update({"volumes_per_minute": 60.0 / per_volume, "threads": THREADS,
                                 "grid": f"{SHAPE} at {SPACING} mm; bone network at 2 mm",
                                 "load_1min": os.getloadavg()[0]})
    print(f"\nsegmentation inference: {60.0 / per_volume:.1f} knee volumes per minute "
          f"({per_volume:.2f} s each, {THREADS} threads)")


@pytest.mark.benchmark(group="qmri segmentation")
def test_segmentation_training_step(benchmark):
    torch.set_num_threads(THREADS)
    volume = _volume()
    labels = np.zeros(SHAPE, np.int64)
    labels[20:40, 40:90, 40:90] = 1
    labels[28:34, 50:60, 50:80] = 2
    model = build_segmentation_network("cartilage")
    config = SegmentationTrainConfig(n_steps=4, patch_size=(32, 32, 32), batch_size=2)

    def run():
        return train_segmentation(model, [volume], [labels], SPACING, config, show_progress=False)

    result = benchmark.pedantic(run, rounds=2, iterations=1)
    per_step = result.seconds / config.n_steps
    benchmark.extra_info.update({"seconds_per_step": per_step, "threads": THREADS, "load_1min": os.getloadavg()[0]})
    print(f"\ntraining: {per_step:.3f} s per step of two 32^3 patches ({THREADS} threads)")
