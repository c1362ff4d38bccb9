"""Speed of the synthetic knee: anatomy build, one knee's default series, the radiograph, one subject.

Run with ``pytest benchmarks/bench_synth_render.py --benchmark-only`` (``make bench``).
Targets (issue 3): one knee built in <= 0.5 s and one whole subject (2 knees x 2 visits x
{SAG IW TSE, COR IW TSE, DESS, MSME right only} + 2 bilateral radiographs) in <= 3 s on
one core at the default preset, so a few hundred subjects render in minutes on two cores.
"""
from dataclasses import replace

import numpy as np
import pytest

from kneelib.synth.anatomy import DEFAULT_VOXEL_MM, build_knee
from kneelib.synth.mri import render_series
from kneelib.synth.protocols import mr_protocols, xr_protocol
from kneelib.synth.radiograph import render_radiograph
from kneelib.synth.spec import KneeSpec

SPEC = KneeSpec(participant_id="9000001", side="R", visit_month=0, seed=1, shape_seed=2, effusion_grade=2,
                bml_sites=(("FM", 2),), osteophyte_grade={"FM": 2, "FL": 1, "TM": 1, "TL": 0},
                cartilage_loss_fraction={"FM": 0.5}, meniscal_damage_medial=2, hoffa_synovitis_grade=1,
                sclerosis_medial=1)


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


def render_subject(voxel_mm=DEFAULT_VOXEL_MM):
    """Everything the cohort generator renders for one participant (without writing files)."""
    mr, xr = mr_protocols("default"), xr_protocol("default")
    for visit in (0, 12):
        models = {}
        for side in ("R", "L"):
            spec = replace(SPEC, side=side, visit_month=visit, seed=SPEC.seed + visit + (side == "L"))
            models[side] = build_knee(spec, voxel_mm)
            for protocol in mr.values():
                if protocol.right_only and side != "R":
                    continue
                render_series(models[side], protocol, np.random.default_rng(visit))
        render_radiograph(models["R"], models["L"], xr, np.random.default_rng(visit))


def test_bench_whole_subject(benchmark):
    benchmark.pedantic(render_subject, rounds=2, iterations=1)
