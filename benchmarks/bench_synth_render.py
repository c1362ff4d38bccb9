"""Speed of the synthetic knee: anatomy build and the full default series set of one knee.

Run with ``pytest benchmarks/bench_synth_render.py --benchmark-only`` (``make bench``).
Target (issue 3): one knee's default series set well under 1-2 s on one core, so a few
hundred subjects x 2 knees x 2 visits render in minutes on two cores.
"""
import numpy as np
import pytest

from kneelib.synth.anatomy import DEFAULT_VOXEL_MM, build_knee
from kneelib.synth.mri import render_series
from kneelib.synth.protocols import mr_protocols, xr_protocol
from kneelib.synth.radiograph import render_radiograph
from kneelib.synth.spec import KneeSpec

SPEC = KneeSpec(participant_id="9000001", side="R", visit_month=0, seed=1, shape_seed=2, effusion_grade=2,
                bml_sites=(("FM", 2),), osteophyte_grade={"FM": 2, "FL": 1, "TM": 1, "TL": 0})


@pytest.fixture(scope="module")
def knee():
    return build_knee(SPEC, voxel_mm=DEFAULT_VOXEL_MM)


def test_bench_build_knee(benchmark):
    benchmark.pedantic(build_knee, args=(SPEC,), kwargs={"voxel_mm": DEFAULT_VOXEL_MM}, rounds=3, iterations=1)


def test_bench_render_default_series(benchmark, knee):
    protocols = mr_protocols("default")

    def render_all():
        rng = np.random.default_rng(0)
        return [render_series(knee, p, rng) for p in protocols.values()]

    benchmark.pedantic(render_all, rounds=3, iterations=1)


def test_bench_radiograph(benchmark, knee):
    left = build_knee(KneeSpec(participant_id="9000001", side="L", visit_month=0, seed=3, shape_seed=2),
                      voxel_mm=DEFAULT_VOXEL_MM)
    benchmark.pedantic(render_radiograph, args=(knee, left, xr_protocol("default"), np.random.default_rng(0)),
                       rounds=3, iterations=1)
