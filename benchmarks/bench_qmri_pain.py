"""Spherical-map classifiers of the chronic-pain chapter (paper 001): training and inference images per second.

The ``default`` model (ResNet18, 48 px, Grad-CAM on layer3) and the paper's (ResNet50, 224 px):
images per second through a fastai fit (three epochs, batch 32, training and validation images
counted, as the chapter's closing note does) and through inference, with the peak extra
resident memory. The 1-minute load average is stored with each result: on a shared machine the
rate falls when other jobs run. One knee's spherical maps from its files are timed by the
chapter itself (``kneelib.papers.qmri_pain.time_one_knee``).

Overrides: ``KNEELIB_BENCH_THREADS`` (default 1). Run with::

    pytest benchmarks/bench_qmri_pain.py --benchmark-only -s
"""
import os

import numpy as np
import pytest
import torch

from kneelib.models.spherical_resnet import spherical_classifier
from kneelib.train.spherical import SphericalTrainConfig, predict_probability, prepare_images, train_spherical

THREADS = int(os.environ.get("KNEELIB_BENCH_THREADS", 1))
N = 96


from peak_rss import PeakRss as _PeakRss  # noqa: E402  (benchmarks/ is on sys.path)


@pytest.mark.parametrize("arch,size", [("resnet18", 48), ("resnet50", 224)])
def test_train_and_inference_images_per_second(benchmark, arch, size):
    torch.set_num_threads(THREADS)
    images = np.random.default_rng(0).integers(0, 256, (N, size, size, 3), dtype=np.uint8)
    labels = np.arange(N) % 2
    x = prepare_images(images)
    config = SphericalTrainConfig(epochs=3, lr=1e-3, batch_size=32, patience=3)

    def fit():
        model = spherical_classifier(arch, "random")
        return train_spherical(model, x, labels, np.arange(64), np.arange(64, N), config)

    with _PeakRss() as memory:
        learner = benchmark.pedantic(fit, rounds=1, iterations=1)
    train_rate = 3 * N / benchmark.stats.stats.mean  # three epochs, model set-up included
    import time

    start = time.perf_counter()
    predict_probability(learner.model, x)
    inference_rate = N / (time.perf_counter() - start)
    benchmark.extra_info.update({"train_images_per_s": train_rate, "inference_images_per_s": inference_rate,
                                 "peak_extra_mib": (memory.peak - memory.start) / 2**20, "threads": THREADS,
                                 "load_1min": os.getloadavg()[0]})
    print(f"\n{arch} {size} px: train {train_rate:.1f} img/s, inference {inference_rate:.1f} img/s, {THREADS} thread(s)")
