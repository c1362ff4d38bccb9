"""Images per second of the paper-004 grading network on this CPU (issue #5, Parameters and speed).

Training (forward, backward and an Adam step on a batch) and inference (forward on a batch,
no gradients) of the ``default`` backbone at the ``default`` input size of
``params/kl_real_radiographs/default.yaml`` (EfficientNet-Lite0 from offline ImageNet weights,
KL head, 128 px). The backbone, size and threads can be overridden with
``KNEELIB_BENCH_BACKBONE``, ``KNEELIB_BENCH_SIZE`` and ``KNEELIB_BENCH_THREADS``. Run with::

    pytest benchmarks/bench_radiograph_model.py --benchmark-only -s
"""
import os
from pathlib import Path

import pytest
import torch
import yaml

from kneelib.models.multitask import KL_ONLY, build_multitask_model

_DEFAULTS = yaml.safe_load((Path(__file__).resolve().parent.parent / "params" / "kl_real_radiographs"
                            / "default.yaml").read_text())
BACKBONE = os.environ.get("KNEELIB_BENCH_BACKBONE", _DEFAULTS["backbone"])
IMAGE_SIZE = int(os.environ.get("KNEELIB_BENCH_SIZE", _DEFAULTS["image_size"]))
BATCH_SIZE = int(_DEFAULTS["batch_size"])
THREADS = int(os.environ.get("KNEELIB_BENCH_THREADS", _DEFAULTS["torch_threads"]))


@pytest.fixture(scope="module")
def model_and_batch():
    torch.set_num_threads(THREADS)
    torch.set_flush_denormal(True)
    torch.manual_seed(0)
    model = build_multitask_model(BACKBONE, KL_ONLY, imagenet=BACKBONE.startswith("efficientnet_lite"))
    images = torch.randn(BATCH_SIZE, 1, IMAGE_SIZE, IMAGE_SIZE)
    grades = torch.randint(0, 5, (BATCH_SIZE,))
    return model, images, grades


def _report(benchmark, what):
    mean_s = benchmark.stats.stats.mean
    rate = BATCH_SIZE / mean_s
    benchmark.extra_info["images_per_s"] = rate
    print(f"\n{what}: {BACKBONE} at {IMAGE_SIZE} px, batch {BATCH_SIZE}, {THREADS} thread(s): "
          f"{rate:.1f} images/s")


def test_training_images_per_second(benchmark, model_and_batch):
    model, images, grades = model_and_batch
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=1e-4)
    model.train()

    def step():
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(images), grades)
        loss.backward()
        optimiser.step()
        return float(loss)

    loss = benchmark.pedantic(step, rounds=3, warmup_rounds=1)
    assert torch.isfinite(torch.tensor(loss))
    _report(benchmark, "training")


def test_inference_images_per_second(benchmark, model_and_batch):
    model, images, _ = model_and_batch
    model.eval()

    def forward():
        with torch.no_grad():
            return model(images)

    logits = benchmark.pedantic(forward, rounds=5, warmup_rounds=1)
    assert logits.shape == (BATCH_SIZE, 5)
    _report(benchmark, "inference")
