"""Training throughput and FLOPs of the paper-000 Siamese network on this CPU (issue #4, Parameters and speed).

Knee pairs (subjects: both knees x ``n_slices`` slices) per second for a training step
(forward, backward, SGD with momentum, cross-entropy, batch 64 as in the paper) at the
``default`` size of :mod:`kneelib.models.siamese`, and the forward FLOPs per pair from
``torch.utils.flop_counter.FlopCounterMode``. Achieved GFLOP/s = (training FLOPs per
pair, counted the same way over forward + backward) x pairs/s, so the utilisation of
the machine can be read off against its peak. Also: the VGG16-CAM comparison model
and one rigid slice registration (the preprocessing cost per slice).

Overrides: ``KNEELIB_BENCH_SIZE``, ``KNEELIB_BENCH_SLICES``, ``KNEELIB_BENCH_WIDTHS``
(comma-separated), ``KNEELIB_BENCH_THREADS``, ``KNEELIB_BENCH_CHANNELS_LAST`` (1/0).
The 1-minute load average is stored with the result: on a shared machine the rate
falls several-fold when other jobs run. Run with::

    pytest benchmarks/bench_siamese.py --benchmark-only -s
"""
import os

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from kneelib.models.siamese import DEFAULT_IMAGE_SIZE, DEFAULT_N_SLICES, DEFAULT_WIDTHS, siamese_pain_net
from kneelib.models.vgg_cam import siamese_vgg16_cam

IMAGE_SIZE = int(os.environ.get("KNEELIB_BENCH_SIZE", DEFAULT_IMAGE_SIZE))
N_SLICES = int(os.environ.get("KNEELIB_BENCH_SLICES", DEFAULT_N_SLICES))
WIDTHS = tuple(int(w) for w in os.environ.get("KNEELIB_BENCH_WIDTHS", ",".join(map(str, DEFAULT_WIDTHS))).split(","))
THREADS = int(os.environ.get("KNEELIB_BENCH_THREADS", torch.get_num_threads()))
#: channels-last weights, as kneelib.train.siamese.TrainConfig.channels_last (default on)
CHANNELS_LAST = os.environ.get("KNEELIB_BENCH_CHANNELS_LAST", "1") == "1"
BATCH_SIZE = 64


def _batch():
    torch.manual_seed(0)
    return torch.randn(BATCH_SIZE, 2, N_SLICES, IMAGE_SIZE, IMAGE_SIZE), torch.randint(0, 2, (BATCH_SIZE,))


def _flops(model, images, labels):
    """(forward FLOPs per pair, training-step FLOPs per pair)."""
    model.train()
    with FlopCounterMode(display=False) as forward:
        model(images[:1].repeat(2, 1, 1, 1, 1))  # two pairs: BN needs more than one value per channel
    with FlopCounterMode(display=False) as step:
        torch.nn.functional.cross_entropy(model(images[:2]), labels[:2]).backward()
    model.zero_grad()
    return forward.get_total_flops() / 2, step.get_total_flops() / 2


def _train_benchmark(benchmark, model, name, rounds=3):
    torch.set_num_threads(THREADS)
    if CHANNELS_LAST:
        model = model.to(memory_format=torch.channels_last)
    images, labels = _batch()
    forward_flops, train_flops = _flops(model, images, labels)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step():
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        optimiser.step()
        return float(loss.detach())

    loss = benchmark.pedantic(step, rounds=rounds, warmup_rounds=1)
    assert np.isfinite(loss)
    pairs_per_s = BATCH_SIZE / benchmark.stats.stats.mean
    benchmark.extra_info.update({
        "pairs_per_s": pairs_per_s, "forward_gflop_per_pair": forward_flops / 1e9,
        "train_gflop_per_pair": train_flops / 1e9, "achieved_gflop_per_s": train_flops * pairs_per_s / 1e9,
        "image_size": IMAGE_SIZE, "n_slices": N_SLICES, "threads": THREADS, "channels_last": CHANNELS_LAST,
        "cpu_load_1min": os.getloadavg()[0],
    })
    print(f"\n{name} training at {IMAGE_SIZE} px, {N_SLICES} slices/knee, batch {BATCH_SIZE}, "
          f"{THREADS} thread(s): {pairs_per_s:.1f} knee pairs/s; forward {forward_flops / 1e9:.3f} GFLOP/pair, "
          f"training step {train_flops / 1e9:.3f} GFLOP/pair -> {train_flops * pairs_per_s / 1e9:.1f} GFLOP/s")


def test_siamese_training_pairs_per_second(benchmark):
    torch.manual_seed(0)
    _train_benchmark(benchmark, siamese_pain_net(N_SLICES, WIDTHS), f"Siamese {WIDTHS}")


def test_vgg16_cam_training_pairs_per_second(benchmark):
    torch.manual_seed(0)
    _train_benchmark(benchmark, siamese_vgg16_cam(N_SLICES), "VGG16-CAM (width 1/8)", rounds=1)


def test_siamese_inference_pairs_per_second(benchmark):
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    model = siamese_pain_net(N_SLICES, WIDTHS).eval()
    if CHANNELS_LAST:
        model = model.to(memory_format=torch.channels_last)
    images, _ = _batch()

    def forward():
        with torch.no_grad():
            return model(images)

    logits = benchmark.pedantic(forward, rounds=5, warmup_rounds=1)
    assert logits.shape == (BATCH_SIZE, 2)
    rate = BATCH_SIZE / benchmark.stats.stats.mean
    benchmark.extra_info["pairs_per_s"] = rate
    print(f"\nSiamese inference: {rate:.1f} knee pairs/s")


def test_rigid_slice_registration(benchmark):
    """One SAG IW TSE slice of the synthetic ``default`` grid (144 x 144, 1.11 mm) to a template."""
    from scipy import ndimage

    from kneelib.preprocess.registration import register_slice, resample_square

    rng = np.random.default_rng(0)
    template = ndimage.gaussian_filter(rng.random((144, 144)), 6)
    moving = ndimage.shift(ndimage.rotate(template, 5, reshape=False), (3, -2))
    spacing = (160 / 144, 160 / 144)

    def run():
        result = register_slice(moving, template, spacing)
        return resample_square(moving, spacing, result.transform, (80.0, 80.0), 105.0, IMAGE_SIZE)

    out = benchmark.pedantic(run, rounds=5, warmup_rounds=1)
    assert out.shape == (IMAGE_SIZE, IMAGE_SIZE)
    rate = 1 / benchmark.stats.stats.mean
    benchmark.extra_info["slices_per_s"] = rate
    print(f"\nrigid registration + crop: {rate:.1f} slices/s")
